"""asyncio: ``async for``, ``await job.wait_async()``, ``async with``, and structured
cancellation (cancelling the awaiting task cancels the job and returns only once the
child was reaped), timeouts, many concurrent jobs, and a loop that never blocks.

Each test runs its own loop with ``asyncio.run``; waits are bounded and synchronised on
items, marker files and job state, never on sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import workers
import workers_aio as wa
import workers_lifecycle as wl
import workstream
from workstream import CancelledOutcome, Completed, Failed, WorkerError

needs_taskgroup = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="asyncio.TaskGroup and asyncio.timeout() are new in 3.11"
)


async def until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Let the loop run until ``predicate()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.002)  # ok: sleep (bounded polling, lets the loop run)


async def yield_to_loop() -> None:
    """Give the loop one iteration: every task that is ready runs to its next await.

    An ordering point inside one thread, not a wait for time to pass: tasks created just
    before are then parked in the await under test.
    """
    await asyncio.sleep(0)  # ok: sleep (zero-time yield: asyncio's documented way)


def gone(job: workstream.Job[Any, Any]) -> bool:
    """The job is done and its child no longer exists (reaped)."""
    return job.done() and job.pid is not None and not wl.pid_alive(job.pid)


# -- items and outcomes -------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_async_for_yields_every_item_in_order() -> None:
    """``async for`` gets 0..999 in order, then ``await job.wait_async()`` the Completed
    outcome and ``await job.result_async()`` the return value."""

    async def main() -> None:
        job = workstream.start(workers.count, 1000)
        items = [item async for item in job]
        assert items == list(range(1000))
        outcome = await job.wait_async()
        assert isinstance(outcome, Completed)
        assert outcome.value == 1000
        assert outcome.items_delivered == 1000
        assert await job.wait_async() is outcome
        assert await job.result_async(timeout=5) == 1000

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_aiter_shares_the_stream_with_drain() -> None:
    """``job.aiter()``, ``drain()`` and a second ``aiter()`` split the stream: every item
    once, in order."""

    async def main() -> None:
        job = workstream.start(workers.count, 100)
        await job.wait_async()  # everything is buffered now
        it = job.aiter()
        first = [await anext(it), await anext(it)]
        drained = job.drain()
        rest = [item async for item in job.aiter()]
        assert first == [0, 1]
        assert drained == list(range(2, 100))
        assert rest == []

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_iteration_resumes_in_a_second_event_loop() -> None:
    """No state is tied to a loop: break out in one ``asyncio.run``, go on in another."""
    job = workstream.start(workers.count, 50)

    async def take(n: int) -> list[int]:
        out: list[int] = []
        async for item in job:
            out.append(item)
            if len(out) == n:
                break
        return out

    async def rest() -> list[int]:
        return [item async for item in job]

    assert asyncio.run(take(10)) == list(range(10))
    assert asyncio.run(rest()) == list(range(10, 50))
    assert job.result(timeout=10) == 50


@pytest.mark.timeout(30)
def test_result_async_raises_worker_error() -> None:
    """A failing job: the items before the error arrive, ``result_async`` raises
    WorkerError with the remote traceback, ``await job.wait_async()`` gives Failed."""

    async def main() -> None:
        job = workstream.start(workers.raise_after, 3)
        assert [item async for item in job] == [0, 1, 2]
        with pytest.raises(WorkerError, match="boom after 3"):
            await job.result_async()
        outcome = await job.wait_async()
        assert isinstance(outcome, Failed)
        assert "raise_after" in outcome.remote_traceback

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_wait_returns_the_outcome_itself_on_the_loop_thread() -> None:
    """``job.wait()`` has one return type: on the loop's thread, for a job already done,
    it is the Outcome (not an awaitable), and an outcome is not awaitable."""

    async def main() -> None:
        job = workstream.start(workers.count, 1)
        awaited = await job.wait_async()
        outcome = job.wait()
        assert isinstance(outcome, Completed) and outcome is awaited
        assert not hasattr(outcome, "__await__")

    asyncio.run(main())


_REFUSED_ON_THE_LOOP: dict[str, tuple[Callable[[Any], object], str]] = {
    "wait": (lambda job: job.wait(), "job.wait() would block the event loop until job "
             "'ready_then_idle' ends; use 'await job.wait_async()'"),
    "result": (lambda job: job.result(), "job.result() would block the event loop until "
               "job 'ready_then_idle' ends; use 'await job.result_async()'"),
    "iter": (lambda job: list(job), "for item in job would block the event loop until "
             "job 'ready_then_idle' ends; use 'async for item in job'"),
    "next": (lambda job: next(job), "next(job) would block the event loop until "
             "job 'ready_then_idle' ends; use 'async for item in job'"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("call", sorted(_REFUSED_ON_THE_LOOP))
def test_blocking_calls_on_the_loop_thread_are_refused_alike(call: str) -> None:
    """On a thread running an asyncio loop, ``wait()``, ``result()`` and sync iteration
    of a running job all raise the same RuntimeError (naming the await form) at once,
    leaving the job running, with or without a timeout."""
    fn, message = _REFUSED_ON_THE_LOOP[call]

    async def main() -> None:
        job = workstream.start(wa.ready_then_idle)
        with pytest.raises(RuntimeError) as info:
            fn(job)
        assert str(info.value) == message
        if call in ("wait", "result"):
            with pytest.raises(RuntimeError, match="would block the event loop"):
                getattr(job, call)(timeout=5)
        assert not job.done() and not job.cancel_requested
        job.cancel()
        await job.wait_async()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_discard_stops_async_iteration_mid_batch() -> None:
    """After ``cancel(discard=True)``, ``async for`` yields nothing more, even items of
    the batch it is in the middle of (as synchronous iteration)."""

    async def main() -> None:
        job = workstream.start(
            wl.one_then_batch, 100, 1 << 16, batch_window=5.0, max_batch_bytes=1 << 16
        )
        it = job.aiter()
        assert [await anext(it), await anext(it)] == [0, 1]
        assert job.cancel(discard=True) is True
        rest = [item async for item in it]
        outcome = await job.wait_async(timeout=10)
        assert rest == []
        assert isinstance(outcome, CancelledOutcome)
        assert outcome.items_delivered == 2

    asyncio.run(main())


def _broken_on_done(outcome: object) -> None:
    raise LookupError("on_done bug")


@pytest.mark.timeout(30)
def test_a_raising_callback_surfaces_in_await_and_async_with() -> None:
    """As the synchronous calls: ``await job.wait_async()`` and leaving ``async with``
    normally raise CallbackError from the callback's exception."""

    async def main() -> None:
        job = workstream.start(workers.count, 3, on_done=_broken_on_done)
        with pytest.raises(workstream.CallbackError, match="on_done bug"):
            await job.wait_async()
        with pytest.raises(workstream.CallbackError, match="on_done bug"):
            async with workstream.start(workers.count, 3, on_done=_broken_on_done) as job2:
                assert [item async for item in job2] == [0, 1, 2]

    asyncio.run(main())


