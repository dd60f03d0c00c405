"""What a progress report costs: ns per ``workstream.progress()`` call in a flood.

In a real worker (``workstream.start``, the real control block; timed inside the child
and reported back as one item), best of N runs of ``n`` iterations each, interleaved:

* an empty ``for`` loop (the reference);
* ``workstream.progress(i, n)`` every iteration: most calls only keep their values (a
  report is written at most every 20 ms, the rest by the publisher thread);
* ``workstream.progress(i, n, loss=0.5, phase="train")``: with fields (checked per call);
* ``workstream.cancelled()`` every iteration, for scale (one mmap byte read).

In this process, while a job reports: ``job.progress`` read when nothing new came (the
GUI bridges read it every frame).

``+ns`` = ns per call over the empty loop. The issue's bound: < 1 us per call.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/progress.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import workstream
from bench import _common as bc

EMPTY = "in a worker: empty for loop"


def ws_progress_cost(n: int, repeats: int) -> Iterator[dict[str, float]]:
    """In a real worker: best-of-``repeats`` ns per iteration of each loop; yields once."""
    progress, cancelled = workstream.progress, workstream.cancelled
    clock = time.perf_counter_ns
    best = {"empty": math.inf, "progress": math.inf, "fields": math.inf, "cancelled": math.inf}
    for _ in range(repeats):
        t0 = clock()
        for _i in range(n):
            pass
        t1 = clock()
        for i in range(n):
            progress(i, n)
        t2 = clock()
        for i in range(n):
            progress(i, n, loss=0.5, phase="train")
        t3 = clock()
        for _i in range(n):
            if cancelled():
                break
        t4 = clock()
        for key, ns in (("empty", t1 - t0), ("progress", t2 - t1), ("fields", t3 - t2),
                        ("cancelled", t4 - t3)):
            best[key] = min(best[key], ns / n)
    yield best


def ws_report_then_wait(path: str) -> Iterator[str]:
    """Report once, then wait (simulated work) until ``path`` exists."""
    workstream.progress(1, 2)
    yield "reported"
    while not os.path.exists(path):
        time.sleep(0.005)


def parent_read_cost(method: str, n: int, repeats: int) -> float:
    """ns per ``job.progress`` read with nothing new (best of ``repeats``)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        stop = os.path.join(tmp, "stop")
        job = workstream.start(ws_report_then_wait, stop, start_method=method)
        try:
            assert next(job) == "reported"
            deadline = time.monotonic() + 10
            while job.progress is None and time.monotonic() < deadline:
                time.sleep(0.005)
            best = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter_ns()
                for _i in range(n):
                    job.progress  # noqa: B018
                best = min(best, (time.perf_counter_ns() - t0) / n)
        finally:
            open(stop, "w").close()
            job.wait(30)
    return best


def build_parser() -> argparse.ArgumentParser:
    parser = bc.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None,
                        help="calls per run (default 1,000,000; quick 200,000)")
    return parser


def run(args: argparse.Namespace) -> bc.Report:
    """Measure every row (progress on stderr); return the report, not yet printed."""
    n = bc.pick(args, "n", 1_000_000, 200_000)
    repeats = bc.pick(args, "repeats", 5, 3)
    method = args.start_method
    report = bc.Report("progress", args, {"n": n, "repeats": repeats, "start_method": method})
    rows: list[dict[str, Any]] = []
    try:
        job = workstream.start(ws_progress_cost, n, repeats, start_method=method)
        with job:
            items = list(job)
            outcome = job.wait(120)
        if not isinstance(outcome, workstream.Completed) or len(items) != 1:
            raise RuntimeError(f"outcome {outcome!r}, {len(items)} items")
        got: dict[str, float] = items[0]
        bc.log(f"  in a worker: {got}")
        for key, name in (
            ("empty", EMPTY),
            ("progress", "in a worker: progress(i, n) per iteration"),
            ("fields", "in a worker: progress(i, n, loss=0.5, phase='train')"),
            ("cancelled", "in a worker: cancelled() per iteration (for scale)"),
        ):
            rows.append({"row": name, "where": "worker", "ns_iter": got[key],
                         "ns_over_ref": got[key] - got["empty"],
                         "x_ref": bc.ratio(got[key], got["empty"]), "ref": EMPTY})
    except Exception:
        bc.log(f"  in-worker rows FAILED:\n{traceback.format_exc()}")
    try:
        read = parent_read_cost(method, max(n // 10, 1000), repeats)
        rows.append({"row": "in the parent: job.progress, nothing new", "where": "parent",
                     "ns_iter": read, "ns_over_ref": math.nan, "x_ref": math.nan,
                     "ref": "in the parent: job.progress, nothing new"})
    except Exception:
        bc.log(f"  parent row FAILED:\n{traceback.format_exc()}")
    cols = [
        bc.Column("row", "row"),
        bc.Column("ns_iter", "ns/iter", ".1f"),
        bc.Column("ns_over_ref", "+ns over ref", ".1f"),
        bc.Column("x_ref", "x ref", ".2f"),
    ]
    report.add_table(
        f"ns per call, n={n:,}, best of {repeats}; ref: the worker's empty loop", cols, rows,
    )
    plain = next((r for r in rows if r["row"].startswith("in a worker: progress(i, n) per")),
                 None)
    if plain is not None:
        report.headline("workstream.progress(i, n) per call in a flood", plain["ns_iter"],
                        "ns", "the worker's empty loop", next(
                            r["ns_iter"] for r in rows if r["row"] == EMPTY))
        report.note(f"workstream.progress(i, n) costs {plain['ns_over_ref']:.0f} ns per call "
                    "in a flood over the empty loop")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    report = run(build_parser().parse_args(argv))
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
