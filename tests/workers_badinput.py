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