# -- cancelling the awaiting task cancels the job -----------------------------------------


@pytest.mark.timeout(30)
def test_cancelling_the_iterating_task_reaps_the_child() -> None:
    """A task waiting in ``async for`` is cancelled: the CancelledError reaches the
    caller only after the job was cancelled and its child reaped."""

    async def main() -> None:
        job = workstream.start(wa.ready_then_idle)
        got: list[str] = []

        async def consume() -> None:
            async for item in job:
                got.append(item)

        task = asyncio.create_task(consume())
        await until(lambda: got == ["ready"], 15, "the first item")
        await yield_to_loop()  # the task is now waiting for the next item
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gone(job)
        assert isinstance(job.outcome, CancelledOutcome)

    asyncio.run(main())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["wait_async", "result_async"])
def test_cancelling_the_waiting_task_reaps_the_child(how: str) -> None:
    """A task in ``await job.wait_async()`` / ``await job.result_async()`` is
    cancelled: the job is cancelled and reaped before the CancelledError goes on."""

    async def main() -> None:
        job = workstream.start(wa.ready_then_idle)
        await until(lambda: job.drain() == ["ready"], 15, "the first item")
        task = asyncio.ensure_future(getattr(job, how)())
        await yield_to_loop()
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gone(job)
        assert isinstance(job.outcome, CancelledOutcome)

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_cancelling_a_task_waiting_on_a_child_stuck_in_c(tmp_path: pathlib.Path) -> None:
    """The child ignores SIGTERM inside a C call: the cancelled task returns once the
    ladder SIGKILLed it at the job's grace (0.5 s), not before, not much later."""

    async def main() -> None:
        marker = tmp_path / "ready"
        job = workstream.start(wl.mark_then_sleep_in_c, str(marker), 60, grace=0.5)
        await until(marker.exists, 15, "the child to enter its C call")
        task = asyncio.ensure_future(job.wait_async())
        await yield_to_loop()
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        elapsed = time.monotonic() - t0
        assert gone(job)
        assert isinstance(job.outcome, CancelledOutcome)
        assert job.outcome.rung == "sigkill"
        assert 0.45 <= elapsed < 5.0, elapsed

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_second_cancellation_kills_at_once(tmp_path: pathlib.Path) -> None:
    """While the cancelled task waits for a stuck child (grace 30 s), a second
    cancellation escalates to SIGKILL: the task ends long before the grace."""

    async def main() -> None:
        marker = tmp_path / "ready"
        job = workstream.start(wl.mark_then_sleep_in_c, str(marker), 60, grace=30)
        await until(marker.exists, 15, "the child to enter its C call")
        task = asyncio.ensure_future(job.wait_async())
        await yield_to_loop()
        t0 = time.monotonic()
        task.cancel()
        await until(lambda: job.cancel_requested, 5, "the task to cancel the job")
        assert not task.done()  # shielded: still waiting for the child
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - t0 < 10
        assert gone(job)
        assert isinstance(job.outcome, CancelledOutcome)
        assert job.outcome.rung == "sigkill"

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_cancelling_a_task_that_consumes_a_flood_reaps_the_child() -> None:
    """A task consuming a flood (its loop body never awaits) is cancelled: the
    cancellation lands in the iterator's hand-over to the loop, and the child is gone
    when the task ends."""

    async def main() -> None:
        job = workstream.start(workers.forever)
        seen = 0

        async def consume() -> None:
            nonlocal seen
            async for _ in job:
                seen += 1

        task = asyncio.ensure_future(consume())
        await until(lambda: seen >= 10_000, 15, "10,000 items")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gone(job)
        assert isinstance(job.outcome, CancelledOutcome)

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_shield_stops_waiting_without_cancelling_the_job() -> None:
    """``asyncio.shield(job.wait_async())``: cancelling the outer await leaves the job
    running (the documented way to stop waiting only)."""

    async def main() -> None:
        job = workstream.start(wa.ready_then_idle)
        inner = asyncio.ensure_future(job.wait_async())
        outer = asyncio.ensure_future(asyncio.shield(inner))
        await yield_to_loop()
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        await yield_to_loop()
        assert not job.cancel_requested
        assert not inner.done()
        job.cancel()
        assert isinstance(await inner, CancelledOutcome)

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_async_with_cancels_and_reaps_on_exit() -> None:
    """Leaving ``async with job`` (by ``break`` or by an exception) cancels the running
    job and awaits its end; the exception goes on unchanged."""

    async def main() -> None:
        async with workstream.start(workers.forever) as job:
            async for item in job:
                if item == 3:
                    break
        assert gone(job)
        assert isinstance(job.outcome, CancelledOutcome)

        with pytest.raises(KeyError, match="mine"):
            async with workstream.start(wa.ready_then_idle) as job2:
                async for _ in job2:
                    raise KeyError("mine")
        assert gone(job2)

    asyncio.run(main())


