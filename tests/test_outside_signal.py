"""issue 9 §4: a worker stopped by a SIGTERM that nobody in workstream sent (``kill PID``
from a shell, a service manager) does not end "cancelled" as if the user had pressed
Stop: it ends ``crashed``, with ``signal_name == "SIGTERM"`` and an error that says the
signal came from outside."""

from __future__ import annotations

import os
import pickle
import signal
from typing import Any

import pytest

import workers_lifecycle as wl
import workers_stream as ws
import workstream
from conftest import wait_until


@pytest.mark.timeout(30)
def test_outside_sigterm_is_a_crash_not_a_cancel(tmp_path: Any) -> None:
    """Regression test for issue 9 §4: the outcome is Crashed with signal_name SIGTERM,
    distinguishable without reading cancel_requested."""
    gate = ws.make_gate(str(tmp_path))
    job = workstream.start(ws.yield_then_block, gate)
    assert next(iter(job)) == "first"
    assert job.pid is not None
    os.kill(job.pid, signal.SIGTERM)
    outcome = job.wait(timeout=20)
    assert type(outcome) is workstream.Crashed, outcome
    assert outcome.signal_name == "SIGTERM"
    assert outcome.error.signal_name == "SIGTERM"
    assert str(outcome.error).startswith(
        f"worker process {job.pid} was stopped by SIGTERM (-15) sent from outside workstream"
    )
    assert job.state is workstream.JobState.CRASHED
    with pytest.raises(workstream.WorkerCrashed):
        job.result()
    # The error survives pickling (it crosses processes in user code, too).
    again = pickle.loads(pickle.dumps(outcome.error))
    assert str(again) == str(outcome.error) and again.signal_name == "SIGTERM"


@pytest.mark.timeout(30)
def test_cancel_still_reports_cancelled(tmp_path: Any) -> None:
    """Workstream's own SIGTERM (the cancel ladder) still ends ``cancelled``/``sigterm``.
    The child is past its last cancellation point (it created the marker and sleeps), so
    only the SIGTERM can stop it."""
    marker = tmp_path / "ready"
    job = workstream.start(wl.mark_then_sleep, str(marker), 30)
    wait_until(marker.exists, 15, "the child to create its marker")
    job.cancel(grace=5, term_after=0)
    outcome = job.wait(timeout=20)
    assert type(outcome) is workstream.CancelledOutcome, outcome
    assert outcome.rung == "sigterm"


@pytest.mark.timeout(40)
def test_outside_sigterm_on_a_warm_worker_retires_the_process(tmp_path: Any) -> None:
    """On a Worker the job ends crashed and the process is not kept: someone wanted it
    gone. The Worker runs the next job on a fresh process."""
    gate = ws.make_gate(str(tmp_path))
    with workstream.Worker() as worker:
        job = worker.start(ws.yield_then_block, gate)
        assert next(iter(job)) == "first"
        pid = job.pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        outcome = job.wait(timeout=20)
        assert type(outcome) is workstream.Crashed, outcome
        assert outcome.signal_name == "SIGTERM"
        assert outcome.kept_warm is False
        nxt = worker.start(ws.yield_then_block, ws.make_gate(str(tmp_path), "gate2"))
        assert next(iter(nxt)) == "first"
        assert nxt.pid != pid
        ws.release(str(tmp_path / "gate2"), wait_until)
        assert nxt.result(timeout=20) == "released"
