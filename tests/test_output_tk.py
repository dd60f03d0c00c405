"""TkJob on_output: the worker's lines reach the Tk thread as tuples, at most one call
per poll, all before ``on_done``. Runs on a private Xvfb display (skipped without one)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import workers_output as wo
from gui_support import jobs_unregistered, xvfb_display  # noqa: F401 (autouse fixture)
from workstream import OutputEvent

tkinter = pytest.importorskip("tkinter", reason="tkinter is not available in this Python")
from workstream.tk import TkJob  # noqa: E402

BOUND = 30.0
_KEEP: list[Any] = []  # Tk roots are freed at exit, on the main thread (see test_tk)


def run_until(root: Any, predicate: Callable[[], bool], timeout: float = BOUND) -> None:
    """Run the Tk main loop until ``predicate()`` is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    timed_out = []

    def check() -> None:
        if predicate():
            root.quit()
        elif time.monotonic() > deadline:
            timed_out.append(True)
            root.quit()
        else:
            root.after(2, check)

    root.after(0, check)
    root.mainloop()
    if timed_out:
        pytest.fail(f"the Tk loop did not reach the expected state within {timeout} s")


@pytest.fixture(scope="module")
def root() -> Iterator[Any]:
    with xvfb_display() as name:
        tk_root = tkinter.Tk(screenName=name)
        _KEEP.append(tk_root)
        tk_root.withdraw()
        tk_root.update()
        try:
            yield tk_root
        finally:
            tk_root.destroy()


def test_on_output_gets_tuples_in_the_tk_thread_before_on_done(root: Any) -> None:
    got: list[tuple[OutputEvent, ...]] = []
    order: list[str] = []
    threads: set[int] = set()

    def on_output(events: tuple[OutputEvent, ...]) -> None:
        threads.add(threading.get_ident())
        got.append(events)
        order.append("output")

    TkJob.start(wo.raw_lines, 1, 5000, widget=root, on_output=on_output,
                on_done=lambda _: order.append("done"))
    run_until(root, lambda: "done" in order)
    assert threads == {threading.get_ident()}
    lines = [e.text for chunk in got for e in chunk]
    assert lines[-1] == "raw 4999"
    numbers = [int(text.split()[1]) for text in lines]
    assert numbers == sorted(set(numbers))  # in order, none twice (a flood may skip some)
    assert len(got) < len(lines)
    assert order[-1] == "done" and order[-2] == "output"
