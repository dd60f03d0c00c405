"""The cancellation check on the hot path: ns per yield with and without workstream's check.

Every yield of a generator run by workstream is a cancellation point: the child's driver
(``workstream._child._job._drive``) sends the item, then reads one byte of the control
block (an mmap index). User code can add its own checks: ``check_cancelled()`` (raises)
or ``cancelled()`` (a bool). This script measures what each costs per iteration.

In this process (the driver is called with a stand-in context: an anonymous mmap as the
control block, a sender that drops the items, so only the driver and the check remain):

* bare generator loop: ``for item in gen`` over ``for i in range(n): yield i`` (reference);
* the same generator calling ``check_cancelled()`` / testing ``cancelled()`` per item
  (with the stand-in context installed, as in a worker);
* the same generator driven by workstream's driver (its check included, sending dropped);
* the driver's check alone: ``if ctl[0]`` over an mmap, against an empty loop.

In a real worker (``workstream.start``, the real control block; timed inside the child
and reported back as one item): an empty ``for`` loop (reference) and loops calling
``check_cancelled()`` / testing ``cancelled()``.

Figures: best of N runs of ``n`` iterations, interleaved; ``+ns`` = ns per iteration over
the row's reference; ``x ref`` = the ratio.
"""

from __future__ import annotations

import argparse
import math
import mmap
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/cancel_check.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import workstream
from bench import _common as bc
from bench import _workers as w

BARE = "bare generator loop: for item in gen"
EMPTY = "empty loop: for i in range(n): pass"
WORKER_EMPTY = "in a worker: empty for loop"


class _DropSender:
    """Stands in for the child's Sender: drops every item."""

    def send_item(self, item: object) -> None:
        pass


def _consume(gen: Iterator[Any]) -> None:
    for _ in gen:
        pass


def _empty(n: int) -> None:
    for _ in range(n):
        pass


def _mmap_check(ctl: Any, n: int) -> None:
    for _ in range(n):
        if ctl[0]:
            break


class InProcess:
    """The in-process rows, with a stand-in worker context installed while they run."""

    def __init__(self) -> None:
        from workstream._child import _context, _job  # internal: may move; the rows then skip

        self.context = _context
        self.drive = _job._drive
        self.ctl = mmap.mmap(-1, mmap.PAGESIZE)
        self.ctx = _context._Context(self.ctl, _DropSender())  # type: ignore[arg-type]

    def close(self) -> None:
        self.ctl.close()

    def timed(self, fn: Callable[[int], None], n: int) -> float:
        context = self.context
        saved = context._current
        context._current = self.ctx
        try:
            t0 = bc.perf()
            fn(n)
            return bc.perf() - t0
        finally:
            context._current = saved

    def rows(self) -> dict[str, tuple[str, Callable[[int], None]]]:
        """name -> (reference name, the timed function of n)."""
        drive, ctx, ctl = self.drive, self.ctx, self.ctl
        return {
            BARE: (BARE, lambda n: _consume(w.gen_plain(n))),
            "gen + check_cancelled() per item": (
                BARE, lambda n: _consume(w.gen_check_cancelled(n))),
            "gen + cancelled() per item": (BARE, lambda n: _consume(w.gen_cancelled(n))),
            "workstream's driver (its check included; send dropped)": (
                BARE, lambda n: drive(ctx, w.gen_plain(n))),
            EMPTY: (EMPTY, _empty),
            "the driver's check alone: if ctl[0] (mmap byte)": (
                EMPTY, lambda n: _mmap_check(ctl, n)),
        }


def in_worker(method: str, n: int, repeats: int) -> dict[str, float]:
    job = workstream.start(w.ws_check_cost, n, repeats, start_method=method)
    with job:
        items = list(job)
        outcome = job.wait(60)
    if not isinstance(outcome, workstream.Completed) or len(items) != 1:
        raise RuntimeError(f"outcome {outcome!r}, {len(items)} items")
    result: dict[str, float] = items[0]
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = bc.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None,
                        help="iterations per run (default 2,000,000; quick 300,000)")
    return parser


def run(args: argparse.Namespace) -> bc.Report:
    """Measure every row (progress on stderr); return the report, not yet printed."""
    n = bc.pick(args, "n", 2_000_000, 300_000)
    repeats = bc.pick(args, "repeats", 7, 3)
    method = args.start_method
    report = bc.Report("cancel_check", args,
                       {"n": n, "repeats": repeats, "start_method": method})
    rows: list[dict[str, Any]] = []

    try:
        local = InProcess()
    except Exception as exc:  # the internal driver moved: say so, keep the worker rows
        bc.log(f"  in-process rows FAILED:\n{traceback.format_exc()}")
        local = None
        rows.append({"row": "in-process rows", "ref": "in-process rows",
                     "skipped": f"the child's driver is not reachable in this build ({exc!r})"})
    if local is not None:
        try:
            spec = local.rows()
            best = {name: math.inf for name in spec}
            for rep in range(repeats):
                for name, (_ref, fn) in spec.items():
                    best[name] = min(best[name], local.timed(fn, n) / n * 1e9)
                bc.log(f"  rep {rep + 1}/{repeats} in-process: " + ", ".join(
                    f"{v:.1f}" for v in best.values()) + " ns")
        finally:
            local.close()
        for name, (ref, _fn) in spec.items():
            rows.append({"row": name, "where": "this process", "ns_iter": best[name],
                         "ns_over_ref": best[name] - best[ref],
                         "x_ref": bc.ratio(best[name], best[ref]), "ref": ref})

    try:
        got = in_worker(method, n, repeats)
        bc.log(f"  in a worker: {got}")
        for key, name in (("empty", WORKER_EMPTY),
                          ("check_cancelled", "in a worker: check_cancelled() per iteration"),
                          ("cancelled", "in a worker: cancelled() per iteration")):
            rows.append({"row": name, "where": "worker", "ns_iter": got[key],
                         "ns_over_ref": got[key] - got["empty"],
                         "x_ref": bc.ratio(got[key], got["empty"]), "ref": WORKER_EMPTY})
    except Exception:
        bc.log(f"  in-worker rows FAILED:\n{traceback.format_exc()}")

    cols = [
        bc.Column("row", "row"),
        bc.Column("ns_iter", "ns/iter", ".1f"),
        bc.Column("ns_over_ref", "+ns over ref", ".1f"),
        bc.Column("x_ref", "x ref", ".2f"),
    ]
    report.add_table(
        f"ns per iteration, n={n:,}, best of {repeats}; ref: the bare generator loop, the "
        "empty loop (for the check alone), the worker's empty loop (for the worker rows)",
        cols, rows,
    )
    driver = next((r for r in rows if r["row"].startswith("workstream's driver")), None)
    check = next((r for r in rows if r["row"].startswith("the driver's check")), None)
    if driver and check:
        report.headline("the cancellation check per yield", check["ns_iter"], "ns",
                        "an empty loop", check["ns_iter"] - check["ns_over_ref"])
        report.note(f"workstream's cancellation check costs {check['ns_over_ref']:.1f} ns per "
                    f"yield; the whole driver adds {driver['ns_over_ref']:.1f} ns per yield "
                    f"over a bare loop (without sending; a send costs ~1 us, see throughput)")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    report = run(build_parser().parse_args(argv))
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
