"""When workstream's own machinery fails, the job still ends and nothing is left behind."""

from __future__ import annotations

import os
import signal
import time

import pytest

import workers
import workstream
from workstream._supervisor import _guard


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_failure_after_the_process_started_kills_and_reaps_it(
    monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """If registering the new worker with the guard fails, the job ends crashed with the
    cause in its message, and the already started process is killed and reaped (the leak
    check sees no child, fd or thread left)."""

    started: list[int] = []

    def refuse(pgid: int) -> None:
        started.append(pgid)
        raise OSError(24, "Too many open files (injected)")

    monkeypatch.setattr(_guard, "register", refuse)
    job = workstream.start(workers.count, 3, start_method=method)
    outcome = job.wait(timeout=20)
    assert isinstance(outcome, workstream.Crashed)
    assert "Too many open files (injected)" in str(outcome.error)
    assert list(job) == []
    [pid] = started
    assert not os.path.exists(f"/proc/{pid}"), "the started worker was not killed and reaped"


@pytest.mark.timeout(30)
def test_runner_bug_ends_the_job_as_crashed(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception inside the runner's loop kills the worker and ends the job
    crashed with 'internal error' instead of hanging."""
    from workstream._supervisor import _runner

    def broken_loop(self: object) -> None:
        raise RuntimeError("injected runner bug")

    monkeypatch.setattr(_runner.JobRunner, "_loop", broken_loop)
    job = workstream.start(workers.forever)
    outcome = job.wait(timeout=20)
    assert isinstance(outcome, workstream.Crashed)
    assert "internal error in workstream's runner" in str(outcome.error)
    assert "injected runner bug" in str(outcome.error)
    # The exit status is the child's (killed by the emergency kill), never its pid.
    assert outcome.exit_code == -signal.SIGKILL
    assert outcome.error.exit_code == -signal.SIGKILL


@pytest.mark.timeout(30)
def test_cancel_from_a_signal_handler_inside_the_cores_lock() -> None:
    """cancel() called by a signal handler that interrupted the main thread while it held
    the job's lock (e.g. inside next()) neither deadlocks nor is lost: it returns at once
    and the job ends cancelled once the interrupted section is done."""
    job = workstream.start(workers.forever)
    it = iter(job)
    assert next(it) == 0
    core = job._core
    with core.lock:  # the main thread is "inside take_batch" when the handler runs
        t0 = time.monotonic()
        assert job.cancel() is True  # what a SIGINT handler calling job.cancel() does
        assert time.monotonic() - t0 < 1.0
    outcome = job.wait(timeout=20)
    assert isinstance(outcome, workstream.CancelledOutcome)
    assert outcome.rung == "cooperative"
    rest = list(it)
    assert rest[-1] == "finally"
    assert rest[:-1] == list(range(1, len(rest)))


@pytest.mark.timeout(30)
def test_runner_bug_on_a_worker_reports_the_exit_status_not_the_pid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression test (issue 10): a job on a Worker whose runner hits an internal error
    ends crashed with the retired process's exit status (SIGKILL), never its pid."""
    from workstream._supervisor import _runner

    def broken_loop(self: object) -> None:
        raise RuntimeError("injected runner bug")

    with workstream.Worker() as worker:
        worker.wait_ready(timeout=20)  # the initializer's job ran with the real loop
        monkeypatch.setattr(_runner.JobRunner, "_loop", broken_loop)
        outcome = worker.start(workers.forever).wait(timeout=20)
    assert isinstance(outcome, workstream.Crashed)
    assert "internal error in workstream's runner" in str(outcome.error)
    assert "injected runner bug" in str(outcome.error)
    assert outcome.kept_warm is False
    assert outcome.pid is not None and outcome.exit_code != outcome.pid
    assert outcome.exit_code == -signal.SIGKILL
    assert outcome.error.exit_code == -signal.SIGKILL
