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
* workstream, ``shared_empty``: the child makes each array with
  ``workstream.shared_empty`` and writes only the two values checked (it would compute
  into it): nothing is copied on either side, this is the transport's own cost;
* ``numpy.copyto`` between two preallocated arrays of the same size in one process: one
  memory copy, no IPC, in cache for the small sizes;
* ``numpy.copyto`` into shared-memory blocks, one process: the source array copied into
  blocks of a new memfd mapping in turn, as many blocks as the workstream row's job used
  at that size: the same working set, whose pages are allocated on first write as a
  job's fresh arena's are (that first touch costs ~4x the copy itself: with few arrays
  per run it dominates both rows). The cost of the one copy the default path makes,
  the denominator of the ratios.

Every row runs once untimed at every size before the measured repeats (also with
``--quick``): the first run of a process pays one-time costs (numpy's import in the
parent, the fork server's start) that are no part of the transport.

The parent does not read the arrays it receives beyond the check: a transport that hands
over a view pays no copy here, one that unpickles pays it on receipt.
"""

from __future__ import annotations

import argparse
import contextlib
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
COPYTO = "numpy.copyto, one process"
COPYTO_SHM = "numpy.copyto into shared-memory blocks (reference)"
WS = "workstream (default options)"
WS_SHARED = "workstream, shared_empty (zero copy)"
QUEUE = "multiprocessing.Queue put/get"
_blocks_used: dict[int, int] = {}  # size -> blocks the last workstream run used


def size_label(nbytes: int) -> str:
    return f"{nbytes // MIB} MiB" if nbytes >= MIB else f"{nbytes // KIB} KiB"


def _check_last(last: Any, nbytes: int, count: int, received: int) -> None:
    n = nbytes // 4
    if received != count:
        raise RuntimeError(f"received {received} arrays, expected {count}")
    if last.shape != (n,) or str(last.dtype) != "float32" or last[0] != 0 or last[-1] != n - 1:
        raise RuntimeError(f"last array wrong: shape {last.shape}, dtype {last.dtype}")


def _blocks_seen(job: Any) -> int | None:
    """Blocks of shared memory the job's child used (an internal figure; None if this
    build does not tell)."""
    channel = getattr(getattr(getattr(job, "_runner", None), "_intake", None), "arrays", None)
    return getattr(channel, "blocks_seen", None)


def run_workstream(method: str, nbytes: int, count: int) -> float:
    return _run_ws(w.ws_arrays, method, nbytes, count)


def run_shared_empty(method: str, nbytes: int, count: int) -> float:
    return _run_ws(w.ws_shared_arrays, method, nbytes, count)


def _run_ws(fn: Callable[..., Any], method: str, nbytes: int, count: int) -> float:
    job = workstream.start(fn, nbytes, count, start_method=method)
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
    if fn is w.ws_arrays:
        _blocks_used[nbytes] = _blocks_seen(job) or 4
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


def run_copyto_shm(method: str, nbytes: int, count: int) -> float:
    import mmap

    import numpy as np

    from workstream._transport import _shm

    k = _blocks_used.get(nbytes, 4)
    cap = _shm.block_capacity(nbytes)
    fd = os.memfd_create("bench-copyto", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, k * cap)
        mapping = mmap.mmap(fd, k * cap)
    finally:
        os.close(fd)
    src = w.make_array(nbytes)
    blocks = [np.frombuffer(mapping, np.float32, nbytes // 4, i * cap) for i in range(k)]
    t0 = bc.perf()
    for i in range(count):
        np.copyto(blocks[i % k], src)
    t1 = bc.perf()
    _check_last(blocks[(count - 1) % k], nbytes, count, count)
    del blocks
    mapping.close()
    return t1 - t0


ROWS: dict[str, Callable[[str, int, int], float]] = {
    WS: run_workstream,
    WS_SHARED: run_shared_empty,
    QUEUE: run_queue,
    "multiprocessing.Pipe send/recv": run_pipe,
    COPYTO: run_copyto,
    COPYTO_SHM: run_copyto_shm,
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
    bc.log("  warm-up: every row once at every size, untimed")
    for size in sizes:
        for fn in ROWS.values():
            with contextlib.suppress(Exception):  # the measured run reports it
                fn(method, size, min_items)
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
    best: dict[tuple[str, int], float] = {
        key: bc.combine(values, args.stat, higher_is_better=True) for key, values in gbs.items()
    }
    for name in ROWS:
        row: dict[str, Any] = {"row": name, "ref": COPYTO_SHM}
        for size in sizes:
            row[f"gbs_{size}"] = best[(name, size)]
            row[f"x_copyto_{size}"] = bc.ratio(best[(name, size)], best[(COPYTO_SHM, size)])
            row[f"all_gbs_{size}"] = gbs[(name, size)]
        rows.append(row)
    report.add_table(
        f"GB/s (1e9 B/s) streaming float32 arrays child -> parent, {args.stat} of {repeats}, "
        f"start_method={method}; x copyto = ratio to numpy.copyto into shared-memory blocks "
        "of the same size and working set",
        cols, rows,
    )
    report.note("workstream / mp.Queue: " + ", ".join(
        f"{size_label(s)} {bc.ratio(best[(WS, s)], best[(QUEUE, s)]):.2f}x" for s in sizes))
    report.note("arrays per row and size: " + ", ".join(
        f"{size_label(s)} x{counts[s]}" for s in sizes) + "; shared-memory blocks used by "
        "the workstream row (the reference's working set): " + ", ".join(
        f"{size_label(s)} {_blocks_used.get(s, '?')}" for s in sizes))
    for size in sizes:
        label = size_label(size)
        if size >= MIB:
            report.headline(f"{label} arrays, one copy (default)", best[(WS, size)], "GB/s",
                            "numpy.copyto into shared memory", best[(COPYTO_SHM, size)])
        else:
            report.headline(f"{label} arrays (default)", best[(WS, size)], "GB/s",
                            "multiprocessing.Queue", best[(QUEUE, size)])
    big = max(sizes)
    per_s = {name: best[(name, big)] * 1e9 / big for name in (WS_SHARED, WS, QUEUE)}
    report.headline(f"{size_label(big)} arrays through shared_empty (zero copy)",
                    per_s[WS_SHARED], "arrays/s", "the default path (one copy)", per_s[WS])
    report.headline(f"{size_label(big)} arrays through shared_empty (zero copy)",
                    per_s[WS_SHARED], "arrays/s", "multiprocessing.Queue", per_s[QUEUE])
    return report


def main(argv: Sequence[str] | None = None) -> int:
    report = run(build_parser().parse_args(argv))
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
