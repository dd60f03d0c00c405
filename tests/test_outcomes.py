"""Outcomes end to end: Completed, Failed (WorkerError / DeliveryError), Crashed, Cancelled,
the fields every outcome carries, what result() raises, and the job's state transitions."""

from __future__ import annotations

import os
import signal

import pytest

import workers
import workers_stream as ws
import workstream
from conftest import wait_until
from workstream import JobState

METHODS = [
    "forkserver",
    "spawn",
    pytest.param("fork", marks=pytest.mark.filterwarnings("ignore::DeprecationWarning")),
]


def _common_fields(job: workstream.Job, outcome: workstream.Outcome, items: int) -> None:
    assert outcome.pid is not None
    assert outcome.pid == job.pid
    assert outcome.items_delivered == items
    assert 0 < outcome.duration < 60


# -- completed ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_plain_function_completes_with_its_value(method: str) -> None:
    """A plain function's return value is the Completed value; the stream is empty."""
    value = {"a": [1, 2, 3], "b": ("x", None)}
    job = workstream.start(ws.plain_return, value, start_method=method)
    assert list(job) == []
    outcome = job.wait(timeout=30)
    assert type(outcome) is workstream.Completed
    assert outcome.kind == "completed"
    assert outcome.value == value
    assert outcome.exit_code == 0
    _common_fields(job, outcome, 0)
    assert job.result(timeout=1) == value
    assert job.state is JobState.COMPLETED


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_generator_items_then_return_value(method: str) -> None:
    """A generator's yields are the items and its return statement is the value."""
    job = workstream.start(workers.count, 7, start_method=method)
    assert list(job) == [0, 1, 2, 3, 4, 5, 6]
    outcome = job.wait(timeout=30)
    assert type(outcome) is workstream.Completed
    assert outcome.value == 7
    assert outcome.exit_code == 0
    _common_fields(job, outcome, 7)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_plain_function_streams_with_emit(method: str) -> None:
    """A plain function streams with workstream.emit and still returns its value."""
    job = workstream.start(ws.plain_emit, 4, start_method=method)
    assert list(job) == [("emitted", 0), ("emitted", 1), ("emitted", 2), ("emitted", 3)]
    assert job.result(timeout=30) == "emitted 4"
    outcome = job.outcome
    assert type(outcome) is workstream.Completed
    _common_fields(job, outcome, 4)


@pytest.mark.timeout(30)
def test_items_delivered_counts_items_not_consumed_yet() -> None:
    """items_delivered counts every item queued for the consumer; they stay iterable."""
    job = workstream.start(ws.gen_count_dicts, 5)
    outcome = job.wait(timeout=20)
    assert type(outcome) is workstream.Completed
    assert outcome.items_delivered == 5
    assert list(job) == [{"i": i, "square": i * i} for i in range(5)]


# -- failed ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_failure_has_remote_traceback_and_cause(method: str) -> None:
    """fn raising gives Failed; the WorkerError names the user's line; __cause__ is the original."""
    job = workstream.start(ws.raise_value_error, start_method=method)
    outcome = job.wait(timeout=30)
    assert type(outcome) is workstream.Failed
    assert outcome.kind == "failed"
    assert outcome.exit_code == 0
    _common_fields(job, outcome, 0)
    err = outcome.error
    assert type(err) is workstream.WorkerError
    assert err.type_name == "ValueError"
    assert err.message == "the user's own error"
    line = ws.line_of("raise-value-error")
    assert f'File "{ws.__file__}", line {line}, in raise_value_error' in err.remote_traceback
    assert 'raise ValueError("the user\'s own error")' in err.remote_traceback
    assert err.remote_traceback.rstrip().endswith("ValueError: the user's own error")
    assert outcome.remote_traceback == err.remote_traceback
    assert type(err.__cause__) is ValueError
    assert err.__cause__.args == ("the user's own error",)
    assert "the worker raised ValueError: the user's own error" in str(err)
    with pytest.raises(workstream.WorkerError) as info:
        job.result(timeout=1)
    assert info.value is err
    assert job.state is JobState.FAILED


