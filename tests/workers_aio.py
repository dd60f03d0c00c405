"""Child target functions for the asyncio tests (importable by every start method)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import workstream


def ready_then_idle() -> Iterator[str]:
    """Yield "ready", then produce nothing until cancelled (a cancellation point every
    5 ms): a consumer waiting for the next item waits until the job is cancelled."""
    yield "ready"
    while True:
        workstream.check_cancelled()
        time.sleep(0.005)  # ok: sleep (idle work between cancellation points)


def tick(interval: float) -> Iterator[int]:
    """Yield 0, 1, 2... every ``interval`` seconds until cancelled."""
    i = 0
    while True:
        yield i
        i += 1
        time.sleep(interval)  # ok: sleep (simulated work between items)
