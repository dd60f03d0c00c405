"""The state one job shares between the user's threads and the job's runner thread.

Everything here is guarded by ``JobCore.lock``; ``cond`` (on the same lock) wakes
consumers and waiters. The runner is the only writer of the process-facing facts (pid,
outcome); user threads only *request* things (a cancel, taking a batch), and wake the
runner through its wake pipe. Nothing in here blocks without a way to be woken: the
runner always ends the stream, which wakes every consumer.

The stream itself (the bounded buffer and its backpressure accounting) is pure code in
``_core._stream``; this module holds the lock around it and does the waking.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time
from collections.abc import Callable

from .._core._progress import Progress, RateEstimator, decode_report, snapshot
from .._core._states import CancelRequest, JobMachine
from .._core._stream import StreamBuffer
from .._outcomes import JobState, Outcome
from .._transport import _fds
from .._transport._fds import CANCEL_FLAG, close_quietly
from ._output import OutputSink

_REENTRY_WAIT = 0.05  # s; see JobCore.request_cancel


class JobCore:
    def __init__(
        self,
        control: mmap.mmap | None,
        max_items: int | None,
        max_bytes: int | None,
        wake: tuple[int, int] | None = None,
        *,
        max_grace: float = 0.0,
        queued: bool = False,
        timeout: float | None = None,
    ) -> None:
        """``control`` may come later (:meth:`attach_control`, a Worker's job). ``wake``:
        a ``(read, write)`` pipe owned by someone else (a Worker's, shared by its jobs);
        by default the core makes and closes its own. ``queued``: a Pool's job, which
        starts QUEUED with no wake pipe (``(-1, -1)``) until :meth:`dequeue` gives it the
        one of the process that takes it. ``timeout``: the job's ``timeout=`` option.
        ``max_grace``: the most extra grace the worker may obtain (written into the
        control block for it)."""
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self._life = JobMachine(queued)  # observed state and requested cancel (see state, cancel)
        # -- POOL: the time limit, and the hook that ends a queued job at its cancel.
        self.timeout = timeout
        self.running_at: float | None = None  # when it started running (the limit's origin)
        self.timed_out = False  # the limit ran out and the runner cancelled the job
        self.on_queued_cancel: Callable[[], None] | None = None
        self.pid: int | None = None
        self.outcome: Outcome | None = None
        self.terminal = threading.Event()  # set with the outcome
        self.finished = threading.Event()  # set after on_done ran (or at once without it)
        self.callback_error: BaseException | None = None
        self._control: mmap.mmap | None = control
        self._owns_wake = wake is None
        if wake is None:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_w, False)
            os.set_blocking(self._wake_r, False)
        else:
            self._wake_r, self._wake_w = wake
        # The stream: batches of decoded items waiting for the consumer.
        self.stream = StreamBuffer(max_items, max_bytes)
        # Called (no arguments, from the runner or callback thread) whenever items were
        # queued and once the job is finished; see Job.add_listener.
        self.listeners: list[Callable[[], object]] = []
        self.listener_error: BaseException | None = None
        # -- PROGRESS: the newest progress report and the extra grace (control block).
        self.max_grace = max_grace
        self.grace_asked = 0.0
        self._progress_seq = 0  # the slot's sequence number last read (0: nothing yet)
        self._progress: Progress | None = None
        self._rate = RateEstimator()
        self.progress_event = threading.Event()  # set on a new report, and at the end
        if control is not None:
            _fds.write_f64(control, _fds.MAX_GRACE, max_grace)
        self.output: OutputSink | None = None
        """``output=`` capture / logging: the job's output (set before the runner starts)."""

    # -- facts of the stream (read under the lock, or as a hint) --------------------------

    @property
    def buffered_items(self) -> int:
        return self.stream.buffered_items

    @property
    def buffered_bytes(self) -> int:
        return self.stream.buffered_bytes

    @property
    def reader_paused(self) -> bool:
        """True iff the runner stopped reading for backpressure."""
        return self.stream.reader_paused

    @property
    def items_received(self) -> int:
        """Items queued for the consumer and not discarded since (never decreases
        unless a discard drops them)."""
        return self.stream.items_received

    @property
    def items_discarded(self) -> int:
        return self.stream.items_discarded

    @property
    def state(self) -> JobState:
        """Observed: where the job is (moved only by ``_core._states.JobMachine``)."""
        return self._life.state

    @property
    def cancel(self) -> CancelRequest | None:
        """Requested: the cancel so far (None: none); only :meth:`request_cancel` sets it."""
        return self._life.cancel

    @property
    def control(self) -> mmap.mmap | None:
        """The control block; only the runner may use it without the lock (it alone
        closes it, in :meth:`finish`)."""
        return self._control

    def attach_control(self, control: mmap.mmap) -> bool:
        """Give a Worker's job its mapping of the process's control block, which the core
        then owns (closed at :meth:`finish`). False (nothing attached) if a cancel came
        first: the job must then end before it starts."""
        with self.lock:
            if self.cancel is not None or self.state.is_terminal:
                return False
            self._control = control
            _fds.write_f64(control, _fds.MAX_GRACE, self.max_grace)
            return True

    # -- PROGRESS: progress reports and extra grace -------------------------------------

    @property
    def grace_granted(self) -> float:
        """Extra grace granted to the worker, as this side has taken it into account."""
        return self._life.grace_granted

    def read_progress(self) -> Progress | None:
        """The newest progress report (reading the slot if the job still runs); None
        before the first. Never blocks beyond the lock."""
        with self.lock:
            self._poll_progress_locked()
            return self._progress

    def poll_progress(self) -> bool:
        """Read the slot; True (and ``progress_event`` set) if a new report came."""
        with self.lock:
            new = self._poll_progress_locked()
        if new:
            self.progress_event.set()
        return new

    def _poll_progress_locked(self) -> bool:
        control = self._control
        if control is None:
            return False
        seq, data = _fds.read_progress(control, self._progress_seq)
        if data is None:
            return False
        self._progress_seq = seq
        report = decode_report(data)
        if report is None:
            return False
        self._rate.observe(report.at, report.done)
        self._progress = snapshot(report, self._rate)
        return True

    def poll_grace(self) -> None:
        """Take the worker's grace requests into account: move the cancel's deadlines
        later by what it was granted since (capped at ``max_grace``; see
        ``_core._states.JobMachine.grant_grace``)."""
        with self.lock:
            control = self._control
            if control is None:
                return
            asked = _fds.read_f64(control, _fds.GRACE_ASKED)
            granted = _fds.read_f64(control, _fds.GRACE_GRANTED)
            if asked == asked and asked > self.grace_asked:  # (NaN: a bad write; ignore)
                self.grace_asked = asked
            if granted == granted:
                self._life.grant_grace(granted, self.max_grace)

    # -- requests from any thread -------------------------------------------------------

    @property
    def wake_fds(self) -> tuple[int, int]:
        """Both ends of the wake pipe (a forked child closes them)."""
        return self._wake_r, self._wake_w

    @property
    def wake_fd(self) -> int:
        """Read end of the runner's wake pipe (the runner polls it)."""
        return self._wake_r

    def _wake_locked(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"!")

    def request_cancel(
        self, grace: float, term_delay: float, discard: bool, now: float | None = None
    ) -> bool:
        """Record a cancel (or tighten an earlier one); return False if already terminal.

        Never blocks for long, and is safe from a signal handler: a handler runs on the
        main thread between two bytecodes, possibly while that same thread holds
        ``lock`` (inside ``take_batch``, say). If the lock cannot be had within
        ``_REENTRY_WAIT`` on the main thread, the request is handed to a short-lived
        thread that records it once the interrupted critical section is done.
        """
        now = time.monotonic() if now is None else now
        on_main = threading.current_thread() is threading.main_thread()
        if not self.lock.acquire(timeout=_REENTRY_WAIT if on_main else -1):
            if self.state.is_terminal:
                return False
            control = self._control  # alive: its closer needs the lock we are inside
            if control is not None:
                with contextlib.suppress(ValueError):  # closed after all: job is over
                    control[CANCEL_FLAG] = 1
            threading.Thread(
                target=self.request_cancel, args=(grace, term_delay, discard, now),
                name="workstream-deferred-cancel", daemon=True,
            ).start()
            return True
        try:
            if self.state.is_terminal:
                return False
            control = self._control
            if control is not None:
                granted = _fds.read_f64(control, _fds.GRACE_GRANTED)
                if granted == granted:
                    self._life.grant_grace(granted, self.max_grace)
            was_queued = self.state is JobState.QUEUED
            self._life.request_cancel(now, grace, term_delay, discard)
            req = self._life.cancel
            if control is not None and req is not None:
                # For stop_requested(): the deadline before any extra grace (the worker
                # adds what it was granted); then the flag, which the child sees at once.
                _fds.write_f64(control, _fds.STOP_AT, req.kill_at - self._life.grace_granted)
                control[CANCEL_FLAG] = 1
            if discard:
                self.stream.discard()
            self._wake_locked()
        finally:
            self.lock.release()
        hook = self.on_queued_cancel
        if was_queued and hook is not None:
            hook()  # its Pool ends it now (before-start), outside the job's lock
        return True

    def take_batch(self, block: bool = True) -> list[object] | None:
        """Return the next batch of items; None once the stream ended and is empty.

        With ``block=False`` returns ``[]`` when nothing is buffered yet.
        """
        stream = self.stream
        with self.lock:
            while True:
                items = stream.pop()
                if items is not None:
                    break
                if stream.ended:
                    return None
                if not block:
                    return []
                self.cond.wait()
            if stream.may_resume():
                self._wake_locked()
            return items

    # -- the runner's side --------------------------------------------------------------

    def mark_running(self, pid: int) -> None:
        with self.lock:
            self.pid = pid
            if self.running_at is None:
                self.running_at = time.monotonic()
            self._life.started()

    def dequeue(self, wake: tuple[int, int]) -> bool:
        """A Pool's queued job is taken by a warm process whose wake pipe is ``wake``:
        STARTING, and later requests wake that process's thread. False (nothing changed)
        if it is no longer queued (cancelled first: it ends before-start)."""
        with self.lock:
            if not self._life.dequeued():
                return False
            self._wake_r, self._wake_w = wake
            return True

    def timeout_left(self, now: float) -> float | None:
        """Seconds until the ``timeout=`` runs out (<= 0: it has); None: no limit applies
        (none set, not running yet, or already cancelled)."""
        if self.timeout is None or self.running_at is None or self.cancel is not None:
            return None
        return self.running_at + self.timeout - now

    def time_out(self, grace: float, term_delay: float) -> None:
        """The ``timeout=`` ran out: cancel the job with ``grace`` (the runner's call),
        recorded as ``timed_out``, unless it ended or was cancelled meanwhile."""
        with self.lock:
            if self.state.is_terminal or self.cancel is not None:
                return
            self.timed_out = True
            if self._control is not None:
                self._control[CANCEL_FLAG] = 1
            self._life.request_cancel(time.monotonic(), grace, term_delay, False)
            self._wake_locked()

    def discarding(self) -> bool:
        """True once a ``cancel(discard=True)`` came (a hint: read without the lock)."""
        return self.stream.discarding

    def deliver(self, items: list[object], nbytes: int) -> None:
        """Queue a decoded batch for the consumer (or count it discarded)."""
        with self.lock:
            if not self.stream.push(items, nbytes):
                return
            self.cond.notify_all()
        self.notify_listeners()

    def notify_listeners(self) -> None:
        """Call every listener; must not be called with ``lock`` held.

        A listener that raises is removed and its error kept in ``listener_error`` (the
        first one): a broken integration must not kill the runner or print from it.
        """
        for fn in tuple(self.listeners):
            try:
                fn()
            except BaseException as exc:
                with self.lock:
                    if fn in self.listeners:
                        self.listeners.remove(fn)
                    if self.listener_error is None:
                        self.listener_error = exc

    def set_finished(self) -> None:
        """Mark the job finished (after on_done ran) and tell the listeners."""
        if self.output is not None:
            self.output.close()
            # Every on_output call returns before "finished": if some are still due, the
            # output thread publishes it after the last one (this thread never waits).
            if self.output.then(self._set_finished_now):
                return
        self._set_finished_now()

    def _set_finished_now(self) -> None:
        self.finished.set()
        self.notify_listeners()

    def count_taken_but_discarded(self, n: int) -> None:
        """Items the consumer had taken but not yet seen were dropped by a discard."""
        if n > 0:
            with self.lock:
                self.stream.count_taken_but_discarded(n)

    def count_discarded(self, n: int) -> None:
        with self.lock:
            self.stream.count_discarded(n)

    def should_pause_reading(self) -> bool:
        """True when the consumer is behind and no cancel is draining the channel."""
        with self.lock:
            return self.stream.update_paused(cancelling=self.cancel is not None)

    def finish(self, outcome: Outcome) -> None:
        """Publish the outcome: terminal state, end of stream, control block released."""
        with self.lock:
            self._life.end(JobState(outcome.kind))
            if self.output is not None:
                self.output.close()
            self.outcome = outcome
            self.stream.end()
            self._release_locked()
            self.terminal.set()
            self.cond.notify_all()
        self.progress_event.set()

    def release(self) -> None:
        """Close the control block and the wake pipe (idempotent)."""
        with self.lock:
            self._release_locked()

    def _release_locked(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._owns_wake:
            close_quietly(self._wake_w)
            close_quietly(self._wake_r)
        self._wake_w = self._wake_r = -1
