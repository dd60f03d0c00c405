"""Child-side functions of the benchmarks: workstream targets and the references' targets.

They live in an importable module, so that multiprocessing (forkserver, spawn) and
cloudpickle both send them *by reference*: every row, workstream's and the references',
runs the very same byte code in its child. Stdlib only at import time (numpy is imported
inside the start-up targets, where importing it is the point).

Every producer first sends :data:`READY`; the parent starts its clock when that marker
arrives, so process start-up is never part of a throughput or latency figure.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import signal
import struct
import time
from collections.abc import Iterator
from typing import Any

READY = "ready"
KINDS = ("int", "dict")

_F_SETPIPE_SZ = 1031  # Linux fcntl command
LENGTH = struct.Struct("<I")  # the length prefix of the raw-pipe reference


def expected_last(kind: str, n: int) -> Any:
    """The last item of a stream of ``n`` items of ``kind`` (the parent checks it)."""
    return n - 1 if kind == "int" else {"step": n - 1, "loss": (n - 1) * 0.5}


# -- throughput: n small items, as fast as possible -----------------------------------------
# Each producer builds its items inline in the same loop shape, so that the cost of
# making an item is the same in every row.


def ws_stream(kind: str, n: int) -> Iterator[Any]:
    """workstream target: every ``yield`` is one item."""
    yield READY
    if kind == "int":
        for i in range(n):
            yield i
    else:
        for i in range(n):
            yield {"step": i, "loss": i * 0.5}


def generate_only(kind: str, n: int) -> int:
    """The cost of making the items, with no IPC (runs in the parent)."""
    count = 0
    if kind == "int":
        for _i in range(n):
            count += 1
    else:
        for i in range(n):
            _item = {"step": i, "loss": i * 0.5}
            count += 1
    return count


def queue_stream(q: Any, kind: str, n: int) -> None:
    """multiprocessing.Queue: put() one item at a time, then the None sentinel."""
    put = q.put
    put(READY)
    if kind == "int":
        for i in range(n):
            put(i)
    else:
        for i in range(n):
            put({"step": i, "loss": i * 0.5})
    put(None)
    q.close()
    q.join_thread()


def pipe_stream(conn: Any, kind: str, n: int) -> None:
    """multiprocessing.Pipe: send() one item at a time, then the None sentinel."""
    send = conn.send
    send(READY)
    if kind == "int":
        for i in range(n):
            send(i)
    else:
        for i in range(n):
            send({"step": i, "loss": i * 0.5})
    send(None)
    conn.close()


def set_pipe_size(fd: int, size: int) -> None:
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, size)


def _write_frame(fd: int, body: bytes) -> None:
    """Length prefix + body with one writev; finish a partial write with plain writes."""
    total = LENGTH.size + len(body)
    done = os.writev(fd, [LENGTH.pack(len(body)), body])
    if done < total:
        rest = memoryview(LENGTH.pack(len(body)) + body)[done:]
        while rest:
            rest = rest[os.write(fd, rest) :]


def raw_pipe_stream(conn: Any, kind: str, n: int, batch: int, pipe_bytes: int) -> None:
    """The practical limit: pickled lists of ``batch`` items on a bare pipe.

    ``conn`` is the write end of a ``multiprocessing.Pipe(duplex=False)``, used only as a
    way to hand a plain pipe descriptor to a forkserver / spawn child: we write to its
    fd directly. Frame: 4-byte little-endian length, then a pickle; length 0 ends.
    """
    fd = conn.fileno()
    set_pipe_size(fd, pipe_bytes)
    dumps = pickle.dumps
    proto = pickle.HIGHEST_PROTOCOL
    _write_frame(fd, dumps(READY, proto))
    buf: list[Any] = []
    append = buf.append
    if kind == "int":
        for i in range(n):
            append(i)
            if len(buf) >= batch:
                _write_frame(fd, dumps(buf, proto))
                buf.clear()
    else:
        for i in range(n):
            append({"step": i, "loss": i * 0.5})
            if len(buf) >= batch:
                _write_frame(fd, dumps(buf, proto))
                buf.clear()
    if buf:
        _write_frame(fd, dumps(buf, proto))
    os.write(fd, LENGTH.pack(0))
    conn.close()


# -- latency: one timestamped item at a time ----------------------------------------------
# perf_counter_ns() is CLOCK_MONOTONIC on Linux: one clock for every process, so
# "receive time - embedded send time" is the one-way latency.


def ws_ticks(n: int, interval: float) -> Iterator[Any]:
    yield READY
    sleep = time.sleep
    now = time.perf_counter_ns
    for _ in range(n):
        sleep(interval)
        yield now()


def pipe_ticks(conn: Any, n: int, interval: float) -> None:
    sleep = time.sleep
    now = time.perf_counter_ns
    send = conn.send
    send(READY)
    for _ in range(n):
        sleep(interval)
        send(now())
    send(None)
    conn.close()


def pipe_echo(conn: Any) -> None:
    """Round-trip reference: answer every request with a timestamp until None."""
    now = time.perf_counter_ns
    conn.send(READY)
    recv, send = conn.recv, conn.send
    while recv() is not None:
        send(now())
    conn.close()


# -- cancellation ---------------------------------------------------------------------------


def ws_yield_loop() -> Iterator[Any]:
    """Cooperative: yields as fast as it can (a cancellation point every item)."""
    yield READY
    i = 0
    while True:
        yield i
        i += 1


def ws_python_loop() -> Iterator[Any]:
    """Pure-Python loop that never yields again: only SIGTERM (a Python handler) stops it."""
    yield READY
    x = 0
    while True:
        x += 1


def ws_c_call() -> Iterator[Any]:
    """One long C call (minutes) that never runs the eval loop, so a Python SIGTERM
    handler waits for it: only SIGKILL stops it."""
    yield READY
    yield sum(itertools.repeat(1, 10**12))


def ws_ignore_sigterm() -> Iterator[Any]:
    """A child that ignores SIGTERM (as some libraries do) and never yields."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    yield READY
    while True:
        time.sleep(0.01)


def mp_busy(conn: Any) -> None:
    conn.send(READY)
    x = 0
    while True:
        x += 1


def mp_cooperative(conn: Any, stop: Any) -> None:
    conn.send(READY)
    is_set = stop.is_set
    x = 0
    while not is_set():
        x += 1
    conn.close()


# -- start-up ---------------------------------------------------------------------------------


def ws_first(import_numpy: bool) -> Iterator[int]:
    if import_numpy:
        import numpy  # noqa: F401
    yield 1


def mp_first(conn: Any, import_numpy: bool) -> None:
    if import_numpy:
        import numpy  # noqa: F401
    conn.send(1)
    conn.close()
