"""The public entry points: :func:`start` and :class:`Job`.

``start()`` validates and pickles everything on the caller's thread (so bad input fails
right there), then hands the job to its runner thread and returns at once. ``Job`` is a
thin, thread-safe facade over the shared :class:`JobCore`; it never touches the process.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from types import TracebackType
from typing import Any, Generic, NoReturn, TypeVar, cast, overload

import cloudpickle

from ._child._runtime import in_worker
from ._errors import UNGUARDED_MAIN_EXIT, CallbackError, Cancelled
from ._options import Options, check_grace
from ._outcomes import CancelledOutcome, Completed, Crashed, Failed, JobState, Outcome
from ._supervisor import _registry
from ._supervisor._jobcore import JobCore
from ._supervisor._runner import JobRunner
from ._supervisor._worker import Submission
from ._transport import _fds

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class Job(Generic[ItemT, ResultT]):
    """A running (or finished) worker process and the stream of items it yields.

    Create with :func:`workstream.start`. Thread-safe, except that one thread at a time
    may iterate. Iterating yields items in order; the loop ends when the stream ends,
    whatever the outcome (ask :meth:`result` or :attr:`outcome` which one it was).
    In asyncio code: ``async for``, ``await job.wait()``, ``async with`` (see
    :meth:`aiter` and :meth:`wait_async`).
    """

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], options: Options,
        worker: Any = None,
    ) -> None:
        self._options = options
        self._name = options.name or _describe(fn)
        self._owner_pid = os.getpid()  # a forked copy of this object must not act
        try:
            payload = cloudpickle.dumps((fn, args))
        except BaseException as exc:  # a __reduce__ may even raise SystemExit
            raise TypeError(
                f"workstream.start(): {self._name} or its arguments cannot be pickled, so they "
                f"cannot be sent to the worker process: {type(exc).__name__}: {exc}"
            ) from exc
        # A Worker's job keeps its Worker alive (so dropping the Worker while holding one
        # of its jobs does not close it under the job); the Worker never holds its jobs
        # beyond the one it runs.
        self._worker = worker
        self._cur: list[ItemT] = []
        self._pos = 0
        self._discard_local = False  # set by cancel(discard=True), read by the iterator
        self._aio_busy = False  # True while a task is inside AsyncItems.__anext__ (_aio.py)
        self._in_on_item = False  # True while the callback thread runs on_item
        # Who reads the stream: the thread that took the last batch (iteration, drain(),
        # async for, the callback thread) and when; a public listener may read it too.
        # Lets wait()/result() tell a slow reader from nobody at all (see _nobody_reads).
        self._reader: threading.Thread | None = None
        self._last_take = 0.0
        self._has_listener = False
        # Both threads exist before either starts: the runner must know whether a
        # callback thread will publish "finished" (after on_done) or it must itself.
        self._callback_thread: threading.Thread | None = None
        if options.on_item is not None or options.on_done is not None:
            self._callback_thread = threading.Thread(
                target=self._run_callbacks, name=f"workstream-callbacks:{self._name}", daemon=True
            )
        if worker is not None:
            self._start_on_worker(worker, payload)
            return
        control_fd, control = _fds.make_control_block()
        self._core = JobCore(control, options.max_buffered_items, options.max_buffered_bytes)
        self._started_at = time.monotonic()
        self._runner = JobRunner(
            self._core, payload, control_fd, options, self._name, self._started_at
        )
        self._runner_thread = threading.Thread(
            target=self._run, name=f"workstream-job:{self._name}", daemon=True
        )
        _registry.add(self)
        try:
            self._runner_thread.start()
        except BaseException:  # e.g. "can't create new thread at interpreter shutdown"
            _registry.remove(self)
            self._runner.release_unstarted()
            raise
        if self._callback_thread is not None:
            self._callback_thread.start()

    def _start_on_worker(self, worker: Any, payload: bytes) -> None:
        """Hand the job to a Worker's supervisor thread (raises if closed or busy)."""
        sup = worker._sup
        opts = self._options
        self._core = JobCore(
            None, opts.max_buffered_items, opts.max_buffered_bytes, wake=sup.wake_fds
        )
        self._started_at = time.monotonic()
        sup.submit(Submission(
            self._core, payload, opts, self._name, self._started_at, self._job_ended
        ))
        if self._callback_thread is not None:
            self._callback_thread.start()

    def _job_ended(self) -> None:
        """A Worker's job: the outcome is published; mark it finished unless the
        callback thread will (after on_done)."""
        if self._callback_thread is None:
            self._core.set_finished()

    def _check_owner(self) -> None:
        """Raise RuntimeError in a forked copy of the process that started the job.

        Its runner thread does not exist there (``wait()`` would block forever) and its
        control block is shared with the real one (``cancel()`` would cancel the job of
        the parent).
        """
        if os.getpid() != self._owner_pid:
            raise RuntimeError(
                f"job {self._name!r} belongs to process {self._owner_pid}; this process "
                f"({os.getpid()}) is a forked copy of it: a workstream.Job can be used only "
                "in the process that started it"
            )

    def _run(self) -> None:
        try:
            self._runner.run()
        finally:
            # Out of the registry before "finished" is published: a waiter woken by it
            # (a thread, or a coroutine through a listener) never sees the job live.
            _registry.remove(self)
            if self._callback_thread is None:
                self._core.set_finished()

    # -- facts --------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The worker's pid; None until it exists (and forever if cancelled before)."""
        return self._core.pid

    @property
    def state(self) -> JobState:
        """One of starting, running, cancelling, completed, cancelled, failed, crashed."""
        return self._core.state

    @property
    def outcome(self) -> Outcome | None:
        """None while the job runs; then Completed / CancelledOutcome / Failed / Crashed."""
        return self._core.outcome

    @property
    def name(self) -> str:
        return self._name

    def done(self) -> bool:
        """True once the child was reaped and the outcome is known (no callbacks pending)."""
        return self._core.finished.is_set()

    @property
    def cancel_requested(self) -> bool:
        """True once a cancel was requested: by ``cancel()``, or by workstream itself after
        a callback error, an undeliverable item or a broken channel (the request, not its
        result)."""
        return self._core.cancel is not None

    # -- control ------------------------------------------------------------------------

    def cancel(
        self, grace: float | None = None, *, term_after: float | None = None,
        discard: bool = False,
    ) -> bool:
        """Ask the job to stop; never blocks. Safe from any thread, any number of times.

        The child is asked cooperatively at once (``Cancelled`` is raised at its next
        ``yield`` / ``emit()`` / ``check_cancelled()``); after ``term_after`` seconds
        (default: half of ``grace``) it gets SIGTERM, which raises ``Cancelled`` at the
        next bytecode; after ``grace`` seconds (default: the job's ``grace`` option,
        2 s) SIGKILL goes to it and its process group. A later call can only shorten
        the deadlines (press Stop twice with ``grace=0`` to kill at once).

        With ``discard=True`` items not yet consumed are dropped instead of delivered.
        Returns False if the job had already ended, else True.
        """
        self._check_owner()
        g = self._options.grace if grace is None else check_grace(grace)
        if term_after is None:
            t = self._options.term_delay(g)
        else:
            t = min(check_grace(term_after, "term_after"), g)
        if not isinstance(discard, bool):
            raise TypeError(f"discard must be a bool, not {type(discard).__name__}")
        if discard:
            self._discard_local = True
        return self._core.request_cancel(g, t, discard)

    def wait(self, timeout: float | None = None) -> Outcome:
        """Block until the child is reaped, the stream closed and ``on_done`` has run.

        Returns the outcome (it does not raise for a failed job: see :meth:`result`).
        Raises ``TimeoutError`` after ``timeout`` seconds, leaving the job running, and
        :class:`CallbackError` if an ``on_item`` / ``on_done`` callback raised.

        Without a ``timeout`` it never hangs silently on a job that nobody reads: it
        raises ``RuntimeError`` (leaving the job running) as soon as the job's buffer is
        full (``max_buffered_items`` / ``max_buffered_bytes``), so the worker is
        blocked in its ``yield``, and the only thread that read the stream is this one
        (or none did, or it has ended). Read the items (``for item in job``,
        :meth:`drain`), start the job with ``on_item=`` or no bound, or cancel it. With
        a ``timeout`` it waits that long (the worker may still end on its own, or be
        cancelled by another thread) and the ``TimeoutError`` says when the worker is
        blocked on a full buffer nobody reads.

        On a thread that runs an asyncio event loop, where blocking would freeze the
        loop, it does not block but returns an awaitable: ``outcome = await
        job.wait()`` is :meth:`wait_async` (cancelling the awaiting task cancels the
        job). Calling it there without ``await`` waits for nothing and Python warns
        "coroutine ... was never awaited". In a Jupyter/IPython kernel's cell it blocks
        as in a script, and ``await job.wait()`` still works (an outcome is awaitable).
        """
        self._check_owner()
        if timeout is not None:
            check_grace(timeout, "timeout")
        if _must_not_block() and threading.current_thread() is not self._callback_thread:
            from . import _aio

            # An awaitable, typed as the Outcome it gives: Outcome.__await__ makes
            # "await job.wait()" an Outcome for type checkers on both paths.
            return cast(Outcome, _aio.wait(self, timeout))
        return self._wait_blocking(timeout)

    def _wait_blocking(self, timeout: float | None) -> Outcome:
        self._check_owner()
        if threading.current_thread() is self._callback_thread:
            # Called from on_item/on_done: waiting for on_done to finish would deadlock,
            # and so would waiting inside on_item for a job that needs it to consume.
            # Inside on_item it raises even when the job happens to have ended already,
            # so that the answer does not depend on timing.
            if self._in_on_item or not self._core.terminal.is_set():
                raise RuntimeError(
                    f"job.wait()/result() called inside on_item of job {self._name!r}: the "
                    "job cannot end while its own callback waits for it; use on_done"
                )
            event = self._core.terminal
        else:
            event = self._core.finished
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wait_unless_unread(deadline, timeout)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not event.wait(remaining):
            raise self._timeout_error(timeout)
        return self._outcome_now()

    def _wait_unless_unread(self, deadline: float | None, timeout: float | None) -> None:
        """Wait until the job is terminal (or ``deadline``: then return, the caller
        raises); without a deadline, raise RuntimeError at once if the job is stuck on a
        full buffer nobody reads (it would wait for ever unless the worker died).

        The runner notifies ``core.cond`` when it stops reading for a full buffer and
        when the job ends, so this never polls.
        """
        core = self._core
        me = threading.current_thread()
        with core.cond:
            while not core.terminal.is_set():
                if deadline is None:
                    if self._nobody_reads_locked(me):
                        raise self._unread_error()
                    core.cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    core.cond.wait(remaining)

    def _nobody_reads_locked(self, waiter: threading.Thread | None) -> bool:
        """True if the worker is blocked on a full buffer that no other thread reads:
        the runner stopped reading (not for a cancel), no ``on_item`` or listener reads
        it, and the last reader is ``waiter`` itself, or none, or a thread that ended.
        ``waiter=None`` (a coroutine): only no reader, or an ended one, counts."""
        core = self._core
        if not core.reader_paused or core.cancel is not None or core.terminal.is_set():
            return False
        if self._callback_thread is not None or self._has_listener:
            return False
        reader = self._reader
        return reader is None or reader is waiter or not reader.is_alive()

    def _buffer_facts(self) -> str:
        core = self._core
        opts = self._options
        return (
            f"{core.buffered_items} items ({core.buffered_bytes} bytes) wait unread in its "
            f"buffer (max_buffered_items={opts.max_buffered_items}, "
            f"max_buffered_bytes={opts.max_buffered_bytes})"
        )

    def _unread_error(self) -> RuntimeError:
        return RuntimeError(
            f"job {self._name!r} cannot end: its worker is blocked because "
            f"{self._buffer_facts()} and nothing reads them while this thread waits. "
            "Read the items ('for item in job', job.drain()) before or instead of "
            "waiting, or start the job with on_item=..., or with max_buffered_items=None "
            "and max_buffered_bytes=None to keep them all, or cancel it; the job is "
            "still running"
        )

    def _timeout_error(self, timeout: float | None) -> TimeoutError:
        text = f"job {self._name!r} (pid {self.pid}) is still {self.state.value} after {timeout} s"
        core = self._core
        with core.lock:
            if core.reader_paused and core.cancel is None and not core.terminal.is_set():
                idle = time.monotonic() - (self._last_take or self._started_at)
                text += (
                    f": its worker is blocked on a full buffer nobody reads: "
                    f"{self._buffer_facts()}, and none was taken for {idle:.1f} s"
                )
        return TimeoutError(text)

    def _outcome_now(self) -> Outcome:
        """The outcome of an ended job; raises CallbackError if a callback raised."""
        err = self._core.callback_error
        if err is not None:
            raise CallbackError(
                f"a callback of job {self._name!r} raised {type(err).__name__}: {err}; "
                "the job was cancelled"
            ) from err
        outcome = self._core.outcome
        assert outcome is not None
        return outcome

    def result(self, timeout: float | None = None) -> ResultT:
        """Wait (as :meth:`wait`) and return ``fn``'s return value.

        Raises :class:`Cancelled` if the job was cancelled, :class:`WorkerError` if ``fn``
        raised, :class:`WorkerCrashed` if the child died, :class:`DeliveryError` if what
        it sent could not be unpickled here, ``TimeoutError`` after ``timeout``.
        ``RuntimeError`` as :meth:`wait` (without ``timeout``) when nobody reads the items
        of a job blocked on its full buffer. What each outcome gives:

        ============  =================================================================
        completed     ``fn``'s return value
        cancelled     raises :class:`Cancelled` (a ``BaseException``, like asyncio's)
        failed        raises :class:`WorkerError` or :class:`DeliveryError`
        crashed       raises :class:`WorkerCrashed` (or :class:`ChannelBroken`)
        ============  =================================================================

        On a thread running an asyncio event loop it never blocks: for a job not yet
        done it raises ``RuntimeError`` (use ``await job.result_async()``); in a
        Jupyter/IPython kernel's cell it blocks as in a script.
        """
        if timeout is not None:
            check_grace(timeout, "timeout")
        if _must_not_block() and not self.done():
            raise RuntimeError(
                f"job.result() would block the event loop until job {self._name!r} ends; "
                "use 'await job.result_async()'"
            )
        return self._value_of(self._wait_blocking(timeout))

    def _value_of(self, outcome: Outcome) -> ResultT:
        if isinstance(outcome, Completed):
            return outcome.value  # type: ignore[return-value]
        if isinstance(outcome, CancelledOutcome):
            raise Cancelled(f"job {self._name!r} was cancelled ({outcome.rung})")
        if isinstance(outcome, (Failed, Crashed)):
            raise outcome.error
        raise AssertionError(f"unknown outcome {outcome!r}")

    # -- asyncio ------------------------------------------------------------------------

    def wait_async(self, timeout: float | None = None) -> Coroutine[Any, Any, Outcome]:
        """Return a coroutine that waits, without blocking the loop, for :meth:`wait`'s
        outcome.

        Raises (when awaited) ``TimeoutError`` after ``timeout`` seconds, leaving the job
        running, and :class:`CallbackError` as :meth:`wait`. If the awaiting task is
        cancelled (``task.cancel()``, a TaskGroup, ``asyncio.timeout()``,
        ``wait_for()``), the job is cancelled with its grace and the task waits, shielded,
        until the child is reaped before the ``CancelledError`` goes on; a second
        cancellation meanwhile kills the child at once (``cancel(grace=0)``). A bad
        ``timeout`` raises here, at the call.
        """
        self._check_owner()
        if timeout is not None:
            check_grace(timeout, "timeout")
        from . import _aio

        return _aio.wait(self, timeout)

    def result_async(self, timeout: float | None = None) -> Coroutine[Any, Any, ResultT]:
        """Return a coroutine that awaits (as :meth:`wait_async`) and returns ``fn``'s
        value, or raises as :meth:`result`. Cancelling the awaiting task cancels the job."""
        self._check_owner()
        if timeout is not None:
            check_grace(timeout, "timeout")
        from . import _aio

        return cast("Coroutine[Any, Any, ResultT]", _aio.result(self, timeout))

    def aiter(self) -> AsyncIterator[ItemT]:
        """Return an async iterator of the items: ``async for item in job`` does the same.

        Items come in order and are shared with synchronous iteration and
        :meth:`drain` (each item goes to one of them). Waiting for an item never blocks
        the loop; the iterator lets other tasks run at least every few milliseconds
        while it hands out buffered items. If the task is cancelled while it waits for
        an item, the job is cancelled and reaped before the ``CancelledError`` goes on
        (use ``async with job:`` to tie the job to a whole block). One task at a time:
        a second task waiting on the same job raises ``RuntimeError``.
        """
        self._check_owner()
        if self._options.on_item is not None:
            raise RuntimeError(
                f"job {self._name!r} delivers its items to on_item; iterate only a job "
                "started without on_item"
            )
        from . import _aio

        return _aio.AsyncItems(self)

    def __aiter__(self) -> AsyncIterator[ItemT]:
        return self.aiter()

    async def __aenter__(self) -> Job[ItemT, ResultT]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Cancel the job if it still runs, then await (without blocking) its end.

        Raises :class:`CallbackError` as :meth:`wait` unless an exception is already
        leaving the block. If the task is cancelled meanwhile, the wait goes on
        (shielded; a second cancellation kills the child at once): the block is left
        only after the child was reaped.
        """
        from . import _aio

        await _aio.exit_block(self, quiet=exc_type is not None)

    # -- the stream ---------------------------------------------------------------------

    def __iter__(self) -> Iterator[ItemT]:
        """Iterate the items (blocking for each one not yet here).

        Raises ``RuntimeError`` for a job started with ``on_item``, and on a thread that
        runs an asyncio event loop while the job is not done (the loop would freeze
        until each item came): use ``async for`` there. In a Jupyter/IPython kernel's
        cell it blocks as in a script, and an interrupt (KeyboardInterrupt) stops it.
        """
        self._check_owner()
        if self._options.on_item is not None:
            raise RuntimeError(
                f"job {self._name!r} delivers its items to on_item; iterate only a job "
                "started without on_item"
            )
        self._check_may_block("for item in job", "async for item in job")
        return self

    def _check_may_block(self, call: str, instead: str) -> None:
        if _must_not_block() and not self.done():
            raise RuntimeError(
                f"{call} would block the event loop until job {self._name!r} ends or "
                f"sends; use '{instead}'"
            )

    def __next__(self) -> ItemT:
        cur = self._cur
        i = self._pos
        if i < len(cur) and not self._discard_local:
            self._pos = i + 1
            item = cur[i]
            cur[i] = None  # type: ignore[assignment]  # the consumer alone holds it now
            return item
        if self._discard_local:
            self._drop_local_batch()
        self._check_owner()  # only when a new batch is needed: nothing per item
        self._check_may_block("next(job)", "async for item in job")
        self._reader = threading.current_thread()
        batch = self._core.take_batch()
        self._last_take = time.monotonic()
        if batch is None:
            self._cur = []
            self._pos = 0
            raise StopIteration
        self._cur = cast("list[ItemT]", batch)
        self._pos = 1
        first = self._cur[0]
        # Not kept here: a shared-memory block is reused as soon as the consumer drops it.
        batch[0] = None
        return first

    def _drop_local_batch(self) -> None:
        """After cancel(discard=True): the rest of the batch being iterated is dropped too.

        Only the iterating thread touches ``_cur``/``_pos``; cancel() just sets the flag.
        """
        self._core.count_taken_but_discarded(len(self._cur) - self._pos)
        self._cur = []
        self._pos = 0

    def drain(self) -> list[ItemT]:
        """Return every item received so far without blocking ([] if none yet).

        For event loops that poll (a GUI timer). Shares the stream with iteration.
        """
        self._check_owner()
        if self._options.on_item is not None:
            raise RuntimeError(f"job {self._name!r} delivers its items to on_item")
        if self._discard_local:
            self._drop_local_batch()
        out: list[Any] = self._cur[self._pos :]
        self._cur = []
        self._pos = 0
        self._reader = threading.current_thread()
        self._last_take = time.monotonic()
        while True:
            batch = self._core.take_batch(block=False)
            if not batch:
                return out
            out.extend(batch)

    def add_listener(self, fn: Callable[[], object]) -> Callable[[], None]:
        """Call ``fn()`` whenever new items can be taken and once the job is done.

        The hook for event loops (asyncio, Qt, Tk...): ``fn`` runs on a workstream thread
        and must only *schedule* work on the loop (``loop.call_soon_threadsafe``, a
        queued Qt signal) — never block, never touch the GUI. Calls are not coalesced
        and may come after ``fn`` was removed by a racing call. If ``fn`` is added after
        the job is done it is called once, at once, on the caller's thread. A listener
        that raises is dropped silently from the hook (the error is kept on the job,
        not printed). Returns a function that removes ``fn`` (idempotent).
        """
        if not callable(fn):
            raise TypeError(f"add_listener() needs a callable, not {type(fn).__name__}")
        self._has_listener = True  # its integration may read the stream (wait() trusts it)
        return self._add_listener(fn)

    def _add_listener(self, fn: Callable[[], object]) -> Callable[[], None]:
        """add_listener() for our own waiters, which read nothing themselves."""
        core = self._core
        with core.lock:
            core.listeners.append(fn)

        def remove() -> None:
            with core.lock:
                if fn in core.listeners:
                    core.listeners.remove(fn)

        if core.finished.is_set():
            fn()
        return remove

    # -- context manager ----------------------------------------------------------------

    def __enter__(self) -> Job[ItemT, ResultT]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Cancel the job if it still runs, then wait until it is reaped."""
        if not self._core.terminal.is_set():
            self.cancel()
        if exc_type is None:
            self._wait_blocking(None)
        else:  # do not mask the exception that is leaving the block
            self._wait_quietly(None)

    # -- callbacks ----------------------------------------------------------------------

    def _run_callbacks(self) -> None:
        core = self._core
        on_item, on_done = self._options.on_item, self._options.on_done
        self._reader = threading.current_thread()
        try:
            if on_item is not None:
                while True:
                    batch = core.take_batch()
                    if batch is None:
                        break
                    if core.callback_error is not None:
                        continue
                    for item in batch:
                        self._in_on_item = True
                        try:
                            on_item(item)
                        except BaseException as exc:
                            self._callback_failed(exc)
                            break
                        finally:
                            self._in_on_item = False
            core.terminal.wait()
            if on_done is not None:
                try:
                    on_done(core.outcome)
                except BaseException as exc:
                    self._callback_failed(exc)
        finally:
            if core.terminal.is_set():  # (the runner removes it too, maybe later)
                _registry.remove(self)
            core.set_finished()

    def _callback_failed(self, exc: BaseException) -> None:
        with self._core.lock:
            if self._core.callback_error is None:
                self._core.callback_error = exc
        self.cancel(discard=True)

    # -- internals used by the registry -------------------------------------------------

    def _wait_quietly(self, timeout: float | None) -> None:
        self._core.finished.wait(timeout)

    def _grace(self) -> float:
        return self._options.grace

    def __reduce__(self) -> Any:
        raise TypeError(
            "a workstream.Job cannot be pickled or sent to another process; "
            "use it from the process that started it"
        )

    def __repr__(self) -> str:
        return f"<workstream.Job {self._name!r} pid={self.pid} state={self.state.value}>"


