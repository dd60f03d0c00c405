"""asyncio: what ``async for`` costs against ``for``, and how responsive the loop stays.

Rows (each repeat interleaves them, all in this process):

* throughput, 1,000,000 small ints: ``for item in job`` (the reference) and
  ``async for item in job``, first while the child streams (live), then over items the
  job has already buffered (the pure cost of the iterator);
* loop responsiveness: a ticker task (``asyncio.sleep(0.001)`` in a loop) records the
  largest gap between its ticks while ``async for`` drains 500,000 buffered ints with a
  body that never awaits; with the iterator's hand-over every ``_SLICE`` (2 ms) and, as
  the reference, with the hand-over switched off (the gap is then the whole drain).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/aio.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import workstream
from bench import _common as bc
from bench import _workers as w
from workstream import _aio


def _start(n: int, method: str, buffered: bool) -> workstream.Job[Any, Any]:
    unbounded: dict[str, Any] = (
        {"max_buffered_items": None, "max_buffered_bytes": None} if buffered else {}
    )
    return workstream.start(w.ws_stream, "int", n, start_method=method, **unbounded)


def sync_rate(n: int, method: str, buffered: bool) -> float:
    job = _start(n, method, buffered)
    it = iter(job)
    if next(it) != w.READY:
        raise RuntimeError("no ready marker")
    if buffered:
        job.wait(60)
    t0 = bc.perf()
    count = sum(1 for _ in it)
    dt = bc.perf() - t0
    job.wait(60)
    if count != n:
        raise RuntimeError(f"{count} of {n} items")
    return n / dt


async def async_rate(n: int, method: str, buffered: bool) -> float:
    job = _start(n, method, buffered)
    it = job.aiter()
    if await anext(it) != w.READY:
        raise RuntimeError("no ready marker")
    if buffered:
        await job.wait_async(60)
    t0 = bc.perf()
    count = 0
    async for _ in it:
        count += 1
    dt = bc.perf() - t0
    await job.wait_async(60)
    if count != n:
        raise RuntimeError(f"{count} of {n} items")
    return n / dt


async def max_tick_gap(n: int, method: str, slice_s: float) -> tuple[float, float]:
    """(largest ticker gap, drain time) in seconds, draining ``n`` buffered items."""
    saved = _aio._SLICE
    _aio._SLICE = slice_s
    try:
        job = _start(n, method, buffered=True)
        await job.wait_async(60)
        ticks: list[float] = []
        stop = False

        async def ticker() -> None:
            while not stop:
                ticks.append(bc.perf())
                await asyncio.sleep(0.001)

        task = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.01)
        t0 = bc.perf()
        async for _ in job:
            pass
        drain = bc.perf() - t0
        await asyncio.sleep(0.01)
        stop = True
        await task
        return max(b - a for a, b in itertools.pairwise(ticks)), drain
    finally:
        _aio._SLICE = saved


def main() -> None:
    parser = bc.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="items per throughput run")
    args = parser.parse_args()
    repeats = bc.pick(args, "repeats", 5, 2)
    n = bc.pick(args, "n", 1_000_000, 300_000)
    n_gap = n // 2
    method = args.start_method
    report = bc.Report("bench/aio.py", args, {"n": n, "n_gap": n_gap, "repeats": repeats})
    raw: dict[str, list[float]] = {k: [] for k in ("for_live", "afor_live", "for_buf", "afor_buf")}
    gaps: dict[str, list[float]] = {"slice": [], "none": []}
    drains: dict[str, list[float]] = {"slice": [], "none": []}
    for r in range(repeats):
        bc.log(f"repeat {r + 1}/{repeats}")
        raw["for_live"].append(sync_rate(n, method, False))
        raw["afor_live"].append(asyncio.run(async_rate(n, method, False)))
        raw["for_buf"].append(sync_rate(n, method, True))
        raw["afor_buf"].append(asyncio.run(async_rate(n, method, True)))
        for key, slice_s in (("slice", _aio._SLICE), ("none", 1e9)):
            gap, drain = asyncio.run(max_tick_gap(n_gap, method, slice_s))
            gaps[key].append(gap)
            drains[key].append(drain)

    def rate(key: str) -> float:
        return bc.combine(raw[key], args.stat, higher_is_better=True)

    rows = []
    for mode, ref, row in (("live", "for_live", "afor_live"), ("buffered", "for_buf", "afor_buf")):
        rows.append({"row": f"for item in job ({mode})", "rate": rate(ref) / 1e6, "ratio": 1.0})
        rows.append({"row": f"async for item in job ({mode})", "rate": rate(row) / 1e6,
                     "ratio": bc.ratio(rate(row), rate(ref))})
    report.add_table(
        f"throughput, {n:,} ints ({args.stat} of {repeats}; ratio to `for`, same mode)",
        [bc.Column("row", "row"), bc.Column("rate", "M items/s", ".2f"),
         bc.Column("ratio", "x for", ".2f")],
        rows,
    )
    gap_rows = []
    for key, label in (("slice", f"hand-over every {_aio._SLICE * 1e3:g} ms"),
                       ("none", "no hand-over (reference)")):
        gap_rows.append({
            "row": label,
            "gap": bc.median(gaps[key]) * 1e3,
            "worst": max(gaps[key]) * 1e3,
            "drain": bc.median(drains[key]) * 1e3,
        })
    report.add_table(
        f"loop responsiveness: 1 ms ticker while async for drains {n_gap:,} buffered ints "
        f"(median of {repeats})",
        [bc.Column("row", "row"), bc.Column("gap", "max gap ms", ".1f"),
         bc.Column("worst", "worst ms", ".1f"), bc.Column("drain", "drain ms", ".0f")],
        gap_rows,
    )
    report.finish()


if __name__ == "__main__":
    main()
