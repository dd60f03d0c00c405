"""Start-up: time from ``workstream.start()`` to the first item received, per start method.

Every row runs in a fresh parent interpreter (see the main module below), so the
first trial is a true cold start: for forkserver it includes starting the fork server,
for workstream also its guard process. ``first`` is that trial; ``med`` / ``p95`` /
``min`` are over the other trials (a long-running application starting many jobs).

The child yields (workstream) or sends over a Pipe (reference) one item as soon as its
function runs, after ``import numpy`` where the mode says so:

* ``numpy=none``: the child imports nothing;
* ``numpy=child``: the child runs ``import numpy`` itself (the parent has not);
* ``numpy=parent``: the parent has numpy already: fork inherits it; forkserver gets
  it through ``multiprocessing.set_forkserver_preload(["numpy"])`` (workstream keeps
  that list and adds its own runtime module); no such row for spawn.

Warm worker (``workstream.Worker``, where this build has it): one worker process runs
every trial's job in turn; ``first`` is the worker's own cold start plus its first job,
``med`` the warm ``worker.start(fn)`` -> first item. Where the build has no ``Worker``
the rows say "not available in this build".

References: ``multiprocessing.Process(target=...).start()`` -> first item over a
``multiprocessing.Pipe`` with the same method and mode, and ``python -c pass`` /
``python -c "import numpy"`` by ``subprocess.run`` (a bare interpreter's cost).
The parent of the cases never imports numpy unless the mode says so (nor does this
script or ``bench/_workers.py`` at import time).

The main module matters: spawn children re-import the parent's ``__main__`` module, and
so do forkserver children on CPython 3.10-3.13.0 (the fork server never preloads ``__main__``:
it asks ``get_preparation_data()`` for a ``main_path`` key that does not exist;
CPython gh-126631, fixed in 3.14). So the
case interpreters run from a bare ``python -c`` main (nothing to re-import: the rows
measure the libraries), and a second table runs the ``numpy=none`` rows again from a
main *script* whose top level takes ``--main-ms`` (default 100 ms: an application's
own imports), to show what each start method pays for it per job.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/startup.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import multiprocessing as mp

from bench import _common as bc
from bench import _workers as w

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("forkserver", "spawn", "fork")
MODES = ("none", "child", "parent")
QUICK_METHODS = ("forkserver", "spawn")
QUICK_MODES = ("none", "child")
WORKER_METHODS = ("forkserver", "spawn")
WORKER_MODES = ("none", "child")
NO_WORKER = "not available in this build (no workstream.Worker)"


def configs(quick: bool = False) -> list[tuple[str, str]]:
    methods, modes = (QUICK_METHODS, QUICK_MODES) if quick else (METHODS, MODES)
    return [(m, mode) for m in methods for mode in modes
            if not (m == "spawn" and mode == "parent")]


# -- one case, in a fresh interpreter -----------------------------------------------------


def _prepare(method: str, mode: str) -> None:
    if mode == "parent":
        if method == "fork":
            import numpy  # noqa: F401
        elif method == "forkserver":
            mp.set_forkserver_preload(["numpy"])


def run_workstream(method: str, mode: str, trials: int) -> dict[str, list[float]]:
    import workstream

    _prepare(method, mode)
    child_imports = mode == "child"
    total, call = [], []
    for _ in range(trials):
        t0 = bc.perf()
        job = workstream.start(w.ws_first, child_imports, start_method=method)
        t1 = bc.perf()
        first = next(iter(job))
        t2 = bc.perf()
        outcome = job.wait(60)
        if first != 1 or not isinstance(outcome, workstream.Completed):
            raise RuntimeError(f"first item {first!r}, outcome {outcome!r}")
        total.append(t2 - t0)
        call.append(t1 - t0)
    return {"total": total, "call": call}


def run_mp(method: str, mode: str, trials: int) -> dict[str, list[float]]:
    _prepare(method, mode)
    ctx = mp.get_context(method)
    child_imports = mode == "child"
    total, call = [], []
    for _ in range(trials):
        r, wr = ctx.Pipe(duplex=False)
        p = ctx.Process(target=w.mp_first, args=(wr, child_imports))
        t0 = bc.perf()
        p.start()
        t1 = bc.perf()
        first = r.recv()
        t2 = bc.perf()
        wr.close()
        p.join(60)
        if first != 1 or p.exitcode != 0:
            raise RuntimeError(f"first item {first!r}, exit code {p.exitcode}")
        p.close()
        r.close()
        total.append(t2 - t0)
        call.append(t1 - t0)
    return {"total": total, "call": call}


def run_worker(method: str, mode: str, trials: int) -> dict[str, list[float]]:
    """One warm ``workstream.Worker``; trial 1 includes creating it (its cold start)."""
    import workstream

    _prepare(method, mode)
    child_imports = mode == "child"
    total, call = [], []
    t_created = bc.perf()
    worker_cls: Any = workstream.Worker  # type: ignore[attr-defined]
    try:
        worker = worker_cls(start_method=method)
    except TypeError:  # a build whose Worker takes no start_method
        worker = worker_cls()
    with worker:
        for i in range(trials):
            t0 = bc.perf()
            job = worker.start(w.ws_first, child_imports)
            t1 = bc.perf()
            first = next(iter(job))
            t2 = bc.perf()
            outcome = job.wait(60)
            if first != 1 or not isinstance(outcome, workstream.Completed):
                raise RuntimeError(f"first item {first!r}, outcome {outcome!r}")
            total.append(t2 - (t_created if i == 0 else t0))
            call.append(t1 - t0)
    return {"total": total, "call": call}


def _case_main(spec: str, trials: int) -> int:
    lib, method, mode = spec.split(":")
    fn = {"workstream": run_workstream, "worker": run_worker, "mp": run_mp}[lib]
    json.dump(fn(method, mode, trials), sys.stdout)
    return 0


# -- the driver -------------------------------------------------------------------------------


_BARE_MAIN = (
    "import sys; from bench.startup import _case_main; "
    "sys.exit(_case_main(sys.argv[1], int(sys.argv[2])))"
)
_HEAVY_MAIN = """\
import sys
import time