# -- timeouts -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_timeout_argument_leaves_the_job_running() -> None:
    """``wait_async(timeout=)`` / ``await job.wait_async(timeout=)`` raise TimeoutError and,
    as the synchronous wait, leave the job running."""

    async def main() -> None:
        job = workstream.start(wa.ready_then_idle)
        with pytest.raises(TimeoutError, match="still"):
            await job.wait_async(timeout=0.05)
        with pytest.raises(TimeoutError):
            await job.wait_async(timeout=0)
        with pytest.raises(TimeoutError):
            await job.result_async(timeout=0.01)
        assert not job.cancel_requested
        assert job.pid is not None and wl.pid_alive(job.pid)
        job.cancel()
        assert isinstance(await job.wait_async(timeout=10), CancelledOutcome)

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_wait_for_timeout_cancels_the_job() -> None:
    """``asyncio.wait_for`` cancels the awaiting coroutine on timeout, hence the job:
    when it raises, the child is already gone."""

    async def main() -> None:
        job = workstream.start(wa.ready_then_idle)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(job.result_async(), timeout=0.2)
        assert gone(job)
        assert isinstance(job.outcome, CancelledOutcome)

    asyncio.run(main())


@needs_taskgroup
@pytest.mark.timeout(30)
def test_asyncio_timeout_around_async_for_cancels_the_job() -> None:
    """``async with asyncio.timeout()`` around ``async for``: TimeoutError, child gone."""

    async def main() -> None:
        job = workstream.start(wa.tick, 0.01)
        seen: list[int] = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):  # type: ignore[attr-defined]
                async for item in job:
                    seen.append(item)
        assert gone(job)
        assert seen == list(range(len(seen)))

    asyncio.run(main())


