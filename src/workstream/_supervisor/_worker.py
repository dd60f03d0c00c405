"""The supervisor thread of a ``workstream.Worker``: one warm process, one job at a time.

One thread per Worker, alive from construction until ``close()`` has reaped the last
process. It is the only thread that forks, signals or reaps the Worker's processes (so
PR_SET_PDEATHSIG, which follows the forking thread, fires only when the application
dies), and it runs every job's poll loop (``JobRunner.run_on``). User threads only
*request*: ``submit`` a job into the one free slot, cancel a job (its JobCore), or
``close``; each request writes a byte to the Worker's wake pipe, which every loop of
this thread polls (all the Worker's JobCores share that pipe).

States of the Worker (``_main``; ``_core._states.WorkerState``, moved only through
``WorkerMachine.move``, which checks the table; ``close()`` is a *request* recorded
apart, ``WorkerMachine.close_requested``)::

    no process ──boot──► booting (launch + initializer job) ──► idle ◄──► running a job
        ▲                    │ initializer failed: broken           │
        └──── process lost (job needed a signal, crashed, died idle) ┘
    any state ──close()──► closing (cancel the job with its grace, retire) ──► closed

A lost process is replaced at once with ``prestart=True`` (the default), else when the
next job needs one. A ``workstream.Pool`` runs one supervisor per slot with a ``feeder``
(``_supervisor._pool.PoolCore``): an idle slot with a warm process *pulls* its next job
from the pool's queue (``Feeder.pull``) instead of waiting for ``submit``, and after a job
that kept the process asks the feeder whether to retire it anyway
(``max_jobs_per_worker``, ``max_worker_memory``). The initializer runs as the first job
of every process; a job submitted meanwhile waits for it (and ends "before-start" if
cancelled while waiting).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .._core._rules import Facts, decide
from .._core._states import WorkerMachine, WorkerState
from .._errors import WorkerCrashed, WorkstreamError
from .._options import Options
from .._outcomes import CancelledOutcome, Completed, Outcome
from .._transport import _fds, _framing
from . import _registry
from ._jobcore import JobCore
from ._process import RETIRE_WAIT, WorkerProcess
from ._runner import JobRunner


class Feeder(Protocol):
    """Where a Pool's slot takes its jobs from, and its recycling policy."""

    def pull(self, slot: WorkerSupervisor) -> Submission | None:
        """The next job for ``slot`` (dequeued to its wake pipe), or None: then the
        slot is idle and will be woken (its wake pipe) when a job is queued."""
        ...

    def retire_reason(self, slot: WorkerSupervisor, process: WorkerProcess) -> str | None:
        """After a job that kept ``process`` warm: why to retire it now (None: keep)."""
        ...


@dataclass(eq=False)  # hashed by identity (a Pool keeps a set of its live jobs)
class Submission:
    """A job handed to the Worker by ``start()``."""

    core: JobCore
    payload: bytes
    options: Options
    name: str
    started_at: float
    on_end: Callable[[], None]  # called after the outcome was published (Job's hook)


