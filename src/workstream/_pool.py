"""The public :class:`Pool`: warm worker processes, a queue with priorities, a limit.

A thin facade over ``_supervisor._pool.PoolCore`` (the queue, and one
``WorkerSupervisor`` per slot: the Worker's warm process, replacements and reaping).
Every job is a :class:`Job`, the same class ``start()`` returns. Like ``Worker``, the
facade holds no process state: a Pool the user forgets is closed when it is
garbage-collected, and at the latest at interpreter exit.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import os
import queue
import types
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from types import TracebackType
from typing import Any

import cloudpickle

from ._api import Job
from ._checks import check_can_start, check_fn, check_options_are_not_arguments, describe
from ._child._context import check_cancelled
from ._child._job import _initialize
from ._errors import PoolFull
from ._options import Options, check_grace
from ._supervisor._pool import PoolCore
from ._supervisor._pool import PoolStats as PoolStats
from ._supervisor._worker import Submission
from ._worker import JOB_OPTIONS


class _Queue:
    """The host a pool's ``Job`` is handed to: the pool's queue, at one priority."""

    queues_jobs = True  # its jobs start QUEUED, without a wake pipe until dequeued

    def __init__(self, core: PoolCore, priority: int, block: bool) -> None:
        self._core = core
        self._priority = priority
        self._block = block

    @property
    def wake_fds(self) -> tuple[int, int]:
        return self._core.wake_fds

    def submit(self, sub: Submission) -> None:
        self._core.enqueue(sub, self._priority, self._block)


def _positive_int(value: object, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be a positive int or None, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int or None, not {value!r}")
    return value


def _chunksize(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"chunksize must be a positive int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"chunksize must be a positive int, not {value!r}")
    return value


class Pool:
    """Warm worker processes that run queued jobs, at most ``max_workers`` at once.

    ``max_workers`` (default: the CPU count) processes are started now, in the
    background; each runs ``initializer(*initargs)`` once (its value is
    :func:`workstream.worker_state` in every later job of that process). ``start()``
    queues a job and returns its :class:`Job` at once: the same class as
    :func:`workstream.start`'s (iteration, callbacks, asyncio, ``QtJob``/``TkJob``), in
    the state ``queued`` until a warm process takes it. Higher ``priority`` first, FIFO
    among equals.

    A job that ends by itself (or stops at a cancellation point) keeps its process warm;
    one that needed SIGTERM/SIGKILL, or crashed, costs it, and that slot starts a
    replacement (the other slots keep running their jobs). ``max_jobs_per_worker`` and
    ``max_worker_memory`` (bytes of resident memory of the process and its process
    group, measured after each job) retire a process after a job; ``outcome.kept_warm``
    says whether the job's process was kept.

    ``max_queued`` bounds the queue: ``start()`` then raises :class:`PoolFull` (nothing
    is queued; ``map()`` waits for room instead). ``job_options``: defaults for every job
    (any option of :func:`workstream.start`; those of the process, such as
    ``start_method``, are fixed for the pool).

    Thread-safe (``start``, ``cancel``, ``close``, ``stats`` from any thread). Use as a
    context manager, or call :meth:`close`. A Pool that is garbage-collected or still
    open at interpreter exit is closed (its running jobs cancelled).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_jobs_per_worker: int | None = None,
        max_worker_memory: int | None = None,
        max_queued: int | None = None,
        **job_options: Any,
    ) -> None:
        check_can_start("workstream.Pool()")
        workers = _positive_int(max_workers, "max_workers")
        if workers is None:
            workers = os.cpu_count() or 1
        if initializer is not None:
            check_fn(initializer, "workstream.Pool(initializer=...)")
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, not {type(initargs).__name__}")
        max_jobs = _positive_int(max_jobs_per_worker, "max_jobs_per_worker")
        max_memory = _positive_int(max_worker_memory, "max_worker_memory")
        queued = _positive_int(max_queued, "max_queued")
        opts = Options.from_kwargs(job_options, "workstream.Pool()")
        name = opts.name or (describe(initializer) if initializer is not None else "pool")
        try:
            payload = cloudpickle.dumps((_initialize, (initializer, *initargs)))
        except BaseException as exc:  # a __reduce__ may even raise SystemExit
            raise TypeError(
                f"workstream.Pool(): the initializer {name} or its arguments cannot be "
                f"pickled: {type(exc).__name__}: {exc}"
            ) from exc
        self._name = name
        self._job_options = dataclasses.replace(opts, name=None)
        self._core = PoolCore(
            opts, name, payload, workers, max_jobs_per_worker=max_jobs,
            max_worker_memory=max_memory, max_queued=queued,
        )
        self._finalizer = weakref.finalize(self, self._core.close_when_collected)
        self._finalizer.atexit = False  # the registry closes it at exit

    # -- facts --------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def max_workers(self) -> int:
        return self._core.max_workers

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (processes may still be stopping)."""
        return self._core.stats().closed

    def stats(self) -> PoolStats:
        """An immutable snapshot: jobs running and queued, idle and live processes,
        processes started and retired (and why)."""
        return self._core.stats()

    # -- jobs ---------------------------------------------------------------------------

    def start(
        self, fn: Callable[..., Any], *args: Any, priority: int = 0,
        timeout: float | None = None, **options: Any,
    ) -> Job[Any, Any]:
        """Queue ``fn(*args)``; return its :class:`Job` at once (state ``queued``).

        ``priority``: an int, higher runs first, FIFO among equals. ``timeout``: seconds
        the job may run once a process took it (the time in the queue does not count);
        then it is cancelled with its grace, ``outcome.timed_out`` is True and
        ``result()`` raises :class:`JobTimeout`. None: the pool's default (none unless
        ``Pool(timeout=...)``). Other keyword arguments are per-job options (``grace``,
        ``term_after``, ``name``, ``on_item``, ``on_done``, buffer bounds, ``shm_copy``).

        ``job.cancel()`` of a queued job ends it at once, ``cancelled`` with rung
        ``before-start``; it never runs and no process is touched. A running job is
        cancelled with the usual ladder, and only that job.

        Raises ``RuntimeError`` if the pool is closed, :class:`PoolFull` if
        ``max_queued`` jobs wait, the initializer's failure (:class:`WorkerError`,
        :class:`WorkerCrashed`) once it is known, ``TypeError`` / ``ValueError`` for a
        bad ``fn``, priority or option (as :func:`workstream.start`).
        """
        return self._start(fn, args, priority, timeout, options, block=False)

    def _start(
        self, fn: Callable[..., Any], args: tuple[Any, ...], priority: int,
        timeout: float | None, options: dict[str, Any], *, block: bool,
        call: str = "Pool.start()",
    ) -> Job[Any, Any]:
        check_fn(fn, call)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TypeError(f"priority must be an int, not {type(priority).__name__}")
        if timeout is not None:
            options = {**options, "timeout": timeout}
        opts = self._job_options
        if options:
            bad = sorted(set(options) - JOB_OPTIONS)
            if bad:
                Options.from_kwargs(options, call)  # raises for names that are no option
                raise TypeError(
                    f"{call} got process option(s) {', '.join(map(repr, bad))}: they are "
                    "fixed for the pool's processes; pass them to workstream.Pool(...)"
                )
            opts = dataclasses.replace(opts, **options)
            check_options_are_not_arguments(fn, args, options, call)
        return Job(fn, args, opts, host=_Queue(self._core, priority, block), owner=self)

    def map(
        self, fn: Callable[..., Any], iterable: Iterable[Any], *,
        timeout: float | None = None, ordered: bool = True, prefetch: int | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Run ``fn(x)`` for each ``x`` of ``iterable``; yield the results.

        Submits lazily: at most ``prefetch`` jobs (default: twice ``max_workers``) are
        queued or running ahead of the one the caller waits for, so an endless iterable
        is fine. Yields results in input order (``ordered=False``: as jobs end). The
        first job that did not complete raises at its position, as ``result()`` does
        (:class:`WorkerError`, :class:`JobTimeout` for ``timeout``, ...). Items a
        generator ``fn`` yields are dropped. Leaving the loop early (``break``, an
        exception, ``close()`` of the iterator, or dropping it) cancels every job it
        started; queued ones end at once without running. Waits for room in the queue
        when ``max_queued`` is reached.

        ``chunksize`` (default 1): a job runs ``fn`` over up to that many consecutive
        inputs, which cuts the per-task cost of tiny tasks (as
        ``ProcessPoolExecutor.map``'s). Results still come in input order; an input that
        raised raises at its position, after the results of the inputs before it in its
        chunk (the rest of that chunk does not run). With chunks, ``timeout`` bounds a
        whole chunk, ``prefetch`` counts chunks, and a chunk's results come once it ends.

        Raises ``TypeError`` / ``ValueError`` for a bad argument here, at the call.
        """
        check_fn(fn, "Pool.map()")
        items = iter(iterable)
        ahead = self._check_map(timeout, ordered, prefetch)
        k = _chunksize(chunksize)
        return _map(self, fn, items, timeout, ordered, ahead, k)

    def map_async(
        self, fn: Callable[..., Any], iterable: Iterable[Any], *,
        timeout: float | None = None, ordered: bool = True, prefetch: int | None = None,
        chunksize: int = 1,
    ) -> AsyncIterator[Any]:
        """:meth:`map` for asyncio: ``async for result in pool.map_async(fn, xs)``.

        Never blocks the event loop. Leaving the loop early, cancelling the task, or
        ``aclose()`` cancels every job it started. ``chunksize``: as for :meth:`map`.
        """
        check_fn(fn, "Pool.map_async()")
        items = iter(iterable)
        ahead = self._check_map(timeout, ordered, prefetch)
        k = _chunksize(chunksize)
        if k > 1:
            start_chunk = self._map_job(_run_chunk, timeout, fn)
            return _map_async(start_chunk, _chunks(items, k), ordered, ahead, chunked=True)
        return _map_async(self._map_job(fn, timeout), items, ordered, ahead)

    def _check_map(self, timeout: float | None, ordered: bool, prefetch: int | None) -> int:
        if timeout is not None:
            check_grace(timeout, "timeout")
            if timeout == 0:
                raise ValueError("timeout must be a finite number of seconds > 0, not 0")
        if not isinstance(ordered, bool):
            raise TypeError(f"ordered must be a bool, not {type(ordered).__name__}")
        ahead = _positive_int(prefetch, "prefetch")
        if self._core.stats().closed:
            raise RuntimeError(f"workstream.Pool {self._name!r} is closed; create a new Pool")
        return ahead if ahead is not None else 2 * self.max_workers

    def _map_job(
        self, fn: Callable[..., Any], timeout: float | None, *first: Any,
    ) -> Callable[[Any, bool], Job[Any, Any]]:
        """How map() starts the job of one input, ``fn(*first, x)`` (``block``: wait for
        room in the queue). The options are checked once, here."""
        opts = dataclasses.replace(
            self._job_options, max_buffered_items=None, max_buffered_bytes=None,
            timeout=self._job_options.timeout if timeout is None else timeout,
        )
        core = self._core
        hosts = (_Queue(core, 0, False), _Queue(core, 0, True))

        def start_one(x: Any, block: bool) -> Job[Any, Any]:
            return Job(fn, (*first, x), opts, host=hosts[block], owner=self)

        return start_one

    # -- closing ------------------------------------------------------------------------

    def cancel_all(self, grace: float | None = None) -> int:
        """Cancel every job of the pool: queued ones end at once (before-start), running
        ones are cancelled with their grace (at most ``grace``). The pool stays open.
        Returns how many jobs were cancelled."""
        if grace is not None:
            check_grace(grace)
        return self._core.cancel_all(grace)

    def close(self, grace: float | None = None, *, cancel_pending: bool = True) -> None:
        """Close the pool: no more jobs; every process is reaped before this returns.

        ``cancel_pending=True`` (default): queued jobs end ``cancelled`` (before-start)
        and running ones are cancelled with their grace, capped by ``grace``
        (``grace=0``: SIGKILL at once). ``cancel_pending=False``: queued and running
        jobs run to their end first (a later ``close()`` may still cancel them).
        Idempotent; safe from any thread (a job's ``on_done`` too: it then does not wait
        for the process of that job).
        """
        if grace is not None:
            check_grace(grace)
        if not isinstance(cancel_pending, bool):
            raise TypeError(f"cancel_pending must be a bool, not {type(cancel_pending).__name__}")
        self._finalizer.detach()
        self._core.close(wait=True, grace=grace, cancel_pending=cancel_pending)

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            "a workstream.Pool cannot be pickled or sent to another process; "
            "use it from the process that created it"
        )

    def __repr__(self) -> str:
        st = self._core.stats()
        state = "closed" if st.closed else "open"
        return (
            f"<workstream.Pool {self._name!r} {state} workers={st.workers}/"
            f"{st.max_workers} running={st.running} queued={st.queued}>"
        )


