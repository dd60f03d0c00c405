"""asyncio support for :class:`~workstream.Job`: ``async for``, awaiting the outcome, and
cancelling the job when the task that awaits it is cancelled.

Imported by ``_api`` only when a coroutine first uses a job, so ``import workstream``
does not import asyncio. Nothing here blocks the event loop or starts a thread: a
coroutine that must wait registers a job listener (:meth:`Job.add_listener`) whose only
act, on the job's runner thread, is ``loop.call_soon_threadsafe`` to resolve a future
of that loop; the listener is removed as soon as the wait ends. So any number of
coroutines may wait on any number of jobs with no thread beyond each job's own runner.

Structured cancellation: when a task is cancelled while it awaits a job (an item, the
outcome, the end of an ``async with`` block), :func:`cancel_and_reap` cancels the job
(with its own grace), waits for its end shielded from further cancellation (a second
cancellation escalates to ``cancel(grace=0)``: SIGKILL at once), and only then lets the
``CancelledError`` go on. A TaskGroup, ``asyncio.timeout()`` or ``wait_for()`` around
such a task therefore exits only after the child was reaped.

Must not import Qt, Tk or the supervisor. It sees a job only through :class:`AioJob`,
the interface it names below (implemented by ``_jobview.JobView``), and reads the stream
through the same cursor as ``Job.__next__`` (one consumer at a time), which forgets each
item it hands out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

from ._outcomes import Outcome

ItemT = TypeVar("ItemT")


class AioJob(Protocol):
    """What asyncio support needs of a job: its stream, its facts, cancelling and the
    errors of waiting. Every method is thread-safe except the stream's two, which the
    one consumer calls (``aio_busy`` keeps a second task out while one waits)."""

    EMPTY: ClassVar[object]  # from next_buffered / next_nowait: no item at hand
    END: ClassVar[object]  # from next_nowait: the stream ended
    name: str
    aio_busy: bool

    @property
    def next_buffered(self) -> Callable[[], object]:
        """The next item of the batch at hand, or EMPTY; never blocks, no bookkeeping
        (a bound method the iterator keeps: its fast path is one call)."""
        ...

    def next_nowait(self) -> object:
        """The next item, EMPTY or END; takes a new batch if needed, never blocks."""
        ...

    def done(self) -> bool: ...
    def ended(self) -> bool: ...
    def reading_paused(self) -> bool: ...

    def listen(self, fn: Callable[[], object]) -> Callable[[], None]:
        """Call ``fn`` (on any thread) on news of the job; return its remover."""
        ...

    def request_cancel(
        self, grace: float | None = None, term_after: float | None = None,
        discard: bool = False,
    ) -> bool: ...

    def raise_if_unread(self) -> None: ...
    def timeout_error(self, timeout: float | None) -> TimeoutError: ...
    def outcome_now(self) -> Outcome: ...
    def value_of(self, outcome: Outcome) -> Any: ...

_SLICE = 0.002
"""Seconds ``async for`` may run on already-buffered items before it hands the loop to
other tasks once (``sleep(0)``): a flooding child cannot starve the event loop through
an ``async for`` whose body never awaits. A timer (``asyncio.sleep(t)``) needs two loop
iterations to resume its task (the timer fires, then the task step runs), so another
task waits up to two slices: 2 ms keeps that well inside a 16 ms frame, and costs no
measurable throughput (one ``sleep(0)`` per ~thousands of items)."""

_monotonic = time.monotonic


def _wakeup(
    job: AioJob, *, when_done: bool, or_stuck: bool = False
) -> tuple[asyncio.Future[None], Callable[[], None]]:
    """Return a future of the running loop, resolved when the job has news, and the
    function that removes the listener behind it.

    News is any listener call (items were queued, the buffer filled up, or the job
    finished); with ``when_done`` only the job being done (or, with ``or_stuck``, its
    reading paused on a full buffer). The listener schedules at most one callback
    on the loop (no flood of wake-ups under a flood of items) and never raises: a loop
    closed under it has no waiter left to wake.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    scheduled = False

    def resolve() -> None:  # on the loop
        if not fut.done():
            fut.set_result(None)

    def listener() -> None:  # on a workstream thread (or here, if the job is done)
        nonlocal scheduled
        if scheduled:
            return
        if when_done and not job.done() and not (or_stuck and job.reading_paused()):
            return
        scheduled = True
        # "Event loop is closed": nobody waits on it any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(resolve)

    return fut, job.listen(listener)


async def cancel_and_reap(job: AioJob) -> None:
    """The awaiting task was cancelled: cancel the job and wait until it is done.

    Call it from the ``except CancelledError`` block, then re-raise. The wait is
    shielded: a further cancellation of the task does not end it early but escalates to
    ``job.cancel(grace=0)`` (SIGKILL now), so it lasts at most the job's grace (plus
    reaping), or less after a second cancellation. Waits for ``on_done`` too.
    """
    job.request_cancel()
    if job.done():
        return
    fut, remove = _wakeup(job, when_done=True)
    try:
        while not fut.done():
            try:
                await asyncio.shield(fut)
            except asyncio.CancelledError:
                job.request_cancel(grace=0.0)
    finally:
        remove()


