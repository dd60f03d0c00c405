"""Child functions for the Pool tests (``tests/test_pool*.py``).

Importable by every start method (conftest puts this directory on ``sys.path``). A
function that must reach a point before the test acts says so out of band (a marker
file, a FIFO), never by timing.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import workstream

RUN_COUNT = 0  # jobs run in this process (the order in which a one-process pool ran them)
HOARD: list[bytearray] = []


def init_tag(tag: str) -> dict[str, object]:
    return {"tag": tag, "pid": os.getpid()}


def state_and_pid() -> tuple[object, int]:
    return workstream.worker_state(), os.getpid()


def pid() -> int:
    return os.getpid()


def square(x: int) -> int:
    return x * x


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad input {x}")
    return x


def order_mark(label: object) -> tuple[int, object]:
    """Return (how many jobs this process ran before this one, label)."""
    global RUN_COUNT
    RUN_COUNT += 1
    return RUN_COUNT, label


def numbers(n: int) -> Iterator[int]:
    yield from range(n)
    return n


def stream_forever(tag: int) -> Iterator[tuple[int, int]]:
    """Yield (tag, i) every millisecond until cancelled (cooperatively)."""
    i = 0
    while True:
        yield (tag, i)
        i += 1
        time.sleep(0.001)  # ok: sleep (a steady producer's pace)


def mark_then_stuck(path: str) -> str:
    """Block SIGTERM, create ``path``, then sit in a C call: only SIGKILL ends it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    with open(path, "w"):
        pass
    time.sleep(300)  # ok: sleep (the stuck C call under test)
    return "woke"


def mark_then_sleep(path: str, seconds: float) -> str:
    """Create ``path``, then sleep in Python (SIGTERM raises Cancelled in it)."""
    with open(path, "w"):
        pass
    time.sleep(seconds)  # ok: sleep (a long call a timeout or cancel interrupts)
    return "woke"


def cooperative_forever() -> Iterator[int]:
    """Yield until cancelled: a cancel stops it cooperatively (the process is kept)."""
    i = 0
    while True:
        workstream.check_cancelled()
        yield i
        i += 1
        time.sleep(0.001)  # ok: sleep (a steady producer's pace)


def wait_for_gate(gate: str) -> int:
    """Block until the test releases the FIFO ``gate``; return the pid."""
    with open(gate, "rb") as fifo:
        fifo.read(1)
    return os.getpid()


def maybe_gate(gate: str | None) -> int:
    """0 at once without a gate; else block until the test releases it."""
    if gate is None:
        return 0
    return wait_for_gate(gate)


def touch(path: str) -> str:
    with open(path, "w"):
        pass
    return path


def hoard(megabytes: int) -> int:
    """Keep ``megabytes`` of touched memory alive in this process; return the pid."""
    block = bytearray(megabytes << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    HOARD.append(block)
    return os.getpid()


def crash() -> None:
    os._exit(7)