def _run_chunk(fn: Callable[[Any], Any], xs: list[Any]) -> Iterator[Any]:
    """The job of one chunk of ``Pool.map(chunksize=k)`` (in the worker process): yield
    ``fn(x)`` for each ``x`` in order, as an item; the first ``fn(x)`` that raises ends
    the job with that error. A generator ``fn``'s value is its return value (its own
    items are dropped, as with ``chunksize=1``; each is a cancellation point)."""
    for x in xs:
        value = fn(x)
        if isinstance(value, types.GeneratorType):
            value = _drop_items(value)
        yield value


def _drop_items(gen: Generator[Any, Any, Any]) -> Any:
    """Run ``gen`` to its end, dropping its items; return its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
        check_cancelled()


def _chunks(items: Iterator[Any], k: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``k`` (the last one shorter), read lazily."""
    while True:
        chunk = list(itertools.islice(items, k))
        if not chunk:
            return
        yield chunk


def _map(
    pool: Pool, fn: Callable[..., Any], items: Iterator[Any], timeout: float | None,
    ordered: bool, ahead: int, chunksize: int = 1,
) -> Iterator[Any]:
    """The generator behind ``Pool.map``: its ``finally`` cancels what it started (a
    chunk whose results are being yielded too)."""
    chunked = chunksize > 1
    if chunked:
        start_one = pool._map_job(_run_chunk, timeout, fn)
        items = _chunks(items, chunksize)
    else:
        start_one = pool._map_job(fn, timeout)
    pending: collections.deque[Job[Any, Any]] = collections.deque()
    ended: queue.SimpleQueue[Job[Any, Any]] = queue.SimpleQueue()
    exhausted = False
    current: Job[Any, Any] | None = None
    try:
        while True:
            while not exhausted and len(pending) < ahead:
                try:
                    x = next(items)
                except StopIteration:
                    exhausted = True
                    break
                job = _start_or_wait(start_one, x, pending)
                if not ordered:
                    job.add_listener(_reporter(job, ended.put))
                pending.append(job)
            if not pending:
                return
            if ordered:
                job = pending.popleft()
            else:
                job = ended.get()
                while job not in pending:  # a listener may report a job twice
                    job = ended.get()
                pending.remove(job)
            if chunked:
                current = job
                yield from job  # ordered: as they come; else the job is done already
                job.result()  # raises for the input that failed
                current = None
            else:
                yield job.result()
    finally:
        if current is not None:
            current.cancel()
        for job in pending:
            job.cancel()


