"""A job cleans up after itself (issue 9 §2).

However a job ends (a cancel at a ``yield``, in ``emit()``, in ``check_cancelled()``, by
SIGTERM; a failure; a completion), its generator is closed and its frames and locals
are released before the outcome is published: ``finally`` blocks, ``with`` exits and
finalizers have run when ``wait()`` returns. Then the worker's own children get the rest
of the grace to exit on their own before the process group is killed.

Every check is on marker files the child's clean-up writes, read once ``wait()`` (or
``close()``) returned: no sleeps. Child functions: ``workers_cleanup.py``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import workers_cleanup as wc
import workstream
from conftest import bounded_wait, wait_until
from workstream import CancelledOutcome, Completed, Failed, WorkerError
from workstream._supervisor import _group

METHODS = [
    pytest.param("forkserver", id="forkserver"),
    pytest.param("spawn", id="spawn"),
    pytest.param("fork", id="fork", marks=pytest.mark.filterwarnings("ignore::DeprecationWarning")),
]
WARM = [pytest.param(False, id="one-shot"), pytest.param(True, id="warm")]

Start = Callable[..., "workstream.Job[Any]"]


@contextlib.contextmanager
def starter(warm: bool, method: str = "forkserver", **options: Any) -> Iterator[Start]:
    """``workstream.start`` (one-shot), or ``start`` of a Worker closed on exit (warm)."""
    if not warm:
        yield functools.partial(workstream.start, start_method=method, **options)
        return
    with workstream.Worker(start_method=method, **options) as worker:
        yield worker.start


def markers(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting for its adopter to reap it does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def cancel_after_first(job: workstream.Job[Any], bound: float = 30) -> workstream.Outcome:
    """Take the first item (the child reached the point under test), cancel, wait."""
    next(iter(job))
    job.cancel()
    return bounded_wait(job, bound, "the cancelled job")


def cancel_when_running(job: workstream.Job[Any], folder: Path) -> workstream.Outcome:
    """Wait for the child's "running" marker (created past its last ``yield``: an item
    would be a race, the cancel could land at that yield), cancel, wait."""
    wait_until((folder / "running").exists, 20, "the child to create 'running'")
    job.cancel()
    return bounded_wait(job, 30, "the cancelled job")


# -- the generator and its locals ----------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("warm", WARM)
@pytest.mark.parametrize("method", METHODS)
def test_cancel_at_a_yield_releases_the_generators_locals(
    tmp_path: Path, method: str, warm: bool
) -> None:
    """Regression test for issue 9 §2 (its snippet): a job cancelled at a ``yield`` frees
    the generator's locals (their finalizers run) before wait() returns."""
    with starter(warm, method) as start:
        outcome = cancel_after_first(start(wc.gen_with_local, str(tmp_path)))
        assert isinstance(outcome, CancelledOutcome) and outcome.rung == "cooperative"
        assert "del" in markers(tmp_path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("warm", WARM)
def test_cancel_runs_with_exits_finally_blocks_and_finalizers(tmp_path: Path, warm: bool) -> None:
    """On a cancel at a ``yield``, the generator's ``with`` exit, its ``finally`` and its
    locals' finalizers have all run when wait() returns."""
    with starter(warm) as start:
        outcome = cancel_after_first(start(wc.gen_with_block, str(tmp_path)))
        assert isinstance(outcome, CancelledOutcome)
        assert markers(tmp_path) == {"del", "exit", "finally"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("warm", WARM)
def test_plain_function_cancelled_in_emit_releases_its_locals(tmp_path: Path, warm: bool) -> None:
    """A plain function cancelled in ``emit()``: its ``with`` exit and its locals'
    finalizers have run when wait() returns."""
    with starter(warm) as start:
        outcome = cancel_after_first(start(wc.emit_with_local, str(tmp_path)))
        assert isinstance(outcome, CancelledOutcome) and outcome.rung == "cooperative"
        assert markers(tmp_path) == {"del", "exit"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("warm", WARM)
def test_check_cancelled_in_user_code_releases_locals(tmp_path: Path, warm: bool) -> None:
    """``Cancelled`` raised by ``check_cancelled()`` inside the generator's own code (not
    at a yield): its locals are freed before wait() returns."""
    with starter(warm) as start:
        outcome = cancel_when_running(start(wc.check_cancelled_with_local, str(tmp_path)), tmp_path)
        assert isinstance(outcome, CancelledOutcome) and outcome.rung == "cooperative"
        assert "del" in markers(tmp_path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("warm", WARM)
def test_sigterm_rung_releases_locals(tmp_path: Path, warm: bool) -> None:
    """A generator spinning with no cancellation point is stopped by SIGTERM (the
    handler raises Cancelled in it): its locals are freed before wait() returns."""
    with starter(warm, grace=1.0) as start:
        outcome = cancel_when_running(start(wc.spin_with_local, str(tmp_path)), tmp_path)
        assert isinstance(outcome, CancelledOutcome) and outcome.rung == "sigterm"
        assert "del" in markers(tmp_path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("warm", WARM)
def test_failure_releases_locals_kept_alive_by_the_exception(tmp_path: Path, warm: bool) -> None:
    """A generator that fails while a local of one of its frames holds the exception (a
    cycle exception -> traceback -> frame -> exception): its locals are still freed
    before wait() returns (the worker detaches the job's tracebacks)."""
    with starter(warm) as start:
        job = start(wc.gen_fails_keeping_exception, str(tmp_path))
        outcome = bounded_wait(job, 30, "the failing job")
        assert isinstance(outcome, Failed)
        assert isinstance(outcome.error, WorkerError) and "boom" in str(outcome.error)
        assert "del" in markers(tmp_path)


# -- clean-up that misbehaves --------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("warm", WARM)
def test_a_finally_that_hangs_is_bounded_by_the_ladder(tmp_path: Path, warm: bool) -> None:
    """A ``finally`` that never returns on a cancel: SIGTERM does not interrupt clean-up
    that already saw the cancel, SIGKILL at the grace ends the job."""
    with starter(warm, grace=0.5) as start:
        outcome = cancel_after_first(start(wc.finally_hangs, str(tmp_path)), bound=20)
        assert isinstance(outcome, CancelledOutcome) and outcome.rung == "sigkill"
        assert "finally-started" in markers(tmp_path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("warm", WARM)
def test_a_finally_that_raises_on_cancel_fails_the_job_and_says_so(
    tmp_path: Path, warm: bool
) -> None:
    """A ``finally`` that raises while a cancel unwinds the job: the job fails with that
    exception, its message says it was raised while the job was being cancelled and the
    remote traceback shows the Cancelled it interrupted (never a crash, never silent)."""
    with starter(warm) as start:
        job = start(wc.finally_raises, str(tmp_path))
        outcome = cancel_after_first(job)
        assert isinstance(outcome, Failed), outcome
        error = outcome.error
        assert isinstance(error, WorkerError) and error.type_name == "OSError"
        assert "raised while the job was being cancelled" in str(error)
        assert "disk full" in str(error)
        assert "Cancelled" in (error.remote_traceback or "")
        assert job.cancel_requested


@pytest.mark.timeout(60)
def test_a_finally_that_yields_on_cancel_delivers_its_item(tmp_path: Path) -> None:
    """A ``yield`` inside ``finally`` during a cancel: its item is delivered, then the
    job ends cancelled (Cancelled is raised again at that yield)."""
    job = workstream.start(wc.finally_yields, str(tmp_path))
    it = iter(job)
    assert next(it) == "work"
    job.cancel()
    rest = list(it)
    assert rest[-1] == "last words" and set(rest[:-1]) <= {"work"}
    assert isinstance(job.outcome, CancelledOutcome)
    assert "finally" in markers(tmp_path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("warm", WARM)
def test_close_that_raises_fails_the_job_with_that_error(tmp_path: Path, warm: bool) -> None:
    """An item that cannot be sent (SystemExit while pickling it) ends the loop with the
    generator suspended: the worker closes it; its ``finally`` yields again, so close()
    raises RuntimeError, which fails the job (chained to the SystemExit) instead of
    being printed to the worker's stderr as an ignored exception."""
    with starter(warm) as start:
        job = start(wc.unsendable_then_finally_yields, str(tmp_path))
        outcome = bounded_wait(job, 30, "the job")
        assert isinstance(outcome, Failed)
        error = outcome.error
        assert isinstance(error, WorkerError) and error.type_name == "RuntimeError"
        assert "ignored GeneratorExit" in str(error)
        assert "SystemExit" in (error.remote_traceback or "")
        assert markers(tmp_path) == {"del", "finally"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_named_semaphores_of_objects_still_alive_are_unlinked_at_exit(method: str) -> None:
    """A one-job worker unlinks the named semaphores of multiprocessing objects that are
    still alive when it exits (a queue kept in a global; a closed queue whose feeder
    thread has not finished), as a multiprocessing child does at exit: none is left in
    /dev/shm when wait() returns."""
    job = workstream.start(wc.queue_kept_alive, start_method=method)
    semaphores = next(iter(job))
    assert semaphores, "the queue created no named semaphore: nothing is tested"
    job.cancel()
    outcome = bounded_wait(job, 30, "the cancelled job")
    assert isinstance(outcome, CancelledOutcome)
    assert [name for name in semaphores if os.path.exists(f"/dev/shm/{name}")] == []


# -- descendants ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_descendants_of_a_completed_job_exit_on_their_own(tmp_path: Path) -> None:
    """A grandchild that exits when the worker does (EOF on its stdin), after 0.3 s of
    clean-up: it finishes its clean-up before the group is killed; result() returns
    once it is gone."""
    job = workstream.start(wc.start_grandchild_and_return, str(tmp_path), 0.3, False)
    pid = job.result(timeout=30)
    assert "grandchild" in markers(tmp_path)
    assert not alive(pid)


@pytest.mark.timeout(60)
def test_descendants_of_a_cancelled_job_exit_on_their_own(tmp_path: Path) -> None:
    """The same grandchild, the job cancelled at a yield: the grandchild gets the rest of
    the grace to clean up, then wait() returns."""
    job = workstream.start(wc.start_grandchild_and_yield, str(tmp_path), 0.3)
    pid = next(iter(job))
    job.cancel()
    outcome = bounded_wait(job, 30, "the cancelled job")
    assert isinstance(outcome, CancelledOutcome) and outcome.rung == "cooperative"
    assert "grandchild" in markers(tmp_path)
    assert not alive(pid)


@pytest.mark.timeout(60)
def test_descendants_of_a_warm_worker_exit_on_their_own_at_close(tmp_path: Path) -> None:
    """A grandchild a warm worker's job left behind: at close() the worker exits, the
    grandchild finishes its clean-up, then close() returns."""
    with workstream.Worker() as worker:
        pid = worker.start(wc.start_grandchild_and_return, str(tmp_path), 0.3, False).result(
            timeout=30
        )
        assert alive(pid)
    assert "grandchild" in markers(tmp_path)
    assert not alive(pid)


@pytest.mark.timeout(60)
def test_descendants_that_stay_are_killed_at_the_deadline(tmp_path: Path) -> None:
    """A grandchild that ignores the worker's exit is SIGKILLed with the group when the
    grace is over: the wait for descendants is bounded."""
    grace = 0.5
    job = workstream.start(wc.start_grandchild_and_return, str(tmp_path), 0.0, True, grace=grace)
    started = time.monotonic()
    outcome = bounded_wait(job, 20, "the job")
    elapsed = time.monotonic() - started
    assert isinstance(outcome, Completed)
    assert not alive(outcome.value)
    assert "grandchild" not in markers(tmp_path)
    assert elapsed < grace + 5  # bounded (generous: a loaded 2-core machine)


@pytest.mark.timeout(60)
def test_a_cancel_during_the_wait_for_descendants_shortens_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker completed and exited, its grandchild stays, the runner waits for it
    (grace 30 s): cancel(grace=0) wakes that wait and the group is killed at once. The
    completion had already won: the outcome is completed."""
    waiting = threading.Event()
    real_wait = _group.wait_until_empty

    def spy(pgid: int, deadline: Callable[[], float], *rest: Any) -> bool:
        def watched() -> float:
            value = deadline()
            waiting.set()  # the deadline is computed: the runner goes on to poll (a wake
            return value  # byte written before its poll starts stays in the pipe)

        return real_wait(pgid, watched, *rest)

    monkeypatch.setattr(_group, "wait_until_empty", spy)
    job = workstream.start(wc.start_stubborn_grandchild_yield_and_return, str(tmp_path), grace=30)
    grandchild = next(iter(job))
    assert waiting.wait(20), "the runner never waited for the grandchild"
    started = time.monotonic()
    job.cancel(grace=0)
    outcome = bounded_wait(job, 20, "the job")
    assert time.monotonic() - started < 5  # not the 30 s grace
    assert isinstance(outcome, Completed)
    assert not alive(grandchild)


# -- PyTorch: a real DataLoader ------------------------------------------------------------

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="torch is not installed (the test extra pins torch==2.13.0 on Python 3.11 only)",
)


@needs_torch
@pytest.mark.timeout(120)
@pytest.mark.parametrize("named_iterator", [True, False], ids=["named-iterator", "for-loop"])
@pytest.mark.parametrize("warm", WARM)
def test_dataloader_workers_and_semaphores_are_gone_after_a_cancel(
    warm: bool, named_iterator: bool
) -> None:
    """Regression test for issue 9 §2 with PyTorch: after a cancel, no DataLoader worker
    (num_workers=2) survives and no named semaphore it created is left in /dev/shm.

    One-shot: when wait() returns. Warm: the DataLoader closed its queues without
    joining their feeder threads (torch's choice); each such thread holds two of the
    semaphores until it ends, moments later, in the still running worker — so those are
    awaited (bounded)."""
    # A long grace: under load a DataLoader's shutdown may take more than 1 s, and the
    # point is the cooperative path (SIGTERM would also cost a warm worker its process).
    with starter(warm, grace=30.0) as start:
        job = start(wc.dataloader_forever, named_iterator)
        pids, semaphores = next(iter(job))
        assert len(pids) >= 2 and all(alive(pid) for pid in pids)
        job.cancel()
        outcome = bounded_wait(job, 60, "the cancelled DataLoader job")
        assert isinstance(outcome, CancelledOutcome) and outcome.rung == "cooperative"
        assert [pid for pid in pids if alive(pid)] == []

        def left() -> list[str]:
            return [name for name in semaphores if os.path.exists(f"/dev/shm/{name}")]

        if warm:
            wait_until(lambda: not left(), 10, f"the job's semaphores to go: {left()}")
        assert left() == []