@overload
def start(
    fn: Callable[..., Generator[ItemT, Any, ResultT]], *args: Any, **options: Any
) -> Job[ItemT, ResultT]: ...
@overload
def start(
    fn: Callable[..., Iterator[ItemT]], *args: Any, **options: Any
) -> Job[ItemT, Any]: ...
@overload
def start(fn: Callable[..., ResultT], *args: Any, **options: Any) -> Job[Any, ResultT]: ...
def start(fn: Callable[..., Any], *args: Any, **options: Any) -> Job[Any, Any]:
    """Start ``fn(*args)`` in a new worker process and return its :class:`Job` at once.

    ``fn`` may be a generator function (each yielded value is an item; the ``return``
    value is the result) or a plain function (its return value is the result; it can
    stream with :func:`workstream.emit`). Lambdas, closures and functions defined in
    ``__main__`` work (they travel by cloudpickle). Keyword arguments are options (see
    :class:`workstream.Options`); pass keyword arguments to ``fn`` with
    ``functools.partial``.

    Raises ``TypeError`` if ``fn`` is not callable, is ``async``, or cannot be pickled
    with its arguments (whatever the pickler raised, ``SystemExit`` and
    ``KeyboardInterrupt`` included: it is the ``__cause__``); ``TypeError`` if an option
    is also a required parameter of ``fn`` that ``args`` leave unfilled
    (``start(greet, name="bob")``: pass it positionally or through
    ``functools.partial``); ``TypeError`` / ``ValueError`` for a bad option;
    RuntimeError inside a worker; NotImplementedError on Windows. Called while a
    worker imports the main module (a script without ``if __name__ == "__main__":``
    under forkserver/spawn), it ends that worker at once; the job's error says why.
    Never waits for the child: the process is created by the job's own thread.
    """
    check_can_start("workstream.start()")
    check_fn(fn, "workstream.start()")
    opts = Options.from_kwargs(options)
    check_options_are_not_arguments(fn, args, options, "workstream.start()")
    return Job(fn, args, opts)


