"""Smoke tests: the three outcome kinds end to end with the default start method."""

import pytest

import workers
import workstream


@pytest.mark.timeout(30)
def test_generator_items_and_result() -> None:
    """Every yielded item arrives in order, then the return value."""
    job = workstream.start(workers.count, 100)
    assert list(job) == list(range(100))
    assert job.result(timeout=10) == 100
    assert job.state == "completed"
    assert job.outcome is not None and job.outcome.items_delivered == 100


@pytest.mark.timeout(30)
def test_failure_carries_remote_traceback() -> None:
    """fn raising gives Failed with the remote traceback and the cause attached."""
    job = workstream.start(workers.raise_after, 3)
    assert list(job) == [0, 1, 2]
    with pytest.raises(workstream.WorkerError) as info:
        job.result(timeout=10)
    assert "boom after 3" in info.value.remote_traceback
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.timeout(30)
def test_crash_reports_signal() -> None:
    """A segfault gives Crashed with SIGSEGV and every item sent before it."""
    job = workstream.start(workers.crash_with, "segv", 5, batch_window=0)
    assert list(job) == list(range(5))
    outcome = job.wait(timeout=10)
    assert isinstance(outcome, workstream.Crashed)
    assert outcome.signal_name == "SIGSEGV"
