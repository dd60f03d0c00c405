"""Child-side functions of ``bench/pool.py`` (importable, so every start method and
cloudpickle send them by reference). Stdlib only."""

from __future__ import annotations

from collections.abc import Iterator

import workstream


def tiny(x: int) -> int:
    """A task that does nothing: what is measured is the pool's own cost per task."""
    return x + 1


def first() -> Iterator[int]:
    """Yield one item at once, then return (submit -> start overhead)."""
    yield 1
    return 1


def until_cancelled() -> Iterator[int]:
    """Yield a steady stream until cancelled (cooperatively, at a yield)."""
    i = 0
    while True:
        yield i
        i += 1
        workstream.check_cancelled()


def paced() -> Iterator[int]:
    """Yield an item every millisecond until cancelled: a busy job that leaves CPU."""
    import time

    i = 0
    while True:
        yield i
        i += 1
        time.sleep(0.001)