def check_can_start(what: str) -> None:
    """Raise unless this process may start workers (POSIX, not inside a worker)."""
    if os.name != "posix":
        raise NotImplementedError(
            "workstream needs POSIX process groups and signals; Windows is not supported yet"
        )
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        _stop_unguarded_main(what)
    if in_worker():
        raise RuntimeError(
            f"{what} cannot be called inside a workstream worker; use "
            "multiprocessing or subprocess there (the job's process group is cleaned up "
            "with it)"
        )


def check_options_are_not_arguments(
    fn: Callable[..., Any], args: tuple[Any, ...], options: dict[str, Any], what: str
) -> None:
    """Raise TypeError if an option passed to ``what`` is also a required parameter of
    ``fn`` that ``args`` leave unfilled: the caller meant it for ``fn`` (``start(greet,
    name="bob")``), and the worker would fail with a missing argument."""
    if not options:
        return
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (some builtins): nothing to say
        return
    try:
        bound = sig.bind_partial(*args)
    except TypeError:
        return  # too many arguments: fn's own error in the worker says it best
    empty = inspect.Parameter.empty
    clashing = [
        p.name for p in sig.parameters.values()
        if p.name in options and p.name not in bound.arguments and p.default is empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if clashing:
        name = clashing[0]
        fn_name = _describe(fn)
        raise TypeError(
            f"{what}: {name!r} is an option of {what} (its keyword arguments are "
            f"options), but {fn_name}() has a required parameter {name!r} that this call "
            f"leaves unfilled; pass {fn_name}'s argument positionally or with "
            f"functools.partial({fn_name}, {name}=...)"
        )


def _stop_unguarded_main(what: str) -> NoReturn:
    """This process is a worker still importing the application's main module
    (multiprocessing sets ``_inheriting`` then): the script calls ``start()`` at import
    time. Running on would run the whole script again in the worker (and start a worker
    from it); say why on stderr and exit with the status the parent recognises."""
    main = getattr(sys.modules.get("__mp_main__"), "__file__", None) or "the main module"
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
    with contextlib.suppress(OSError):
        os.write(2, (
            f"workstream: {what} was called while a worker process imported {main}; "
            "guard the script's top-level code with 'if __name__ == \"__main__\":'\n"
        ).encode())
    os._exit(UNGUARDED_MAIN_EXIT)


def check_fn(fn: object, what: str) -> None:
    """Raise TypeError unless ``fn`` is a plain or generator callable."""
    if not callable(fn):
        raise TypeError(f"{what} needs a callable, not {type(fn).__name__}")
    target = fn.func if isinstance(fn, functools.partial) else fn
    if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
        raise TypeError(
            f"{what} runs plain and generator functions; {_describe(fn)} is async. "
            "Wrap it: def run(*a): return asyncio.run(fn(*a))"
        )


def _must_not_block() -> bool:
    """True if a blocking call here would freeze an asyncio event loop: this thread runs
    one, and it is not the main thread of a Jupyter/IPython kernel (which runs each cell
    on its loop, where blocking a cell is what users expect, as ``time.sleep`` does)."""
    return _on_event_loop() and not _in_kernel_cell()


def _in_kernel_cell() -> bool:
    """True on the main thread of an IPython kernel (Jupyter); never imports IPython."""
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython too old or too new for this: assume a plain loop
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def _on_event_loop() -> bool:
    """True if this thread runs an asyncio event loop (none can run if asyncio was
    never imported, so this does not import it)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _describe(fn: Callable[..., Any]) -> str:
    if isinstance(fn, functools.partial):
        return _describe(fn.func)
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
