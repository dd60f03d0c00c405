"""Large arrays: GB/s streaming numpy arrays (64 KiB ... 64 MiB) from a child to the parent.

The producer yields (sends) one preallocated float32 array again and again; the parent
receives each one and checks the last (shape, dtype, two values). Bytes per second =
array size x count / (last item received - "ready" received). Rows, all children started
with the same method (forkserver by default):

* workstream: ``workstream.start(fn)`` where ``fn`` yields the array (the public API:
  whatever transport this build uses for arrays, pickling through the pipe or shared
  memory, is what is measured);
* multiprocessing.Queue ``put()`` / ``get()``;
* multiprocessing.Pipe ``send()`` / ``recv()`` (pickle);
* ``numpy.copyto`` between two preallocated arrays of the same size in one process: the
  physical reference (one memory copy, no IPC), the denominator of the ratios.

The parent does not read the arrays it receives beyond the check: a transport that hands
over a view pays no copy here, one that unpickles pays it on receipt.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/large_arrays.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import multiprocessing as mp

import workstream
from bench import _common as bc
from bench import _workers as w

KIB, MIB = 1 << 10, 1 << 20
SIZES = (64 * KIB, MIB, 8 * MIB, 64 * MIB)
COPYTO = "numpy.copyto, one process (reference)"
WS = "workstream (default options)"


def size_label(nbytes: int) -> str:
    return f"{nbytes // MIB} MiB" if nbytes >= MIB else f"{nbytes // KIB} KiB"


def _check_last(last: Any, nbytes: int, count: int, received: int) -> None:
    n = nbytes // 4
    if received != count:
        raise RuntimeError(f"received {received} arrays, expected {count}")
    if last.shape != (n,) or str(last.dtype) != "float32" or last[0] != 0 or last[-1] != n - 1:
        raise RuntimeError(f"last array wrong: shape {last.shape}, dtype {last.dtype}")


def run_workstream(method: str, nbytes: int, count: int) -> float:
    job = workstream.start(w.ws_arrays, nbytes, count, start_method=method)
    with job:
        it = iter(job)
        if next(it) != w.READY:
            raise RuntimeError("no ready marker")
        t0 = bc.perf()
        received = 0
        last = None
        for last in it:  # noqa: B007 (checked after the loop)
            received += 1
            if received == count:
                break
        t1 = bc.perf()
        _check_last(last, nbytes, count, received)
        del last
        outcome = job.wait(60)
    if not isinstance(outcome, workstream.Completed):
        raise RuntimeError(f"outcome {outcome!r}")
    return t1 - t0


def _join(p: mp.process.BaseProcess) -> None:
    p.join(60)
    if p.exitcode != 0:
        raise RuntimeError(f"producer exit code {p.exitcode}")
    p.close()


def run_queue(method: str, nbytes: int, count: int) -> float:
    ctx = mp.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=w.queue_arrays, args=(q, nbytes, count), daemon=True)
    p.start()
    if q.get(timeout=60) != w.READY:
        raise RuntimeError("no ready marker")
    t0 = bc.perf()
    received, last = 0, None
    item = q.get(timeout=60)
    while item is not None:
        received += 1
        last = item
        item = q.get(timeout=60)
    t1 = bc.perf()
    _join(p)
    q.close()
    q.join_thread()
    _check_last(last, nbytes, count, received)
    return t1 - t0


def run_pipe(method: str, nbytes: int, count: int) -> float:
    ctx = mp.get_context(method)
    r, wr = ctx.Pipe(duplex=False)
    p = ctx.Process(target=w.pipe_arrays, args=(wr, nbytes, count), daemon=True)
    p.start()
    wr.close()
    if not r.poll(60) or r.recv() != w.READY:
        raise RuntimeError("no ready marker")
    t0 = bc.perf()
    received, last = 0, None
    item = r.recv()
    while item is not None:
        received += 1
        last = item
        item = r.recv()
    t1 = bc.perf()
    _join(p)
    r.close()
    _check_last(last, nbytes, count, received)
    return t1 - t0


def run_copyto(method: str, nbytes: int, count: int) -> float:
    import numpy as np

    src = w.make_array(nbytes)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in, untimed
    t0 = bc.perf()
    for _ in range(count):
        np.copyto(dst, src)
    t1 = bc.perf()
    _check_last(dst, nbytes, count, count)
    return t1 - t0


ROWS: dict[str, Callable[[str, int, int], float]] = {
    WS: run_workstream,
    "multiprocessing.Queue put/get": run_queue,
    "multiprocessing.Pipe send/recv": run_pipe,
    COPYTO: run_copyto,
}


def build_parser() -> argparse.ArgumentParser:
    parser = bc.make_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--total-mib", type=int, default=None,
        help="MiB streamed per row and size (default 512, quick 32); at least --min-items",
    )
    parser.add_argument("--min-items", type=int, default=None,
                        help="arrays per row and size at least (default 8, quick 2)")
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES),
                        help="array sizes in bytes, comma-separated")
    return parser


def run(args: argparse.Namespace) -> bc.Report:
    """Measure every row (progress on stderr); return the report, not yet printed."""
    total = bc.pick(args, "total_mib", 512, 32) * MIB
    min_items = bc.pick(args, "min_items", 8, 2)
    repeats = bc.pick(args, "repeats", 3, 1)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    if any(s < 4 or s % 4 for s in sizes):
        raise SystemExit("--sizes: every size must be a positive multiple of 4 bytes")
    method = args.start_method
    counts = {size: max(min_items, total // size) for size in sizes}
    report = bc.Report(
        "large_arrays", args,
        {"sizes": sizes, "counts": {str(k): v for k, v in counts.items()},
         "repeats": repeats, "stat": args.stat, "start_method": method, "dtype": "float32"},
    )
    gbs: dict[tuple[str, int], list[float]] = {}
    for rep in range(repeats):
        for size in sizes:
            for name, fn in ROWS.items():
                try:
                    secs = fn(method, size, counts[size])
                    rate = size * counts[size] / secs / 1e9
                except Exception:
                    bc.log(f"  {name} [{size_label(size)}] FAILED:\n{traceback.format_exc()}")
                    rate = math.nan
                gbs.setdefault((name, size), []).append(rate)
                bc.log(f"  rep {rep + 1}/{repeats} {size_label(size):>6s} {name:40s} "
                       f"{rate:8.2f} GB/s")

    cols = [bc.Column("row", "row")]
    for size in sizes:
        lbl = size_label(size)
        cols += [bc.Column(f"gbs_{size}", f"{lbl} GB/s", ".2f"),
                 bc.Column(f"x_copyto_{size}", "x copyto", ".3f")]
    rows = []
    for name in ROWS:
        row: dict[str, Any] = {"row": name, "ref": COPYTO}
        for size in sizes:
            best = bc.combine(gbs[(name, size)], args.stat, higher_is_better=True)
            ref = bc.combine(gbs[(COPYTO, size)], args.stat, higher_is_better=True)
            row[f"gbs_{size}"] = best
            row[f"x_copyto_{size}"] = bc.ratio(best, ref)
            row[f"all_gbs_{size}"] = gbs[(name, size)]
        rows.append(row)
    report.add_table(
        f"GB/s (1e9 B/s) streaming float32 arrays child -> parent, {args.stat} of {repeats}, "
        f"start_method={method}; x copyto = ratio to numpy.copyto of the same size",
        cols, rows,
    )
    ws_vs_queue = [
        bc.ratio(rows[0][f"gbs_{s}"], rows[1][f"gbs_{s}"]) for s in sizes
    ]
    report.note("workstream / mp.Queue: " + ", ".join(
        f"{size_label(s)} {x:.2f}x" for s, x in zip(sizes, ws_vs_queue, strict=True)))
    report.note("arrays per row and size: " + ", ".join(
        f"{size_label(s)} x{counts[s]}" for s in sizes))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    report = run(build_parser().parse_args(argv))
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
