"""on_item / on_done: thread, order, exactly-once, errors in callbacks, waiting from them."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import workers
import workers_stream as ws
import workstream
from conftest import wait_until


@pytest.mark.timeout(30)
def test_on_item_in_order_on_callback_thread_then_on_done_once() -> None:
    """on_item gets every item in order on the job's callback thread; on_done runs once,
    after the last on_item, with the outcome; wait() returns only after it."""
    events: list[tuple[str, Any, str]] = []

    def on_item(x: int) -> None:
        events.append(("item", x, threading.current_thread().name))

    def on_done(outcome: workstream.Outcome) -> None:
        events.append(("done", outcome, threading.current_thread().name))

    job = workstream.start(workers.count, 1000, on_item=on_item, on_done=on_done)
    outcome = job.wait(timeout=20)
    assert job.done() is True
    assert [e[1] for e in events[:-1]] == list(range(1000))
    assert [e[0] for e in events] == ["item"] * 1000 + ["done"]
    assert events[-1][1] is outcome
    assert type(outcome) is workstream.Completed
    assert outcome.value == 1000
    assert outcome.items_delivered == 1000
    names = {e[2] for e in events}
    assert names == {"workstream-callbacks:count"}
    assert threading.main_thread().name not in names
    assert job.result(timeout=1) == 1000


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("fn", "args", "kind"),
    [
        (workers.count, (3,), workstream.Completed),
        (workers.raise_after, (3,), workstream.Failed),
        (workers.crash_with, ("os_exit", 3), workstream.Crashed),
    ],
    ids=["completed", "failed", "crashed"],
)
def test_on_done_gets_every_kind_of_outcome(fn: Any, args: tuple[Any, ...], kind: type) -> None:
    """on_done runs exactly once whatever the outcome, after the items, and gets it."""
    items: list[int] = []
    done: list[workstream.Outcome] = []
    job = workstream.start(fn, *args, on_item=items.append, on_done=done.append, batch_window=0)
    outcome = job.wait(timeout=20)
    assert type(outcome) is kind
    assert done == [outcome]
    assert done[0] is outcome
    assert items == [0, 1, 2]


@pytest.mark.timeout(30)
def test_on_done_of_a_cancelled_job() -> None:
    """on_done runs once with a CancelledOutcome when the job is cancelled."""
    done: list[workstream.Outcome] = []
    first = threading.Event()

    def on_item(x: int) -> None:
        first.set()

    job = workstream.start(ws.forever_marked, on_item=on_item, on_done=done.append)
    assert first.wait(20)
    job.cancel()
    outcome = job.wait(timeout=20)
    assert type(outcome) is workstream.CancelledOutcome
    assert done == [outcome]


@pytest.mark.timeout(30)
def test_on_done_alone_leaves_iteration_allowed() -> None:
    """With only on_done, the job is iterated as usual and on_done runs once at the end."""
    done: list[workstream.Outcome] = []
    job = workstream.start(workers.count, 5, on_done=done.append)
    assert list(job) == [0, 1, 2, 3, 4]
    outcome = job.wait(timeout=20)
    assert done == [outcome]
    assert type(outcome) is workstream.Completed


@pytest.mark.timeout(30)
def test_iterating_a_job_with_on_item_raises() -> None:
    """A job that delivers to on_item refuses iteration and drain() with RuntimeError."""
    items: list[int] = []
    job = workstream.start(workers.count, 3, on_item=items.append)
    with pytest.raises(RuntimeError, match="delivers its items to on_item"):
        iter(job)
    with pytest.raises(RuntimeError, match="delivers its items to on_item"):
        list(job)
    with pytest.raises(RuntimeError, match="delivers its items to on_item"):
        job.drain()
    assert job.result(timeout=20) == 3
    assert items == [0, 1, 2]


@pytest.mark.timeout(30)
def test_exception_in_on_item_cancels_the_job() -> None:
    """An exception in on_item cancels the job; no later item reaches on_item; wait() and
    result() raise CallbackError with the original as __cause__; on_done still runs."""
    boom = ValueError("on_item failed")
    items: list[int] = []
    done: list[workstream.Outcome] = []

    def on_item(x: int) -> None:
        items.append(x)
        if x == 5:
            raise boom

    job = workstream.start(ws.forever_marked, on_item=on_item, on_done=done.append)
    with pytest.raises(workstream.CallbackError) as info:
        job.wait(timeout=20)
    assert info.value.__cause__ is boom
    assert str(info.value) == (
        "a callback of job 'forever_marked' raised ValueError: on_item failed; "
        "the job was cancelled"
    )
    assert items == [0, 1, 2, 3, 4, 5]
    assert job.cancel_requested is True
    outcome = job.outcome
    assert type(outcome) is workstream.CancelledOutcome
    assert outcome.rung == "cooperative"
    assert done == [outcome]
    with pytest.raises(workstream.CallbackError) as again:
        job.result(timeout=1)
    assert again.value.__cause__ is boom


@pytest.mark.timeout(30)
def test_exception_in_on_done_is_reported() -> None:
    """An exception in on_done makes wait() and result() raise CallbackError with the
    original as __cause__; the outcome itself stays what it was."""
    boom = RuntimeError("on_done failed")

    def on_done(outcome: workstream.Outcome) -> None:
        raise boom

    job = workstream.start(workers.count, 3, on_item=lambda x: None, on_done=on_done)
    with pytest.raises(workstream.CallbackError) as info:
        job.wait(timeout=20)
    assert info.value.__cause__ is boom
    assert "raised RuntimeError: on_done failed" in str(info.value)
    with pytest.raises(workstream.CallbackError):
        job.result(timeout=1)
    outcome = job.outcome
    assert type(outcome) is workstream.Completed
    assert outcome.value == 3
    assert job.done() is True


@pytest.mark.timeout(30)
def test_wait_inside_on_done_does_not_deadlock() -> None:
    """job.wait() and job.result() called from inside on_done return the outcome."""
    holder: dict[str, Any] = {}
    job_set = threading.Event()
    seen: list[object] = []

    def on_done(outcome: workstream.Outcome) -> None:
        assert job_set.wait(10)
        job = holder["job"]
        seen.append(job.wait(timeout=5))
        seen.append(job.result(timeout=5))
        seen.append(outcome)

    job = workstream.start(workers.count, 4, on_item=lambda x: None, on_done=on_done)
    holder["job"] = job
    job_set.set()
    outcome = job.wait(timeout=20)
    assert seen == [outcome, 4, outcome]
    assert seen[0] is outcome


@pytest.mark.timeout(30)
def test_wait_inside_on_item_raises_even_once_the_job_ended() -> None:
    """Inside on_item, wait() and result() raise RuntimeError whatever the timing: also
    when the child has already finished and the outcome is known."""
    holder: dict[str, Any] = {}
    job_set = threading.Event()
    seen: list[object] = []

    def on_item(item: object) -> None:
        assert job_set.wait(10)
        job = holder["job"]
        assert job._core.terminal.wait(10)  # the child is reaped, the outcome known
        for call in (job.wait, job.result):
            try:
                seen.append(call(timeout=5))
            except RuntimeError as exc:
                seen.append(str(exc))

    job = workstream.start(workers.count, 1, on_item=on_item)
    holder["job"] = job
    job_set.set()
    assert type(job.wait(timeout=20)) is workstream.Completed
    assert len(seen) == 2
    for message in seen:
        assert isinstance(message, str) and "called inside on_item" in message


@pytest.mark.timeout(30)
def test_wait_waits_for_on_done() -> None:
    """wait() from another thread does not return until on_done has finished, even once
    the outcome is known."""
    release = threading.Event()
    entered = threading.Event()

    def on_done(outcome: workstream.Outcome) -> None:
        entered.set()
        assert release.wait(20)

    job = workstream.start(workers.count, 2, on_item=lambda x: None, on_done=on_done)
    assert entered.wait(20)
    wait_until(lambda: job.outcome is not None, 20, "the outcome")
    assert job.done() is False
    with pytest.raises(TimeoutError):
        job.wait(timeout=0.05)
    release.set()
    assert type(job.wait(timeout=20)) is workstream.Completed
    assert job.done() is True
