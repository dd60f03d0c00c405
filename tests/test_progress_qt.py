"""QtJob.progress: the job's newest Progress, emitted in the GUI thread before finished.

Runs offscreen (QT_QPA_PLATFORM=offscreen, set before the QApplication exists).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6.QtWidgets")

import workers_progress as wp
from gui_support import jobs_unregistered, qt_ready  # noqa: F401 (autouse fixtures)
from workstream import Completed, Progress
from workstream.qt import QtJob

WAIT_MS = 30_000


@pytest.mark.timeout(60)
def test_progress_signal_in_the_gui_thread_before_finished(qtbot: Any) -> None:
    events: list[tuple[str, Any]] = []
    threads: set[int] = set()

    def on_progress(p: Progress) -> None:
        threads.add(threading.get_ident())
        events.append(("progress", p))

    qjob = QtJob.start(wp.steady, 20, 0.01)
    qjob.progress.connect(on_progress)
    qjob.finished.connect(lambda o: events.append(("finished", o)))
    with qtbot.waitSignal(qjob.finished, timeout=WAIT_MS):
        pass
    assert events[-1][0] == "finished" and isinstance(events[-1][1], Completed)
    reports = [p for name, p in events[:-1] if name == "progress"]
    assert reports, "no progress signal"
    dones = [p.done for p in reports]
    assert dones == sorted(dones) and len(set(dones)) == len(dones)  # only new reports
    assert dones[-1] == 20  # the last one before finished
    assert threads == {threading.get_ident()}
