"""Child target functions for the ``workstream.shared_empty`` tests (importable by name, so
every start method finds them)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

import workstream

KIB = 1 << 10


def write_after_yield(n_bytes: int, container: bool) -> Iterator[object]:
    """Yield one shared array (alone or in a dict), then write into it, then say so."""
    a = workstream.shared_empty(n_bytes // 8)
    a[:] = 7.0
    yield {"array": a, "n": 1} if container else a
    a[0] = -1.0  # after the yield: the parent's array shows it (the same memory)
    yield "written"


def yield_twice(n_bytes: int) -> Iterator[object]:
    """The same shared array twice (the second is a copy), then a write into it."""
    a = workstream.shared_empty(n_bytes // 8)
    a[:] = 3.0
    yield a
    yield a
    a[0] = -1.0
    yield "written"


def numbered(count: int, n_bytes: int, dtype: str = "float64") -> Iterator[object]:
    """``count`` shared arrays, the i-th filled with i; each dropped after its yield."""
    for i in range(count):
        a = workstream.shared_empty((n_bytes // np.dtype(dtype).itemsize,), dtype)
        a[:] = i
        yield a
        del a


def numbered_2d(count: int) -> Iterator[object]:
    for i in range(count):
        a = workstream.shared_empty((256, 128), np.float32)
        a[:] = i
        yield a


def make(shape: object, dtype: object) -> object:
    """Return (not yield) what shared_empty makes: its errors become the job's."""
    a = workstream.shared_empty(shape, dtype)  # type: ignore[arg-type]
    return a.shape, str(a.dtype)


def keep_all(count: int, n_bytes: int) -> Iterator[object]:
    """Keep every array in the child too: no block may be reused under them."""
    kept = []
    for i in range(count):
        a = workstream.shared_empty(n_bytes // 8)
        a[:] = i
        kept.append(a)
        yield a
    for i, a in enumerate(kept):
        assert np.all(a == i)


def unpicklable_then_alone(n_bytes: int) -> Iterator[object]:
    """A shared array in an item that fails to pickle, then alone: still zero copy."""
    import threading

    a = workstream.shared_empty(n_bytes // 8)
    a[:] = 5.0
    with contextlib.suppress(TypeError):  # raised at this yield: the item was not sent
        yield [a, threading.Lock()]
    yield a
    a[0] = -1.0
    yield "written"
