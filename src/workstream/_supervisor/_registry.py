"""Every live job of this process, so none is left behind when the interpreter exits.

A job is registered by ``start()`` and removed by its runner once the outcome is
published. The registry holds a strong reference, so a job whose ``Job`` object the user
dropped still runs to its end and is reaped. At interpreter exit every live job is
cancelled (with its own grace) and waited for, then the guard process is released.
In a forked child the registry starts empty.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Callable
from typing import Protocol


class _Stoppable(Protocol):
    def cancel(self) -> bool: ...
    def _wait_quietly(self, timeout: float) -> None: ...
    def _grace(self) -> float: ...


_lock = threading.Lock()
_live: set[_Stoppable] = set()


def add(job: _Stoppable) -> None:
    with _lock:
        _live.add(job)


def remove(job: _Stoppable) -> None:
    with _lock:
        _live.discard(job)


def live_jobs() -> list[_Stoppable]:
    with _lock:
        return list(_live)


def close_when_collected(
    lock: threading.Lock, close: Callable[..., None], thread_name: str
) -> None:
    """Call ``close(wait=False)`` for an owner (a Worker, a Pool) whose facade was
    garbage-collected. The collector may run on a thread that holds ``lock`` (it is not
    re-entrant): then a short-lived thread named ``thread_name`` does it."""
    if lock.acquire(blocking=False):
        lock.release()
        close(wait=False)
    else:
        threading.Thread(
            target=close, kwargs={"wait": False}, name=thread_name, daemon=True,
        ).start()


def _at_exit() -> None:
    jobs = live_jobs()
    for job in jobs:
        with contextlib.suppress(Exception):
            job.cancel()
    for job in jobs:
        with contextlib.suppress(Exception):
            job._wait_quietly(job._grace() + 1.0)
    from . import _guard

    _guard.shutdown()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    _live.clear()


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