@pytest.mark.timeout(10)
def test_bad_timeout_raises_at_the_call() -> None:
    """A bad timeout raises at the call, before any coroutine exists."""

    async def main() -> None:
        job = workstream.start(workers.count, 1)
        with pytest.raises(ValueError, match="seconds"):
            job.wait_async(timeout=-1)
        with pytest.raises(ValueError, match="seconds"):
            job.wait(timeout=float("nan"))
        with pytest.raises(TypeError):
            job.result_async(timeout="1")  # type: ignore[arg-type]
        await job.wait_async()

    asyncio.run(main())


# -- many jobs, threads, and a loop that keeps running ------------------------------------


@pytest.mark.timeout(60)
def test_gather_20_jobs() -> None:
    """20 jobs consumed concurrently with ``gather``: each gets its own items in order."""

    async def consume(n: int) -> tuple[list[int], int]:
        job = workstream.start(workers.count, n)
        items = [item async for item in job]
        return items, await job.result_async()

    async def main() -> None:
        results = await asyncio.gather(*(consume(100 + i) for i in range(20)))
        for i, (items, value) in enumerate(results):
            assert items == list(range(100 + i))
            assert value == 100 + i

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_cancelling_a_gather_of_20_reaps_all_children() -> None:
    """Cancelling a ``gather(..., return_exceptions=True)`` of 20 consumers: when it
    ends, all 20 children are gone. (Without ``return_exceptions`` gather itself ends at
    the first cancelled child while the others still wind down: asyncio's semantics.)"""

    async def main() -> None:
        jobs = [workstream.start(wa.tick, 0.01) for _ in range(20)]
        counts = [0] * 20

        async def consume(i: int) -> None:
            async for _ in jobs[i]:
                counts[i] += 1

        outer = asyncio.gather(*(consume(i) for i in range(20)), return_exceptions=True)
        await until(lambda: all(counts), 30, "every job to deliver an item")
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        assert all(gone(job) for job in jobs), [job.state for job in jobs]

    asyncio.run(main())


