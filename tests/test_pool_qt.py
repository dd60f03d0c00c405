"""A Pool's job in the Qt bridge: QtJob works unchanged, the state queued included.
Runs offscreen, as tests/test_qt.py."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6.QtWidgets")

import workers_pool as wp
import workers_stream as ws
import workstream
from conftest import wait_until
from gui_support import jobs_unregistered, qt_ready  # noqa: F401 (autouse fixtures)
from workstream import CancelledOutcome, Completed, JobState
from workstream.qt import QtJob

WAIT_MS = 30_000


def test_a_pool_job_in_a_qtjob_reports_queued_then_streams(qtbot: Any, tmp_path: Any) -> None:
    with workstream.Pool(1) as pool:
        gate = ws.make_gate(str(tmp_path))
        blocker = pool.start(wp.wait_for_gate, gate)
        wait_until(lambda: blocker.state is JobState.RUNNING, 30, "the blocker to run")
        qjob = QtJob(pool.start(wp.numbers, 50))
        states: list[str] = []
        items: list[int] = []
        qjob.state_changed.connect(states.append)
        qjob.item.connect(items.append)
        qtbot.waitUntil(lambda: states == ["queued"], timeout=WAIT_MS)
        ws.release(gate, wait_until)
        with qtbot.waitSignal(qjob.finished, timeout=WAIT_MS) as got:
            pass
        outcome = got.args[0]
        assert isinstance(outcome, Completed) and outcome.value == 50
        assert items == list(range(50))
        assert states[0] == "queued" and states[-1] == "completed"
        blocker.wait(timeout=30)


def test_stop_on_a_queued_qtjob_ends_it_before_start(qtbot: Any, tmp_path: Any) -> None:
    with workstream.Pool(1) as pool:
        gate = ws.make_gate(str(tmp_path))
        blocker = pool.start(wp.wait_for_gate, gate)
        wait_until(lambda: blocker.state is JobState.RUNNING, 30, "the blocker to run")
        qjob = QtJob(pool.start(wp.numbers, 50))
        with qtbot.waitSignal(qjob.finished, timeout=WAIT_MS) as got:
            qjob.cancel()
        outcome = got.args[0]
        assert isinstance(outcome, CancelledOutcome) and outcome.rung == "before-start"
        assert threading.current_thread() is threading.main_thread()
        ws.release(gate, wait_until)
        blocker.wait(timeout=30)
