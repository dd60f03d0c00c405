"""Child functions for the README's misuse table (``tests/test_bad_input.py``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import workstream


def fn(*args: object) -> Iterator[object]:
    """The ``fn`` of the README table: yield the arguments, return how many."""
    yield from args
    return len(args)


async def async_fn() -> None:
    """An ``async def`` function (start() refuses it)."""


def run_code(code: str) -> object:
    """Evaluate ``code`` inside the worker (the table's "in a worker" rows)."""
    namespace: dict[str, Any] = {
        "workstream": workstream, "start": workstream.start, "fn": fn,
        "threading": threading,
    }
    return eval(code, namespace)


def greet(name: str) -> str:
    """A function with a parameter named like an option (``name``)."""
    return f"hello {name}"


def flood() -> Iterator[int]:
    """Yield small items for ever: with nobody reading, the buffer fills up."""
    i = 0
    while True:
        yield i
        i += 1


class ExitOnPickle:
    """An argument whose pickling raises SystemExit."""

    def __reduce__(self) -> Any:
        raise SystemExit(3)


class InterruptOnPickle:
    """An argument whose pickling raises KeyboardInterrupt."""

    def __reduce__(self) -> Any:
        raise KeyboardInterrupt