async def _until_done(job: AioJob, timeout: float | None) -> bool:
    """Wait without blocking until the job is done or ``timeout`` passed; return done().

    If the task is cancelled meanwhile, the job is cancelled and reaped first (see
    :func:`cancel_and_reap`) and the ``CancelledError`` goes on.
    """
    deadline = None if timeout is None else _monotonic() + timeout
    while not job.done():
        if timeout is None:
            job.raise_if_unread()
        # The end, or reading paused on a full buffer, wakes us to look again.
        fut, remove = _wakeup(job, when_done=True, or_stuck=True)
        try:
            if job.done():
                break
            if deadline is None:
                await fut
            else:
                left = deadline - _monotonic()
                if left <= 0:
                    break
                await asyncio.wait((fut,), timeout=left)  # does not cancel fut on timeout
        except asyncio.CancelledError:
            remove()
            await cancel_and_reap(job)
            raise
        finally:
            remove()
    return job.done()


async def wait(job: AioJob, timeout: float | None) -> Outcome:
    """Await the job's outcome: :meth:`Job.wait` for a coroutine (validated by the caller)."""
    if not await _until_done(job, timeout):
        raise job.timeout_error(timeout)
    return job.outcome_now()


async def result(job: AioJob, timeout: float | None) -> Any:
    """Await the job's value: :meth:`Job.result` for a coroutine."""
    return job.value_of(await wait(job, timeout))


async def exit_block(job: AioJob, quiet: bool) -> None:
    """``async with job`` ends: cancel the job if it still runs, await its end.

    ``quiet`` (an exception is leaving the block): do not raise CallbackError over it.
    """
    if not job.ended():
        job.request_cancel()
    await _until_done(job, None)
    if not quiet:
        job.outcome_now()


class AsyncItems(Generic[ItemT]):
    """The async iterator of a job's items (``async for item in job``, ``job.aiter()``).

    Shares the stream with synchronous iteration and ``drain()``: every item goes to
    exactly one of them. One task at a time may wait for an item; a second one raises
    ``RuntimeError``. If the task is cancelled while it waits for an item, the job is
    cancelled and reaped before the ``CancelledError`` goes on. Holds no resource
    between items: breaking out of ``async for`` needs no clean-up.
    """

    __slots__ = ("_empty", "_job", "_next_buffered", "_ran_since")

    def __init__(self, job: AioJob) -> None:
        self._job = job
        self._next_buffered = job.next_buffered
        self._empty = job.EMPTY
        self._ran_since = _monotonic()

    def __aiter__(self) -> AsyncItems[ItemT]:
        return self

    async def __anext__(self) -> ItemT:
        job = self._job
        if job.aio_busy:
            raise RuntimeError(
                f"job {job.name!r} is already being iterated by another task; one "
                "consumer at a time (share the items through an asyncio.Queue)"
            )
        # The fast path (an item of the batch at hand, time slice not used up) does not
        # suspend, so it needs no busy flag; it is __next__'s, plus one clock read.
        if _monotonic() - self._ran_since <= _SLICE:
            item = self._next_buffered()
            if item is not self._empty:
                return item  # type: ignore[return-value]
        return await self._next_slow()

    async def _next_slow(self) -> ItemT:
        """Hand the loop over if the slice is used up, then take an item or wait."""
        job = self._job
        empty = job.EMPTY
        job.aio_busy = True
        try:
            if _monotonic() - self._ran_since > _SLICE:
                await self._pause(None)
            item = job.next_nowait()
            while item is empty:
                fut, remove = _wakeup(job, when_done=False)
                try:
                    item = job.next_nowait()  # queued before the listener was in place?
                    if item is empty:
                        await self._pause(fut)
                        item = job.next_nowait()
                finally:
                    remove()
            if item is job.END:
                raise StopAsyncIteration
            return cast(ItemT, item)
        finally:
            job.aio_busy = False

    async def _pause(self, fut: asyncio.Future[None] | None) -> None:
        """Let the loop run (until ``fut`` is resolved, or once); on cancellation cancel
        and reap the job, then re-raise."""
        try:
            if fut is None:
                await asyncio.sleep(0)
            else:
                await fut
        except asyncio.CancelledError:
            await cancel_and_reap(self._job)
            raise
        finally:
            self._ran_since = _monotonic()


# -- OUTPUT: async for over a job's output events ------------------------------------------


async def output_events(
    listen: Callable[[Callable[[], object]], Callable[[], None]],
    since: Callable[[int], tuple[tuple[Any, ...], int]],
    done: Callable[[], bool],
) -> Any:
    """Yield a job's output events as they arrive, until the job is done.

    ``listen``, ``since`` and ``done`` are the job's ``add_listener``, ``output_since``
    and ``done``. Waiting never blocks the loop: a listener resolves a future of this
    loop. Cancelling the task only stops the iteration (the job runs on).
    """
    loop = asyncio.get_running_loop()
    count = 0
    while True:
        wake: asyncio.Future[None] = loop.create_future()

        def resolve(fut: asyncio.Future[None] = wake) -> None:
            if not fut.done():
                fut.set_result(None)

        def listener(resolve: Callable[[], None] = resolve) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(resolve)

        remove = listen(listener)
        try:
            finished = done()  # first: after it, no event can come (the sink is closed)
            events, count = since(count)
            if not events:
                if finished:
                    return
                await wake
                continue
        finally:
            remove()
        for event in events:
            yield event
