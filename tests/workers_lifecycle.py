"""Child target functions (and a few parent-side helpers) for the lifecycle tests.

Importable by every start method (conftest puts this directory on ``sys.path``).
Functions that must reach a point before the test acts report it by yielding or
emitting a marker; sleeps inside children only simulate work or poll a bounded fact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import workstream

# -- child functions ---------------------------------------------------------------------


def numbers(n: int | None) -> Iterator[int]:
    """Yield 0..n-1 (forever if n is None) and return n."""
    i = 0
    while n is None or i < n:
        yield i
        i += 1
    return n


def numbers_with_finally(n: int | None) -> Iterator[object]:
    """Yield 0..n-1 (forever if None); a ``finally`` block emits "finally" last."""
    try:
        yield from numbers(n)
    finally:
        workstream.emit("finally")
    return n


def padded_numbers(pad: int) -> Iterator[tuple[int, bytes]]:
    """Yield ``(i, pad bytes)`` forever, so a small pipe fills after a few items."""
    i = 0
    blob = b"x" * pad
    try:
        while True:
            yield (i, blob)
            i += 1
    finally:
        workstream.emit("finally")


def wait_for_file_then_count(path: str, n: int) -> Iterator[object]:
    """Yield "ready", wait until ``path`` exists, then yield 0..n-1 and return "done"."""
    yield "ready"
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.005)  # ok: sleep (bounded poll of an external fact)
    yield from range(n)
    return "done"


def spawn_grandchild_then_tick() -> Iterator[object]:
    """Start a subprocess (in our process group), yield its pid, then tick until cancelled.

    A cooperative cancel makes this child exit normally while the grandchild lives on:
    only the parent's kill of the process group after the exit can remove it.
    """
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # ok: sleep
    yield proc.pid
    while True:
        yield "tick"
        time.sleep(0.001)  # ok: sleep (simulated work)


# Out-of-band handshakes. A marker *item* is a race for cancel tests: the child checks
# the cancel flag right after writing an item, and the parent may read the item and set
# the flag first (measured: ~40% of runs on 2 cores), so Cancelled is raised at the
# marker's own yield. These children instead create ``path`` after their last
# cancellation point, right before the call under test; the test waits for the file.


def _mark(path: str) -> None:
    with open(path, "w"):
        pass


def mark_then_sleep(path: str, seconds: float) -> str:
    """Create ``path``, then sleep (SIGTERM raises Cancelled inside the sleep)."""
    try:
        _mark(path)
        time.sleep(seconds)  # ok: sleep (a long call the cancel must interrupt)
        return "woke"
    finally:
        workstream.emit("finally")


def mark_then_sleep_in_c(path: str, seconds: float) -> str:
    """Ignore and block SIGTERM, create ``path``, then sit in a C call."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    _mark(path)
    time.sleep(seconds)  # ok: sleep (the C call under test)
    return "woke"


def mark_then_sleep_default_sigterm(path: str, seconds: float) -> str:
    """Restore SIGTERM's default action (death), create ``path``, then sleep."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _mark(path)
    time.sleep(seconds)  # ok: sleep (the call the signal ends)
    return "woke"


def mark_then_spin_ignoring_sigterm(path: str) -> None:
    """Ignore SIGTERM, create ``path``, then spin in pure Python forever."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _mark(path)
    while True:
        pass


def mark_then_poll_cancelled(path: str) -> str:
    """Create ``path``, poll ``cancelled()`` (never raises) and return normally."""
    _mark(path)
    while not workstream.cancelled():
        pass
    return "saw cancel"


def mark_then_check_cancelled(path: str) -> None:
    """Create ``path``, then loop on ``check_cancelled()``; finally emits "finally"."""
    try:
        _mark(path)
        while True:
            workstream.check_cancelled()
    finally:
        workstream.emit("finally")


def mark_then_spawn_grandchild_and_wait(path: str) -> None:
    """Start a subprocess, then (SIGTERM ignored and blocked) write its pid to ``path``
    and sit in a C call: only SIGKILL to the process group ends both."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # ok: sleep
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(proc.pid))
    os.rename(tmp, path)
    time.sleep(300)  # ok: sleep (stuck child under test)


def spawn_grandchild_then_return() -> Iterator[int]:
    """Start a subprocess (in our process group), yield its pid, and return at once."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # ok: sleep
    yield proc.pid
    return "done"


def spawn_grandchild_then_hold_gil() -> Iterator[int]:
    """Start a subprocess, yield its pid, then block in a C call that holds the GIL
    (libc sleep through ctypes.PyDLL) with SIGTERM blocked: no thread of this child can
    run Python code any more, so its lifeline watchdog cannot act either."""
    import ctypes

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # ok: sleep
    yield proc.pid
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    ctypes.PyDLL(None).sleep(300)  # ok: sleep (a C call holding the GIL, under test)


