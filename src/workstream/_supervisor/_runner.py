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
import math
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
from ._memory import MemoryWatch, oom_kill_count
from ._process import WorkerProcess

PROGRESS_TICK = 0.05
"""Seconds between two reads of the progress slot for ``on_progress`` (20 per second)."""


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
        self._next_progress_at = 0.0  # the next progress tick (with on_progress only)
        # Warm workers only (run_on): the job's bytes still to write to the jobs pipe,
        # and a hook called when the wake pipe fires (the Worker's own requests).
        self._warm = False
        self._out_fd: int | None = None
        self._outbox: memoryview | None = None
        self.on_wake: Callable[[], None] | None = None
        # The memory limit (max_memory): the group's measurements, and whether we
        # killed it for going over.
        self._memory: MemoryWatch | None = None
        self._memory_exceeded = False

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
        self._settle_memory()
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
        self._watch_memory()
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
        extra = self._extra_readers()
        for fd in extra:
            poller.register(fd, select.POLLIN)
        if self._outbox is not None and self._out_fd is not None:
            poller.register(self._out_fd, select.POLLOUT)
        reading = True
        data_open = True
        intake = self._intake
        control = core.control
        assert control is not None
        while True:
            timeout_ms = _earliest(
                self._escalate(), self._ticks(), self._progress_tick(), self._timeout_tick()
            )
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
                elif fd in extra:
                    if not extra[fd](fd):
                        poller.unregister(fd)
                        del extra[fd]
                else:
                    with contextlib.suppress(OSError):
                        os.read(fd, 4096)
                    if self.on_wake is not None:
                        self.on_wake()
            if self._exited:
                break
            if self._warm and intake.final is not None:
                self._last_reads()
                self._drain_extra_readers()
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
        self._last_reads()
        self._drain_extra_readers()

    def _drain_after_exit(self, data_r: int | None) -> None:
        """The child has exited: deliver what it wrote to the pipe (``data_r``: still
        open), then what only its item log holds (``_transport._itemlog``)."""
        if data_r is not None:
            self._intake.drain(data_r)
        self._intake.recover(self.core.control)

    # -- periodic checks (the memory limit) ---------------------------------------------

    def _watch_memory(self) -> None:
        """Start measuring the job's process group if ``max_memory`` is set."""
        limit = self._options.max_memory
        if limit is not None and self._child is not None and self._pid is not None:
            self._memory = MemoryWatch(
                self._pid, limit, time.monotonic(), self._child.cgroup
            )

    def _ticks(self) -> int | None:
        """Run the periodic checks that are due; return ms until the next one (None:
        none). The memory limit: over it, the child and its group are SIGKILLed (the
        loop then sees the exit) and the job ends with ``MemoryLimitExceeded``."""
        watch = self._memory
        if watch is None or self._memory_exceeded or self._exited:
            return None
        now = time.monotonic()
        if watch.check(now):
            self._memory_exceeded = True
            self._kill_child_and_group()
            return None
        return watch.ms_until_due(now)

    def _settle_memory(self) -> None:
        """After the loop: an out-of-memory kill in the job's cgroup that no tick saw yet
        (the victim's exit came first) ends the job over its limit too, and the rest of
        the group with it."""
        watch = self._memory
        if watch is not None and not self._memory_exceeded and watch.kernel_enforced():
            self._memory_exceeded = True
            self._kill_child_and_group()

    def _killed_by_the_kernel(self, exit_code: int | None) -> bool:
        """Heuristic: a SIGKILL nobody in workstream sent, while the kernel's count of
        out-of-memory kills rose since the process started (``/proc/vmstat``)."""
        child = self._child
        if (exit_code != -signal.SIGKILL or child is None or self._ladder.killed
                or self._memory_exceeded or child.oom_kills_at_launch is None):
            return False
        now = oom_kill_count()
        return now is not None and now > child.oom_kills_at_launch

    # -- other pipes the loop reads (output=) -------------------------------------------

    def _extra_readers(self) -> dict[int, Callable[[int], bool]]:
        """Descriptors the loop also polls, each with its reader (called when readable;
        returns False at end-of-file). Today: the worker's output pipes (``output=``),
        whose events go to this job."""
        child = self._child
        if child is None or child.output is None:
            return {}
        child.output.sink = self.core.output
        return {fd: child.output.read for fd in child.output.open_fds()}

    def _drain_extra_readers(self) -> None:
        """Read what the extra pipes hold now (the child exited, or the job's final
        frame came): output written before that belongs to this job."""
        child = self._child
        if child is not None and child.output is not None:
            child.output.drain()
            if self._exited:
                child.output.end()
            child.output.sink = None

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
        self._watch_memory()
        if intake.arrays is not None:
            intake.arrays.copy = self._options.shm_copy
        keep = False
        try:
            assert self._pid is not None
            self.core.mark_running(self._pid)  # before the child can run any of fn
            self._write_outbox()
            self._loop()
            self._settle_memory()
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
        if self.core.cancel is not None:
            self.core.poll_grace()  # extra grace the worker obtained moves the deadlines
        now = time.monotonic()
        due = self._ladder.due(
            self.core.cancel, now, gone=self.gone(), final_at=final_at,
            grace=self._options.grace,
        )
        take_steps(due, self)
        return due.timeout_ms(now)

    # -- PROGRESS: the progress tick -----------------------------------------------------

    def _progress_tick(self) -> int | None:
        """With ``on_progress``: read the progress slot every ``PROGRESS_TICK`` seconds
        (the listener thread is woken for a new report); return ms until the next read.
        None (no tick) without a subscriber: ``job.progress`` reads the slot itself."""
        if self._options.on_progress is None:
            return None
        now = time.monotonic()
        if now >= self._next_progress_at:
            self.core.poll_progress()
            self._next_progress_at = now + PROGRESS_TICK
        return max(0, math.ceil((self._next_progress_at - now) * 1000))

    def _last_reads(self) -> None:
        """Before the outcome: the worker's last progress report (``job.progress`` keeps
        it once the control block is closed) and its grace requests."""
        self.core.poll_progress()
        self.core.poll_grace()
    def _timeout_tick(self) -> int | None:
        """The job's ``timeout=``: ms until it runs out (None: no limit applies); once
        it has, cancel the job with its grace (recorded as timed out) and return 0, so
        that the ladder takes its first steps at once."""
        left = self.core.timeout_left(time.monotonic())
        if left is None:
            return None
        if left > 0:
            return math.ceil(left * 1000)
        grace = self._options.grace
        self.core.time_out(grace, self._options.term_delay(grace))
        return 0

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
            fault_stack=None if self._child is None else self._child.fault_stack,
            memory_exceeded=self._memory_exceeded,
            memory_limit=self._options.max_memory,
            memory_peak=None if self._memory is None else self._memory.peak,
            kernel_oom_kill=self._killed_by_the_kernel(exit_code),
            grace_asked=core.grace_asked, grace_granted=core.grace_granted,
            timed_out=core.timed_out,
            stderr_tail=() if core.output is None else core.output.stderr_tail(),
        )

    def _build_outcome(self, exit_code: int | None) -> Outcome:
        return decide(self._facts(exit_code))


def _earliest(*timeouts_ms: int | None) -> int | None:
    """The shortest of poll timeouts in ms (None: no timeout)."""
    due = [t for t in timeouts_ms if t is not None]
    return min(due) if due else None
def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _main_file() -> str | None:
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None)
    return file if isinstance(file, str) else None