@needs_taskgroup
@pytest.mark.timeout(60)
def test_failing_task_in_taskgroup_reaps_20_children() -> None:
    """One task of a TaskGroup fails: the group cancels the 20 consumers, each inside
    ``async with workstream.start(...)``; when the group exits no child is left."""

    async def main() -> None:
        jobs: list[workstream.Job[int, Any]] = []
        all_flowing = asyncio.Event()

        async def consume() -> None:
            async with workstream.start(wa.tick, 0.01) as job:
                jobs.append(job)
                async for _ in job:
                    if len(jobs) == 20 and all(j.outcome is None for j in jobs):
                        all_flowing.set()

        async def fail_once_all_flow() -> None:
            await asyncio.wait_for(all_flowing.wait(), 30)
            raise ValueError("one task failed")

        with pytest.raises(Exception) as info:  # an ExceptionGroup (3.11+)
            async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined]
                for _ in range(20):
                    group.create_task(consume())
                group.create_task(fail_once_all_flow())
        assert [type(e) for e in info.value.exceptions] == [ValueError]  # type: ignore[attr-defined]
        assert len(jobs) == 20
        assert all(gone(job) for job in jobs), [job.state for job in jobs]

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_awaiting_adds_no_thread(tmp_path: pathlib.Path) -> None:
    """20 jobs, each with an ``async for`` consumer and two more tasks awaiting its end:
    while all 60 tasks wait, the process has no thread beyond the 20 jobs' runners."""

    async def main() -> None:
        flag = tmp_path / "go"
        before = threading.active_count()
        jobs = [
            workstream.start(wl.wait_for_file_then_count, str(flag), 10 + i) for i in range(20)
        ]
        with_runners = threading.active_count()
        assert with_runners - before <= 20
        got: list[list[object]] = [[] for _ in jobs]

        async def consume(i: int) -> list[object]:
            async for item in jobs[i]:
                got[i].append(item)
            return got[i]

        tasks = [asyncio.ensure_future(consume(i)) for i in range(20)]
        tasks += [asyncio.ensure_future(job.wait_async()) for job in jobs]
        tasks += [asyncio.ensure_future(job.wait_async(timeout=60)) for job in jobs]
        await until(lambda: all(g == ["ready"] for g in got), 30, "every job's first item")
        for _ in range(5):
            await yield_to_loop()  # every task is now parked in its wait
        assert not any(task.done() for task in tasks)
        assert threading.active_count() == with_runners
        flag.touch()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        for i in range(20):
            assert results[i] == ["ready", *range(10 + i)]
            assert results[20 + i] is results[40 + i] is jobs[i].outcome
            assert isinstance(jobs[i].outcome, Completed)

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_async_for_over_a_buffered_flood_lets_the_loop_run() -> None:
    """500,000 buffered items consumed by an ``async for`` whose body never awaits: a
    ticker task still runs throughout (the iterator hands the loop over every few ms)."""
    n = 500_000

    async def main() -> None:
        job = workstream.start(
            workers.count, n, max_buffered_items=None, max_buffered_bytes=None
        )
        await job.wait_async(timeout=30)  # all items are buffered: async for never has to wait
        ticks: list[float] = []
        stop = False

        async def ticker() -> None:
            while not stop:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.001)  # ok: sleep (the ticker's period)

        tick_task = asyncio.ensure_future(ticker())
        await yield_to_loop()
        t0 = time.monotonic()
        total = 0
        async for item in job:
            total += item
        elapsed = time.monotonic() - t0
        stop = True
        await tick_task
        during = [t for t in ticks if t >= t0]
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        assert total == n * (n - 1) // 2
        # Without the hand-over the ticker would not run at all while we iterate.
        assert len(during) >= min(5, elapsed / 0.05), (len(during), elapsed)
        assert max(gaps) < 0.5, max(gaps)  # generous: a shared, noisy machine

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_loop_stays_responsive_while_a_child_floods() -> None:
    """A child yields as fast as it can while ``async for`` takes 200,000 items and a
    ticker task measures the loop: it keeps ticking, with no long gap."""

    async def main() -> None:
        ticks: list[float] = []
        stop = False

        async def ticker() -> None:
            while not stop:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.001)  # ok: sleep (the ticker's period)

        tick_task = asyncio.ensure_future(ticker())
        async with workstream.start(workers.forever) as job:
            n = 0
            async for item in job:
                assert item == n
                n += 1
                if n == 200_000:
                    break
        stop = True
        await tick_task
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        assert len(ticks) >= 10, len(ticks)
        assert max(gaps) < 0.5, max(gaps)  # generous: a shared, noisy machine

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_waiting_never_blocks_the_loop() -> None:
    """While a task awaits ``job.wait()`` and another ``async for`` of a job that sends
    nothing, a ticker keeps running; a watchdog thread would end the job after 20 s if
    the loop were blocked (the test then fails on its assertions)."""

    async def main() -> None:
        job = workstream.start(wa.ready_then_idle)
        watchdog = threading.Timer(20, job.cancel)
        watchdog.start()
        try:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.001)  # ok: sleep (the ticker's period)

            t0 = time.monotonic()
            waiter = asyncio.ensure_future(job.wait_async())
            consumer = asyncio.ensure_future(job.aiter().__anext__())
            tick_task = asyncio.ensure_future(ticker())
            await until(lambda: ticks >= 100, 15, "100 ticks")
            assert time.monotonic() - t0 < 15
            assert not waiter.done()
            assert await consumer == "ready"
            consumer = asyncio.ensure_future(job.aiter().__anext__())
            await until(lambda: ticks >= 200, 15, "200 ticks")
            assert not consumer.done()
            job.cancel()
            with pytest.raises(StopAsyncIteration):
                await consumer
            assert isinstance(await waiter, CancelledOutcome)
            tick_task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await tick_task
        finally:
            watchdog.cancel()
            watchdog.join()

    asyncio.run(main())


