"""Child target functions for the tests (importable, so every start method finds them).

Functions that must reach a certain point before the test acts report it with a
handshake: they yield (or emit) a marker item the test waits for, never a sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import workstream


def return_value(x: object) -> object:
    return x


def count(n: int) -> Iterator[int]:
    """Yield 0..n-1, return n."""
    yield from range(n)
    return n



def flood_dicts(n: int) -> Iterator[dict[str, float]]:
    for i in range(n):
        yield {"step": i, "loss": 1.0 / (i + 1)}


def forever() -> Iterator[int]:
    """Yield increasing ints until cancelled; record the finally block as a last item."""
    i = 0
    try:
        while True:
            yield i
            i += 1
    finally:
        workstream.emit("finally")


def raise_after(n: int) -> Iterator[int]:
    yield from range(n)
    raise ValueError(f"boom after {n}")





def crash_with(kind: str, after: int = 1) -> Iterator[int]:
    yield from range(after)
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "os_exit":
        os._exit(3)
    elif kind == "sys_exit":
        sys.exit(4)
    raise AssertionError(kind)


def spawn_grandchild_then_wait() -> Iterator[int]:
    """Start a subprocess (in our process group), report its pid, then wait forever."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # ok: sleep
    yield proc.pid
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    time.sleep(300)  # ok: sleep (stuck child under test)





def catch_cancel_and_return() -> Iterator[str]:
    try:
        while True:
            yield "tick"
    except workstream.Cancelled:
        return "checkpoint.pt"


def flood_then_die(n: int) -> Iterator[int]:
    """Yield 0..n-1 as fast as possible, then SIGKILL ourselves right after the last."""
    yield from range(n)
    os.kill(os.getpid(), signal.SIGKILL)


def sparse_then_die(n: int, gap: float) -> Iterator[int]:
    """Yield 0..n-1 with ``gap`` seconds of work between, SIGKILL right after the last."""
    for i in range(n):
        if i:
            time.sleep(gap)  # ok: sleep (simulated work between items)
        yield i
    os.kill(os.getpid(), signal.SIGKILL)


def emit_from_threads_then_die(threads: int, n: int) -> None:
    """``threads`` threads each emit ``(t, 0..n-1)``; SIGKILL once every emit returned."""
    def run(t: int) -> None:
        for i in range(n):
            workstream.emit((t, i))

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    os.kill(os.getpid(), signal.SIGKILL)
