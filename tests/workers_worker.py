"""Child functions for the warm-worker tests (``tests/test_worker.py``).

Importable by every start method (conftest puts this directory on ``sys.path``).
Functions that must reach a point before the test acts say so out of band (a marker
file created after their last cancellation point), never by timing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Iterator

import workstream

INIT_CALLS = 0  # how many times the initializer ran in this process
STATE: dict[str, object] = {}


def init_counter(tag: str) -> dict[str, object]:
    """Count initializer runs in this process; return a state object for the jobs."""
    global INIT_CALLS
    INIT_CALLS += 1
    STATE["tag"] = tag
    return {"tag": tag, "pid": os.getpid()}


def init_fails(message: str) -> None:
    raise ValueError(message)


def init_crashes() -> None:
    os._exit(3)


def report_state() -> tuple[object, int, object, int]:
    """Return (worker_state(), initializer runs, the global the initializer set, pid)."""
    return workstream.worker_state(), INIT_CALLS, STATE.get("tag"), os.getpid()


def tagged_numbers(tag: str, n: int) -> Iterator[tuple[str, int]]:
    """Yield (tag, 0) .. (tag, n-1); return the pid."""
    for i in range(n):
        yield (tag, i)
    return os.getpid()


def tagged_flood(tag: str, path: str) -> Iterator[tuple[str, int]]:
    """Yield (tag, i) forever; create ``path`` after the first 1000 items."""
    i = 0
    while True:
        yield (tag, i)
        i += 1
        if i == 1000:
            with open(path, "w"):
                pass


def mark_then_sleep_in_c(path: str) -> str:
    """Block SIGTERM, create ``path``, then sit in a C call: only SIGKILL ends it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    with open(path, "w"):
        pass
    time.sleep(300)  # ok: sleep (the C call under test)
    return "woke"


def mark_then_sleep(path: str) -> str:
    """Create ``path``, then sleep in Python (SIGTERM raises Cancelled in it)."""
    with open(path, "w"):
        pass
    time.sleep(300)  # ok: sleep (a long call the SIGTERM rung interrupts)
    return "woke"


def exit_hard(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def pid() -> int:
    return os.getpid()


def flag_after_cancel(path: str) -> Iterator[object]:
    """Yield until cancelled (cooperatively); ``finally`` reports the pid."""
    try:
        with open(path, "w"):
            pass
        while True:
            workstream.check_cancelled()
            yield "tick"
    finally:
        workstream.emit(("finally", os.getpid()))


def init_wait_for_file(path: str) -> str:
    """An initializer that waits (bounded) until ``path`` exists."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.005)  # ok: sleep (bounded poll of an external fact)
    return "initialized"


def cancel_flag_at_start() -> bool:
    """Return whether this job saw a cancel request before doing anything."""
    return workstream.cancelled()


def ignore_sigterm_and_return() -> str:
    """Leave SIGTERM ignored and blocked in the process, and end normally."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    return "done"


def leave_an_emitting_thread() -> str:
    """Start a thread that emits forever (a bug in user code) and return at once."""
    import threading

    def spam() -> None:
        while True:
            time.sleep(0.01)  # ok: sleep (a stray producer's pace)
            workstream.emit("stray")

    threading.Thread(target=spam, daemon=True).start()
    return "returned"


def tagged_stream(tag: int) -> Iterator[tuple[int, int]]:
    """Yield (tag, i) forever: cancelled cooperatively at some yield."""
    i = 0
    while True:
        yield (tag, i)
        i += 1
