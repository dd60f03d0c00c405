"""QtJob.output: the worker's lines reach the GUI thread as tuples, one emit per turn,
all before ``finished``. Runs offscreen."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6.QtWidgets")

import workers_output as wo
from gui_support import jobs_unregistered, qt_ready  # noqa: F401 (autouse fixtures)
from workstream import OutputEvent
from workstream.qt import QtJob

WAIT_MS = 30_000


def test_output_signal_delivers_tuples_in_the_gui_thread_before_finished(qtbot: Any) -> None:
    """A flood of 20,000 lines: far fewer emits than lines, on the GUI thread, in order,
    the last line before finished."""
    qjob = QtJob.start(wo.raw_lines, 1, 20_000, output="capture")
    got: list[tuple[OutputEvent, ...]] = []
    order: list[str] = []
    threads: set[int] = set()

    def on_output(events: tuple[OutputEvent, ...]) -> None:
        threads.add(threading.get_ident())
        got.append(events)
        order.append("output")

    qjob.output.connect(on_output)
    qjob.finished.connect(lambda _: order.append("finished"))
    with qtbot.waitSignal(qjob.finished, timeout=WAIT_MS):
        pass
    assert threads == {threading.get_ident()}
    assert all(isinstance(chunk, tuple) for chunk in got)
    lines = [e.text for chunk in got for e in chunk]
    assert lines[-1] == "raw 19999"
    numbers = [int(text.split()[1]) for text in lines]
    assert numbers == sorted(set(numbers))  # in order, none twice (a flood may skip some)
    assert len(got) < len(lines)
    assert order[-1] == "finished" and order[-2] == "output"
