"""Time to save a checkpoint: workstream.stop_requested(), workstream.request_grace(),
the ``max_grace`` option, and the outcome's ``grace_asked`` / ``grace_granted``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import workers_progress as wp
import workstream
from conftest import wait_until
from workstream import CancelledOutcome, CancelRung, Completed


@pytest.mark.timeout(30)
def test_stop_requested_is_the_cancel_deadline() -> None:
    job = workstream.start(wp.stop_deadline_after_cancel, grace=5.0)
    assert next(job) is None  # no stop requested yet
    before = time.monotonic()
    job.cancel()
    after = time.monotonic()
    outcome = job.wait(timeout=20)
    deadline = outcome.value if isinstance(outcome, (Completed, CancelledOutcome)) else None
    assert isinstance(deadline, float), outcome
    # the parent's own SIGKILL deadline, in the one monotonic clock of the machine
    assert before + 5.0 <= deadline <= after + 5.0


@pytest.mark.timeout(30)
def test_grace_is_granted_up_to_max_grace() -> None:
    job = workstream.start(wp.ask_grace, 0.5, 1.0, 1.0, 0.0, max_grace=1.25)
    assert job.result(timeout=20) == [0.5, 0.75, 0.0, 0.0]
    outcome = job.outcome
    assert outcome is not None
    assert (outcome.grace_asked, outcome.grace_granted) == (2.5, 1.25)


@pytest.mark.timeout(30)
def test_no_grace_without_max_grace() -> None:
    job = workstream.start(wp.ask_grace, 3.0)
    assert job.result(timeout=20) == [0.0]
    outcome = job.outcome
    assert outcome is not None
    assert (outcome.grace_asked, outcome.grace_granted) == (3.0, 0.0)


@pytest.mark.timeout(30)
def test_each_job_of_a_worker_has_its_own_max_grace() -> None:
    with workstream.Worker() as worker:
        first = worker.start(wp.ask_grace, 2.0, max_grace=1.0)
        assert first.result(timeout=20) == [1.0]
        second = worker.start(wp.ask_grace, 2.0, max_grace=1.5)
        assert second.result(timeout=20) == [1.5]  # not what the first job left over
        assert second.outcome is not None and second.outcome.grace_granted == 1.5
        third = worker.start(wp.ask_grace, 2.0)
        assert third.result(timeout=20) == [0.0]


def _run_checkpoint(tmp_path: Path, max_grace: float) -> tuple[CancelledOutcome, Path, float]:
    path = tmp_path / "checkpoint"
    # grace 2 s: SIGTERM after 1 s, SIGKILL after 2 s; saving takes 3 s
    job = workstream.start(
        wp.checkpoint_on_stop, str(path), 5.0, 3.0, grace=2.0, max_grace=max_grace
    )
    wait_until(lambda: os.path.exists(str(path) + ".running"), 20, "the job's work loop")
    cancelled_at = time.monotonic()
    job.cancel()
    outcome = job.wait(timeout=30)
    assert isinstance(outcome, CancelledOutcome), outcome
    return outcome, path, cancelled_at


@pytest.mark.timeout(40)
def test_a_job_saves_its_checkpoint_within_the_extra_grace(tmp_path: Path) -> None:
    """The SIGTERM rung's Cancelled runs the finally block; it asks for 5 s more, is
    granted them, and saves (3 s) past the 2 s grace it would otherwise have had."""
    outcome, path, cancelled_at = _run_checkpoint(tmp_path, max_grace=5.0)
    assert outcome.rung is CancelRung.SIGTERM
    assert (outcome.grace_asked, outcome.grace_granted) == (5.0, 5.0)
    assert path.exists(), "the checkpoint was not saved"
    granted, seen, after, before = path.read_text().split()
    assert float(granted) == 5.0 and before == "None"
    assert cancelled_at + 2.0 <= float(seen) <= cancelled_at + 3.0
    assert float(after) == pytest.approx(float(seen) + 5.0)
    assert outcome.stop_latency is not None and 3.0 < outcome.stop_latency < 7.0


@pytest.mark.timeout(40)
def test_without_max_grace_the_save_is_killed(tmp_path: Path) -> None:
    """The same job with max_grace=0: nothing granted, SIGKILL at the end of the grace,
    no checkpoint (the test above fails the same way without request_grace)."""
    outcome, path, _ = _run_checkpoint(tmp_path, max_grace=0.0)
    assert outcome.rung is CancelRung.SIGKILL
    assert (outcome.grace_asked, outcome.grace_granted) == (5.0, 0.0)
    assert not path.exists()
    assert not os.path.exists(str(path) + ".tmp")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("call", [
    lambda: workstream.stop_requested(), lambda: workstream.request_grace(1.0),
])
def test_outside_a_worker(call: object) -> None:
    with pytest.raises(workstream.NotInWorkerError, match="must be called inside"):
        call()  # type: ignore[operator]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("code", "exc", "text"), [
    ("workstream.request_grace(-1)", "ValueError", "seconds must be a finite number >= 0"),
    ("workstream.request_grace(float('nan'))", "ValueError", "not nan"),
    ("workstream.request_grace('5')", "TypeError", "seconds must be a number, not str"),
])
def test_bad_grace_requests_raise_in_the_worker(code: str, exc: str, text: str) -> None:
    import workers_badinput as wb

    outcome = workstream.start(wb.run_code, code).wait(timeout=20)
    assert isinstance(outcome, workstream.Failed), outcome
    err = outcome.error
    assert isinstance(err, workstream.WorkerError)
    assert err.type_name == exc and text in err.message, err.message


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("options", "exc", "text"), [
    ({"max_grace": -1}, ValueError, "max_grace must be a finite number of seconds >= 0"),
    ({"max_grace": "5"}, TypeError, "max_grace must be a number of seconds, not str"),
    ({"on_progress": 3}, TypeError, "on_progress must be callable or None, not int"),
])
def test_bad_options(options: dict[str, object], exc: type, text: str) -> None:
    with pytest.raises(exc, match=text):
        workstream.start(wp.ask_grace, **options)


@pytest.mark.timeout(30)
def test_worker_defaults_for_max_grace_and_on_progress() -> None:
    seen: list[object] = []
    with workstream.Worker(max_grace=1.0, on_progress=seen.append) as worker:
        job = worker.start(wp.ask_grace, 2.0)
        assert job.result(timeout=20) == [1.0]
        job = worker.start(wp.report_once, 3)
        assert job.result(timeout=20) == "reported"
        assert seen and getattr(seen[-1], "done", None) == 3
        job = worker.start(wp.ask_grace, 2.0, max_grace=0.5)  # per job, over the default
        assert job.result(timeout=20) == [0.5]
