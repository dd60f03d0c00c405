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
import math
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


def faster_fifo_stream(q: Any, kind: str, n: int) -> None:
    """faster-fifo: put() one item at a time (the parent takes them with get_many)."""
    put = q.put
    put(READY, timeout=60)
    if kind == "int":
        for i in range(n):
            put(i, timeout=60)
    else:
        for i in range(n):
            put({"step": i, "loss": i * 0.5}, timeout=60)
    put(None, timeout=60)


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


# -- large arrays: the same float32 array again and again ---------------------------------
# numpy is imported inside the functions: this module stays stdlib-only at import time.


def make_array(nbytes: int) -> Any:
    import numpy as np

    return np.arange(nbytes // 4, dtype=np.float32)


def ws_arrays(nbytes: int, count: int) -> Iterator[Any]:
    """workstream target: yield one preallocated array ``count`` times."""
    arr = make_array(nbytes)
    yield READY
    for _ in range(count):
        yield arr


def ws_shared_arrays(nbytes: int, count: int) -> Iterator[Any]:
    """workstream target: ``count`` arrays made by ``workstream.shared_empty``, each with
    the two values the parent checks written (the rest is what the job would compute)."""
    import numpy  # noqa: F401 (imported before the clock starts, as make_array does)

    import workstream

    n = nbytes // 4
    yield READY
    for _ in range(count):
        arr = workstream.shared_empty(n, "float32")
        arr[0] = 0
        arr[-1] = n - 1
        yield arr
        del arr


def queue_arrays(q: Any, nbytes: int, count: int) -> None:
    arr = make_array(nbytes)
    q.put(READY)
    for _ in range(count):
        q.put(arr)
    q.put(None)
    q.close()
    q.join_thread()


def pipe_arrays(conn: Any, nbytes: int, count: int) -> None:
    arr = make_array(nbytes)
    conn.send(READY)
    for _ in range(count):
        conn.send(arr)
    conn.send(None)
    conn.close()


# -- latency: one timestamped item at a time ----------------------------------------------
# perf_counter_ns() is CLOCK_MONOTONIC on Linux: one clock for every process, so
# "receive time - embedded send time" is the one-way latency.


def ws_ticks(n: int, interval: float) -> Iterator[Any]:
    """Items ``(stamp_ns, ns the previous yield took in the child, or -1)``."""
    yield READY
    sleep = time.sleep
    now = time.perf_counter_ns
    took = -1
    for _ in range(n):
        sleep(interval)
        t0 = now()
        yield (t0, took)
        took = now() - t0


def pipe_ticks(conn: Any, n: int, interval: float) -> None:
    sleep = time.sleep
    now = time.perf_counter_ns
    send = conn.send
    send(READY)
    took = -1
    for _ in range(n):
        sleep(interval)
        t0 = now()
        send((t0, took))
        took = now() - t0
    send(None)
    conn.close()


def tick_frames(conn: Any, n: int, interval: float) -> None:
    """bench/latency_handoff.py: a length-prefixed pickled timestamp on a bare pipe every
    ``interval`` s, then a zero length."""
    fd = conn.fileno()
    sleep, now, dumps = time.sleep, time.perf_counter_ns, pickle.dumps
    for _ in range(n):
        if interval:
            sleep(interval)
        data = dumps(now(), pickle.HIGHEST_PROTOCOL)
        os.write(fd, LENGTH.pack(len(data)) + data)
    os.write(fd, LENGTH.pack(0))
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


# process pools: the task reports its pid through a pipe given to the pool's initializer
# (multiprocessing hands a Connection to a child only while starting it)

_POOL_CONN: Any = None


def pool_init(conn: Any) -> None:
    global _POOL_CONN
    _POOL_CONN = conn


def pool_task(seconds: float) -> int:
    """A pure-Python task of ``seconds``; reports its pid when it starts."""
    _POOL_CONN.send(os.getpid())
    end = time.perf_counter() + seconds
    clock = time.perf_counter
    x = 0
    while clock() < end:
        for _ in range(1000):
            x += 1
    return x


# -- the cancellation check on the hot path ----------------------------------------------


def gen_plain(n: int) -> Iterator[int]:
    for i in range(n):  # noqa: UP028 (a Python-level yield per item is the point)
        yield i


def gen_check_cancelled(n: int) -> Iterator[int]:
    from workstream import check_cancelled

    for i in range(n):
        check_cancelled()
        yield i


def gen_cancelled(n: int) -> Iterator[int]:
    from workstream import cancelled

    for i in range(n):
        if cancelled():
            return
        yield i


def ws_check_cost(n: int, repeats: int) -> Iterator[dict[str, float]]:
    """In a real worker: best-of-``repeats`` ns per iteration of an empty loop, of a loop
    calling ``check_cancelled()`` and of one testing ``cancelled()``; yields them once."""
    from workstream import cancelled, check_cancelled

    clock = time.perf_counter_ns
    best = {"empty": math.inf, "check_cancelled": math.inf, "cancelled": math.inf}
    for _ in range(repeats):
        t0 = clock()
        for _i in range(n):
            pass
        t1 = clock()
        for _i in range(n):
            check_cancelled()
        t2 = clock()
        for _i in range(n):
            if cancelled():
                break
        t3 = clock()
        for key, ns in (("empty", t1 - t0), ("check_cancelled", t2 - t1), ("cancelled", t3 - t2)):
            best[key] = min(best[key], ns / n)
    yield best


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
