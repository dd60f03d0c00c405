"""The job and Worker state machines (``_core._states``): pure, no process, no clock."""

from __future__ import annotations

import ast
import itertools
import pathlib

import pytest

from workstream import JobState
from workstream._core._states import (
    JobMachine,
    WorkerMachine,
    WorkerState,
    check_worker_transition,
)
from workstream._outcomes import IllegalTransition


@pytest.mark.timeout(5)
def test_a_cancel_is_recorded_apart_from_the_state() -> None:
    """The first cancel records the request and moves STARTING to CANCELLING; the worker
    taking the job afterwards leaves it CANCELLING (observed state does not forget it)."""
    job = JobMachine()
    assert job.state is JobState.STARTING and job.cancel is None
    assert job.request_cancel(10.0, grace=2.0, term_delay=1.0, discard=False)
    assert job.state is JobState.CANCELLING
    assert (job.cancel.requested_at, job.cancel.term_at, job.cancel.kill_at) == (10.0, 11.0, 12.0)
    job.started()
    assert job.state is JobState.CANCELLING
    job.end(JobState.CANCELLED)
    assert job.state is JobState.CANCELLED


@pytest.mark.timeout(5)
def test_later_cancels_only_tighten() -> None:
    """A longer grace later changes nothing; a shorter one moves the deadlines earlier;
    discard only turns on; the first request time stays."""
    job = JobMachine()
    job.request_cancel(0.0, grace=2.0, term_delay=1.0, discard=True)
    job.request_cancel(0.5, grace=10.0, term_delay=5.0, discard=False)
    assert job.cancel is not None
    assert (job.cancel.term_at, job.cancel.kill_at, job.cancel.discard) == (1.0, 2.0, True)
    job.request_cancel(0.5, grace=0.0, term_delay=0.0, discard=False)
    assert (job.cancel.requested_at, job.cancel.term_at, job.cancel.kill_at) == (0.0, 0.5, 0.5)


@pytest.mark.timeout(5)
def test_a_cancel_after_the_end_is_refused() -> None:
    """Once terminal, a cancel returns False and records nothing."""
    job = JobMachine()
    job.started()
    job.end(JobState.COMPLETED)
    assert job.request_cancel(5.0, 1.0, 0.5, False) is False
    assert job.cancel is None and job.state is JobState.COMPLETED


@pytest.mark.timeout(5)
def test_a_job_ends_once() -> None:
    """A second end, or an end to a non-terminal state, is an internal error."""
    job = JobMachine()
    job.end(JobState.CANCELLED)  # before start
    with pytest.raises(IllegalTransition):
        job.end(JobState.COMPLETED)
    with pytest.raises(IllegalTransition, match="not terminal"):
        JobMachine().end(JobState.RUNNING)


WORKER_MOVES = {
    (WorkerState.NO_PROCESS, WorkerState.BOOTING),
    (WorkerState.BOOTING, WorkerState.IDLE),
    (WorkerState.BOOTING, WorkerState.NO_PROCESS),
    (WorkerState.BOOTING, WorkerState.BROKEN),
    (WorkerState.IDLE, WorkerState.RUNNING),
    (WorkerState.IDLE, WorkerState.NO_PROCESS),
    (WorkerState.RUNNING, WorkerState.IDLE),
    (WorkerState.RUNNING, WorkerState.NO_PROCESS),
    *((s, WorkerState.CLOSING) for s in WorkerState if s not in
      (WorkerState.CLOSING, WorkerState.CLOSED)),
    (WorkerState.CLOSING, WorkerState.CLOSED),
}


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("old", "new"), list(itertools.product(WorkerState, WorkerState)), ids=lambda s: s.value
)
def test_worker_transition_table(old: WorkerState, new: WorkerState) -> None:
    """Exactly the moves drawn in _supervisor/_worker.py's docstring are allowed."""
    if (old, new) in WORKER_MOVES:
        check_worker_transition(old, new)
    else:
        with pytest.raises(IllegalTransition):
            check_worker_transition(old, new)


@pytest.mark.timeout(5)
def test_a_worker_life_and_its_close_request() -> None:
    """Boot, run a job, lose the process, boot again, close: requested close apart from
    the observed state, and close(grace) only ever shortens."""
    w = WorkerMachine()
    for state in (WorkerState.BOOTING, WorkerState.IDLE, WorkerState.RUNNING,
                  WorkerState.NO_PROCESS, WorkerState.BOOTING, WorkerState.IDLE):
        w.move(state)
    assert w.job_grace(2.0) == 2.0
    w.request_close(None)
    assert w.close_requested and w.state is WorkerState.IDLE  # not yet carried out
    w.request_close(0.5)
    w.request_close(1.0)
    assert w.close_grace == 0.5 and w.job_grace(2.0) == 0.5 and w.job_grace(0.1) == 0.1
    w.move(WorkerState.CLOSING)
    w.move(WorkerState.CLOSED)
    with pytest.raises(IllegalTransition):
        w.move(WorkerState.BOOTING)


CORE = pathlib.Path(__file__).resolve().parents[1] / "src" / "workstream" / "_core"
NO_IO = {"os", "signal", "select", "threading", "subprocess", "multiprocessing", "mmap",
         "socket", "time", "asyncio", "selectors"}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_the_core_does_no_io_and_reads_no_clock(path: pathlib.Path) -> None:
    """_core imports nothing that does I/O, threads or time (time comes in as an
    argument), and of ours only the leaves and itself."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:
                continue  # another _core module
            if node.level == 2:
                assert node.module in {"_errors", "_outcomes", "_options"}, node.module
                continue
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in NO_IO | {"workstream"}, f"{path.name}: {name}"
