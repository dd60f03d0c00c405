"""Child functions for the soak test (``tests/test_soak.py``): one per job kind.

Every kind yields ``(i, payload)`` with ``i = 0, 1, 2, ...`` so the parent can check that
what it received is a contiguous prefix, each item exactly once and in order. Kinds that
end cleanly on a cancel emit ``("end", count)`` last, from a ``finally`` block: on a clean
ending the parent must have received exactly ``count`` numbered items before it.
Sleeps here only simulate work.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import workstream


def flood(n: int | None) -> Iterator[object]:
    """Small items as fast as possible (forever if ``n`` is None); returns the count."""
    i = 0
    try:
        while n is None or i < n:
            i += 1  # counted before the yield: Cancelled may be raised at it, after it sent
            yield (i - 1, None)
    finally:
        workstream.emit(("end", i))
    return i


def arrays(n: int | None, size: int) -> Iterator[object]:
    """Large numpy arrays (``size`` float64 values, all equal to ``i``)."""
    import numpy as np  # only this kind pays for the import
    i = 0
    try:
        while n is None or i < n:
            i += 1
            yield (i - 1, np.full(size, float(i - 1)))
    finally:
        workstream.emit(("end", i))
    return i


def cooperative(n: int | None) -> Iterator[object]:
    """Simulated work between items; polls cancelled() and returns early with a value."""
    i = 0
    try:
        while n is None or i < n:
            if workstream.cancelled():
                return ("stopped at", i)
            time.sleep(0.0005)  # ok: sleep (simulated work)
            i += 1
            yield (i - 1, None)
    finally:
        workstream.emit(("end", i))
    return i


def stuck(n: int) -> Iterator[object]:
    """Yield ``n`` items, then sit in a C call that holds the GIL, SIGTERM blocked: only
    SIGKILL ends it."""
    for i in range(n):
        yield (i, None)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    ctypes.PyDLL(None).sleep(300)  # ok: sleep (the stuck C call)


def crash(n: int, how: str) -> Iterator[object]:
    """Yield ``n`` items, then die without reporting."""
    for i in range(n):
        yield (i, None)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(3)


_KEEP: list[subprocess.Popen[bytes]] = []


def with_subprocess(n: int | None) -> Iterator[object]:
    """Start a subprocess (in our process group), report its pid, then flood."""
    proc = subprocess.Popen(["sleep", "300"])
    _KEEP.append(proc)  # never collected: the worker ends with os._exit, the group kill
    workstream.emit(("pid", proc.pid))  # ends the subprocess (no "still running" warning)
    yield from flood(n)
    return n
