"""Latency: time for one item to travel from the child to the parent.

The child emits one item at a fixed interval (2 ms by default: the channel is idle
between items, so nothing waits for a batch); the item is ``time.perf_counter_ns()``
taken just before it is sent. The parent records ``perf_counter_ns()`` when it receives
the item and keeps the difference: the one-way latency. On Linux ``perf_counter`` is
CLOCK_MONOTONIC, one clock for every process, so the two readings compare directly
(the script checks the clock's name and says so if it is something else).

Rows:

* multiprocessing.Pipe, ``send()`` -> ``recv()`` (the reference of the ratios);
* workstream, default options and ``batch_window=0``: ``yield`` -> the parent's
  iterator (the item crosses the runner thread, then the consumer's thread);
* multiprocessing.Pipe request -> reply: the parent sends a request, the child answers
  with a timestamp; the round trip, for scale (two one-way trips);
* at a 0.5 ms interval (items closer than workstream's ``batch_window`` of 1 ms), the
  default workstream and the Pipe again: this shows the price of batching.

Each run drops its first 20 samples (warm-up). Median and p99 per run; runs are
combined by best-of-N (the lowest) or ``--stat median``. Ratios: to the Pipe row of
the same interval.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

if __package__ in (None, ""):  # run as a file: python bench/latency.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import multiprocessing as mp

import workstream
from bench import _common as bc
from bench import _workers as w

WARMUP = 20
INTERVAL = 0.002
FAST_INTERVAL = 0.0005


Samples = tuple[list[float], list[float]]
"""One run: one-way latencies (ns), and how long the child's send / yield took (ns)."""


def ws_latencies(method: str, n: int, interval: float, **options: object) -> Samples:
    now = time.perf_counter_ns
    lat: list[float] = []
    took: list[float] = []
    job = workstream.start(w.ws_ticks, n + WARMUP, interval, start_method=method, **options)
    with job:
        it = iter(job)
        if next(it) != w.READY:
            raise RuntimeError("no ready marker")
        for ts, prev in it:
            lat.append(now() - ts)
            took.append(prev)
        outcome = job.wait(30)
    if not isinstance(outcome, workstream.Completed):
        raise RuntimeError(f"outcome {outcome!r}")
    return lat, took[1:]


def pipe_latencies(method: str, n: int, interval: float) -> Samples:
    ctx = mp.get_context(method)
    now = time.perf_counter_ns
    r, wr = ctx.Pipe(duplex=False)
    p = ctx.Process(target=w.pipe_ticks, args=(wr, n + WARMUP, interval), daemon=True)
    p.start()
    wr.close()
    recv = r.recv
    if not r.poll(60) or recv() != w.READY:
        raise RuntimeError("no ready marker")
    lat: list[float] = []
    took: list[float] = []
    item = recv()
    while item is not None:
        lat.append(now() - item[0])
        took.append(item[1])
        item = recv()
    p.join(30)
    p.close()
    r.close()
    return lat, took[1:]


def pipe_round_trips(method: str, n: int, interval: float) -> Samples:
    ctx = mp.get_context(method)
    now = time.perf_counter_ns
    parent, child = ctx.Pipe()
    p = ctx.Process(target=w.pipe_echo, args=(child,), daemon=True)
    p.start()
    child.close()
    if not parent.poll(60) or parent.recv() != w.READY:
        raise RuntimeError("no ready marker")
    send, recv = parent.send, parent.recv
    lat: list[float] = []
    for _ in range(n + WARMUP):
        time.sleep(interval)
        t0 = now()
        send(1)
        recv()
        lat.append(now() - t0)
    send(None)
    p.join(30)
    p.close()
    parent.close()
    return lat, []


@dataclass(frozen=True)
class Row:
    name: str
    interval: float
    run: Callable[[str, int, float], Samples]
    reference: bool = False


PIPE = "multiprocessing.Pipe send -> recv"
WS = "workstream (default options)"
ROWS = [
    Row(PIPE, INTERVAL, pipe_latencies, reference=True),
    Row(WS, INTERVAL, ws_latencies),
    Row("workstream batch_window=0", INTERVAL,
        lambda m, n, i: ws_latencies(m, n, i, batch_window=0)),
    Row("multiprocessing.Pipe request -> reply (round trip)", INTERVAL, pipe_round_trips),
    Row(PIPE, FAST_INTERVAL, pipe_latencies, reference=True),
    Row(WS, FAST_INTERVAL, ws_latencies),
]


