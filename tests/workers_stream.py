"""Child target functions for the stream / outcome / callback / bad-input tests.

Importable by name (so every start method finds them). A function that must reach a
point before the test acts reports it by yielding or emitting a marker; a function that
must wait for the test blocks on a FIFO that the test opens with :func:`release`.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator

import workstream

# -- handshakes ---------------------------------------------------------------------------


def make_gate(directory: str, name: str = "gate") -> str:
    """Create a FIFO the child blocks on until :func:`release` opens it; return its path."""
    path = os.path.join(directory, name)
    os.mkfifo(path)
    return path


def wait_for_release(path: str) -> bytes:
    """Child side: block until the test releases ``path`` (a FIFO); return what it sent."""
    with open(path, "rb") as fifo:  # blocks until a writer opens it
        return fifo.read(1)


def release(path: str, wait_until: Callable[..., None], timeout: float = 10.0) -> None:
    """Test side: wake the child blocked in :func:`wait_for_release` on ``path``.

    Opening a FIFO for writing without a reader fails with ENXIO (non-blocking), so this
    retries (bounded by ``wait_until``) until the child has opened its end.
    """

    def try_once() -> bool:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return False
            raise
        try:
            os.write(fd, b"g")
        finally:
            os.close(fd)
        return True

    wait_until(try_once, timeout, f"the child to open {path}")


def hold(path: str, wait_until: Callable[..., None], timeout: float = 10.0) -> int:
    """Test side: wait until the child has opened ``path`` (a FIFO) for reading, so it is
    past every cancellation point before :func:`wait_for_release`; return a writer fd
    that keeps it blocked in ``read()`` until the test writes to or closes it."""
    fds: list[int] = []

    def try_once() -> bool:
        try:
            fds.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return False
            raise
        return True

    wait_until(try_once, timeout, f"the child to open {path}")
    return fds[0]


# -- plain results and failures -------------------------------------------------------------


def plain_return(value: object) -> object:
    """A plain function: no items, returns ``value``."""
    return value


def plain_emit(n: int) -> str:
    """A plain function streaming with emit()."""
    for i in range(n):
        workstream.emit(("emitted", i))
    return f"emitted {n}"


def gen_count_dicts(n: int) -> Iterator[dict[str, int]]:
    for i in range(n):
        yield {"i": i, "square": i * i}
    return n


class LockedError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_value_error() -> None:
    raise ValueError("the user's own error")  # marker: raise-value-error


def raise_unpicklable_exception() -> None:
    raise LockedError("holding a lock")  # marker: raise-locked-error


def plain_sys_exit(code: int) -> None:
    sys.exit(code)  # marker: plain-sys-exit


def gen_sys_exit(code: int) -> Iterator[int]:
    yield 0
    sys.exit(code)  # marker: gen-sys-exit


def return_lock() -> object:
    """Return a value that cannot be pickled in the child."""
    return threading.Lock()


def _install_child_only_class() -> type:
    """Create, in this (child) process only, a class whose pickles name a module
    attribute that exists only here, so the parent cannot unpickle them."""

    def rebuild() -> str:
        return "rebuilt"

    rebuild.__name__ = rebuild.__qualname__ = "_only_in_the_child"
    globals()["_only_in_the_child"] = rebuild
    return type("ChildOnly", (), {"__reduce__": lambda self: (rebuild, ())})


def child_only_item_after_handshake(gate: str) -> Iterator[object]:
    """Yield "before", wait for the test, then an item the parent cannot unpickle."""
    yield "before"
    wait_for_release(gate)
    cls = _install_child_only_class()
    yield cls()
    yield "after"  # never reached: the parent cancels the job
    return "not reached"


def child_only_item_in_one_batch() -> Iterator[object]:
    """Yield two good items and then, in the same batch, one the parent cannot unpickle.

    With a long ``batch_window`` only the first item is written alone (the channel was
    idle); "b" and the bad item are written together at the final flush.
    """
    cls = _install_child_only_class()
    yield "a"
    yield "b"
    yield cls()
    return "done"


def child_only_result() -> object:
    """Return a value the parent cannot unpickle."""
    cls = _install_child_only_class()
    return cls()


def start_inside_worker() -> object:
    job = workstream.start(plain_return, 1)  # raises: no nested workers
    return job.result()


# -- items ------------------------------------------------------------------------------------


def yield_unpicklable_at_line() -> Iterator[object]:
    yield "first"
    yield threading.Lock()  # marker: yield-lock
    yield "never"


def yield_unpicklable_and_recover() -> Iterator[object]:
    """The pickling error is raised at the yield: catching it there lets fn go on."""
    yield "first"
    try:
        yield threading.Lock()
    except TypeError as exc:
        yield f"caught {type(exc).__name__}"
    yield "last"
    return "recovered"


def emit_unpicklable() -> str:
    workstream.emit("first")
    workstream.emit(threading.Lock())  # marker: emit-lock
    return "never"


def big_items(count: int, size: int) -> Iterator[bytes]:
    """Yield ``count`` distinct ``size``-byte objects."""
    for i in range(count):
        yield bytes([i % 251]) * (size - 8) + struct.pack("<Q", i)
    return count


def expected_big_item(i: int, size: int) -> bytes:
    return bytes([i % 251]) * (size - 8) + struct.pack("<Q", i)


def record_progress(n: int, progress_path: str, pad: int) -> Iterator[tuple[int, bytes]]:
    """Yield ``n`` padded items; before producing item i, store i in ``progress_path``.

    The test reads the file to learn how far the child got ahead of the consumer.
    """
    fd = os.open(progress_path, os.O_WRONLY)
    try:
        padding = b"p" * pad
        for i in range(n):
            os.pwrite(fd, struct.pack("<q", i), 0)
            yield i, padding
    finally:
        os.close(fd)
    return n


def read_progress(progress_path: str) -> int:
    """Test side: the index of the last item the child produced (-1 before the first)."""
    with open(progress_path, "rb") as f:
        data = f.read(8)
    return struct.unpack("<q", data)[0] if len(data) == 8 else -1


def yield_then_block(gate: str, first: object = "first") -> Iterator[object]:
    """Yield one item, block until released, then yield "second" and return."""
    yield first
    wait_for_release(gate)
    yield "second"
    return "released"


def emit_then_block(gate: str) -> str:
    workstream.emit("first")
    wait_for_release(gate)
    workstream.emit("second")
    return "released"


def burst_then_block(n: int, gate: str) -> Iterator[object]:
    """Yield n items quickly, block until released, then yield "tail"."""
    yield from range(n)
    wait_for_release(gate)
    yield "tail"
    return "released"


def forever_marked() -> Iterator[int]:
    """Yield increasing ints until cancelled."""
    i = 0
    while True:
        yield i
        i += 1


def line_of(marker: str) -> int:
    """Test side: the line number of the line of this file that carries ``marker``."""
    with open(__file__, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.rstrip().endswith(f"# marker: {marker}"):
                return number
    raise LookupError(marker)


def emit_from_threads(threads: int, per_thread: int) -> int:
    """Emit ``per_thread`` items from each of ``threads`` threads at once."""
    start = threading.Barrier(threads)

    def run(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            workstream.emit((t, i))

    workers_ = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers_:
        w.start()
    for w in workers_:
        w.join()
    return threads * per_thread


def yield_and_emit(n: int) -> Iterator[object]:
    """Alternate yield and emit: the stream keeps the order in which they happened."""
    for i in range(n):
        yield ("yield", i)
        workstream.emit(("emit", i))
    return n


def _data_fd() -> int:
    from workstream._child import _context

    ctx = _context._current
    assert ctx is not None
    ctx.sender.flush()
    return ctx.sender._fd


def _stuck_until_sigkill() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    time.sleep(300)  # ok: sleep (a stuck child the parent must kill)


def write_garbage_to_channel(gate: str) -> Iterator[str]:
    """Yield one item, wait until the test took it, then write bytes that are not a frame
    into the data channel and sit in a C call with SIGTERM blocked (only SIGKILL ends it)."""
    yield "before"
    wait_for_release(gate)
    os.write(_data_fd(), b"NOT A FRAME AT ALL")
    _stuck_until_sigkill()


def write_good_frame_and_garbage_at_once() -> None:
    """Write, in one write() (so the parent reads it as one chunk), a valid ITEMS frame
    followed by bytes that are not a frame; then get stuck."""
    import pickle

    from workstream._transport import _framing

    good = _framing.encode_items([pickle.dumps("good-1"), pickle.dumps("good-2")])
    os.write(_data_fd(), good + b"NOT A FRAME AT ALL")
    _stuck_until_sigkill()


class _BlockingPickle:
    """An item whose pickling blocks until ``release`` is set (pickling runs inside emit)."""

    def __init__(self, entered: threading.Event, release: threading.Event) -> None:
        self.entered = entered
        self.release = release

    def __reduce__(self) -> tuple[object, ...]:
        self.entered.set()
        self.release.wait()
        return (str, ("pickled",))


def overlapping_helper_emits_then_block(gate: str) -> str:
    """Two helper threads emit with overlapping calls (A enters, B enters, A leaves,
    B leaves), then the main thread reports ready and blocks in user code, where SIGTERM
    must raise Cancelled."""
    a_in, a_go, b_in, b_go = (threading.Event() for _ in range(4))
    a = threading.Thread(target=workstream.emit, args=(_BlockingPickle(a_in, a_go),))
    b = threading.Thread(target=workstream.emit, args=(_BlockingPickle(b_in, b_go),))
    a.start()
    a_in.wait()
    b.start()
    b_in.wait()
    a_go.set()
    a.join()
    b_go.set()
    b.join()
    workstream.emit("ready")
    wait_for_release(gate)  # user code that SIGTERM must interrupt
    return "released"


def helper_emit_during_main_write(marker_path: str) -> str:
    """A helper thread's emit() ends while the main thread is blocked writing a big frame
    (the parent stopped reading). Once that happened, ``marker_path`` is created; a
    SIGTERM then must not tear the main thread's frame."""
    from workstream._child import _context

    ctx = _context._current
    assert ctx is not None
    h_in, h_go = threading.Event(), threading.Event()
    helper = threading.Thread(target=workstream.emit, args=(_BlockingPickle(h_in, h_go),))
    helper.start()
    h_in.wait()

    def releaser() -> None:
        # Wait until "small" was written and the big frame's write holds the lock.
        while not (ctx.sender.items_sent >= 1 and ctx.sender._write_lock.locked()):
            time.sleep(0.001)  # ok: sleep (bounded poll inside the child)
        h_go.set()
        helper.join()
        with open(marker_path, "w"):
            pass

    threading.Thread(target=releaser, daemon=True).start()
    workstream.emit("small")  # fills the parent's one-item buffer: it stops reading
    workstream.emit(b"B" * (4 << 20))  # blocks part-way through the frame
    return "not reached"