@pytest.mark.timeout(30)
def test_unpicklable_exception_still_reported() -> None:
    """An exception that cannot be pickled still gives a WorkerError with its type, text
    and traceback (and no __cause__)."""
    job = workstream.start(ws.raise_unpicklable_exception)
    outcome = job.wait(timeout=20)
    assert type(outcome) is workstream.Failed
    err = outcome.error
    assert type(err) is workstream.WorkerError
    assert err.type_name == "workers_stream.LockedError"
    assert err.message == "holding a lock"
    assert err.__cause__ is None
    line = ws.line_of("raise-locked-error")
    assert f'File "{ws.__file__}", line {line}, in raise_unpicklable_exception' in (
        err.remote_traceback
    )
    assert "workers_stream.LockedError: holding a lock" in err.remote_traceback
    assert "the worker raised workers_stream.LockedError: holding a lock" in str(err)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("fn", "items", "marker"),
    [(ws.plain_sys_exit, [], "plain-sys-exit"), (ws.gen_sys_exit, [0], "gen-sys-exit")],
    ids=["plain", "generator"],
)
def test_sys_exit_is_an_ordinary_failure(fn: object, items: list[int], marker: str) -> None:
    """sys.exit(n) in fn is an exception like any other: Failed with a SystemExit WorkerError,
    and the child itself exits 0 after reporting it."""
    job = workstream.start(fn, 4)
    assert list(job) == items
    outcome = job.wait(timeout=20)
    assert type(outcome) is workstream.Failed
    assert outcome.exit_code == 0
    _common_fields(job, outcome, len(items))
    err = outcome.error
    assert type(err) is workstream.WorkerError
    assert err.type_name == "SystemExit"
    assert err.message == "4"
    assert f"line {ws.line_of(marker)}" in err.remote_traceback
    assert type(err.__cause__) is SystemExit
    assert err.__cause__.code == 4
    with pytest.raises(workstream.WorkerError):
        job.result(timeout=1)


@pytest.mark.timeout(30)
def test_unpicklable_return_value_fails_clearly() -> None:
    """A return value that cannot be pickled in the child gives Failed saying so."""
    job = workstream.start(ws.return_lock)
    outcome = job.wait(timeout=20)
    assert type(outcome) is workstream.Failed
    assert outcome.exit_code == 0
    err = outcome.error
    assert type(err) is workstream.WorkerError
    assert err.type_name == "TypeError"
    assert err.message == (
        "the return value of fn cannot be pickled: cannot pickle '_thread.lock' object"
    )
    assert type(err.__cause__) is TypeError


