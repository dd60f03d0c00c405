"""The public entry points: :func:`start` and :class:`Job`.

``start()`` validates and pickles everything on the caller's thread (so bad input fails
right there), then hands the job to its runner thread and returns at once. ``Job`` is a
thin, thread-safe facade: it validates what the user passes and delegates to its
``JobView`` (``_jobview``: the stream cursor, waiting) over the shared ``JobCore``; it
never touches the process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, cast, overload

import cloudpickle

from ._checks import check_can_start, check_fn, check_options_are_not_arguments, describe
from ._core._progress import Progress
from ._jobview import JobView
from ._options import Options, check_grace
from ._outcomes import JobState, Outcome, OutputEvent
from ._supervisor import _registry
from ._supervisor._jobcore import JobCore
from ._supervisor._output import OutputSink
from ._supervisor._runner import JobRunner
from ._supervisor._worker import Submission
from ._transport import _fds

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class JobHost(Protocol):
    """What a job needs of a warm process that runs it instead of its own runner (a
    ``Worker``'s supervisor): the wake pipe its jobs share, and a way to queue the job."""

    @property
    def wake_fds(self) -> tuple[int, int]: ...

    def submit(self, sub: Submission) -> None: ...


class Job(Generic[ItemT, ResultT]):
    """A running (or finished) worker process and the stream of items it yields.

    Create with :func:`workstream.start`. Thread-safe, except that one thread at a time
    may iterate. Iterating yields items in order; the loop ends when the stream ends,
    whatever the outcome (ask :meth:`result` or :attr:`outcome` which one it was).
    In asyncio code: ``async for``, ``await job.wait_async()``, ``async with`` (see
    :meth:`aiter` and :meth:`wait_async`).
    """

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], options: Options,
        host: JobHost | None = None, owner: object = None,
    ) -> None:
        """Start ``fn(*args)``: on a runner thread of its own, or with ``host`` (a
        Worker's supervisor) in its warm process; ``owner`` (the Worker) is kept alive
        as long as the job, so dropping the Worker while holding one of its jobs does
        not close it under the job (the Worker never holds its jobs beyond the one it
        runs)."""
        self._options = options
        self._name = options.name or describe(fn)
        try:
            payload = cloudpickle.dumps((fn, args))
        except BaseException as exc:  # a __reduce__ may even raise SystemExit
            raise TypeError(
                f"workstream.start(): {self._name} or its arguments cannot be pickled, so they "
                f"cannot be sent to the worker process: {type(exc).__name__}: {exc}"
            ) from exc
        self._owner = owner
        started_at = time.monotonic()
        if host is None:
            control_fd, control = _fds.make_control_block()
            core = JobCore(
                control, options.max_buffered_items, options.max_buffered_bytes,
                max_grace=options.max_grace, timeout=options.timeout,
            )
        else:
            core = JobCore(
                None, options.max_buffered_items, options.max_buffered_bytes,
                wake=host.wake_fds, max_grace=options.max_grace,
                queued=getattr(host, "queues_jobs", False),  # a Pool's job waits in its queue
                timeout=options.timeout,
            )
        self._core = core
        self._view = view = JobView(core, options, self._name, started_at)
        if options.output_mode != "inherit":
            core.output = OutputSink(
                self._name, options.output_mode, options.on_output, view._callback_failed
            )
            core.output.listener = core.notify_listeners  # wakes the GUI bridges
        # Both threads exist before either starts: the runner must know whether a
        # callback thread will publish "finished" (after on_done) or it must itself.
        callbacks = None
        if (options.on_item is not None or options.on_done is not None
                or options.on_progress is not None):
            callbacks = threading.Thread(
                target=view.run_callbacks, args=(self._unregister,),
                name=f"workstream-callbacks:{self._name}", daemon=True,
            )
        view.callback_thread = callbacks
        if core.output is not None:
            core.output.start_thread()  # before the job can end (a Worker may end it at once)
        if host is not None:
            try:
                host.submit(Submission(
                    core, payload, options, self._name, started_at, self._job_ended
                ))
            except BaseException:
                if core.output is not None:
                    core.output.close()  # its thread ends
                raise
        else:
            self._runner = JobRunner(
                core, payload, control_fd, options, self._name, started_at
            )
            runner_thread = threading.Thread(
                target=self._run, name=f"workstream-job:{self._name}", daemon=True
            )
            _registry.add(self)
            try:
                runner_thread.start()
            except BaseException:  # e.g. "can't create new thread at interpreter shutdown"
                _registry.remove(self)
                self._runner.release_unstarted()
                if core.output is not None:
                    core.output.close()  # its thread ends
                raise
        if callbacks is not None:
            callbacks.start()

    def _job_ended(self) -> None:
        """A Worker's job: the outcome is published; mark it finished unless the
        callback thread will (after on_done)."""
        if self._view.callback_thread is None:
            self._core.set_finished()

    def _unregister(self) -> None:
        _registry.remove(self)

    def _check_owner(self) -> None:
        """Raise RuntimeError in a forked copy of the process that started the job."""
        self._view.check_owner()

    def _run(self) -> None:
        try:
            self._runner.run()
        finally:
            # Out of the registry before "finished" is published: a waiter woken by it
            # (a thread, or a coroutine through a listener) never sees the job live.
            _registry.remove(self)
            if self._view.callback_thread is None:
                self._core.set_finished()

    # -- facts --------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The worker's pid; None until it exists (and forever if cancelled before)."""
        return self._core.pid

    @property
    def state(self) -> JobState:
        """One of queued (a Pool's job waiting for a process), starting, running,
        cancelling, completed, cancelled, failed, crashed."""
        return self._core.state

    @property
    def outcome(self) -> Outcome | None:
        """None while the job runs; then Completed / CancelledOutcome / Failed / Crashed."""
        return self._core.outcome

    @property
    def name(self) -> str:
        return self._name

    @property
    def progress(self) -> Progress | None:
        """The newest progress the worker reported with ``workstream.progress()``: an
        immutable :class:`workstream.Progress` (done, total, rate, eta, elapsed, fields,
        fraction), or None before the first report. Cheap (reads shared memory; a new
        object only when a new report came); after the end, the last report."""
        return self._core.read_progress()

    def done(self) -> bool:
        """True once the child was reaped and the outcome is known (no callbacks pending)."""
        return self._core.finished.is_set()

    # -- output (output="capture" / "logging") ------------------------------------------

    @property
    def output(self) -> tuple[OutputEvent, ...]:
        """The newest lines and logging records of the worker (at most 1,000, oldest
        first), as :class:`OutputEvent` s; ``()`` with ``output="inherit"``. A snapshot:
        it does not change when more arrives."""
        sink = self._core.output
        return () if sink is None else sink.snapshot()

    @property
    def output_dropped(self) -> int:
        """Output events ``on_output`` (or ``output="logging"``) never got because it fell
        more than 10,000 events behind (each such gap is also reported by an event)."""
        sink = self._core.output
        return 0 if sink is None else sink.dropped

    def output_since(self, count: int) -> tuple[tuple[OutputEvent, ...], int]:
        """Events that arrived after the first ``count`` (``0`` at first), and the count
        to pass next time; for pollers (the GUI bridges). Only events still among
        :attr:`output` are returned: a poller slower than 1,000 events misses some."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise TypeError(f"count must be an int >= 0, not {count!r}")
        sink = self._core.output
        return ((), 0) if sink is None else sink.since(count)

    def output_events(self) -> AsyncIterator[OutputEvent]:
        """``async for event in job.output_events():`` each output event as it arrives,
        until the job is done (then the iteration ends). Never blocks the loop; several
        tasks may iterate at once, each from the first event still kept; one more than
        1,000 events behind skips the oldest. Cancelling the task does not cancel the job.
        """
        self._check_owner()
        from . import _aio

        return cast(
            "AsyncIterator[OutputEvent]",
            _aio.output_events(self.add_listener, self.output_since, self.done),
        )

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
        if grace is not None:
            check_grace(grace)
        if term_after is not None:
            check_grace(term_after, "term_after")
        if not isinstance(discard, bool):
            raise TypeError(f"discard must be a bool, not {type(discard).__name__}")
        return self._view.request_cancel(grace, term_after, discard)

    def wait(self, timeout: float | None = None) -> Outcome:
        """Block until the child is reaped, the stream closed and ``on_done`` has run.

        Returns the outcome (it does not raise for a failed job: see :meth:`result`).
        Every ``on_output`` call has returned by then; calling ``wait()`` inside
        ``on_output`` raises RuntimeError (it would wait for itself).
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

        On a thread that runs an asyncio event loop it never blocks: for a job not yet
        done it raises ``RuntimeError`` (use ``await job.wait_async()``), as
        :meth:`result` and iteration do; in a Jupyter/IPython kernel's cell it blocks
        as in a script.
        """
        self._check_owner()
        if timeout is not None:
            check_grace(timeout, "timeout")
        self._view.check_may_block("job.wait()", "await job.wait_async()")
        self._check_not_in_on_output()
        return self._view.wait_blocking(timeout)

    def _check_not_in_on_output(self) -> None:
        sink = self._core.output
        if sink is not None and sink.in_output_thread() and not self.done():
            raise RuntimeError(
                f"job.wait()/result() called inside on_output of job {self._name!r}: the "
                "job is not finished until its on_output calls returned; use on_done"
            )

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
        self._check_owner()
        if timeout is not None:
            check_grace(timeout, "timeout")
        self._view.check_may_block("job.result()", "await job.result_async()")
        self._check_not_in_on_output()
        return cast(ResultT, self._view.value_of(self._view.wait_blocking(timeout)))

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

        return _aio.wait(self._view, timeout)

    def result_async(self, timeout: float | None = None) -> Coroutine[Any, Any, ResultT]:
        """Return a coroutine that awaits (as :meth:`wait_async`) and returns ``fn``'s
        value, or raises as :meth:`result`. Cancelling the awaiting task cancels the job."""
        self._check_owner()
        if timeout is not None:
            check_grace(timeout, "timeout")
        from . import _aio

        return cast("Coroutine[Any, Any, ResultT]", _aio.result(self._view, timeout))

    def aiter(self) -> AsyncIterator[ItemT]:
        """Return an async iterator of the items: ``async for item in job`` does the same.

        Items come in order and are shared with synchronous iteration and
        :meth:`drain` (each item goes to one of them). Waiting for an item never blocks
        the loop; the iterator lets other tasks run at least every few milliseconds
        while it hands out buffered items. If the task is cancelled while it waits for
        an item, the job is cancelled and reaped before the ``CancelledError`` goes on
        (use ``async with job:`` to tie the job to a whole block). One task at a time:
        a second task waiting on the same job raises ``RuntimeError``. Like iteration,
        it forgets every item it hands out (a shared-memory array is not kept alive).
        """
        self._check_owner()
        self._check_no_on_item()
        from . import _aio

        return cast("AsyncIterator[ItemT]", _aio.AsyncItems(self._view))

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

        await _aio.exit_block(self._view, quiet=exc_type is not None)

    # -- the stream ---------------------------------------------------------------------

    def __iter__(self) -> Iterator[ItemT]:
        """Iterate the items (blocking for each one not yet here).

        Raises ``RuntimeError`` for a job started with ``on_item``, and on a thread that
        runs an asyncio event loop while the job is not done (the loop would freeze
        until each item came): use ``async for`` there. In a Jupyter/IPython kernel's
        cell it blocks as in a script, and an interrupt (KeyboardInterrupt) stops it.
        """
        self._check_owner()
        self._check_no_on_item()
        self._view.check_may_block("for item in job", "async for item in job")
        # The job's cursor iterates: one Python call per item (``__next__`` is two).
        return cast("Iterator[ItemT]", self._view)

    def _check_no_on_item(self) -> None:
        if self._options.on_item is not None:
            raise RuntimeError(
                f"job {self._name!r} delivers its items to on_item; iterate only a job "
                "started without on_item"
            )

    def __next__(self) -> ItemT:
        """The next item, as ``for item in job`` gives it (``StopIteration`` at the end).

        The item is forgotten by the job as it is handed out (a shared-memory array is
        then freed as soon as the caller drops it)."""
        return next(self._view)  # type: ignore[return-value]

    def drain(self) -> list[ItemT]:
        """Return every item received so far without blocking ([] if none yet).

        For event loops that poll (a GUI timer). Shares the stream with iteration.
        """
        self._check_owner()
        if self._options.on_item is not None:
            raise RuntimeError(f"job {self._name!r} delivers its items to on_item")
        return self._view.drain()

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
        self._view.has_listener = True  # its integration may read the stream (wait() trusts it)
        return self._view.listen(fn)

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
            self._check_owner()
            self._view.wait_blocking(None)
        else:  # do not mask the exception that is leaving the block
            self._wait_quietly(None)

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

