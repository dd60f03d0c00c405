"""Misuse of the API: each row is a wrong call, the exact exception type it raises at the
call site, and a fragment of its message. Nothing is started and nothing leaks."""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import pickle
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import workers
import workers_stream as ws
import workstream
from conftest import wait_until
from workstream import JobState


async def _coroutine_fn() -> int:
    return 1


async def _async_gen_fn() -> Any:
    yield 1


START_MISUSE = [
    # (id, fn, args, options, exception type, message fragment)
    ("not-callable", 3, (), {}, TypeError, "needs a callable, not int"),
    ("async-def", _coroutine_fn, (), {}, TypeError, "is async"),
    ("async-generator", _async_gen_fn, (), {}, TypeError, "is async"),
    ("partial-of-async", functools.partial(_coroutine_fn), (), {}, TypeError, "is async"),
    ("unpicklable-arg", workers.return_value, (threading.Lock(),), {}, TypeError,
     "cannot be pickled"),
    ("unknown-option", workers.count, (3,), {"n": 3}, TypeError, "functools.partial"),
    ("grace-negative", workers.count, (3,), {"grace": -1}, ValueError,
     "grace must be a finite number of seconds > 0"),
    ("grace-zero", workers.count, (3,), {"grace": 0}, ValueError,
     "grace must be a finite number of seconds > 0"),
    ("grace-nan", workers.count, (3,), {"grace": math.nan}, ValueError, "grace must be a finite"),
    ("grace-inf", workers.count, (3,), {"grace": math.inf}, ValueError, "grace must be a finite"),
    ("grace-str", workers.count, (3,), {"grace": "2"}, TypeError,
     "grace must be a number of seconds, not str"),
    ("grace-bool", workers.count, (3,), {"grace": True}, TypeError,
     "grace must be a number of seconds, not bool"),
    ("term-after-over-grace", workers.count, (3,), {"grace": 2, "term_after": 3}, ValueError,
     "term_after=3 must not exceed grace=2"),
    ("term-after-negative", workers.count, (3,), {"term_after": -1}, ValueError,
     "term_after must be a finite number of seconds >= 0"),
    ("start-method-unknown", workers.count, (3,), {"start_method": "nope"}, ValueError,
     "start_method='nope' is not available here"),
    ("max-items-zero", workers.count, (3,), {"max_buffered_items": 0}, ValueError,
     "max_buffered_items must be a positive int or None"),
    ("max-items-float", workers.count, (3,), {"max_buffered_items": 1.5}, ValueError,
     "max_buffered_items must be a positive int or None"),
    ("max-items-bool", workers.count, (3,), {"max_buffered_items": True}, ValueError,
     "max_buffered_items must be a positive int or None"),
    ("max-bytes-negative", workers.count, (3,), {"max_buffered_bytes": -1}, ValueError,
     "max_buffered_bytes must be a positive int or None"),
    ("batch-window-negative", workers.count, (3,), {"batch_window": -0.1}, ValueError,
     "batch_window must be a finite number of seconds >= 0"),
    ("batch-window-str", workers.count, (3,), {"batch_window": "0"}, TypeError,
     "batch_window must be a number of seconds, not str"),
    ("max-batch-bytes-zero", workers.count, (3,), {"max_batch_bytes": 0}, ValueError,
     "max_batch_bytes must be a positive int"),
    ("pipe-bytes-zero", workers.count, (3,), {"pipe_bytes": 0}, ValueError,
     "pipe_bytes must be a positive int"),
    ("kill-group-int", workers.count, (3,), {"kill_group": 1}, TypeError,
     "kill_group must be a bool, not int"),
    ("name-int", workers.count, (3,), {"name": 5}, TypeError, "name must be a str or None"),
    ("on-item-int", workers.count, (3,), {"on_item": 3}, TypeError,
     "on_item must be callable or None, not int"),
    ("on-done-str", workers.count, (3,), {"on_done": "x"}, TypeError,
     "on_done must be callable or None, not str"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("fn", "args", "options", "exc_type", "fragment"),
    [pytest.param(*row[1:], id=row[0]) for row in START_MISUSE],
)
def test_start_rejects_misuse(
    fn: Any, args: tuple[Any, ...], options: dict[str, Any], exc_type: type, fragment: str
) -> None:
    """start() raises the documented exception at the call site and starts nothing."""
    threads = threading.active_count()
    with pytest.raises(exc_type) as info:
        workstream.start(fn, *args, **options)
    assert type(info.value) is exc_type
    assert fragment in str(info.value)
    assert threading.active_count() == threads


@pytest.mark.timeout(10)
def test_unpicklable_argument_error_names_the_cause() -> None:
    """The pickling error of start() names the function and chains the original error."""
    with pytest.raises(TypeError) as info:
        workstream.start(workers.return_value, threading.Lock())
    assert str(info.value).startswith(
        "workstream.start(): return_value or its arguments cannot be pickled"
    )
    assert "cannot pickle '_thread.lock' object" in str(info.value)
    assert type(info.value.__cause__) is TypeError


@contextlib.contextmanager
def _running_job(tmp_path: Any) -> Iterator[workstream.Job]:
    """A job whose child is running and blocked until the block ends; then it completes."""
    gate = ws.make_gate(str(tmp_path))
    job = workstream.start(ws.yield_then_block, gate)
    try:
        assert next(iter(job)) == "first"
        yield job
    finally:
        if job.state is JobState.RUNNING:
            ws.release(gate, wait_until)
        else:
            job.cancel(grace=0)
        job.wait(timeout=20)


JOB_MISUSE = [
    ("cancel-grace-negative", lambda j: j.cancel(grace=-1), ValueError,
     "grace must be a finite number of seconds >= 0"),
    ("cancel-grace-nan", lambda j: j.cancel(grace=math.nan), ValueError, "finite"),
    ("cancel-grace-str", lambda j: j.cancel(grace="1"), TypeError,
     "grace must be a number of seconds, not str"),
    ("cancel-term-after-negative", lambda j: j.cancel(term_after=-1), ValueError,
     "must be a finite number of seconds >= 0"),
    ("cancel-discard-str", lambda j: j.cancel(discard="yes"), TypeError,
     "discard must be a bool, not str"),
    ("wait-timeout-negative", lambda j: j.wait(timeout=-1), ValueError, "finite"),
    ("wait-timeout-nan", lambda j: j.wait(timeout=math.nan), ValueError, "finite"),
    ("result-timeout-negative", lambda j: j.result(timeout=-1), ValueError, "finite"),
    ("pickle", lambda j: pickle.dumps(j), TypeError, "a workstream.Job cannot be pickled"),
    ("deepcopy", lambda j: copy.deepcopy(j), TypeError, "a workstream.Job cannot be pickled"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("call", "exc_type", "fragment"),
    [pytest.param(*row[1:], id=row[0]) for row in JOB_MISUSE],
)
def test_job_methods_reject_misuse(
    tmp_path: Any, call: Any, exc_type: type, fragment: str
) -> None:
    """A bad argument to a Job method raises at the call and leaves the job untouched."""
    with _running_job(tmp_path) as job:
        with pytest.raises(exc_type) as info:
            call(job)
        assert type(info.value) is exc_type
        assert fragment in str(info.value)
        assert job.cancel_requested is False
        assert job.state is JobState.RUNNING
    assert type(job.outcome) is workstream.Completed


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", ["wait", "result"])
def test_wait_timeout_leaves_the_job_running(tmp_path: Any, method: str) -> None:
    """wait()/result() with a short timeout on a running job raise TimeoutError and the
    job keeps running to its normal end."""
    with _running_job(tmp_path) as job:
        with pytest.raises(TimeoutError) as info:
            getattr(job, method)(timeout=0.01)
        assert str(info.value) == (
            f"job 'yield_then_block' (pid {job.pid}) is still running after 0.01 s"
        )
        assert job.state is JobState.RUNNING
        assert job.done() is False
        assert job.cancel_requested is False
    assert job.result(timeout=1) == "released"


@pytest.mark.timeout(10)
def test_emit_outside_a_worker() -> None:
    """emit() outside a worker raises NotInWorkerError, which is also a RuntimeError."""
    with pytest.raises(workstream.NotInWorkerError) as info:
        workstream.emit(1)
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, workstream.WorkstreamError)
    assert "must be called inside a function run by workstream.start()" in str(info.value)


@pytest.mark.timeout(10)
def test_cancellation_helpers_outside_a_worker() -> None:
    """Outside a worker cancelled() is False, check_cancelled() does nothing, in_worker()
    is False."""
    assert workstream.cancelled() is False
    assert workstream.check_cancelled() is None
    assert workstream.in_worker() is False


@pytest.mark.timeout(30)
def test_start_inside_a_worker_fails_the_job() -> None:
    """start() called inside a worker raises there: the job fails with a WorkerError
    saying so."""
    job = workstream.start(ws.start_inside_worker)
    outcome = job.wait(timeout=20)
    assert type(outcome) is workstream.Failed
    err = outcome.error
    assert type(err) is workstream.WorkerError
    assert err.type_name == "RuntimeError"
    assert "cannot be called inside a workstream worker" in err.message
    assert "cannot be called inside a workstream worker" in err.remote_traceback
    assert type(err.__cause__) is RuntimeError


@pytest.mark.timeout(30)
def test_cancel_after_the_end_returns_false() -> None:
    """cancel() on a finished job returns False and changes nothing."""
    job = workstream.start(workers.count, 2)
    assert job.result(timeout=20) == 2
    assert job.cancel() is False
    assert job.cancel(grace=0) is False
    assert job.cancel_requested is False
    assert type(job.outcome) is workstream.Completed
