"""The job's runner thread: launch, read the channel, escalate a cancel, reap, report.

One thread per job, started by ``start()``, alive until the child is reaped. It is the
only thread that signals or reaps the child, so a signal can never hit a recycled pid.
It forks the child itself (so PR_SET_PDEATHSIG, which fires when the *forking thread*
exits, fires only when the application dies) and waits in one ``poll()`` on:

* the data pipe (frames from the child; paused while the consumer is behind),
* the child's exit (a pidfd on Linux, else multiprocessing's sentinel),
* the wake pipe (cancel requests, a consumer that caught up),

with a timeout equal to the next rung of the cancel ladder. The ladder: set the cancel
flag at once (``JobCore.request_cancel``), SIGTERM at ``term_at``, SIGKILL to the child
and its process group at ``kill_at``.

When the child has exited, the runner drains what it wrote (every complete frame is
delivered; a torn tail is dropped and reported); if the child ended by itself and said
it had children (control byte HAS_CHILDREN), gives its process group the rest of the
grace to exit on its own (``_group.wait_until_empty``); then kills the rest of the
group, closes every descriptor, builds the outcome and publishes it.

A job of a warm ``Worker`` uses the same loop through :meth:`JobRunner.run_on`, on a
process it does not own (``_worker.WorkerProcess``): it writes the job to the jobs pipe,
ends at the job's final frame, and retires the process only if the job needed a signal,
crashed or left the channel unclean.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import pickle
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from .._child._runtime import child_main
from .._errors import (
    UNGUARDED_MAIN_EXIT,
    ChannelBroken,
    DeliveryError,
    WorkerCrashed,
    WorkerError,
    WorkstreamError,
)
from .._linux import open_pidfd
from .._options import Options
from .._outcomes import CancelledOutcome, CancelRung, Completed, Crashed, Failed, Outcome
from .._transport import _fds, _framing, _shm
from . import _group, _guard
from ._arrays import ArrayChannel
from ._jobcore import JobCore

_READ_CHUNK = 1 << 20
_GROUP_EXIT_WAIT = 0.5  # seconds to wait for a killed process group to disappear
_TERM_REPEAT = 0.1  # seconds between SIGTERMs while waiting for SIGKILL (see _escalate)

_loads = pickle.loads


class JobRunner:
    """Owns the child process and every parent-side descriptor of one job."""

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
        self._proc: Any = None
        self._pid: int | None = None
        self._exit_fd: int | None = None
        self._pidfd: int | None = None
        self._data_r: int | None = None
        self._lifeline_w: int | None = None
        self._decoder = _framing.FrameDecoder()
        self._final: _framing.Frame | None = None
        self._term_sent = False  # True once a SIGTERM was sent
        self._next_term = 0.0  # when SIGTERM may be sent (again)
        self._kill_sent = False
        self._exited = False
        self._channel_error: ChannelBroken | None = None
        self._delivery_error: DeliveryError | None = None
        self._registered_group = False
        self._arrays: ArrayChannel | None = None  # large buffers in shared memory
        # Warm workers only (run_on): the job's bytes still to write to the jobs pipe,
        # and a hook called when the wake pipe fires (the Worker's own requests).
        self._warm = False
        self._out_fd: int | None = None
        self._outbox: memoryview | None = None
        self.on_wake: Callable[[], None] | None = None
        self._final_at: float | None = None  # when the final frame arrived
        self._ready_seen = False  # True once the child's READY frame was decoded

    # -- thread entry -------------------------------------------------------------------

    def run(self) -> None:
        try:
            outcome = self._run()
        except BaseException as exc:  # a bug of ours: never leave the job hanging
            self._emergency_kill()
            detail = "internal error in workstream's runner: " + "".join(
                traceback.format_exception_only(type(exc), exc)
            ).strip()
            exit_code = None
            with contextlib.suppress(Exception):
                exit_code = self._proc.exitcode if self._proc is not None else None
            outcome = self._crashed(exit_code, detail)
        finally:
            if self._registered_group and self._pid is not None:
                with contextlib.suppress(Exception):
                    _guard.unregister(self._pid)
            self._close_fds()
        self.core.finish(outcome)

    def _run(self) -> Outcome:
        with self.core.lock:
            cancelled_early = self.core.cancel is not None
        if cancelled_early:
            return CancelledOutcome(
                pid=None, items_delivered=0, exit_code=None,
                duration=time.monotonic() - self._started_at,
                rung="before-start", stop_latency=self._stop_latency(),
            )
        try:
            self._launch()
        except Exception as exc:
            self._emergency_kill()  # if the process exists, it must not outlive the failure
            return self._crashed(None, f"{type(exc).__name__}: {str(exc).strip()}")
        self._loop()
        # Wait for, then kill, what is left of the group while the leader is still
        # unreaped (fork, spawn; see _group for forkserver): its pid (the group id)
        # cannot have been recycled yet.
        self._let_children_exit()
        group_signalled = self._kill_group()
        exit_code = self._reap()
        self._wait_group_gone(group_signalled)
        return self._build_outcome(exit_code)

    # -- launch -------------------------------------------------------------------------

    def _launch(self) -> None:
        opts = self._options
        method = opts.resolved_start_method
        ctx: Any = multiprocessing.get_context(method)
        if method == "forkserver":
            _add_forkserver_preload()
        data_r, data_w = _fds.make_pipe(opts.pipe_bytes)
        self._data_r = data_r
        life_r, life_w = os.pipe()
        self._lifeline_w = life_w
        settings: dict[str, Any] = {
            "batch_window": opts.batch_window,
            "max_batch_bytes": opts.max_batch_bytes,
        }
        if method == "fork":
            # A forked child inherits every fd: it must not hold the parent's ends of its
            # own pipes (its lifeline would never reach EOF). The guard's pipe is closed
            # in the child by _guard's at-fork handler (closing it here again could close
            # an unrelated fd that reused its number).
            parent_ends = (life_w, data_r, *self.core.wake_fds)
            settings["close_fds"] = [fd for fd in parent_ends if fd is not None]
        self._arrays = ArrayChannel.for_options(opts)
        if self._arrays is not None:
            settings["arrays"] = self._arrays.child_settings(opts.max_buffered_bytes)
        if method in ("fork", "spawn"):
            settings["parent_pid"] = os.getpid()
        else:
            settings["forkserver"] = True
        assert self._control_fd is not None
        conns = [_fds.PassedFd(data_w), _fds.PassedFd(life_r), _fds.PassedFd(self._control_fd)]
        self._control_fd = None  # owned by its Connection now
        try:
            proc = ctx.Process(
                target=child_main,
                args=(self._payload, *conns, settings),
                name=f"workstream:{self._name}",
                daemon=False,
            )
            proc.start()
        finally:
            for conn in conns:
                conn.close()
            if self._arrays is not None:
                self._arrays.close_fd()  # the child has its copy; our mapping needs none
        self._payload = b""
        self._proc = proc
        # We reap our children ourselves; multiprocessing's own reaping (active_children(),
        # the next Process.start()) must not race with us for the exit status.
        with contextlib.suppress(AttributeError, KeyError):
            multiprocessing.process._children.discard(proc)  # type: ignore[attr-defined]
        pid = proc.pid
        assert pid is not None
        self._pid = pid
        self._pidfd = open_pidfd(pid)
        self._exit_fd = self._pidfd if self._pidfd is not None else proc.sentinel
        if opts.kill_group:
            _guard.register(pid)
            self._registered_group = True
        # Let the child run user code only now that its group is registered.
        with contextlib.suppress(OSError):
            os.write(life_w, b"g")
        with self.core.lock:
            self.core.pid = pid

    # -- the poll loop ------------------------------------------------------------------

    def _loop(self) -> None:
        core = self.core
        data_r = self._data_r
        assert data_r is not None and self._exit_fd is not None
        poller = select.poll()
        poller.register(core.wake_fd, select.POLLIN)
        poller.register(self._exit_fd, select.POLLIN)
        poller.register(data_r, select.POLLIN)
        if self._outbox is not None and self._out_fd is not None:
            poller.register(self._out_fd, select.POLLOUT)
        reading = True
        data_open = True
        control = core.control
        assert control is not None
        while True:
            timeout_ms = self._escalate()
            if self._final_at is not None:
                after_final = self._kill_after_final()
                if after_final is not None:
                    timeout_ms = after_final if timeout_ms is None else min(timeout_ms, after_final)
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
                    if not self._read_available(data_r):
                        data_open = False
                        poller.unregister(data_r)
                elif fd == self._exit_fd:
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
            if self._warm and self._final is not None:
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
        if data_open:
            self._drain(data_r)

    def _tell_buffer_full(self) -> None:
        """The buffer is full and reading paused: wake whoever waits for the job's end
        (``Job.wait()`` raises if nobody reads the buffer; see ``Job._nobody_reads``)."""
        core = self.core
        with core.lock:
            core.cond.notify_all()
        core.notify_listeners()

    # -- a job on a warm worker ---------------------------------------------------------

    def run_on(self, process: Any, job_frame: bytes) -> tuple[Outcome, bool]:
        """Run this job on the warm ``process``; return ``(outcome, process_kept)``.

        Does not publish the outcome (the Worker does) and never closes the process's
        descriptors. The process is kept only if the job ended with its final frame, no
        signal was sent, and nothing is left in the channel; otherwise it is retired
        (stopped, its group killed, reaped) before this returns.
        """
        self._warm = True
        # READY comes once per process (in its first job, the initializer's stream).
        self._ready_seen = process.said_ready
        self._proc = process.proc
        self._pid = process.pid
        self._pidfd = process.pidfd
        self._exit_fd = process.exit_fd
        self._data_r = process.data_r
        self._out_fd = process.jobs_w
        self._outbox = memoryview(job_frame)
        self._arrays = process.arrays  # the process's; never closed by this job
        if self._arrays is not None:
            self._arrays.copy = self._options.shm_copy
        keep = False
        try:
            assert self._pid is not None
            self.core.mark_running(self._pid)  # before the child can run any of fn
            self._write_outbox()
            self._loop()
            process.said_ready = self._ready_seen
            keep = (
                not self._exited
                and self._final is not None
                and self._outbox is None
                and not self._term_sent
                and not self._kill_sent
                and self._channel_error is None
                and self._decoder.pending == 0
                and not self._stopped_from_outside()
            )
            exit_code = None
            if not keep:
                # A job that ended by itself (final frame) leaves an idle child: close
                # its jobs pipe and it exits 0, and its own children get the rest of the
                # grace to follow. Otherwise it is killed, with its group.
                exit_code = process.retire(
                    graceful=self._final is not None, children_deadline=self.children_deadline,
                    wake_fd=self.core.wake_fd, on_wake=self.on_wake,
                )
            outcome = self._build_outcome(exit_code)
        except BaseException as exc:  # a bug of ours: the process must not outlive it
            keep = False
            with contextlib.suppress(Exception):
                process.retire(graceful=False)
            detail = "internal error in workstream's runner: " + "".join(
                traceback.format_exception_only(type(exc), exc)
            ).strip()
            outcome = self._crashed(self._pid, detail)
        finally:
            self._data_r = self._pidfd = None  # the process's, not ours
            self._arrays = None
            self._proc = None
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

    def _read_available(self, fd: int) -> bool:
        """Read one chunk and process it; return False at end of file."""
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return True
        if not chunk:
            return False
        self._feed(chunk)
        return True

    def _drain(self, fd: int) -> None:
        """The child has exited: everything it wrote is in the pipe. Read it all."""
        os.set_blocking(fd, False)
        while True:
            try:
                chunk = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                return
            if not chunk:
                return
            self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        if self._channel_error is not None:
            return
        try:
            frames = self._decoder.feed(chunk)
        except _framing.FrameError as exc:
            frames = exc.frames  # the valid frames before the fault are still delivered
            self._channel_broken(str(exc))
        core = self.core
        batch: list[object] = []
        nbytes = 0
        for index, frame in enumerate(frames):
            kind = frame.kind
            if (kind is _framing.Kind.READY) == self._ready_seen:
                # READY comes first and once: anything else is not our child's protocol.
                what = "a second READY frame" if self._ready_seen else f"{kind.name} before READY"
                self._channel_broken(f"frame #{self._frame_number(frames, index)}: {what}")
                break
            if kind is _framing.Kind.ITEMS:
                if core.discarding() or self._delivery_error is not None:
                    core.count_discarded(frame.count)
                    if self._arrays is not None:
                        self._arrays.release_unread(frame.item_payloads())
                elif self._decode_items(frame, batch):
                    nbytes += len(frame.body)
            elif kind is _framing.Kind.READY:
                assert self._pid is not None
                self._ready_seen = True
                core.mark_running(self._pid)
            else:
                self._final = frame
                self._final_at = time.monotonic()
        if self._arrays is not None:  # shared-memory bytes count for backpressure too
            nbytes += self._arrays.take_new_bytes()
        if batch:  # one hand-over (one lock, one wake-up) per chunk read, not per frame
            core.deliver(batch, nbytes)
        if self._delivery_error is not None and core.cancel is None:
            self._request_internal_cancel(grace=self._options.grace)

    def _channel_broken(self, detail: str) -> None:
        """Record a malformed channel (once) and kill the child at once."""
        if self._channel_error is None:
            detail = f"malformed data channel: {detail}"
            self._channel_error = ChannelBroken(self._pid, None, detail)
            self._request_internal_cancel(grace=0.0)

    def _frame_number(self, frames: list[_framing.Frame], index: int) -> int:
        """The 1-based position in the whole stream of ``frames[index]``."""
        return self._decoder.frames_decoded - len(frames) + index + 1

    def _decode_items(self, frame: _framing.Frame, out: list[object]) -> bool:
        """Unpickle the frame's items onto ``out``; on failure record a DeliveryError.

        The fast path unpickles plain payloads in one C loop; a payload with buffers in
        shared memory (first byte 0x00, never a pickle's) makes it fail over to
        :meth:`ArrayChannel.loads` for that item and resume after it.
        """
        payloads = frame.item_payloads()
        # BaseException: a reconstructor may call sys.exit(); on the runner thread that
        # must end the job as an undeliverable item, not as an internal error.
        base = len(out)
        rest = iter(payloads)
        while True:
            try:
                out.extend(map(_loads, rest))  # appends item by item: survives a failure
                return True
            except BaseException as exc:
                index = len(out) - base  # the payload that failed
                error: BaseException = exc
            payload = payloads[index]
            if self._arrays is not None and _shm.is_out_of_band(payload):
                try:
                    out.append(self._arrays.loads(payload))
                    # Else the frame -> error -> traceback -> frame cycle would keep
                    # ``out`` (the batch) and its shared-memory arrays until a gc pass.
                    del error
                    continue
                except BaseException as exc:
                    error = exc
            break
        if self._arrays is not None:
            self._arrays.release_unread(payloads[index + 1 :])
        err = DeliveryError(
            f"item #{self.core.items_received + len(out) + 1} could not be unpickled in the "
            f"parent ({type(error).__name__}: {error}); the job was cancelled"
        )
        err.__cause__ = error
        self._delivery_error = err
        self.core.count_discarded(frame.count - index)
        return False

    def _request_internal_cancel(self, grace: float) -> None:
        # Not discard=True: the good items already queued stay deliverable; the runner
        # itself stops decoding anything that arrives after the error.
        self.core.request_cancel(grace, self._options.term_delay(grace), discard=False)

    # -- the ladder ---------------------------------------------------------------------

    def _escalate(self) -> int | None:
        """Send the signals that are due; return ms until the next rung (None = none).

        SIGTERM is repeated every ``_TERM_REPEAT`` seconds until SIGKILL: CPython runs a
        Python signal handler only between bytecodes, so a SIGTERM that lands just
        before the main thread enters a blocking call (``read()``, a lock) is noticed
        only when that call returns. The next SIGTERM interrupts the call. The child's
        handler raises ``Cancelled`` once; later SIGTERMs only set the flag.
        """
        req = self.core.cancel
        if req is None or self._exited:
            return None
        now = time.monotonic()
        if now < req.kill_at and now >= max(req.term_at, self._next_term):
            self._term_sent = True
            self._next_term = now + _TERM_REPEAT
            self._signal(signal.SIGTERM)
        if not self._kill_sent and now >= req.kill_at:
            self._kill_sent = True
            self._signal(signal.SIGKILL)
            if self._options.kill_group and self._pid is not None:
                with contextlib.suppress(OSError):
                    os.killpg(self._pid, signal.SIGKILL)
        if self._kill_sent:
            return None
        next_rung = req.kill_at
        if now < req.kill_at:
            next_rung = min(next_rung, max(req.term_at, self._next_term))
        return max(0, math.ceil((next_rung - now) * 1000))

    def _kill_after_final(self) -> int | None:
        """SIGKILL a child that is still alive ``grace`` s after its final frame arrived
        (stuck in a flush of a replaced ``sys.stdout``, say): it has nothing left to say,
        and the job must end. Return ms until that is due (None once done)."""
        if self._kill_sent or self._exited or self._final_at is None:
            return None
        now = time.monotonic()
        due = self._final_at + self._options.grace
        if now < due:
            return max(1, math.ceil((due - now) * 1000))
        self._kill_sent = True
        self._signal(signal.SIGKILL)
        if self._options.kill_group and self._pid is not None:
            with contextlib.suppress(OSError):
                os.killpg(self._pid, signal.SIGKILL)
        return None

    def _signal(self, sig: int) -> None:
        if self._pid is None:
            return
        with contextlib.suppress(ProcessLookupError, OSError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self._pid, sig)

    def _emergency_kill(self) -> None:
        """SIGKILL the child and its group and reap it (bounded): after a failure of ours."""
        if self._pid is not None and not self._exited:
            self._signal(signal.SIGKILL)
            if self._options.kill_group:
                with contextlib.suppress(OSError):
                    os.killpg(self._pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self._proc.join(5.0)

    # -- the end ------------------------------------------------------------------------

    def _reap(self) -> int | None:
        proc = self._proc
        # The child has exited (pidfd/sentinel): for fork/spawn waitpid returns at once;
        # under forkserver the server reports the status over its socket.
        proc.join(5.0 if self._options.resolved_start_method == "forkserver" else None)
        code: int | None = proc.exitcode
        return code

    def children_deadline(self) -> float:
        """When the child's own children must be gone after the child ended by itself:
        the cancel's SIGKILL deadline if a cancel was requested, else ``grace`` after the
        final frame (or after now, without one)."""
        req = self.core.cancel
        if req is not None:
            return req.kill_at
        start = self._final_at if self._final_at is not None else time.monotonic()
        return start + self._options.grace

    def _let_children_exit(self) -> None:
        """Give the group up to :meth:`children_deadline` to exit on its own.

        Only if the child exited by itself after its final frame and set HAS_CHILDREN (a
        one-byte read otherwise: no cost when there are no descendants); never after we
        SIGKILLed it (the ladder's end). A shorter cancel meanwhile shortens the wait.
        """
        control = self.core.control
        if (
            self._pid is None or not self._options.kill_group or self._kill_sent
            or self._final is None or control is None
        ):
            return
        try:
            has_children = control[_fds.HAS_CHILDREN]
        except ValueError:  # closed: the job is over already
            return
        if has_children:
            _group.wait_until_empty(
                self._pid, self.children_deadline, self.core.wake_fd, self.on_wake
            )

    def _kill_group(self) -> bool:
        """SIGKILL the child's process group; True if the group existed."""
        pid = self._pid
        if pid is None or not self._options.kill_group:
            return False
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            return False  # no such group: the child never made one, or nothing is left
        return True

    def _wait_group_gone(self, signalled: bool) -> None:
        """Wait (bounded) until the killed group has no live members, then unregister it.

        Zombies do not count: killed descendants are reaped by whoever adopted them
        (init, or a subreaper that may never do it), not by us.
        """
        pid = self._pid
        if pid is not None and signalled:
            deadline = time.monotonic() + _GROUP_EXIT_WAIT
            delay = 0.0005
            while time.monotonic() < deadline and _group.has_live_members(pid):
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
        if self._registered_group and pid is not None:
            _guard.unregister(pid)
            self._registered_group = False

    def release_unstarted(self) -> None:
        """Free everything when the runner thread could not even be started."""
        self._close_fds()
        self.core.release()

    def _close_fds(self) -> None:
        for name in ("_data_r", "_lifeline_w", "_pidfd", "_control_fd"):
            _fds.close_quietly(getattr(self, name))
            setattr(self, name, None)
        if self._arrays is not None:
            self._arrays.close()  # arrays the user still holds stay valid
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.close()

    def _stop_latency(self) -> float | None:
        req = self.core.cancel
        return None if req is None else time.monotonic() - req.requested_at

    def _crashed(
        self, exit_code: int | None, detail: str, summary: str | None = None,
        signal_name: str | None = None,
    ) -> Crashed:
        err = WorkerCrashed(self._pid, exit_code, detail, summary=summary)
        if signal_name is not None:
            err.signal_name = signal_name
        return Crashed(
            pid=self._pid, items_delivered=self.core.items_received, exit_code=exit_code,
            duration=time.monotonic() - self._started_at, error=err,
            signal_name=err.signal_name,
        )

    def _build_outcome(self, exit_code: int | None) -> Outcome:
        core = self.core
        common: dict[str, Any] = {
            "pid": self._pid,
            "items_delivered": core.items_received,
            "exit_code": exit_code,
            "duration": time.monotonic() - self._started_at,
        }
        torn = self._decoder.pending
        if self._channel_error is not None:
            err = ChannelBroken(self._pid, exit_code, self._channel_error.detail)
            return Crashed(**common, error=err, signal_name=err.signal_name)
        if self._delivery_error is not None:
            return Failed(**common, error=self._delivery_error)
        final = self._final
        if final is not None:
            return self._outcome_from_final(final, common)
        req = core.cancel
        if req is not None:
            rung: CancelRung | None = None
            if self._term_sent and exit_code == -signal.SIGTERM:
                rung = "sigterm"
            elif self._kill_sent:
                rung = "sigkill"
            if rung is not None:
                return CancelledOutcome(
                    **common, rung=rung, items_discarded=core.items_discarded,
                    stop_latency=self._stop_latency(),
                )
        if exit_code == UNGUARDED_MAIN_EXIT and not self._ready_seen and not torn:
            return self._crashed(exit_code, "", summary=_unguarded_main_summary(self._pid))
        detail = ""
        if torn:
            detail = f"it died in the middle of writing a frame ({torn} bytes dropped)"
        elif req is not None:
            detail = "it died on its own while being cancelled"
        return self._crashed(exit_code, detail)

    def _stopped_from_outside(self) -> bool:
        """True if the child reported a cancel that nobody in workstream requested: it
        raised ``Cancelled`` on a SIGTERM sent from outside (``kill PID``)."""
        final = self._final
        return (
            final is not None and final.kind is _framing.Kind.CANCELLED
            and self.core.cancel is None
        )

    def _outcome_from_final(self, final: _framing.Frame, common: dict[str, Any]) -> Outcome:
        core = self.core
        if final.kind is _framing.Kind.RESULT:
            try:
                value = _loads(final.body)
            except BaseException as exc:  # as in _decode_items
                err = DeliveryError(
                    f"the final value could not be unpickled in the parent "
                    f"({type(exc).__name__}: {exc})"
                )
                err.__cause__ = exc
                return Failed(**common, error=err)
            return Completed(**common, value=value)
        try:
            report = _read_report(final)
        except BaseException as exc:  # not what our child writes: the channel is corrupt
            broken = ChannelBroken(
                self._pid, common["exit_code"],
                f"malformed data channel: the {final.kind.name} frame's report cannot be "
                f"read ({type(exc).__name__}: {exc})",
            )
            return Crashed(**common, error=broken, signal_name=broken.signal_name)
        if self._stopped_from_outside():
            # Nobody here asked for a cancel: the SIGTERM came from outside workstream
            # (``kill PID``, a system shutdown). Not the user's Stop: a crash-like end.
            return self._crashed(
                common["exit_code"], "",
                summary=(
                    f"worker process {self._pid} was stopped by SIGTERM (-15) sent from "
                    "outside workstream (nobody called job.cancel()); its fn unwound "
                    "from Cancelled"
                ),
                signal_name="SIGTERM",
            )
        if final.kind is _framing.Kind.CANCELLED:
            value = None
            if report.get("value") is not None:
                with contextlib.suppress(Exception):
                    value = _loads(report["value"])
            rung: CancelRung = "sigterm" if report["by"] == "sigterm" else "cooperative"
            return CancelledOutcome(
                **common, rung=rung, value=value, items_discarded=core.items_discarded,
                stop_latency=self._stop_latency(), remote_traceback=report["traceback"],
            )
        error: WorkstreamError = WorkerError(report["type"], report["message"], report["traceback"])
        if report.get("exc") is not None:
            with contextlib.suppress(Exception):
                error.__cause__ = _loads(report["exc"])
        return Failed(**common, error=error)


def _unguarded_main_summary(pid: int | None) -> str:
    main = getattr(sys.modules.get("__main__"), "__file__", None) or "the main module"
    return (
        f"worker process {pid} stopped while importing {main}: that script starts "
        "a job at import time. forkserver and spawn import the main module in every "
        "worker, so put the code that starts jobs under "
        "'if __name__ == \"__main__\":' (or in a function it calls)"
    )


_REPORT_KEYS = {
    _framing.Kind.ERROR: {"type": str, "message": str, "traceback": str},
    _framing.Kind.CANCELLED: {"by": str, "traceback": str},
}


def _read_report(final: _framing.Frame) -> dict[str, Any]:
    """Unpickle the report of an ERROR / CANCELLED frame; ValueError unless it has the
    fields our child writes, with the right types."""
    report = _loads(final.body)
    if not isinstance(report, dict):
        raise ValueError(f"a {type(report).__name__}, not a dict")
    for key, kind in _REPORT_KEYS[final.kind].items():
        if not isinstance(report.get(key), kind):
            raise ValueError(f"field {key!r} missing or not a {kind.__name__}")
    for key in ("exc", "value"):
        if report.get(key) is not None and not isinstance(report[key], bytes):
            raise ValueError(f"field {key!r} is not bytes")
    return report


_preload_done = False


def _add_forkserver_preload() -> None:
    """Have the fork server import our child runtime once, so each child need not.

    Keeps whatever preload list the application set; has no effect once the server runs.
    """
    global _preload_done
    if _preload_done:
        return
    _preload_done = True
    try:
        from multiprocessing import forkserver

        server = forkserver._forkserver  # type: ignore[attr-defined]
        if getattr(server, "_forkserver_pid", None) is not None:
            return
        current = list(getattr(server, "_preload_modules", ["__main__"]))
        if "workstream._child._runtime" not in current:
            server.set_forkserver_preload([*current, "workstream._child._runtime"])
    except Exception:  # a private detail changed: preloading is only an optimisation
        return