time.sleep({seconds!r})  # stands for an application's own top-level imports
sys.path.insert(0, {root!r})
from bench.startup import _case_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(_case_main(sys.argv[1], int(sys.argv[2])))
"""


def _in_fresh_interpreter(
    lib: str, method: str, mode: str, trials: int, main_script: str | None = None,
) -> dict[str, Any]:
    """Run one case in a new interpreter: from a bare ``-c`` main, or from a script."""
    head = [main_script] if main_script else ["-c", _BARE_MAIN]
    cmd = [sys.executable, *head, f"{lib}:{method}:{mode}", str(trials)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def _subprocess_ref(code: str, trials: int) -> dict[str, list[float]]:
    total = []
    for _ in range(trials):
        t0 = bc.perf()
        subprocess.run([sys.executable, "-c", code], check=True)
        total.append(bc.perf() - t0)
    return {"total": total, "call": []}


def _summary(name: str, data: dict[str, list[float]]) -> dict[str, Any]:
    total = data["total"]
    rest = total[1:] or total
    return {
        "row": name,
        "first_ms": total[0] * 1e3,
        "med_ms": bc.median(rest) * 1e3,
        "p95_ms": bc.pct(rest, 95) * 1e3,
        "min_ms": min(rest) * 1e3,
        "call_ms": bc.median(data["call"][1:] or data["call"]) * 1e3 if data["call"] else None,
        "all_ms": [round(t * 1e3, 3) for t in total],
    }


_LIB_LABEL = {"workstream": "workstream", "worker": "workstream Worker (warm)",
              "mp": "mp.Process+Pipe"}


def _label(lib: str, method: str, mode: str) -> str:
    return f"{_LIB_LABEL[lib]} {method} numpy={mode}"


def _run_rows(
    specs: list[tuple[str, str, str]], trials: int, main_script: str | None = None,
) -> dict[tuple[str, str, str], dict[str, Any]]:
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for lib, method, mode in specs:
        name = _label(lib, method, mode)
        try:
            data = _in_fresh_interpreter(lib, method, mode, trials, main_script)
        except Exception:
            bc.log(f"  {name} FAILED:\n{traceback.format_exc()}")
            continue
        row = _summary(name, data)
        rows[(lib, method, mode)] = row
        bc.log(f"  {name:40s} first {row['first_ms']:8.1f} ms  med {row['med_ms']:8.1f} ms"
               f"{'  (heavy main)' if main_script else ''}")
    for (lib, method, mode), row in rows.items():
        ref = rows.get(("mp", method, mode))
        row["ref"] = _label("mp", method, mode)
        row["x_mp"] = bc.ratio(row["med_ms"], ref["med_ms"]) if ref else None
        fs = rows.get((lib, "forkserver", mode))
        row["x_fs"] = bc.ratio(row["med_ms"], fs["med_ms"]) if fs else None
        cold = rows.get(("workstream", method, mode))
        if lib == "worker" and cold:
            row["x_cold"] = bc.ratio(row["med_ms"], cold["med_ms"])
    return rows


COLS = [
    bc.Column("row", "row"),
    bc.Column("first_ms", "first ms", ".1f"),
    bc.Column("med_ms", "med ms", ".1f"),
    bc.Column("p95_ms", "p95 ms", ".1f"),
    bc.Column("min_ms", "min ms", ".1f"),
    bc.Column("call_ms", "call ms", ".2f"),
    bc.Column("x_mp", "x mp", ".2f"),
    bc.Column("x_fs", "x forkserver", ".2f"),
    bc.Column("x_cold", "x ws cold", ".3f"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = bc.make_parser(__doc__.splitlines()[0], start_method=False)
    parser.add_argument(
        "--trials", type=int, default=None,
        help="trials per row, the first one cold (default 30, quick 6)",
    )
    parser.add_argument(
        "--main-ms", type=float, default=None,
        help="top-level import time of the 'heavy main' script (default 100 ms; 0: no "
             "table; quick: 0)",
    )
    return parser


def run(args: argparse.Namespace) -> bc.Report:
    """Measure every row (progress on stderr); return the report, not yet printed."""
    trials = bc.pick(args, "trials", 30, 6)
    if trials < 2:
        raise SystemExit("--trials must be >= 2 (the first trial is reported apart)")
    if args.main_ms is None:
        args.main_ms = 0.0 if args.quick else 100.0
    import workstream

    has_worker = hasattr(workstream, "Worker")
    cfgs = configs(args.quick)
    report = bc.Report(
        "startup", args,
        {"trials": trials, "configs": [list(c) for c in cfgs], "main_ms": args.main_ms,
         "worker": has_worker},
    )

    specs = [(lib, m, mode) for m, mode in cfgs for lib in ("workstream", "mp")]
    worker_specs = [("worker", m, mode) for m in WORKER_METHODS for mode in WORKER_MODES
                    if (m, mode) in cfgs]
    if has_worker:
        specs += worker_specs
    rows = _run_rows(specs, trials)
    for lib, m, mode in ([] if has_worker else worker_specs):
        rows[(lib, m, mode)] = {"row": _label(lib, m, mode), "skipped": NO_WORKER,
                                "ref": _label("mp", m, mode)}
    refs = []
    for name, code, mode in (("ref: python -c pass", "pass", "none"),
                             ("ref: python -c 'import numpy'", "import numpy", "child")):
        # compared with a spawned mp.Process: a fresh interpreter too, plus multiprocessing
        row = _summary(name, _subprocess_ref(code, trials))
        spawned = rows.get(("mp", "spawn", mode))
        row["ref"] = spawned["row"] if spawned else name
        row["x_mp"] = bc.ratio(row["med_ms"], spawned["med_ms"]) if spawned else 1.0
        refs.append(row)
        bc.log(f"  {name:40s} med {refs[-1]['med_ms']:8.1f} ms")
    lib_order = ("workstream", "worker", "mp")
    order = sorted(rows, key=lambda k: (MODES.index(k[2]), METHODS.index(k[1]),
                                        lib_order.index(k[0])))
    report.add_table(
        f"start -> first item received, bare main module, {trials} trials per row "
        "(first = the cold one; med/p95/min over the rest)",
        COLS, [*(rows[k] for k in order), *refs],
    )

    heavy: dict[tuple[str, str, str], dict[str, Any]] = {}
    if args.main_ms > 0:
        with tempfile.TemporaryDirectory(prefix="ws-startup-") as tmp:
            script = os.path.join(tmp, "app_main.py")
            with open(script, "w", encoding="utf-8") as f:
                f.write(_HEAVY_MAIN.format(seconds=args.main_ms / 1e3, root=ROOT))
            specs = [(lib, m, "none") for m in METHODS for lib in ("workstream", "mp")]
            heavy = _run_rows(specs, trials, script)
        order = sorted(heavy, key=lambda k: (METHODS.index(k[1]), lib_order.index(k[0])))
        report.add_table(
            f"the same, numpy=none, from a main script whose top level takes "
            f"{args.main_ms:g} ms (re-imported by spawn and, on 3.11, forkserver children)",
            COLS, [heavy[k] for k in order],
        )

    decision = []
    for label, table, mode in (
        *((f"bare main, numpy={mode}", rows, mode) for mode in MODES),
        (f"main +{args.main_ms:g} ms, numpy=none", heavy, "none"),
    ):
        fs = table.get(("workstream", "forkserver", mode))
        sp = table.get(("workstream", "spawn", mode))
        fk = table.get(("workstream", "fork", mode))
        warm = table.get(("worker", "forkserver", mode))
        if fs is None:
            continue
        decision.append({
            "case": label,
            "ref": label,
            "warm_med": warm.get("med_ms") if warm else None,
            "fs_first": fs["first_ms"], "fs_med": fs["med_ms"],
            "sp_first": sp["first_ms"] if sp else None, "sp_med": sp["med_ms"] if sp else None,
            "fk_med": fk["med_ms"] if fk else None,
            "x_spawn_over_fs": bc.ratio(sp["med_ms"], fs["med_ms"]) if sp else None,
        })
    report.add_table(
        "the default start method (workstream rows): forkserver vs spawn (fork for scale)",
        [bc.Column("case", "case"),
         bc.Column("fs_first", "forkserver first ms", ".1f"),
         bc.Column("fs_med", "forkserver med ms", ".1f"),
         bc.Column("sp_first", "spawn first ms", ".1f"),
         bc.Column("sp_med", "spawn med ms", ".1f"),
         bc.Column("fk_med", "fork med ms", ".1f"),
         bc.Column("warm_med", "warm Worker med ms", ".2f"),
         bc.Column("x_spawn_over_fs", "spawn/forkserver med", ".2f")],
        decision,
    )
    for m in ("forkserver", "spawn"):
        ours, ref = rows.get(("workstream", m, "none")), rows.get(("mp", m, "none"))
        if ours and ref and not ours.get("skipped"):
            report.headline(f"start() -> first item, {m}, median", ours["med_ms"], "ms",
                            f"multiprocessing.Process ({m}) + Pipe", ref["med_ms"])
    warm, cold = rows.get(("worker", "forkserver", "none")), rows.get(("workstream",
                                                                       "forkserver", "none"))
    if warm and cold and not warm.get("skipped"):
        report.headline("Worker.start() -> first item, warm Worker, median", warm["med_ms"],
                        "ms", "a cold start() (forkserver)", cold["med_ms"])
    report.note("call ms: how long start() / Process.start() itself blocked the caller "
                "(median of the warm trials)")
    report.note("x mp: ratio of the medians to mp.Process+Pipe with the same method and mode "
                "(the python -c rows: to the spawned one); "
                "x forkserver: to the same library's forkserver row")
    if not has_worker:
        report.note(f"warm Worker rows: {NO_WORKER}")
    report.note("x ws cold: ratio of the medians to plain workstream.start() with the same "
                "method and mode (the warm Worker's gain)")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    report = run(build_parser().parse_args(argv))
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
