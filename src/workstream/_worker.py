"""The public :class:`Worker`: a warm process that runs one job after another.

A thin facade over ``_supervisor._worker.WorkerSupervisor`` (the thread that owns the
processes). The facade holds no process state itself, so a Worker the user forgets is
closed when it is garbage-collected (``weakref.finalize``) and, at the latest, at
interpreter exit (the registry holds the supervisor, not the facade).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Generator, Iterator
from types import TracebackType
from typing import Any, TypeVar, overload

import cloudpickle

from ._api import Job
from ._checks import check_can_start, check_fn, check_options_are_not_arguments, describe
from ._child._job import _initialize
from ._options import Options, check_grace
from ._supervisor._worker import WorkerSupervisor

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

JOB_OPTIONS = frozenset(
    {"grace", "term_after", "max_buffered_items", "max_buffered_bytes", "name", "on_item",
     "on_done", "shm_copy", "on_progress", "max_grace", "timeout", "on_output"}
)
"""Options ``Worker.start()`` accepts per job; the others belong to the process and are
given to ``Worker()``."""


class Worker:
    """A persistent worker process that runs one job at a time, warm.

    ``initializer(*initargs)`` runs once in each worker process, before its first job
    (import torch, load a model); what it returns is available to every later job as
    :func:`workstream.worker_state` (and globals it sets stay set). ``start()`` returns a
    :class:`Job` exactly like :func:`workstream.start`, without the cost of a new process.

    A job that ends by itself, fails, or stops at a cancellation point after
    ``cancel()`` leaves the process warm for the next job. A job that needs SIGTERM or
    SIGKILL, or crashes, costs the process: the Worker reaps it and starts a replacement
    (at once with ``prestart=True``, else at the next ``start()``), running the
    initializer again; ``outcome.kept_warm`` says which happened and :attr:`restarts`
    counts replacements.

    Options: any of :class:`workstream.Options`. Those of the process
    (``start_method``, ``batch_window``, ``max_batch_bytes``, ``pipe_bytes``,
    ``kill_group``, ``name``) are fixed here; the others are defaults that
    ``start(..., grace=...)`` may override per job. ``prestart=True`` (default) starts
    the process and its initializer now, in the background; ``False`` waits for the
    first ``start()``. The constructor never waits for the child.

    Thread-safe. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        prestart: bool = True,
        **options: Any,
    ) -> None:
        check_can_start("workstream.Worker()")
        if initializer is not None:
            check_fn(initializer, "workstream.Worker(initializer=...)")
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, not {type(initargs).__name__}")
        if not isinstance(prestart, bool):
            raise TypeError(f"prestart must be a bool, not {type(prestart).__name__}")
        opts = Options.from_kwargs(options, "workstream.Worker()")
        name = opts.name or (describe(initializer) if initializer is not None else "worker")
        try:
            payload = cloudpickle.dumps((_initialize, (initializer, *initargs)))
        except BaseException as exc:  # a __reduce__ may even raise SystemExit
            raise TypeError(
                f"workstream.Worker(): the initializer {name} or its arguments cannot be "
                f"pickled: {type(exc).__name__}: {exc}"
            ) from exc
        self._name = name
        self._job_options = dataclasses.replace(opts, name=None)
        self._sup = WorkerSupervisor(opts, name, payload, prestart)
        self._finalizer = weakref.finalize(self, self._sup.close_when_collected)
        self._finalizer.atexit = False  # the registry stops it at exit (and waits for it)

    # -- facts --------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def pid(self) -> int | None:
        """The current worker process's pid; None while there is none (not started yet,
        being replaced without ``prestart``, closed)."""
        return self._sup.pid

    @property
    def restarts(self) -> int:
        """How many processes were started to replace one that a job cost (or that died
        while idle)."""
        return max(0, self._sup.processes_started - 1)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (the process may still be stopping)."""
        with self._sup.lock:
            return self._sup.close_requested

    def wait_ready(self, timeout: float | None = None) -> int:
        """Block until the initializer has run in a worker process; return its pid.

        Starts the process if there is none (``prestart=False``, or a replacement not
        started yet). Raises the initializer's failure (:class:`WorkerError` with the remote
        traceback, :class:`WorkerCrashed`), ``RuntimeError`` if the Worker was closed,
        ``TimeoutError`` after ``timeout`` seconds (the initializer keeps running).
        """
        if timeout is not None:
            check_grace(timeout, "timeout")
        sup = self._sup
        sup.request_process()
        if not sup.ready.wait(timeout):
            raise TimeoutError(f"worker {self._name!r} is not ready after {timeout} s")
        if sup.init_error is not None:
            raise sup.init_error.with_traceback(None)
        pid = sup.pid
        if pid is None:
            raise RuntimeError(
                f"worker {self._name!r} has no process: it is closed (or its process was "
                "lost just now; call wait_ready() again)"
            )
        return pid

    # -- jobs ---------------------------------------------------------------------------

    @overload
    def start(
        self, fn: Callable[..., Generator[ItemT, Any, ResultT]], *args: Any, **options: Any
    ) -> Job[ItemT, ResultT]: ...
    @overload
    def start(
        self, fn: Callable[..., Iterator[ItemT]], *args: Any, **options: Any
    ) -> Job[ItemT, Any]: ...
    @overload
    def start(
        self, fn: Callable[..., ResultT], *args: Any, **options: Any
    ) -> Job[Any, ResultT]: ...
    def start(self, fn: Callable[..., Any], *args: Any, **options: Any) -> Job[Any, Any]:
        """Run ``fn(*args)`` in the warm process; return its :class:`Job` at once.

        Same contract as :func:`workstream.start` (generator or plain function, items,
        cancel ladder, outcomes), and ``fn`` may call :func:`workstream.worker_state`.
        Keyword arguments are the per-job options (``grace``, ``term_after``,
        ``max_buffered_items``, ``max_buffered_bytes``, ``name``, ``on_item``,
        ``on_done``, ``timeout``). Never waits for the child; if the process is still starting (or
        being replaced) the job waits for it, and a cancel meanwhile ends it
        ``before-start``.

        Raises ``RuntimeError`` if the previous job has not finished (one job at a time:
        ``wait()`` for it or ``cancel()`` it first — it is finished as soon as its
        outcome is known) or if the Worker is closed; the initializer's failure
        (:class:`WorkerError`, :class:`WorkerCrashed`) once it is known; ``TypeError`` /
        ``ValueError`` for a bad ``fn`` or option, as ``workstream.start()``. A job
        started before the initializer failed ends ``failed`` with that error.
        """
        check_fn(fn, "Worker.start()")
        opts = self._job_options
        if options:
            bad = sorted(set(options) - JOB_OPTIONS)
            if bad:
                # raises for names that are no option at all
                Options.from_kwargs(options, "Worker.start()")
                raise TypeError(
                    f"Worker.start() got process option(s) {', '.join(map(repr, bad))}: "
                    "they are fixed for the Worker's process; pass them to "
                    "workstream.Worker(...)"
                )
            if options.get("on_output") is not None and opts.output_mode == "inherit":
                raise ValueError(
                    "Worker.start(on_output=...) needs a Worker whose output is captured: "
                    "create it with workstream.Worker(output='capture') (or 'logging')"
                )
            opts = dataclasses.replace(opts, **options)
            check_options_are_not_arguments(fn, args, options, "Worker.start()")
        return Job(fn, args, opts, host=self._sup, owner=self)

    # -- closing ------------------------------------------------------------------------

    def close(self, grace: float | None = None) -> None:
        """Cancel the running job (with its grace), stop the process and reap it.

        ``grace`` caps the running job's grace (``close(grace=0)``: SIGKILL at once).
        Blocks until the process is reaped: at most that grace, plus 1 s for an idle
        process to exit, plus reaping. Idempotent (a later call can only shorten the
        grace); safe from any thread (inside a job's ``on_item`` / ``on_done`` too). A
        job waiting for the process ends ``cancelled`` (``before-start``); later
        ``start()`` calls raise ``RuntimeError``.
        """
        if grace is not None:
            check_grace(grace)
        self._finalizer.detach()
        self._sup.close(wait=True, grace=grace)

    def __enter__(self) -> Worker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            "a workstream.Worker cannot be pickled or sent to another process; "
            "use it from the process that created it"
        )

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<workstream.Worker {self._name!r} pid={self.pid} {state} "
            f"restarts={self.restarts}>"
        )