# -- misuse -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_two_tasks_iterating_one_job_is_an_error() -> None:
    """While one task waits for an item, another task asking for one raises
    RuntimeError; the first keeps the stream."""

    async def main() -> None:
        job = workstream.start(wa.ready_then_idle)
        first = asyncio.ensure_future(job.aiter().__anext__())
        assert await first == "ready"
        first = asyncio.ensure_future(job.aiter().__anext__())
        await yield_to_loop()
        with pytest.raises(RuntimeError, match="another task"):
            await anext(job.aiter())
        assert not first.done()
        job.cancel()
        with pytest.raises(StopAsyncIteration):
            await first
        await job.wait_async()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_async_iteration_of_an_on_item_job_is_an_error() -> None:
    """A job started with on_item cannot be iterated asynchronously either."""

    async def main() -> None:
        job = workstream.start(workers.count, 3, on_item=lambda item: None)
        with pytest.raises(RuntimeError, match="on_item"):
            job.aiter()
        with pytest.raises(RuntimeError, match="on_item"):
            async for _ in job:
                pass
        await job.wait_async()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_result_on_the_loop_thread_never_blocks() -> None:
    """On the loop's thread, ``job.result()`` of a running job raises RuntimeError
    (it would freeze the loop); once the job is done it answers as usual."""

    async def main() -> None:
        job = workstream.start(wa.ready_then_idle)
        with pytest.raises(RuntimeError, match="result_async"):
            job.result()
        job.cancel()
        await job.wait_async()
        with pytest.raises(workstream.Cancelled):
            job.result()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_plain_with_in_a_coroutine_still_waits() -> None:
    """The synchronous ``with job:`` keeps its meaning in a coroutine: on exit it
    cancels and waits (blocking, bounded by the grace) — no stray coroutine, no warning."""

    async def main() -> None:
        with workstream.start(workers.forever) as job:
            assert job.aiter() is not None
        assert gone(job)
        assert isinstance(job.outcome, CancelledOutcome)

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_closed_loop_does_not_disturb_the_job() -> None:
    """A loop closed while one of its tasks still waits on a job: the job's listener
    finds the loop closed and stays quiet; the job ends normally."""
    job = workstream.start(wa.ready_then_idle)
    loop = asyncio.new_event_loop()
    task = loop.create_task(job.wait_async())
    loop.run_until_complete(yield_to_loop())
    assert len(job._core.listeners) == 1  # the waiting task's listener
    loop.close()
    job.cancel()
    assert isinstance(job.wait(timeout=10), CancelledOutcome)  # no loop here: blocks
    assert job._core.listener_error is None
    task.get_coro().close()  # what garbage collection would do; removes the listener
    assert job._core.listeners == []


