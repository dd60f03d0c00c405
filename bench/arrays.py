"""Large arrays: GB/s streaming float64 arrays (64 KiB ... 64 MiB) from a child to the parent.

Rows (children started with the same method, forkserver by default):

* workstream, default options: arrays >= 64 KiB travel through shared memory; the parent
  gets zero-copy views (one copy in all: the child's copy into the block);
* workstream, ``shm_copy=True``: the parent copies each array out of its block (two copies);
* workstream, ``shm_threshold=None``: pickled through the pipe like any item;
* multiprocessing.Queue, put()/get() (the reference);
* multiprocessing.Pipe, send()/recv();
* numpy.copyto of the same array in the parent (one memory copy, no IPC: the physical
  reference).

The producer sends a fresh array each time (a copy of a template with its first and last
element set to the item's number), as a model would return a new output; a reused array
would be wrong with ``multiprocessing.Queue``, which pickles in a feeder thread after
``put()`` returned. The row "produce only" is that loop without IPC, in the parent (the
producer's own cost, included in every IPC row). The consumer checks the two elements and
drops the array. Clock: from the parent receiving a "ready" item to receiving the
last array. Repeats are interleaved across rows; best-of-N by default. GB/s = 1e9 bytes/s.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/arrays.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import multiprocessing as mp

import numpy as np

import workstream
from bench import _common as bc

KIB, MIB = 1 << 10, 1 << 20
READY = "ready"
REF = "multiprocessing.Queue"
WS = "workstream (shared memory, zero-copy)"
WS_COPY = "workstream shm_copy=True"
WS_PIPE = "workstream shm_threshold=None (pipe)"
COPYTO = "numpy.copyto (one copy, no IPC)"


# -- producers (run in the child) ---------------------------------------------------------


def _arrays(nbytes: int, n: int) -> Iterator[np.ndarray]:
    template = np.ones(nbytes // 8)
    for i in range(n):
        a = template.copy()
        a[0] = a[-1] = i
        yield a


def ws_producer(nbytes: int, n: int) -> Iterator[Any]:
    yield READY
    yield from _arrays(nbytes, n)


def queue_producer(q: Any, nbytes: int, n: int) -> None:
    q.put(READY)
    for a in _arrays(nbytes, n):
        q.put(a)
    q.put(None)
    q.close()
    q.join_thread()


def pipe_producer(conn: Any, nbytes: int, n: int) -> None:
    conn.send(READY)
    for a in _arrays(nbytes, n):
        conn.send(a)
    conn.send(None)
    conn.close()


# -- rows: each returns seconds from "ready" received to the last array received ----------


def _check(a: Any, i: int) -> None:
    if a[0] != i or a[-1] != i:
        raise RuntimeError(f"array #{i} has {a[0]}, {a[-1]}")


def run_workstream(method: str, nbytes: int, n: int, **options: Any) -> float:
    me = importlib.import_module("bench.arrays")  # by name, not __main__, for the child
    job = workstream.start(me.ws_producer, nbytes, n, start_method=method, **options)
    with job:
        it = iter(job)
        if next(it) != READY:
            raise RuntimeError("no ready marker")
        t0 = bc.perf()
        for i in range(n):
            a = next(it)
            _check(a, i)
            del a
        t1 = bc.perf()
        outcome = job.wait(60)
    if not isinstance(outcome, workstream.Completed):
        raise RuntimeError(f"outcome {outcome!r}")
    return t1 - t0


def _join(p: Any) -> None:
    p.join(60)
    if p.exitcode != 0:
        raise RuntimeError(f"producer exit code {p.exitcode}")
    p.close()


def run_queue(method: str, nbytes: int, n: int) -> float:
    me = importlib.import_module("bench.arrays")
    ctx = mp.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=me.queue_producer, args=(q, nbytes, n), daemon=True)
    p.start()
    if q.get(timeout=60) != READY:
        raise RuntimeError("no ready marker")
    t0 = bc.perf()
    for i in range(n):
        a = q.get()
        _check(a, i)
        del a
    t1 = bc.perf()
    if q.get(timeout=60) is not None:
        raise RuntimeError("no end marker")
    _join(p)
    q.close()
    q.join_thread()
    return t1 - t0


def run_pipe(method: str, nbytes: int, n: int) -> float:
    me = importlib.import_module("bench.arrays")
    ctx = mp.get_context(method)
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=me.pipe_producer, args=(w, nbytes, n), daemon=True)
    p.start()
    w.close()
    if not r.poll(60) or r.recv() != READY:
        raise RuntimeError("no ready marker")
    t0 = bc.perf()
    for i in range(n):
        a = r.recv()
        _check(a, i)
        del a
    t1 = bc.perf()
    if r.recv() is not None:
        raise RuntimeError("no end marker")
    _join(p)
    r.close()
    return t1 - t0


def run_copyto(method: str, nbytes: int, n: int) -> float:
    src = np.zeros(nbytes // 8)
    dst = np.empty_like(src)
    t0 = bc.perf()
    for i in range(n):
        src[0] = src[-1] = i
        np.copyto(dst, src)
        _check(dst, i)
    return bc.perf() - t0


def run_produce_only(method: str, nbytes: int, n: int) -> float:
    t0 = bc.perf()
    for i, a in enumerate(_arrays(nbytes, n)):
        _check(a, i)
    return bc.perf() - t0


ROWS: dict[str, Callable[[str, int, int], float]] = {
    WS: run_workstream,
    WS_COPY: lambda m, b, n: run_workstream(m, b, n, shm_copy=True),
    WS_PIPE: lambda m, b, n: run_workstream(m, b, n, shm_threshold=None),
    REF: run_queue,
    "multiprocessing.Pipe": run_pipe,
    COPYTO: run_copyto,
    "produce only (no IPC, in the parent)": run_produce_only,
}


def _size_label(nbytes: int) -> str:
    return f"{nbytes // MIB} MiB" if nbytes >= MIB else f"{nbytes // KIB} KiB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = bc.make_parser((__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--sizes", default=None,
        help="array sizes in KiB, comma-separated (default 64,1024,16384,65536; "
             "quick 1024,16384,65536)",
    )
    parser.add_argument(
        "--mib-per-run", type=int, default=None,
        help="MiB streamed per run and size (default 1024; quick 256)",
    )
    args = parser.parse_args(argv)
    repeats = bc.pick(args, "repeats", 3, 2)
    per_run = bc.pick(args, "mib_per_run", 1024, 256) * MIB
    default_sizes = "1024,16384,65536" if args.quick else "64,1024,16384,65536"
    sizes = [int(s) * KIB for s in (args.sizes or default_sizes).split(",") if s]
    method = args.start_method
    report = bc.Report(
        "bench/arrays.py", args,
        {"sizes": sizes, "bytes_per_run": per_run, "repeats": repeats,
         "start_method": method, "stat": args.stat},
    )
    columns = [bc.Column("row", "row")]
    rows: dict[str, dict[str, Any]] = {name: {"row": name, "raw": {}} for name in ROWS}
    for nbytes in sizes:
        n = max(4, per_run // nbytes)
        label = _size_label(nbytes)
        samples: dict[str, list[float]] = {name: [] for name in ROWS}
        for rep in range(repeats):
            for name, fn in ROWS.items():
                bc.log(f"{label}: {name} (repeat {rep + 1}/{repeats}, {n} arrays)")
                seconds = fn(method, nbytes, n)
                samples[name].append(n * nbytes / seconds / 1e9)
        ref = bc.combine(samples[REF], args.stat, higher_is_better=True)
        for name in ROWS:
            gbps = bc.combine(samples[name], args.stat, higher_is_better=True)
            rows[name][f"gbps_{label}"] = gbps
            rows[name][f"x_queue_{label}"] = bc.ratio(gbps, ref)
            rows[name]["raw"][label] = samples[name]
        columns += [
            bc.Column(f"gbps_{label}", f"{label} GB/s", ".2f"),
            bc.Column(f"x_queue_{label}", "x Queue", ".1f"),
        ]
    report.add_table(
        f"GB/s child -> parent ({method}; {args.stat} of {repeats}), and ratio to "
        f"{REF} in the same run",
        columns, list(rows.values()),
    )
    for nbytes in sizes:
        label = _size_label(nbytes)
        ws_rate = rows[WS][f"gbps_{label}"]
        to_copyto = bc.ratio(ws_rate, rows[COPYTO][f"gbps_{label}"])
        report.note(
            f"{label}: workstream zero-copy = {to_copyto:.2f}x numpy.copyto, "
            f"{rows[WS][f'x_queue_{label}']:.1f}x Queue"
        )
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