def _reporter(
    job: Job[Any, Any], put: Callable[[Job[Any, Any]], object]
) -> Callable[[], None]:
    """A listener that hands ``job`` to ``put`` once it is done."""

    def listener() -> None:
        if job.done():
            put(job)

    return listener


def _start_or_wait(
    start_one: Callable[[Any, bool], Job[Any, Any]], x: Any,
    pending: collections.deque[Job[Any, Any]],
) -> Job[Any, Any]:
    """Start the job of ``x``; with the queue full, wait for room (blocking)."""
    try:
        return start_one(x, False)
    except PoolFull:
        return start_one(x, True)


async def _map_async(
    start_one: Callable[[Any, bool], Job[Any, Any]], items: Iterator[Any], ordered: bool,
    ahead: int, *, chunked: bool = False,
) -> AsyncIterator[Any]:
    """The async generator behind ``Pool.map_async``: jobs report their end to the loop
    through a listener; its ``finally`` cancels what it started. ``chunked``: each job
    is a chunk whose items are the results."""
    import asyncio

    loop = asyncio.get_running_loop()
    ended: asyncio.Queue[Job[Any, Any]] = asyncio.Queue()
    pending: collections.deque[Job[Any, Any]] = collections.deque()
    exhausted = False

    def report_on_loop(job: Job[Any, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(ended.put_nowait, job)

    try:
        while True:
            while not exhausted and len(pending) < ahead:
                try:
                    x = next(items)
                except StopIteration:
                    exhausted = True
                    break
                try:
                    job = start_one(x, False)
                except PoolFull:
                    job = await asyncio.to_thread(start_one, x, True)
                job.add_listener(_reporter(job, report_on_loop))
                pending.append(job)
            if not pending:
                return
            if ordered:
                job = pending[0]
                while not job.done():
                    await ended.get()
                pending.popleft()
            else:
                job = await ended.get()
                while job not in pending:
                    job = await ended.get()
                pending.remove(job)
            if chunked:
                for value in job.drain():  # the job is done: every item is here
                    yield value
                job.result()  # raises for the input that failed
            else:
                yield job.result()
    finally:
        for job in pending:
            job.cancel()