@pytest.mark.timeout(30)
def test_import_does_not_import_asyncio() -> None:
    """``import workstream`` leaves asyncio unimported (it is imported on first use)."""
    code = "import sys, workstream; print('asyncio' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=25)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


_TYPED_SNIPPET = '''
from collections.abc import Generator

import workstream


def gen(n: int) -> Generator[int, None, str]:
    yield n
    return "done"


async def main() -> None:
    job = workstream.start(gen, 3)
    async for item in job:
        reveal_type(item)  # L14
    reveal_type(await job.wait_async())  # L15
    reveal_type(await job.wait_async())  # L16
    reveal_type(await job.result_async())  # L17
    async with job as j:
        reveal_type(j)  # L19
    wrong: int = await job.wait_async()  # L20
'''


@pytest.mark.timeout(120)
def test_types_seen_by_mypy(tmp_path: pathlib.Path) -> None:
    """Under ``mypy --strict``, ``await job.wait_async()`` is an Outcome (not a coroutine),
    ``async for`` items and ``result_async()`` carry the job's types, and assigning the
    outcome to an ``int`` is an error."""
    pytest.importorskip("mypy")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(_TYPED_SNIPPET.lstrip("\n"))
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--cache-dir", str(tmp_path / "cache"), str(snippet)],
        capture_output=True, text=True, timeout=110,
    )
    revealed = {}
    errors = []
    for line in done.stdout.splitlines():
        parts = line.split(":", 3)
        if len(parts) == 4 and "Revealed type is" in parts[3]:
            revealed[int(parts[1])] = parts[3].split('"')[1]
        elif len(parts) == 4 and "error" in parts[2]:
            errors.append(int(parts[1]))
    # Spelling varies with mypy's version ("builtins.int" / "int", "Union[...]" / "|").
    short = {n: t.replace("builtins.", "").replace("workstream._outcomes.", "")
             for n, t in revealed.items()}
    assert set(short) == {14, 15, 16, 17, 19}, done.stdout
    assert short[14] == "int" and short[17] == "str", done.stdout
    for n in (15, 16):
        assert all(k in short[n] for k in ("Completed", "CancelledOutcome", "Failed", "Crashed"))
        assert "Coroutine" not in short[n]
    assert short[19] == "workstream._api.Job[int, str]", done.stdout
    assert errors == [20], done.stdout


@pytest.mark.timeout(60)
def test_readme_asyncio_example(tmp_path: pathlib.Path) -> None:
    """The README's asyncio example, run as a user would: it stops soon after the loss
    drops under 0.2 (cancelled), then wait_for's timeout cancels the second job."""
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.index("## asyncio\n")
    start = text.index("```python\n", section) + len("```python\n")
    script = tmp_path / "example.py"
    script.write_text(text[start : text.index("```", start)])
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=50
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[-2:] == ["cancelled", "cancelled"], lines
    epochs = [eval(line)["epoch"] for line in lines[:-2]]
    assert epochs == list(range(len(epochs)))
    assert 5 <= len(epochs) < 20
