"""Child-side functions of ``bench/warm_start.py`` (importable, so every start method and
cloudpickle send them by reference). Stdlib only at import time."""

from __future__ import annotations

from collections.abc import Iterator
from multiprocessing.connection import Connection


def load(heavy: bool) -> str:
    """The Worker's initializer: import numpy when ``heavy`` (a stand-in for a model)."""
    if heavy:
        import numpy  # noqa: F401
    return "loaded"


def first(heavy: bool) -> Iterator[int]:
    """The job: import numpy when ``heavy`` (free in a warm worker), yield one item."""
    if heavy:
        import numpy  # noqa: F401
    yield 1
    return 1


def echo(heavy: bool) -> int:
    """The same job's work for the references (a pool task, a Pipe server's reply)."""
    if heavy:
        import numpy  # noqa: F401
    return 1


def pipe_server(conn: Connection) -> None:
    """A warm multiprocessing.Process answering requests on a Pipe until it gets None."""
    while True:
        req = conn.recv()
        if req is None:
            return
        conn.send(echo(req))
