"""Throughput: items/s streaming N small items from a child process to the parent.

Payloads: ``int`` (``i``) and ``dict`` (``{"step": i, "loss": i * 0.5}``), made inline by
the producer in the same loop shape in every row (``bench/_workers.py``).

Rows (all children started with the same method, forkserver by default):

* workstream, default options (batch_window=1 ms: items are batched in the child; each
  is in the item log before its ``yield`` returns, so a hard crash loses none);
* workstream, batch_window=0 (every item written to the pipe before the ``yield``
  returns: a syscall per item);
* multiprocessing.Queue, put()/get() one item at a time, None sentinel (the reference);
* multiprocessing.Pipe, send()/recv() one item at a time, None sentinel;
* faster-fifo (optional: ``pip install faster-fifo``, the ``bench`` extra): ``put()`` one
  item at a time in the child, ``get_many()`` in the parent; skipped with a note if the
  package is missing;
* limit: a bare pipe (1 MiB kernel buffer, like workstream's ``pipe_bytes``), pickled
  lists of 1024 items with a 4-byte length prefix, read through a 1 MiB BufferedReader:
  the practical limit of plain Python;
* generate only: the producer's loop with no IPC at all, run in the parent (context).

Clock: every producer first sends a ``"ready"`` marker item; the clock starts when the
parent *receives* it (so process start-up and the function's unpickling are excluded)
and stops when the parent has received the last of the N items (for workstream: the
N-th item out of the iterator, before the end of the stream and the reaping).
Repeats are interleaved (rep 1 of every row, then rep 2, ...), so a load spike hits
all rows alike; best-of-N by default.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
import traceback
from collections.abc import Callable, Sequence

if __package__ in (None, ""):  # run as a file: python bench/throughput.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import multiprocessing as mp

import workstream
from bench import _common as bc
from bench import _workers as w

BATCH = 1024
PIPE_BYTES = 1 << 20
REF = "multiprocessing.Queue"
LIMIT = f"limit: os.pipe + pickled lists of {BATCH}"
WS_DEFAULT = "workstream (default options)"
WS_WRITE_THROUGH = "workstream batch_window=0"
FASTER_FIFO = "faster-fifo put / get_many"


# -- rows: each returns the seconds from "ready" received to the last item received ---------


def _check(kind: str, n: int, count: int, last: object) -> None:
    if count != n or last != w.expected_last(kind, n):
        raise RuntimeError(f"received {count} items, last {last!r}; expected {n}")


def run_workstream(method: str, kind: str, n: int, **options: object) -> float:
    job = workstream.start(w.ws_stream, kind, n, start_method=method, **options)
    with job:
        it = iter(job)
        first = next(it)
        if first != w.READY:
            raise RuntimeError(f"first item {first!r}")
        t0 = bc.perf()
        count = 0
        last = None
        for last in it:  # noqa: B007 (last is checked after the loop)
            count += 1
            if count == n:
                break
        t1 = bc.perf()
        outcome = job.wait(60)
    if not isinstance(outcome, workstream.Completed):
        raise RuntimeError(f"outcome {outcome!r}")
    _check(kind, n, count, last)
    return t1 - t0


def _join(p: mp.process.BaseProcess) -> None:
    p.join(60)
    if p.exitcode != 0:
        raise RuntimeError(f"producer exit code {p.exitcode}")
    p.close()


def run_queue(method: str, kind: str, n: int) -> float:
    ctx = mp.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=w.queue_stream, args=(q, kind, n), daemon=True)
    p.start()
    get = q.get
    if get(timeout=60) != w.READY:
        raise RuntimeError("no ready marker")
    t0 = bc.perf()
    count = 0
    last = None
    item = get()
    while item is not None:
        count += 1
        last = item
        item = get()
    t1 = bc.perf()
    _join(p)
    q.close()
    q.join_thread()
    _check(kind, n, count, last)
    return t1 - t0


def run_pipe(method: str, kind: str, n: int) -> float:
    ctx = mp.get_context(method)
    r, wr = ctx.Pipe(duplex=False)
    p = ctx.Process(target=w.pipe_stream, args=(wr, kind, n), daemon=True)
    p.start()
    wr.close()
    recv = r.recv
    if not r.poll(60) or recv() != w.READY:
        raise RuntimeError("no ready marker")
    t0 = bc.perf()
    count = 0
    last = None
    item = recv()
    while item is not None:
        count += 1
        last = item
        item = recv()
    t1 = bc.perf()
    _join(p)
    r.close()
    _check(kind, n, count, last)
    return t1 - t0


def run_limit(method: str, kind: str, n: int) -> float:
    ctx = mp.get_context(method)
    r, wr = ctx.Pipe(duplex=False)  # only a carrier for a plain pipe descriptor
    p = ctx.Process(
        target=w.raw_pipe_stream, args=(wr, kind, n, BATCH, PIPE_BYTES), daemon=True
    )
    p.start()
    wr.close()
    f = open(r.fileno(), "rb", buffering=PIPE_BYTES, closefd=False)  # noqa: SIM115
    try:
        read, loads, unpack = f.read, pickle.loads, w.LENGTH.unpack
        (size,) = unpack(read(4))
        if loads(read(size)) != w.READY:
            raise RuntimeError("no ready marker")
        t0 = bc.perf()
        count = 0
        last = None
        while True:
            (size,) = unpack(read(4))
            if size == 0:
                break
            for last in loads(read(size)):  # noqa: B007
                count += 1
        t1 = bc.perf()
    finally:
        f.close()
    _join(p)
    r.close()
    _check(kind, n, count, last)
    return t1 - t0


def run_faster_fifo(method: str, kind: str, n: int) -> float:
    import faster_fifo  # optional; the caller skips the row if it is missing

    ctx = mp.get_context(method)
    q = faster_fifo.Queue(max_size_bytes=PIPE_BYTES)
    p = ctx.Process(target=w.faster_fifo_stream, args=(q, kind, n), daemon=True)
    p.start()
    get_many = q.get_many
    if q.get(timeout=60) != w.READY:
        raise RuntimeError("no ready marker")
    t0 = bc.perf()
    count = 0
    last = None
    done = False
    while not done:
        for item in get_many(timeout=60):
            if item is None:
                done = True
                break
            count += 1
            last = item
    t1 = bc.perf()
    _join(p)
    _check(kind, n, count, last)
    return t1 - t0


def run_generate_only(method: str, kind: str, n: int) -> float:
    t0 = bc.perf()
    count = w.generate_only(kind, n)
    t1 = bc.perf()
    if count != n:
        raise RuntimeError(count)
    return t1 - t0


ROWS: dict[str, Callable[[str, str, int], float]] = {
    WS_DEFAULT: run_workstream,
    WS_WRITE_THROUGH: lambda m, k, n: run_workstream(m, k, n, batch_window=0),
    REF: run_queue,
    "multiprocessing.Pipe": run_pipe,
    FASTER_FIFO: run_faster_fifo,
    LIMIT: run_limit,
    "generate only (no IPC, in the parent)": run_generate_only,
}


def build_parser() -> argparse.ArgumentParser:
    parser = bc.make_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--n", type=int, default=None, help="items per run (default 1,000,000; quick 100,000)"
    )
    parser.add_argument("--kinds", default="int,dict", help="payloads, comma-separated")
    return parser


def run(args: argparse.Namespace) -> bc.Report:
    """Measure every row (progress on stderr); return the report, not yet printed."""
    n = bc.pick(args, "n", 1_000_000, 100_000)
    repeats = bc.pick(args, "repeats", 3, 2)
    kinds = [k for k in args.kinds.split(",") if k]
    bad = set(kinds) - set(w.KINDS)
    if bad:
        raise SystemExit(f"unknown kinds {sorted(bad)}; choose from {w.KINDS}")
    method = args.start_method
    rows_to_run = dict(ROWS)
    skipped: dict[str, str] = {}
    why = bc.missing("faster_fifo")
    if why is not None:
        del rows_to_run[FASTER_FIFO]
        skipped[FASTER_FIFO] = why
    report = bc.Report(
        "throughput", args,
        {"n": n, "repeats": repeats, "stat": args.stat, "start_method": method,
         "batch": BATCH, "pipe_bytes": PIPE_BYTES, "kinds": kinds},
    )

    seconds: dict[tuple[str, str], list[float]] = {}
    for rep in range(repeats):
        for kind in kinds:
            for name, fn in rows_to_run.items():
                try:
                    secs = fn(method, kind, n)
                except Exception:
                    bc.log(f"  {name} [{kind}] FAILED:\n{traceback.format_exc()}")
                    secs = math.nan
                seconds.setdefault((name, kind), []).append(secs)
                bc.log(f"  rep {rep + 1}/{repeats} {kind:4s} {name:42s} {n / secs:12,.0f} items/s")

    cols = [
        bc.Column("row", "row"),
        bc.Column("items_s", "items/s", ",.0f"),
        bc.Column("x_queue", "x mp.Queue", ".2f"),
        bc.Column("x_queue_paired", "paired", ".2f"),
        bc.Column("x_limit", "x limit", ".3f"),
        bc.Column("spread", "spread", ".0%"),
    ]
    for kind in kinds:
        rates = {
            name: [n / s for s in seconds[(name, kind)] if not math.isnan(s)]
            for name in rows_to_run
        }
        best = {name: bc.combine(v, args.stat, higher_is_better=True) for name, v in rates.items()}
        rows = []
        for name, vals in rates.items():
            # Each repeat's rows ran seconds apart: the ratio within a repeat is immune to
            # the machine's slow phases, which best-of-N can pick for one row and not another.
            paired = [
                a / b for a, b in zip(seconds[(REF, kind)], seconds[(name, kind)], strict=True)
                if not (math.isnan(a) or math.isnan(b))
            ]
            rows.append({
                "row": name,
                "items_s": best[name],
                "x_queue": bc.ratio(best[name], best[REF]),
                "x_queue_paired": bc.median(paired),
                "x_limit": bc.ratio(best[name], best[LIMIT]),
                "spread": (max(vals) - min(vals)) / max(vals) if len(vals) > 1 else math.nan,
                "all_items_s": vals,
                "ref": REF,
            })
        rows += [{"row": name, "skipped": why, "ref": REF} for name, why in skipped.items()]
        report.add_table(
            f"{kind} items, n={n:,}, {args.stat} of {repeats}, start_method={method}", cols, rows
        )
        report.headline(f"small {kind}s child -> parent", best[WS_DEFAULT], "items/s",
                        "multiprocessing.Queue", best[REF])
    report.note(
        "clock: from the parent receiving the producer's 'ready' marker to the parent "
        "receiving the last item; paired = median over the repeats of the ratio to "
        "mp.Queue within one repeat; spread = (max - min) / max of the row's repeats"
    )
    for name, why in skipped.items():
        report.note(f"{name}: skipped, {why}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    report = run(build_parser().parse_args(argv))
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
