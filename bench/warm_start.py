"""Warm start: a job on a warm ``workstream.Worker`` vs a cold ``workstream.start()``.

What a GUI's Start button pays before the first item arrives. Rows, per start method
(forkserver, workstream's default on Linux, and spawn), each over ``--trials`` trials:

* ``Worker warm``: ``worker.start(fn)`` on a process whose initializer already ran;
* ``start() cold``: ``workstream.start(fn)``, a new process per job (the first trial,
  which also starts the fork server / guard, is dropped);
* references measured in the same run: a warm ``multiprocessing.Process`` answering
  requests on a ``multiprocessing.Pipe`` (the floor of any warm round trip), and a warm
  ``concurrent.futures.ProcessPoolExecutor`` (``submit().result()``).

``fn`` yields one item and returns; with ``--heavy`` it first runs ``import numpy``
(the initializer did it once in the warm rows; a cold child pays it every time).
Columns: ``first`` = start() -> first item received; ``done`` = start() -> outcome known
(warm: the final frame; cold: the child reaped); ``call`` = how long start() blocked.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing as mp
import os
import sys
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/warm_start.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import _common as bc
from bench import _warm_workers as w

METHODS = ("forkserver", "spawn")


def _row(name: str, method: str, first: list[float], done: list[float],
         call: list[float] | None = None) -> dict[str, Any]:
    return {
        "row": name, "method": method,
        "first_med_ms": bc.median(first) * 1e3,
        "first_p95_ms": bc.pct(first, 95) * 1e3,
        "first_min_ms": min(first) * 1e3 if first else None,
        "done_med_ms": bc.median(done) * 1e3,
        "call_med_ms": bc.median(call) * 1e3 if call else None,
        "n": len(first),
    }


def run_warm(method: str, trials: int, heavy: bool) -> dict[str, Any]:
    import workstream

    first, done, call = [], [], []
    with workstream.Worker(w.load, (heavy,), start_method=method) as worker:
        worker.wait_ready(120)
        worker.start(w.first, heavy).wait(60)  # one job through before the clock runs
        for _ in range(trials):
            t0 = bc.perf()
            job = worker.start(w.first, heavy)
            t1 = bc.perf()
            item = next(iter(job))
            t2 = bc.perf()
            outcome = job.wait(60)
            t3 = bc.perf()
            if item != 1 or not isinstance(outcome, workstream.Completed) or not outcome.kept_warm:
                raise RuntimeError(f"warm job: item {item!r}, outcome {outcome!r}")
            call.append(t1 - t0)
            first.append(t2 - t0)
            done.append(t3 - t0)
        if worker.restarts:
            raise RuntimeError(f"the warm worker restarted {worker.restarts} times")
    return _row("Worker warm", method, first, done, call)


def run_cold(method: str, trials: int, heavy: bool) -> dict[str, Any]:
    import workstream

    first, done, call = [], [], []
    for trial in range(trials + 1):
        t0 = bc.perf()
        job = workstream.start(w.first, heavy, start_method=method)
        t1 = bc.perf()
        item = next(iter(job))
        t2 = bc.perf()
        outcome = job.wait(60)
        t3 = bc.perf()
        if item != 1 or not isinstance(outcome, workstream.Completed):
            raise RuntimeError(f"cold job: item {item!r}, outcome {outcome!r}")
        if trial:  # the first one starts the fork server and the guard: not a job's cost
            call.append(t1 - t0)
            first.append(t2 - t0)
            done.append(t3 - t0)
    return _row("start() cold", method, first, done, call)


def run_pipe(method: str, trials: int, heavy: bool) -> dict[str, Any]:
    ctx = mp.get_context(method)
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=w.pipe_server, args=(child,))
    proc.start()
    child.close()
    times = []
    try:
        parent.send(heavy)
        parent.recv()  # warm: the import (if any) is done
        for _ in range(trials):
            t0 = bc.perf()
            parent.send(heavy)
            parent.recv()
            times.append(bc.perf() - t0)
    finally:
        parent.send(None)
        proc.join(30)
        parent.close()
    return _row("ref: warm mp.Process + Pipe round trip", method, times, times)


def run_pool(method: str, trials: int, heavy: bool) -> dict[str, Any]:
    ctx = mp.get_context(method)
    times = []
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        pool.submit(w.echo, heavy).result(120)
        for _ in range(trials):
            t0 = bc.perf()
            pool.submit(w.echo, heavy).result(60)
            times.append(bc.perf() - t0)
    return _row("ref: warm ProcessPoolExecutor submit().result()", method, times, times)


COLS = [
    bc.Column("row", "row"),
    bc.Column("method", "method"),
    bc.Column("first_med_ms", "first med ms", ".3f"),
    bc.Column("first_p95_ms", "first p95 ms", ".3f"),
    bc.Column("first_min_ms", "first min ms", ".3f"),
    bc.Column("done_med_ms", "done med ms", ".3f"),
    bc.Column("call_med_ms", "call med ms", ".3f"),
    bc.Column("x_warm", "first / warm", ".1f"),
]


def main(argv: list[str] | None = None) -> int:
    parser = bc.make_parser(__doc__.splitlines()[0], start_method=False)
    parser.add_argument("--trials", type=int, default=None,
                        help="trials per row (default 200 warm / 30 cold; quick 50 / 8)")
    parser.add_argument("--heavy", action="store_true",
                        help="the job imports numpy (the warm initializer did it once)")
    args = parser.parse_args(argv)
    warm_n = bc.pick(args, "trials", 200, 50)
    cold_n = bc.pick(args, "trials", 30, 8)
    report = bc.Report("warm_start", args, {
        "warm_trials": warm_n, "cold_trials": cold_n, "heavy": args.heavy,
        "methods": list(METHODS),
    })
    rows = []
    for method in METHODS:
        for fn, n in ((run_warm, warm_n), (run_cold, cold_n), (run_pipe, warm_n),
                      (run_pool, warm_n)):
            row = fn(method, n, args.heavy)
            bc.log(f"  {row['row']:48s} {method:10s} first med {row['first_med_ms']:8.3f} ms")
            rows.append(row)
        warm = rows[-4]["first_med_ms"]
        for row in rows[-4:]:
            row["x_warm"] = bc.ratio(row["first_med_ms"], warm)
    report.add_table(
        f"start -> first item ({'job imports numpy' if args.heavy else 'bare job'}); "
        f"{warm_n} warm / {cold_n} cold trials per row, medians",
        COLS, rows,
    )
    report.note("first / warm: the row's median first-item time over the Worker's, same "
                "start method (cold start / warm start = how much a warm Worker saves)")
    report.note("references answer with a return value; 'first' and 'done' are the same "
                "round trip for them")
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
