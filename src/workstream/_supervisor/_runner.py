"""The job's runner thread: launch, read the channel, escalate a cancel, reap, report.

One thread per job, started by ``start()``, alive until the child is reaped. It is the
only thread that signals or reaps the child, so a signal can never hit a recycled pid.
It forks the child itself (so PR_SET_PDEATHSIG, which fires when the *forking thread*
exits, fires only when the application dies) and waits in one ``poll()`` on:

* the data pipe (frames from the child; paused while the consumer is behind),
* the child's exit (a pidfd on Linux, else multiprocessing's sentinel),
* the wake pipe (cancel requests, a consumer that caught up),

with a timeout equal to the next step of the cancel ladder. The policy is pure code in
``_core``: ``_core._ladder.Ladder`` says which step is due (ask: the cancel flag, which
``JobCore.request_cancel`` also sets at once; interrupt: SIGTERM at ``term_at``; kill:
SIGKILL to the child and its process group at ``kill_at``) and ``_core._rules.decide``
turns what this runner saw (``_facts``) into the outcome. This module does the I/O;
what comes in on the data pipe (bytes -> frames -> items, delivered; channel errors) is
the job's ``_intake.Intake``, fed by this loop.

When the child has exited, the runner drains what it wrote (every complete frame is
delivered; a torn tail is dropped and reported), then recovers from the item log every
item whose ``yield`` returned but that the pipe did not carry whole; if the child ended
by itself and said it had children (control byte HAS_CHILDREN), gives its process group
the rest of the grace to exit on its own (``_group.wait_until_empty``); then kills the rest of the
group, closes every descriptor, builds the outcome and publishes it.

The process itself (launch, handshake, signals, reaping, its descriptors) is a
``_child_process.ChildProcess``: the runner owns one per one-job ``start()``. A job of a
warm ``Worker`` uses the same loop through :meth:`JobRunner.run_on`, on a process it does
not own (``_process.WorkerProcess``): it writes the job to the jobs pipe, ends at the
job's final frame, and retires the process only if the job needed a signal, crashed or
left the channel unclean.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable

from .._core._ladder import Ladder
from .._core._rules import Facts, decide, keeps_worker
from .._core._seam import take_steps
from .._options import Options
from .._outcomes import Outcome
from .._transport import _fds, _itemlog
from ._child_process import ChildProcess
from ._intake import Intake
from ._jobcore import JobCore
from ._process import WorkerProcess


class JobRunner:
    """Runs one job: owns its child process (a one-job start) or borrows a warm one."""

    def __init__(
        self,
        core: JobCore,
        payload: bytes,
        control_fd: int | None,
        options: Options,
        name: str,
        started_at: float,
    ) -> None:
        self.core = core
        self._payload = payload
        self._control_fd: int | None = control_fd
        self._options = options
        self._name = name
        self._started_at = started_at
        # The job's process: owned (start()) or borrowed from a Worker (run_on, then
        # None again once it returns). Created by the runner thread, which forks it.
        self._child: ChildProcess | None = None
        self._pid: int | None = None
        # What this runner saw (turned into the outcome by _core._rules.decide; _facts):
        # what the channel told (the intake's), the ladder's steps, the child's exit.
        self._intake = Intake(core, options)
        self._ladder = Ladder()  # the steps of the cancel ladder taken so far
        self._exited = False  # True once the child's exit was seen (pidfd / sentinel)
        # Warm workers only (run_on): the job's bytes still to write to the jobs pipe,
        # and a hook called when the wake pipe fires (the Worker's own requests).
        self._warm = False
        self._out_fd: int | None = None
        self._outbox: memoryview | None = None
        self.on_wake: Callable[[], None] | None = None

    # -- thread entry -------------------------------------------------------------------

    def run(self) -> None:
        try:
            outcome = self._run()
        except BaseException as exc:  # a bug of ours: never leave the job hanging
            self._emergency_kill()
            exit_code = None if self._child is None else self._child.exit_code
            outcome = decide(self._facts(exit_code, internal_error=_describe(exc)))
        finally:
            self._close_fds()
        self.core.finish(outcome)

    def _run(self) -> Outcome:
        with self.core.lock:
            cancelled_early = self.core.cancel is not None
        if cancelled_early:
            return decide(self._facts(None, launched=False))
        try:
            self._launch()
        except Exception as exc:
            self._emergency_kill()  # if the process exists, it must not outlive the failure
            return decide(self._facts(
                None, launched=False, start_error=f"{type(exc).__name__}: {str(exc).strip()}"
            ))
        self._loop()
        # Wait for, then kill, what is left of the group while the leader is still
        # unreaped (fork, spawn; see _group for forkserver): its pid (the group id)
        # cannot have been recycled yet.
        self._let_children_exit()
        assert self._child is not None
        exit_code = self._child.reap_with_group()
        return self._build_outcome(exit_code)

    # -- launch -------------------------------------------------------------------------

    def _launch(self) -> None:
        """Start the job's process (from this thread: see the module docstring)."""
        child = self._child = ChildProcess(self._options, f"workstream:{self._name}")
        assert self._control_fd is not None
        control = _fds.PassedFd(self._control_fd)
        self._control_fd = None  # the child process's now
        payload, self._payload = self._payload, b""
        child.launch(control, payload=payload, close_in_child=self.core.wake_fds)
        self._pid = child.pid
        self._intake.attach(child.pid, child.arrays)
        with self.core.lock:
            self.core.pid = child.pid

    # -- the poll loop ------------------------------------------------------------------

    def _loop(self) -> None:
        core = self.core
        assert self._child is not None
        data_r = self._child.data_r
        exit_fd = self._child.exit_fd
        assert data_r is not None and exit_fd is not None
        poller = select.poll()
        poller.register(core.wake_fd, select.POLLIN)
        poller.register(exit_fd, select.POLLIN)
        poller.register(data_r, select.POLLIN)
        if self._outbox is not None and self._out_fd is not None:
            poller.register(self._out_fd, select.POLLOUT)
        reading = True
        data_open = True
        intake = self._intake
        control = core.control
        assert control is not None
        while True:
            timeout_ms = self._escalate()
            # Tell the child we are waiting: it then writes each item at once instead of
            # batching (lowest latency; and nothing waits in its buffer for a crash to lose).
            idle = reading and data_open
            if idle:
                control[_fds.READER_IDLE] = 1
            events = poller.poll(timeout_ms)
            if idle:
                control[_fds.READER_IDLE] = 0
            for fd, _event in events:
                if fd == data_r:
                    if not intake.read_available(data_r):
                        data_open = False
                        poller.unregister(data_r)
                elif fd == exit_fd:
                    self._exited = True
                elif fd == self._out_fd:
                    if self._write_outbox():
                        poller.unregister(fd)
                else:
                    with contextlib.suppress(OSError):
                        os.read(fd, 4096)
                    if self.on_wake is not None:
                        self.on_wake()
            if self._exited:
                break
            if self._warm and intake.final is not None:
                return  # the job is over; the warm process waits for the next one
            if data_open:
                want = not core.should_pause_reading()
                if want != reading:
                    if want:
                        poller.register(data_r, select.POLLIN)
                    else:
                        poller.unregister(data_r)
                        self._tell_buffer_full()
                    reading = want
        self._drain_after_exit(data_r if data_open else None)

    def _drain_after_exit(self, data_r: int | None) -> None:
        """The child has exited: deliver what it wrote to the pipe (``data_r``: still
        open), then what only its item log holds (``_transport._itemlog``)."""
        if data_r is not None:
            self._intake.drain(data_r)
        self._intake.recover(self.core.control)

    def _tell_buffer_full(self) -> None:
        """The buffer is full and reading paused: wake whoever waits for the job's end
        (``Job.wait()`` raises if nobody reads the buffer; see ``Job._nobody_reads``)."""
        core = self.core
        with core.lock:
            core.cond.notify_all()
        core.notify_listeners()

    # -- a job on a warm worker ---------------------------------------------------------

    def run_on(self, process: WorkerProcess, job_frame: bytes) -> tuple[Outcome, bool]:
        """Run this job on the warm ``process``; return ``(outcome, process_kept)``.

        Does not publish the outcome (the Worker does) and never closes the process's
        descriptors. The process is kept only if the job ended with its final frame, no
        signal was sent, and nothing is left in the channel; otherwise it is retired
        (stopped, its group killed, reaped) before this returns.
        """
        self._warm = True
        # READY comes once per process (in its first job, the initializer's stream).
        intake = self._intake
        intake.ready_seen = process.said_ready
        # The process's item log numbers items across its jobs: this job's come next.
        assert self.core.control is not None
        intake.next_seq = _itemlog.next_seq(self.core.control)
        self._child = process.child
        self._pid = process.child.pid
        self._out_fd = process.child.jobs_w
        self._outbox = memoryview(job_frame)
        # The process's shared-memory channel; never closed by this job.
        intake.attach(process.child.pid, process.child.arrays)
        if intake.arrays is not None:
            intake.arrays.copy = self._options.shm_copy
        keep = False
        try:
            assert self._pid is not None
            self.core.mark_running(self._pid)  # before the child can run any of fn
            self._write_outbox()
            self._loop()
            process.said_ready = intake.ready_seen
            keep = keeps_worker(
                self._facts(None), gone=self._exited, job_written=self._outbox is None
            )
            exit_code = None
            if not keep:
                # A job that ended by itself (final frame) leaves an idle child: close
                # its jobs pipe and it exits 0, and its own children get the rest of the
                # grace to follow. Otherwise it is killed, with its group.
                exit_code = process.retire(
                    graceful=intake.final is not None, children_deadline=self.children_deadline,
                    wake_fd=self.core.wake_fd, on_wake=self.on_wake,
                )
            outcome = decide(self._facts(exit_code, kept_warm=keep))
        except BaseException as exc:  # a bug of ours: the process must not outlive it
            keep = False
            exit_code = None
            with contextlib.suppress(Exception):
                exit_code = process.retire(graceful=False)
            outcome = decide(self._facts(
                exit_code, internal_error=_describe(exc), kept_warm=False
            ))
        finally:
            self._child = None  # the Worker's, not ours
            intake.arrays = None
        return outcome, keep

    def _write_outbox(self) -> bool:
        """Write what the jobs pipe takes now (non-blocking); True once all is written.

        A child that died meanwhile (EPIPE) counts as written: its exit ends the job.
        """
        box = self._outbox
        fd = self._out_fd
        if box is None or fd is None:
            return True
        try:
            while box:
                box = box[os.write(fd, box):]
        except BlockingIOError:
            self._outbox = box
            return False
        except OSError:
            pass
        self._outbox = None
        return True

    # -- the ladder ---------------------------------------------------------------------

    def _escalate(self) -> int | None:
        """Take the steps of the cancel ladder that are due; return ms until the next
        one (None: nothing is due without a new request or report).

        The policy (when to ask, interrupt, kill; the kill of a child still alive
        ``grace`` after its final report) is ``_core._ladder.Ladder``'s; this runner
        only carries the steps out, as a ``_core._seam.Transport``.
        """
        final_at = self._intake.final_at
        if self.core.cancel is None and final_at is None:
            return None  # the common case, per chunk read: Ladder.due would say so too
        now = time.monotonic()
        due = self._ladder.due(
            self.core.cancel, now, gone=self.gone(), final_at=final_at,
            grace=self._options.grace,
        )
        take_steps(due, self)
        return due.timeout_ms(now)

    # -- the seam: what this runner offers the core (_core._seam.Transport) -------------

    def ask(self) -> None:
        """Set the cooperative cancel flag (``JobCore.request_cancel`` set it already,
        at once, from the cancelling thread: this only makes sure)."""
        control = self.core.control
        if control is not None:
            with contextlib.suppress(ValueError):  # closed: the job is over
                control[_fds.CANCEL_FLAG] = 1

    def interrupt(self) -> None:
        """SIGTERM the child (not its group: its own children keep the grace)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the child and its process group."""
        self._kill_child_and_group()

    def gone(self) -> bool:
        """True once the child's exit was seen (pidfd or sentinel readable)."""
        return self._exited

    def _signal(self, sig: int) -> None:
        """Send ``sig`` to the job's process (not its group), if it has one."""
        if self._child is not None:
            self._child.signal(sig)

    def _kill_child_and_group(self) -> None:
        """SIGKILL the job's process, then the rest of its process group."""
        if self._child is not None:
            self._child.kill_child_and_group()

    def _emergency_kill(self) -> None:
        """SIGKILL the child and its group and reap it (bounded): after a failure of ours."""
        if self._child is not None:
            self._child.kill_and_reap()

    # -- the end ------------------------------------------------------------------------

    def children_deadline(self) -> float:
        """When the child's own children must be gone after the child ended by itself:
        the cancel's SIGKILL deadline if a cancel was requested, else ``grace`` after the
        final frame (or after now, without one)."""
        req = self.core.cancel
        if req is not None:
            return req.kill_at
        final_at = self._intake.final_at
        start = final_at if final_at is not None else time.monotonic()
        return start + self._options.grace

    def _let_children_exit(self) -> None:
        """Give the group up to :meth:`children_deadline` to exit on its own.

        Only if the child exited by itself after its final frame and set HAS_CHILDREN (a
        one-byte read otherwise: no cost when there are no descendants); never after we
        SIGKILLed it (the ladder's end). A shorter cancel meanwhile shortens the wait.
        """
        child = self._child
        if child is None or self._ladder.killed or self._intake.final is None:
            return
        child.let_children_exit(
            self.core.control, self.children_deadline, self.core.wake_fd, self.on_wake
        )

    def release_unstarted(self) -> None:
        """Free everything when the runner thread could not even be started."""
        self._close_fds()
        self.core.release()

    def _close_fds(self) -> None:
        """Close what a one-job runner owns: the control fd if never handed to a child,
        and the child process's descriptors (arrays the user still holds stay valid)."""
        _fds.close_quietly(self._control_fd)
        self._control_fd = None
        if self._child is not None and not self._warm:
            self._child.close()

    def _facts(
        self, exit_code: int | None, *, launched: bool = True,
        start_error: str | None = None, internal_error: str | None = None,
        kept_warm: bool | None = None,
    ) -> Facts:
        """What this runner saw, for ``_core._rules.decide`` (measured to now)."""
        core = self.core
        intake = self._intake
        req = core.cancel
        return Facts(
            started_at=self._started_at, now=time.monotonic(), pid=self._pid,
            exit_code=exit_code, items_delivered=core.items_received,
            items_discarded=core.items_discarded,
            cancel_requested_at=None if req is None else req.requested_at,
            launched=launched, start_error=start_error, internal_error=internal_error,
            channel_error=intake.channel_error, delivery_error=intake.delivery_error,
            final=intake.final, interrupted=self._ladder.interrupted,
            killed=self._ladder.killed, torn_bytes=intake.decoder.pending,
            ready_seen=intake.ready_seen, main_file=_main_file(), kept_warm=kept_warm,
        )

    def _build_outcome(self, exit_code: int | None) -> Outcome:
        return decide(self._facts(exit_code))


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _main_file() -> str | None:
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None)
    return file if isinstance(file, str) else None