def build_parser() -> argparse.ArgumentParser:
    parser = bc.make_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--n", type=int, default=None, help="samples per run (default 2000, quick 200)"
    )
    return parser


def run(args: argparse.Namespace) -> bc.Report:
    """Measure every row (progress on stderr); return the report, not yet printed."""
    n = bc.pick(args, "n", 2000, 200)
    repeats = bc.pick(args, "repeats", 3, 2)
    method = args.start_method
    report = bc.Report(
        "latency", args,
        {"n": n, "repeats": repeats, "warmup": WARMUP, "stat": args.stat,
         "start_method": method, "intervals_s": [INTERVAL, FAST_INTERVAL]},
    )
    clock = time.get_clock_info("perf_counter").implementation
    if "CLOCK_MONOTONIC" not in clock:
        report.note(f"perf_counter is {clock}, maybe not shared between processes: "
                    "one-way figures may be meaningless here")

    med: dict[int, list[float]] = {}
    p99: dict[int, list[float]] = {}
    worst: dict[int, list[float]] = {}
    sends: dict[int, list[float]] = {}
    for rep in range(repeats):
        for i, row in enumerate(ROWS):
            try:
                lat, took = row.run(method, n, row.interval)
                lat = lat[WARMUP:]
                m, q = bc.median(lat) / 1e3, bc.pct(lat, 99) / 1e3
                mx = max(lat) / 1e3
                send = bc.median(took[WARMUP:]) / 1e3
            except Exception:
                bc.log(f"  {row.name} FAILED:\n{traceback.format_exc()}")
                m = q = mx = send = math.nan
            sends.setdefault(i, []).append(send)
            med.setdefault(i, []).append(m)
            p99.setdefault(i, []).append(q)
            worst.setdefault(i, []).append(mx)
            bc.log(f"  rep {rep + 1}/{repeats} {row.name:52s} every {row.interval * 1e3:.1f} ms "
                   f"median {m:8.1f} us  p99 {q:8.1f} us")

    def agg(values: list[float]) -> float:
        return bc.combine(values, args.stat, higher_is_better=False)

    refs = {row.interval: i for i, row in enumerate(ROWS) if row.reference}
    rows = []
    for i, row in enumerate(ROWS):
        ref = refs[row.interval]
        rows.append({
            "row": row.name,
            "every_ms": row.interval * 1e3,
            "median_us": agg(med[i]),
            "p99_us": agg(p99[i]),
            "max_us": agg(worst[i]),
            "x_med": bc.ratio(agg(med[i]), agg(med[ref])),
            # within one repeat the rows ran seconds apart: immune to slow phases
            "x_med_paired": bc.median([
                a / b for a, b in zip(med[i], med[ref], strict=True)
                if not (math.isnan(a) or math.isnan(b))
            ]),
            "x_p99": bc.ratio(agg(p99[i]), agg(p99[ref])),
            "child_send_us": agg(sends[i]),
            "all_median_us": med[i],
            "all_p99_us": p99[i],
            "ref": ROWS[ref].name,
        })
    cols = [
        bc.Column("row", "row"),
        bc.Column("every_ms", "every ms", ".1f"),
        bc.Column("median_us", "median us", ".1f"),
        bc.Column("p99_us", "p99 us", ".1f"),
        bc.Column("max_us", "max us", ".0f"),
        bc.Column("x_med", "x Pipe med", ".2f"),
        bc.Column("x_med_paired", "paired", ".2f"),
        bc.Column("x_p99", "x Pipe p99", ".2f"),
        bc.Column("child_send_us", "child send us", ".1f"),
    ]
    report.add_table(
        f"one-way latency, {n} samples per run, {args.stat} of {repeats}, "
        f"start_method={method}", cols, rows,
    )
    for r in rows:
        if r["row"] == WS:
            ref = next(x for x in rows if x["row"] == PIPE and x["every_ms"] == r["every_ms"])
            every = f"one item every {r['every_ms']:g} ms"
            report.headline(f"latency, median, {every}", r["median_us"], "us",
                            "multiprocessing.Pipe", ref["median_us"])
            report.headline(f"latency, p99, {every}", r["p99_us"], "us",
                            "multiprocessing.Pipe", ref["p99_us"])
    report.note("x Pipe: ratio to the 'multiprocessing.Pipe send -> recv' row of the same "
                "interval (paired: median over the repeats of that ratio within one repeat); "
                "the round-trip row is two trips, shown for scale; child send us: median time "
                "the child's send() / yield took (the yield: pickling, the write, the "
                "cancellation check)")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    report = run(build_parser().parse_args(argv))
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