@pytest.mark.timeout(30)
def test_item_that_cannot_be_unpickled_in_parent(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An item the parent cannot unpickle gives Failed with DeliveryError; items consumed
    before it stay delivered and nothing after it arrives."""
    gate = ws.make_gate(str(tmp_path))
    job = workstream.start(ws.child_only_item_after_handshake, gate)
    it = iter(job)
    assert next(it) == "before"
    ws.release(gate, wait_until)
    assert list(it) == []
    outcome = job.wait(timeout=20)
    assert type(outcome) is workstream.Failed
    assert outcome.items_delivered == 1
    err = outcome.error
    assert type(err) is workstream.DeliveryError
    assert str(err).startswith("item #2 could not be unpickled in the parent (AttributeError: ")
    assert "_only_in_the_child" in str(err)
    assert type(err.__cause__) is AttributeError
    with pytest.raises(workstream.DeliveryError) as info:
        job.result(timeout=1)
    assert info.value is err
    assert job.state is JobState.FAILED


@pytest.mark.timeout(30)
def test_items_before_an_undeliverable_item_are_kept() -> None:
    """Good items that arrived before an item the parent cannot unpickle are still
    delivered, even when the consumer reads them only after the job ended."""
    # batch_window=30: "a" goes out alone (the channel was idle), "b" and the bad item
    # go out together in the final flush.
    job = workstream.start(ws.child_only_item_in_one_batch, batch_window=30.0)
    outcome = job.wait(timeout=20)
    assert type(outcome) is workstream.Failed
    assert type(outcome.error) is workstream.DeliveryError
    assert str(outcome.error).startswith("item #3 could not be unpickled")
    assert list(job) == ["a", "b"]
    assert outcome.items_delivered == 2


@pytest.mark.timeout(30)
def test_result_that_cannot_be_unpickled_in_parent() -> None:
    """A return value the parent cannot unpickle gives Failed with DeliveryError."""
    job = workstream.start(ws.child_only_result)
    outcome = job.wait(timeout=20)
    assert type(outcome) is workstream.Failed
    assert outcome.exit_code == 0
    err = outcome.error
    assert type(err) is workstream.DeliveryError
    assert str(err).startswith(
        "the final value could not be unpickled in the parent (AttributeError: "
    )
    assert type(err.__cause__) is AttributeError
    with pytest.raises(workstream.DeliveryError):
        job.result(timeout=1)


# -- crashed --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("kind", "exit_code", "signal_name"),
    [("os_exit", 3, None), ("segv", -signal.SIGSEGV, "SIGSEGV"), ("kill", -signal.SIGKILL,
                                                                  "SIGKILL")],
    ids=["os_exit-3", "sigsegv", "self-sigkill"],
)
def test_crash_outcome(method: str, kind: str, exit_code: int, signal_name: str | None) -> None:
    """A child that dies without reporting gives Crashed with its exit code / signal; every
    item written before the death is delivered (batch_window=0)."""
    job = workstream.start(workers.crash_with, kind, 2, start_method=method, batch_window=0)
    assert list(job) == [0, 1]
    outcome = job.wait(timeout=30)
    assert type(outcome) is workstream.Crashed
    assert outcome.kind == "crashed"
    assert outcome.exit_code == exit_code
    assert outcome.signal_name == signal_name
    _common_fields(job, outcome, 2)
    err = outcome.error
    assert type(err) is workstream.WorkerCrashed
    assert err.pid == job.pid
    assert err.exit_code == exit_code
    assert err.signal_name == signal_name
    assert str(err).startswith(f"worker process {job.pid} died without reporting")
    if kind == "kill":
        assert "out-of-memory" in str(err)
    with pytest.raises(workstream.WorkerCrashed) as info:
        job.result(timeout=1)
    assert info.value is err
    assert job.state is JobState.CRASHED


# -- cancelled ------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_result_raises_cancelled() -> None:
    """result() of a cancelled job raises workstream.Cancelled (a BaseException)."""
    job = workstream.start(ws.forever_marked)
    assert next(iter(job)) == 0
    assert job.cancel() is True
    assert job.cancel_requested is True
    with pytest.raises(workstream.Cancelled) as info:
        job.result(timeout=20)
    assert not isinstance(info.value, Exception)
    outcome = job.outcome
    assert type(outcome) is workstream.CancelledOutcome
    assert outcome.kind == "cancelled"
    assert outcome.rung == "cooperative"
    assert outcome.exit_code == 0
    assert outcome.pid == job.pid
    assert outcome.stop_latency is not None and outcome.stop_latency >= 0
    assert job.state is JobState.CANCELLED
    assert job.cancel() is False


# -- state ----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_state_transitions_to_completed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A job is starting (no pid) at first, running with a pid once the child runs,
    and completed at the end; done() follows."""
    gate = ws.make_gate(str(tmp_path))
    job = workstream.start(ws.yield_then_block, gate)
    # start() returns before the runner thread has even created the process.
    assert job.state in (JobState.STARTING, JobState.RUNNING)
    assert job.outcome is None
    assert job.done() is False
    it = iter(job)
    assert next(it) == "first"
    assert job.state is JobState.RUNNING
    assert job.state == "running"
    assert isinstance(job.pid, int)
    assert job.outcome is None
    assert job.done() is False
    ws.release(gate, wait_until)
    assert list(it) == ["second"]
    assert job.result(timeout=20) == "released"
    assert job.state is JobState.COMPLETED
    assert job.state == "completed"
    assert job.state.is_terminal
    assert job.done() is True


@pytest.mark.timeout(30)
def test_state_cancelling_then_cancelled(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """cancel() moves a running job to cancelling at once; SIGTERM interrupts the
    blocked child and the job ends cancelled by the sigterm rung."""
    gate = ws.make_gate(str(tmp_path))
    job = workstream.start(ws.yield_then_block, gate)
    assert next(iter(job)) == "first"
    writer = ws.hold(gate, wait_until)  # the child is blocked reading the FIFO
    try:
        assert job.cancel(term_after=0) is True
        assert job.state is JobState.CANCELLING
        outcome = job.wait(timeout=20)
    finally:
        os.close(writer)
    assert type(outcome) is workstream.CancelledOutcome
    assert outcome.rung == "sigterm"
    assert outcome.exit_code == 0
    assert "Cancelled" in outcome.remote_traceback
    assert job.state is JobState.CANCELLED


@pytest.mark.timeout(30)
def test_cancel_before_the_process_exists() -> None:
    """A job cancelled right after start() may end before-start with no pid, or be
    cancelled later; either way it ends cancelled and result() raises Cancelled."""
    job = workstream.start(ws.forever_marked)
    job.cancel()
    with pytest.raises(workstream.Cancelled):
        job.result(timeout=20)
    outcome = job.outcome
    assert type(outcome) is workstream.CancelledOutcome
    if outcome.rung == "before-start":
        assert outcome.pid is None
        assert outcome.exit_code is None
        assert job.pid is None
    else:
        assert outcome.rung == "cooperative"
        assert outcome.pid == job.pid


@pytest.mark.timeout(30)
def test_job_repr_and_name() -> None:
    """A job is named after its function (or the name option) and shows it in repr."""
    job = workstream.start(workers.count, 2)
    named = workstream.start(workers.count, 2, name="trainer")
    assert list(job) == [0, 1]
    assert list(named) == [0, 1]
    job.wait(timeout=20)
    named.wait(timeout=20)
    assert job.name == "count"
    assert named.name == "trainer"
    assert repr(job) == f"<workstream.Job 'count' pid={job.pid} state=completed>"


@pytest.mark.timeout(30)
def test_malformed_channel_gives_channel_broken(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A child that writes bytes that are not a frame is killed at once and the job ends
    Crashed with ChannelBroken naming the malformed frame; earlier items are delivered."""
    gate = ws.make_gate(str(tmp_path))
    job = workstream.start(ws.write_garbage_to_channel, gate, batch_window=0)
    it = iter(job)
    assert next(it) == "before"
    ws.release(gate, wait_until)
    assert list(it) == []
    outcome = job.wait(timeout=20)
    assert type(outcome) is workstream.Crashed
    err = outcome.error
    assert type(err) is workstream.ChannelBroken
    assert isinstance(err, workstream.WorkerCrashed)
    assert outcome.exit_code == -signal.SIGKILL
    assert outcome.items_delivered == 1
    assert err.pid == job.pid
    assert "malformed data channel: frame #3: bad magic b'NO'" in str(err)
    assert job.state is JobState.CRASHED


@pytest.mark.timeout(30)
def test_items_before_a_malformed_frame_in_the_same_read_are_delivered() -> None:
    """Valid items that arrive in the same read as a malformed frame are still delivered
    before the job ends with ChannelBroken."""
    job = workstream.start(ws.write_good_frame_and_garbage_at_once)
    outcome = job.wait(timeout=20)
    assert type(outcome.error) is workstream.ChannelBroken
    assert "frame #3: bad magic b'NO'" in str(outcome.error)
    assert list(job) == ["good-1", "good-2"]
    assert outcome.items_delivered == 2


@pytest.mark.timeout(30)
def test_channel_broken_message_does_not_blame_the_oom_killer() -> None:
    """When workstream itself kills a child for a malformed channel, the error does not
    suggest the out-of-memory killer."""
    job = workstream.start(ws.write_good_frame_and_garbage_at_once)
    outcome = job.wait(timeout=20)
    assert type(outcome.error) is workstream.ChannelBroken
    assert outcome.exit_code == -signal.SIGKILL
    assert "out-of-memory" not in str(outcome.error)


@pytest.mark.timeout(30)
def test_sigterm_still_interrupts_after_helper_threads_emitted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """After helper threads emitted (with overlapping calls), SIGTERM still raises
    Cancelled in the main thread's user code: the job ends by the sigterm rung."""
    gate = ws.make_gate(str(tmp_path))
    job = workstream.start(ws.overlapping_helper_emits_then_block, gate, grace=2)
    it = iter(job)
    assert [next(it), next(it), next(it)] == ["pickled", "pickled", "ready"]
    writer = ws.hold(gate, wait_until)  # the main thread is blocked reading the FIFO
    try:
        job.cancel(term_after=0)
        outcome = job.wait(timeout=20)
    finally:
        os.close(writer)
    assert type(outcome) is workstream.CancelledOutcome
    assert outcome.rung == "sigterm"


@pytest.mark.timeout(30)
def test_sigterm_never_tears_a_frame_after_a_helper_emit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM while the main thread writes a frame (and a helper thread's emit has just
    returned) never tears the frame: the job ends cancelled, not crashed."""
    marker = tmp_path / "helper-done"
    job = workstream.start(
        ws.helper_emit_during_main_write, str(marker),
        batch_window=30.0, max_buffered_items=1, pipe_bytes=4096, grace=5,
    )
    wait_until(marker.exists, 20, "the helper's emit to return")
    job.cancel(term_after=0)
    outcome = job.wait(timeout=20)
    assert type(outcome) is workstream.CancelledOutcome, outcome
    # SIGTERM lands inside workstream's own write, so it only sets the flag: the emit
    # finishes its frame and raises Cancelled itself (cooperative); never torn.
    assert outcome.rung in ("cooperative", "sigterm")
