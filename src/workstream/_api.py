"""The public entry points: :func:`start` and :class:`Job`.

``start()`` validates and pickles everything on the caller's thread (so bad input fails
right there), then hands the job to its runner thread and returns at once. ``Job`` is a
thin, thread-safe facade over the shared :class:`JobCore`; it never touches the process.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import time
from collections.abc import Callable, Generator, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar, cast, overload

import cloudpickle

from ._child._runtime import in_worker
from ._errors import CallbackError, Cancelled
from ._options import Options, check_grace
from ._outcomes import CancelledOutcome, Completed, Crashed, Failed, JobState, Outcome
from ._supervisor import _registry
from ._supervisor._jobcore import JobCore
from ._supervisor._runner import JobRunner
from ._transport import _fds

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class Job(Generic[ItemT, ResultT]):
    """A running (or finished) worker process and the stream of items it yields.

    Create with :func:`workstream.start`. Thread-safe, except that one thread at a time
    may iterate. Iterating yields items in order; the loop ends when the stream ends,
    whatever the outcome (ask :meth:`result` or :attr:`outcome` which one it was).
    """

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], options: Options) -> None:
        self._options = options
        self._name = options.name or _describe(fn)
        self._owner_pid = os.getpid()  # a forked copy of this object must not act
        try:
            payload = cloudpickle.dumps((fn, args))
        except Exception as exc:
            raise TypeError(
                f"workstream.start(): {self._name} or its arguments cannot be pickled, so they "
                f"cannot be sent to the worker process: {type(exc).__name__}: {exc}"
            ) from exc
        control_fd, control = _fds.make_control_block()
        self._core = JobCore(control, options.max_buffered_items, options.max_buffered_bytes)
        self._started_at = time.monotonic()
        self._runner = JobRunner(
            self._core, payload, control_fd, options, self._name, self._started_at
        )
        self._cur: list[ItemT] = []
        self._pos = 0
        self._discard_local = False  # set by cancel(discard=True), read by the iterator
        # Both threads exist before either starts: the runner must know whether a
        # callback thread will publish "finished" (after on_done) or it must itself.
        self._callback_thread: threading.Thread | None = None
        if options.on_item is not None or options.on_done is not None:
            self._callback_thread = threading.Thread(
                target=self._run_callbacks, name=f"workstream-callbacks:{self._name}", daemon=True
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
            if self._callback_thread is None:
                self._core.set_finished()
            _registry.remove(self)

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
        """
        self._check_owner()
        if timeout is not None:
            check_grace(timeout, "timeout")
        if threading.current_thread() is self._callback_thread:
            # Called from on_item/on_done: waiting for on_done to finish would deadlock,
            # and so would waiting inside on_item for a job that needs it to consume.
            if not self._core.terminal.is_set():
                raise RuntimeError(
                    f"job.wait()/result() called inside on_item of job {self._name!r}: the "
                    "job cannot end while its own callback waits for it; use on_done"
                )
            event = self._core.terminal
        else:
            event = self._core.finished
        if not event.wait(timeout):
            raise TimeoutError(
                f"job {self._name!r} (pid {self.pid}) is still {self.state.value} "
                f"after {timeout} s"
            )
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
        """
        outcome = self.wait(timeout)
        if isinstance(outcome, Completed):
            return outcome.value  # type: ignore[return-value]
        if isinstance(outcome, CancelledOutcome):
            raise Cancelled(f"job {self._name!r} was cancelled ({outcome.rung})")
        if isinstance(outcome, (Failed, Crashed)):
            raise outcome.error
        raise AssertionError(f"unknown outcome {outcome!r}")

    # -- the stream ---------------------------------------------------------------------

    def __iter__(self) -> Iterator[ItemT]:
        self._check_owner()
        if self._options.on_item is not None:
            raise RuntimeError(
                f"job {self._name!r} delivers its items to on_item; iterate only a job "
                "started without on_item"
            )
        return self

    def __next__(self) -> ItemT:
        cur = self._cur
        i = self._pos
        if i < len(cur) and not self._discard_local:
            self._pos = i + 1
            return cur[i]
        if self._discard_local:
            self._drop_local_batch()
        self._check_owner()  # only when a new batch is needed: nothing per item
        batch = self._core.take_batch()
        if batch is None:
            self._cur = []
            self._pos = 0
            raise StopIteration
        self._cur = cast("list[ItemT]", batch)
        self._pos = 1
        return self._cur[0]

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
            self.wait()
        else:  # do not mask the exception that is leaving the block
            self._wait_quietly(None)

    # -- callbacks ----------------------------------------------------------------------

    def _run_callbacks(self) -> None:
        core = self._core
        on_item, on_done = self._options.on_item, self._options.on_done
        try:
            if on_item is not None:
                while True:
                    batch = core.take_batch()
                    if batch is None:
                        break
                    if core.callback_error is not None:
                        continue
                    for item in batch:
                        try:
                            on_item(item)
                        except BaseException as exc:
                            self._callback_failed(exc)
                            break
            core.terminal.wait()
            if on_done is not None:
                try:
                    on_done(core.outcome)
                except BaseException as exc:
                    self._callback_failed(exc)
        finally:
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
    with its arguments; ``TypeError`` / ``ValueError`` for a bad option; RuntimeError
    inside a worker; NotImplementedError on Windows. Never waits for the child: the
    process is created by the job's own thread.
    """
    if os.name != "posix":
        raise NotImplementedError(
            "workstream needs POSIX process groups and signals; Windows is not supported yet"
        )
    if not callable(fn):
        raise TypeError(f"workstream.start() needs a callable, not {type(fn).__name__}")
    target = fn.func if isinstance(fn, functools.partial) else fn
    if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
        raise TypeError(
            f"workstream.start() runs plain and generator functions; {_describe(fn)} is async. "
            "Wrap it: def run(*a): return asyncio.run(fn(*a))"
        )
    if in_worker():
        raise RuntimeError(
            "workstream.start() cannot be called inside a workstream worker; use "
            "multiprocessing or subprocess there (the job's process group is cleaned up "
            "with it)"
        )
    opts = Options.from_kwargs(options)
    return Job(fn, args, opts)


def _describe(fn: Callable[..., Any]) -> str:
    if isinstance(fn, functools.partial):
        return _describe(fn.func)
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