def return_immediately() -> str:
    return "done"


def emit_ready_then_slow_cleanup(cleanup: float) -> Iterator[str]:
    """Yield until cancelled; the ``finally`` block takes ``cleanup`` seconds, then emits."""
    try:
        while True:
            yield "tick"
    finally:
        time.sleep(cleanup)  # ok: sleep (simulated checkpoint save)
        workstream.emit("saved")


def one_then_batch(n: int, big: int) -> Iterator[object]:
    """Yield 0 alone, then 1..n-1 and a ``big``-byte item that travel as one batch; then
    wait for the cancel at a cancellation point.

    Run with a long ``batch_window`` and ``max_batch_bytes <= big``: item 0 is written at
    once (the channel was idle), 1..n-1 wait for the window, and the big item forces one
    write of all of them.
    """
    yield 0
    yield from range(1, n)
    yield b"x" * big
    while True:
        workstream.check_cancelled()
        time.sleep(0.005)  # ok: sleep (simulated work between cancellation points)


def stubborn_flood() -> None:
    """Emit strictly increasing ints as fast as possible and swallow every Cancelled
    (the seed's ``while True: queue.put(i)``): only SIGKILL stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    i = 0
    while True:
        try:
            while True:
                i += 1
                workstream.emit(i)
        except workstream.Cancelled:
            pass


def _pattern(i: int, size: int) -> bytes:
    return bytes([i % 251]) * size


def check_big_item(item: object, size: int) -> bool:
    """True iff ``item`` is exactly what :func:`big_items_then_die` yields at its index."""
    if not (isinstance(item, tuple) and len(item) == 2):
        return False
    i, data = item
    return isinstance(i, int) and data == _pattern(i, size)


def _write_stalled(window: float) -> bool:
    """True once this process wrote nothing for ``window`` seconds (per /proc/self/io)."""

    def wchar() -> int:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
        raise RuntimeError("no wchar in /proc/self/io")

    last = wchar()
    since = time.monotonic()
    while True:
        time.sleep(0.01)  # ok: sleep (bounded poll of the kernel's write counter)
        now = wchar()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= window:
            return True


def big_items_then_die(size: int, mode: str, kill_after: int) -> Iterator[tuple[int, bytes]]:
    """Yield ``(i, size bytes)`` items forever; a helper thread SIGKILLs this process.

    ``mode="stalled"``: kill once the writes stopped (the parent paused reading, so the
    main thread is blocked in the middle of a frame bigger than the pipe) after at least
    ``kill_after`` items were yielded. ``mode="streaming"``: kill as soon as
    ``kill_after`` items were yielded, while later items are being written.
    """
    reached = threading.Event()

    def killer() -> None:
        reached.wait()
        if mode == "stalled":
            _write_stalled(0.15)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=killer, daemon=True).start()
    i = 0
    while True:
        yield (i, _pattern(i, size))
        i += 1
        if i == kill_after:
            reached.set()


# -- parent-side helpers -----------------------------------------------------------------


def proc_state(pid: int) -> str | None:
    """The state letter of ``pid`` from /proc (None if there is no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def pid_alive(pid: int) -> bool:
    """True iff ``pid`` exists and is not a zombie (a dead process awaiting its reaper)."""
    return proc_state(pid) not in (None, "Z", "X")


def pid_gone(pid: int) -> bool:
    """True iff ``pid`` has no /proc entry at all (it died *and* was reaped)."""
    return not os.path.exists(f"/proc/{pid}")


def writes_stalled(pid: int, window: float = 0.1) -> Callable[[], bool]:
    """A predicate for ``conftest.wait_until``: ``pid`` wrote nothing for ``window`` s."""
    state = {"last": -1, "since": time.monotonic()}

    def check() -> bool:
        try:
            with open(f"/proc/{pid}/io") as f:
                wchar = int(next(ln for ln in f if ln.startswith("wchar:")).split()[1])
        except (OSError, StopIteration):
            return False
        now = time.monotonic()
        if wchar != state["last"]:
            state["last"], state["since"] = wchar, now
            return False
        return now - state["since"] >= window

    return check


def assert_contiguous(items: list[object], *, start: int = 0) -> int:
    """Assert ``items`` is exactly ``start, start+1, ...``; return how many."""
    for index, item in enumerate(items):
        if item != start + index:
            around = items[max(0, index - 2) : index + 3]
            raise AssertionError(
                f"items are not contiguous from {start}: item #{index} is {item!r} "
                f"(around it: {around!r})"
            )
    return len(items)
