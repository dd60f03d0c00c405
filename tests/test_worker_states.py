"""A Worker's supervisor moves through the states of ``_core._states.WorkerState``
(checked against its table on every move) as its process boots, runs jobs, is lost and
is closed. Ordered by the Worker's own events (ready, job outcomes, close), no sleeps."""

from __future__ import annotations

import pytest

import workers
import workers_worker as ww
from workstream import CancelledOutcome, Crashed, Worker
from workstream._core._states import WorkerState


@pytest.mark.timeout(60)
def test_boot_idle_running_lost_and_closed() -> None:
    """no-process until a job needs one (prestart=False); idle after a clean job and
    after a cooperative cancel; no-process after a job that cost the process; closed
    once close() returned."""
    worker = Worker(prestart=False)
    sup = worker._sup
    try:
        assert sup.state is WorkerState.NO_PROCESS
        assert worker.start(workers.count, 3).wait(timeout=30).kind == "completed"
        assert sup.state is WorkerState.IDLE
        crashed = worker.start(ww.segfault).wait(timeout=30)
        assert isinstance(crashed, Crashed) and crashed.kept_warm is False
        assert sup.state is WorkerState.NO_PROCESS
        job = worker.start(workers.forever)
        assert next(iter(job)) == 0
        assert sup.state is WorkerState.RUNNING
        job.cancel(grace=20)
        outcome = job.wait(timeout=30)
        assert isinstance(outcome, CancelledOutcome) and outcome.rung == "cooperative"
        assert outcome.kept_warm is True
        assert sup.state is WorkerState.IDLE
    finally:
        worker.close()
    assert sup.state is WorkerState.CLOSED
    assert worker.closed


@pytest.mark.timeout(60)
def test_a_failed_initializer_leaves_the_worker_broken() -> None:
    """An initializer that raises: broken (every job refused) until closed."""
    worker = Worker(ww.init_fails, ("no model",))
    try:
        with pytest.raises(Exception, match="no model"):
            worker.wait_ready(timeout=30)
        assert worker._sup.state is WorkerState.BROKEN
    finally:
        worker.close()
    assert worker._sup.state is WorkerState.CLOSED