class WorkerSupervisor:
    """Owns the Worker's processes and thread; see the module docstring."""

    def __init__(
        self, options: Options, name: str, init_payload: bytes, prestart: bool,
        feeder: Feeder | None = None,
    ) -> None:
        self.lock = threading.Lock()
        self._feeder = feeder  # a Pool's slot: pulls its jobs (see the module docstring)
        self._options = options
        self._name = name
        self._init_frame = _framing.JOB_HEADER.pack(len(init_payload)) + init_payload
        self._prestart = prestart
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._proc: WorkerProcess | None = None
        self._next: Submission | None = None  # submitted, not yet taken by the thread
        self._current: Submission | None = None  # taken: waiting for a process, or running
        self._init_core: JobCore | None = None  # the running initializer job, if any
        # Requested (close(); guarded by lock) apart from observed (the supervisor
        # thread's state, moved by it alone).
        self._machine = WorkerMachine()
        self._want_process = prestart  # start one when there is none (prestart, wait_ready)
        self.init_error: WorkstreamError | None = None
        self.processes_started = 0
        self.processes_lost = 0  # a job cost it (signal, crash), or it died idle
        self.pid: int | None = None  # the current process's pid (None when there is none)
        self.ready = threading.Event()  # set when the initializer finished (or failed)
        self.closed = threading.Event()  # set when the thread is done (all reaped)
        self._thread = threading.Thread(
            target=self._main, name=f"workstream-worker:{name}", daemon=True
        )
        _registry.add(self)
        try:
            self._thread.start()
        except BaseException:
            _registry.remove(self)
            _fds.close_quietly(self._wake_r)
            _fds.close_quietly(self._wake_w)
            raise

    # -- requests from user threads -----------------------------------------------------

    @property
    def close_requested(self) -> bool:
        """True once ``close()`` was called (read it under ``lock``)."""
        return self._machine.close_requested

    @property
    def state(self) -> WorkerState:
        """Where the Worker is, as its thread last observed it (for ``repr``, tests)."""
        return self._machine.state

    @property
    def wake_fds(self) -> tuple[int, int]:
        return self._wake_r, self._wake_w

    def wake(self) -> None:
        """Wake the thread (it looks at every request again; a Pool's slot pulls)."""
        with self.lock:
            self._wake_locked()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def _wake_locked(self) -> None:
        if self._wake_w >= 0:  # -1 once the thread is done (the fd number may be reused)
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"!")

    def submit(self, sub: Submission) -> None:
        """Queue ``sub`` as the next job; raise if closed, broken or busy (never blocks)."""
        with self.lock:
            if self._machine.close_requested:
                raise RuntimeError(
                    f"workstream.Worker {self._name!r} is closed; create a new Worker"
                )
            if self.init_error is not None:
                raise self.init_error.with_traceback(None)
            busy = self._next if self._next is not None else self._current
            if busy is not None and not busy.core.terminal.is_set():
                raise RuntimeError(
                    f"workstream.Worker {self._name!r} is busy with job {busy.name!r}: a "
                    "Worker runs one job at a time; wait() for it or cancel() it first"
                )
            self._next = sub
            self._wake_locked()

    def request_process(self) -> None:
        """Have a process started (and initialized) if there is none; never blocks."""
        with self.lock:
            if (
                self._machine.close_requested or self.init_error is not None
                or self._proc is not None
                or self._want_process
            ):
                return
            self._want_process = True
            self.ready.clear()
            self._wake_locked()

    def close(self, *, wait: bool = True, grace: float | None = None) -> None:
        """Cancel the running job (its own grace, at most ``grace``) and retire the
        process; idempotent.

        With ``wait`` (and not on this supervisor's own thread) blocks until the
        process is reaped: at most the job's grace + ``RETIRE_WAIT`` + reaping.
        """
        with self.lock:
            self._machine.request_close(grace)
            self._wake_locked()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def close_when_collected(self) -> None:
        """The Worker facade was garbage-collected: close without waiting (see
        ``_registry.close_when_collected``)."""
        _registry.close_when_collected(self.lock, self.close, "workstream-worker-gc")

    # the registry's interface (interpreter exit)
    def cancel(self, grace: float | None = None) -> bool:
        """Close without waiting (the running job is cancelled with its own grace)."""
        self.close(wait=False, grace=grace)
        return True

    def _wait_quietly(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _grace(self) -> float:
        return self._options.grace + RETIRE_WAIT

    # -- the thread ---------------------------------------------------------------------

    def _main(self) -> None:
        try:
            while True:
                with self.lock:
                    closing = self._machine.close_requested
                    sub = self._next
                    if sub is not None and not closing:
                        self._next = None
                        self._current = sub
                if closing:
                    break
                if sub is not None:
                    self._run_job(sub)
                    with self.lock:
                        self._current = None
                elif self._proc is None and self._want_process and self.init_error is None:
                    self._want_process = self._prestart
                    self._boot()
                elif (pulled := self._pull()) is not None:
                    self._run_job(pulled)
                    with self.lock:
                        self._current = None
                else:
                    self._idle()
        finally:
            self._shutdown()

    def _pull(self) -> Submission | None:
        """A Pool's slot: the next job from the pool's queue, if this slot can run it now
        (a warm idle process, or a failed initializer whose error the job gets)."""
        feeder = self._feeder
        if feeder is None:
            return None
        warm = self._proc is not None and self._machine.state is WorkerState.IDLE
        if not warm and self.init_error is None:
            return None
        sub = feeder.pull(self)
        if sub is not None:
            with self.lock:
                self._current = sub
        return sub

    def _react(self) -> None:
        """On every wake-up inside a loop: apply close(), settle a waiting job's cancel."""
        with self.lock:
            closing = self._machine.close_requested
            cap = self._machine.close_grace
            init_core = self._init_core
            current = self._current
            waiting = [s for s in (self._next, current) if s is not None]
        if closing:
            targets = [(init_core, self._options)]
            if current is not None:
                targets.append((current.core, current.options))
            now = time.monotonic()
            for core, opts in targets:
                if core is None:
                    continue
                grace = opts.grace if cap is None else min(cap, opts.grace)
                req = core.cancel
                # Only a new or shorter deadline (request_cancel wakes us: no loop).
                if req is None or req.kill_at > now + grace + 0.001:
                    core.request_cancel(grace, opts.term_delay(grace), False, now=now)
        if init_core is not None:  # jobs wait for the initializer: settle their cancels
            for sub in waiting:
                if sub.core.cancel is not None and not sub.core.terminal.is_set():
                    self._end_before_start(sub)

    def _boot(self) -> None:
        """Start a process and run its initializer; on failure record ``init_error``."""
        self.ready.clear()
        self._machine.move(WorkerState.BOOTING)
        proc = WorkerProcess(self._options, self._name)
        try:
            proc.launch(parent_only_fds=(self._wake_r, self._wake_w))
        except Exception as exc:
            proc.retire(graceful=False)
            self._lose_process(WorkerState.BROKEN)
            self._set_init_error(WorkerCrashed(None, None, f"{type(exc).__name__}: {exc}"))
            return
        self.processes_started += 1
        self._proc = proc
        self.pid = proc.child.pid
        core = JobCore(None, None, None, wake=self.wake_fds)
        core.attach_control(proc.map_control())
        with self.lock:
            self._init_core = core
        self._react()  # a close() that came before _init_core was published
        runner = JobRunner(core, b"", None, self._options, f"{self._name}:init", time.monotonic())
        runner.on_wake = self._react
        outcome, kept = runner.run_on(proc, self._init_frame)
        with self.lock:
            self._init_core = None
        core.finish(outcome)  # nobody reads it: items emitted by the initializer are dropped
        if kept and isinstance(outcome, Completed):
            proc.reset_control()
            self._machine.move(WorkerState.IDLE)
            self.ready.set()
            return
        if kept:
            proc.retire(graceful=True, children_deadline=self._children_deadline())
        if isinstance(outcome, CancelledOutcome):
            self._lose_process()
            return  # close() interrupted the initializer
        self._lose_process(WorkerState.BROKEN)
        error: WorkstreamError
        if isinstance(outcome, Completed):
            error = WorkerCrashed(
                outcome.pid, outcome.exit_code,
                "the worker process did not stay up after its initializer",
            )
        else:
            error = outcome.error
        self._set_init_error(error)

    def _set_init_error(self, error: WorkstreamError) -> None:
        with self.lock:
            self.init_error = error
        self.ready.set()

    def _run_job(self, sub: Submission) -> None:
        closing = self._machine.close_requested
        if self._proc is None and self.init_error is None and not closing:
            self._boot()
        core = sub.core
        if core.terminal.is_set():
            return  # cancelled while it waited for the initializer
        if self.init_error is not None:
            self._publish(sub, decide(Facts(
                started_at=sub.started_at, now=time.monotonic(), launched=False,
                refused=self.init_error, kept_warm=False,
            )))
            return
        proc = self._proc
        if proc is None or self._machine.close_requested:
            self._end_before_start(sub)
            return
        mapping = proc.map_control()
        if not core.attach_control(mapping):
            mapping.close()
            self._end_before_start(sub)
            return
        runner = JobRunner(core, b"", None, sub.options, sub.name, sub.started_at)
        runner.on_wake = self._react
        frame = _framing.JOB_HEADER.pack(len(sub.payload)) + sub.payload
        sub.payload = b""
        self._machine.move(WorkerState.RUNNING)
        outcome, kept = runner.run_on(proc, frame)  # kept_warm is set: it says ``kept``
        recycle = None
        if kept and self._feeder is not None:
            recycle = self._feeder.retire_reason(self, proc)
            if recycle is not None:
                kept = False
                outcome = dataclasses.replace(outcome, kept_warm=False)
        if kept:
            self._machine.move(WorkerState.IDLE)
        else:
            self._lose_process(lost=recycle is None)
        self._publish(sub, outcome)
        if kept:
            proc.reset_control()  # the job's mapping is closed: no late cancel can land
        elif recycle is not None:  # idle now: it exits when its jobs pipe is closed
            proc.retire(
                graceful=True, children_deadline=self._children_deadline(),
                wake_fd=self._wake_r,
            )

    def _idle(self) -> None:
        """Wait for a request; a process that dies or writes while idle is retired."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        proc = self._proc
        if proc is not None:
            child = proc.child
            assert child.exit_fd is not None and child.data_r is not None
            poller.register(child.exit_fd, select.POLLIN)
            poller.register(child.data_r, select.POLLIN)
        for fd, _event in poller.poll():
            if fd == self._wake_r:
                with contextlib.suppress(OSError):
                    os.read(fd, 4096)
            elif proc is not None and self._proc is proc:
                # Died while idle (OOM killer, kill from outside), or wrote between jobs
                # (a thread a job left behind): either way the channel is not clean.
                proc.retire(graceful=False)
                self._lose_process()

    def _children_deadline(self) -> Callable[[], float]:
        """When an idle process's own children must be gone once it exited: the Worker's
        grace from now, capped by ``close(grace=...)`` (read again at every wake-up)."""
        start = time.monotonic()

        def deadline() -> float:
            with self.lock:
                return start + self._machine.job_grace(self._options.grace)

        return deadline

    def _lose_process(
        self, state: WorkerState = WorkerState.NO_PROCESS, *, lost: bool = True
    ) -> None:
        """Forget the (retired) process; the next one starts per ``_want_process``
        (``state`` BROKEN: never, the initializer failed). ``lost``: it was not retired
        on purpose (a Pool's recycling policy)."""
        if lost:
            self.processes_lost += 1
        self._machine.move(state)
        self.ready.clear()
        self._proc = None
        self.pid = None

    def _end_before_start(self, sub: Submission) -> None:
        req = sub.core.cancel
        self._publish(sub, decide(Facts(
            started_at=sub.started_at, now=time.monotonic(), launched=False,
            cancel_requested_at=None if req is None else req.requested_at, kept_warm=False,
        )))

    def _publish(self, sub: Submission, outcome: Outcome) -> None:
        with self.lock:
            if self._next is sub:
                self._next = None
        sub.core.finish(outcome)
        sub.on_end()

    def _shutdown(self) -> None:
        self._machine.move(WorkerState.CLOSING)  # allowed from every state before it
        with self.lock:
            self._machine.request_close(None)
            waiting = [s for s in (self._next, self._current) if s is not None]
            self._next = None
        for sub in waiting:
            if not sub.core.terminal.is_set():
                self._end_before_start(sub)
        if self._proc is not None:
            self._proc.retire(
                graceful=True, children_deadline=self._children_deadline(),
                wake_fd=self._wake_r,  # a close(grace=0) meanwhile cuts the wait short
            )
            self._proc = None
            self.pid = None
        with self.lock:
            _fds.close_quietly(self._wake_r)
            _fds.close_quietly(self._wake_w)
            self._wake_r = self._wake_w = -1
        self._machine.move(WorkerState.CLOSED)
        self.ready.set()
        self.closed.set()
        _registry.remove(self)
