"""Pool: ``pool.map`` over tiny tasks, cancel in a busy pool, submit -> start overhead.

Three tables, each with references measured in the same run:

* ``map``: ``workstream.Pool.map`` over ``--tasks`` tiny tasks (10,000; ``x + 1``), in
  order, ``ordered=False`` and with ``chunksize=10`` / ``100`` (a job per chunk), vs
  ``concurrent.futures.ProcessPoolExecutor.map``
  (chunksize 1) and, if installed, pebble's ``ProcessPool.map`` and loky's executor
  (chunksize 1); tasks per second, same number of workers (``--workers``, default 2).
* ``cancel``: ``job.cancel()`` -> outcome known, for a job that yields in a loop (a
  cooperative stop), in a pool whose other workers stream at the same time (an item
  per millisecond each), vs the same job on a lone warm ``workstream.Worker``; p50 / p95
  over ``--trials``.
* ``start``: ``start()`` -> first item, for a job that yields at once, on an idle warm
  worker: ``Pool.start`` vs ``Worker.start``; p50 / p95.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import multiprocessing as mp
import os
import sys
import threading
import time
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/pool.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import _common as bc
from bench import _pool_workers as w

CHUNKSIZES = (10, 100)  # Pool.map(chunksize=k) rows (the references stay at chunksize 1)


def _rate_row(name: str, times: list[float], tasks: int, stat: str) -> dict[str, Any]:
    best = bc.combine(times, stat, higher_is_better=False)
    return {"row": name, "tasks": tasks, "seconds": best, "per_s": tasks / best,
            "us_per_task": best / tasks * 1e6}


def map_rows(tasks: int, workers: int, repeats: int, stat: str) -> list[dict[str, Any]]:
    import workstream

    rows = []
    expected = [x + 1 for x in range(tasks)]
    with workstream.Pool(workers) as pool:
        list(pool.map(w.tiny, range(4 * workers)))  # every process warm
        for ordered in (True, False):
            times = []
            for _ in range(repeats):
                t0 = bc.perf()
                got = list(pool.map(w.tiny, range(tasks), ordered=ordered))
                times.append(bc.perf() - t0)
                if (got if ordered else sorted(got)) != expected:
                    raise RuntimeError("pool.map returned wrong results")
            rows.append(_rate_row(f"Pool.map{'' if ordered else ' ordered=False'}",
                                  times, tasks, stat))
        for k in CHUNKSIZES:
            times = []
            for _ in range(repeats):
                t0 = bc.perf()
                got = list(pool.map(w.tiny, range(tasks), chunksize=k))
                times.append(bc.perf() - t0)
                if got != expected:
                    raise RuntimeError("pool.map(chunksize=...) returned wrong results")
            rows.append(_rate_row(f"Pool.map chunksize={k}", times, tasks, stat))
    ctx = mp.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        list(ex.map(w.tiny, range(4 * workers)))
        times = []
        for _ in range(repeats):
            t0 = bc.perf()
            got = list(ex.map(w.tiny, range(tasks), chunksize=1))
            times.append(bc.perf() - t0)
        rows.append(_rate_row("ref: ProcessPoolExecutor.map chunksize=1", times, tasks, stat))
    skipped = {}
    why = bc.missing("pebble")
    if why is not None:
        skipped["ref: pebble ProcessPool.map chunksize=1"] = why
    else:
        pebble: Any = importlib.import_module("pebble")
        with pebble.ProcessPool(max_workers=workers, context=ctx) as pp:
            list(pp.map(w.tiny, range(4 * workers)).result())
            times = []
            for _ in range(repeats):
                t0 = bc.perf()
                list(pp.map(w.tiny, range(tasks), chunksize=1).result())
                times.append(bc.perf() - t0)
        rows.append(_rate_row("ref: pebble ProcessPool.map chunksize=1", times, tasks, stat))
    why = bc.missing("loky")
    if why is not None:
        skipped["ref: loky executor.map chunksize=1"] = why
    else:
        loky: Any = importlib.import_module("loky")
        ex2 = loky.get_reusable_executor(max_workers=workers)
        list(ex2.map(w.tiny, range(4 * workers)))
        times = []
        for _ in range(repeats):
            t0 = bc.perf()
            list(ex2.map(w.tiny, range(tasks), chunksize=1))
            times.append(bc.perf() - t0)
        ex2.shutdown(wait=True)
        rows.append(_rate_row("ref: loky executor.map chunksize=1", times, tasks, stat))
    refs = [r for r in rows if r["row"].startswith("ref:")]
    best = max(refs, key=lambda r: r["per_s"])
    for row in rows:
        row["x_best_ref"] = bc.ratio(row["per_s"], best["per_s"])
        row["ref"] = best["row"]
    rows += [{"row": name, "skipped": why, "ref": best["row"]} for name, why in skipped.items()]
    return rows


def _cancel_times(job_source: Any, trials: int) -> list[float]:
    times = []
    for _ in range(trials):
        job = job_source()
        next(iter(job))  # it runs: the cancel lands in its loop
        t0 = bc.perf()
        job.cancel()
        for _item in job:
            pass
        outcome = job.wait(60)
        times.append(bc.perf() - t0)
        if getattr(outcome, "rung", None) != "cooperative":
            raise RuntimeError(f"cancel: {outcome!r}")
    return times


def _lat_row(name: str, times: list[float]) -> dict[str, Any]:
    return {"row": name, "p50_ms": bc.median(times) * 1e3, "p95_ms": bc.pct(times, 95) * 1e3,
            "n": len(times)}


def cancel_rows(trials: int, workers: int) -> list[dict[str, Any]]:
    import workstream

    rows = []
    with workstream.Pool(workers) as pool:
        busy = [pool.start(w.paced) for _ in range(workers - 1)]
        for job in busy:
            next(iter(job))
        stop = False

        def drain() -> None:  # keep the busy jobs streaming (their buffers never fill)
            while not stop:
                for job in busy:
                    job.drain()
                if not busy:
                    return
                time.sleep(0.005)  # ok: sleep (a reader's pace)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        rows.append(_lat_row(f"Pool ({workers - 1} other jobs streaming, 1 item/ms)",
                             _cancel_times(lambda: pool.start(w.until_cancelled), trials)))
        stop = True
        reader.join()
    with workstream.Worker() as worker:
        worker.wait_ready(60)
        rows.append(_lat_row("lone Worker", _cancel_times(
            lambda: worker.start(w.until_cancelled), trials)))
    lone = rows[-1]
    for row in rows:
        row["x_lone"] = bc.ratio(row["p50_ms"], lone["p50_ms"])
        row["ref"] = lone["row"]
    return rows


def _start_times(source: Any, trials: int) -> list[float]:
    times = []
    for _ in range(trials):
        t0 = bc.perf()
        job = source()
        next(iter(job))
        times.append(bc.perf() - t0)
        job.wait(60)
    return times


def start_rows(trials: int) -> list[dict[str, Any]]:
    import workstream

    rows = []
    with workstream.Pool(1) as pool:
        pool.start(w.first).wait(60)
        rows.append(_lat_row("Pool.start (idle warm worker)",
                             _start_times(lambda: pool.start(w.first), trials)))
    with workstream.Worker() as worker:
        worker.start(w.first).wait(60)
        rows.append(_lat_row("Worker.start (idle warm worker)",
                             _start_times(lambda: worker.start(w.first), trials)))
    for row in rows:
        row["x_worker"] = bc.ratio(row["p50_ms"], rows[-1]["p50_ms"])
        row["ref"] = rows[-1]["row"]
    return rows


MAP_COLS = [
    bc.Column("row", "row"),
    bc.Column("tasks", "tasks"),
    bc.Column("per_s", "tasks/s", ".0f"),
    bc.Column("us_per_task", "us/task", ".1f"),
    bc.Column("x_best_ref", "/ best ref", ".2f"),
    bc.Column("skipped", "skipped"),
]
LAT_COLS = [
    bc.Column("row", "row"),
    bc.Column("p50_ms", "p50 ms", ".3f"),
    bc.Column("p95_ms", "p95 ms", ".3f"),
    bc.Column("n", "n"),
]


def build_parser() -> Any:
    parser = bc.make_parser(__doc__.splitlines()[0], start_method=False)
    parser.add_argument("--tasks", type=int, default=None,
                        help="tasks per map run (default 10,000; quick 2,000)")
    parser.add_argument("--trials", type=int, default=None,
                        help="trials of the cancel and start rows (default 100; quick 20)")
    parser.add_argument("--workers", type=int, default=2, help="workers of every pool")
    return parser


def run(args: Any) -> bc.Report:
    tasks = bc.pick(args, "tasks", 10_000, 2_000)
    trials = bc.pick(args, "trials", 100, 20)
    repeats = bc.pick(args, "repeats", 3, 1)
    workers = max(2, args.workers)
    report = bc.Report("pool", args, {"tasks": tasks, "trials": trials, "workers": workers,
                                      "repeats": repeats})
    maps = map_rows(tasks, workers, repeats, args.stat)
    report.add_table(f"map over {tasks} tiny tasks, {workers} workers, "
                     f"{args.stat} of {repeats}", MAP_COLS, maps)
    by_row = {r["row"]: r for r in maps if "per_s" in r}
    ppe = by_row.get("ref: ProcessPoolExecutor.map chunksize=1")
    for name in ("Pool.map", "Pool.map chunksize=10"):
        if ppe is not None and name in by_row:
            report.headline(f"{name} over tiny tasks", by_row[name]["per_s"], "tasks/s",
                            "ProcessPoolExecutor.map chunksize=1", ppe["per_s"])
    cancel = cancel_rows(trials, workers)
    report.add_table("cancel -> outcome known, cooperative (a job yielding in a loop)",
                     [*LAT_COLS, bc.Column("x_lone", "/ lone Worker", ".2f")], cancel)
    if len(cancel) >= 2:
        report.headline("cancel of one job in a busy Pool, p50", cancel[0]["p50_ms"], "ms",
                        "a lone Worker's", cancel[-1]["p50_ms"])
    report.add_table("start() -> first item on an idle warm worker",
                     [*LAT_COLS, bc.Column("x_worker", "/ Worker", ".2f")], start_rows(trials))
    report.note("/ best ref: tasks/s over the fastest reference's (>= 1: as fast or faster)")
    report.note("every pool and executor uses the forkserver start method")
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run(args).finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
