"""The worker's context, and the calls user code makes in a worker.

Runs only in the child. :data:`_current` is the process's :class:`_Context` (None outside a
worker, and until the start-up installs it); :func:`emit`, :func:`cancelled`,
:func:`check_cancelled`, :func:`in_worker` and :func:`worker_state` read it. Cancellation
is byte 0 of the control block, set by the parent (or by the SIGTERM handler): each call
here reads it with one mmap index (~30 ns).
"""

from __future__ import annotations

import math
import time
from typing import Any

from .._errors import Cancelled, NotInWorkerError
from .._transport import _fds
from ._progress import ProgressSlot, check_fields, check_number
from ._sender import Sender

_monotonic = time.monotonic
_NUMBERS = (int, float)
_INF = math.inf

_current: _Context | None = None


class _Context:
    """Per-process state of a worker (and the per-job fields, reset by ``begin_job``)."""

    def __init__(self, ctl: Any, sender: Sender) -> None:
        self.ctl = ctl  # mmap: byte 0 is the cancel flag
        self.sender = sender
        self.cancel_raised = False  # True once Cancelled was raised into user code
        self.cancel_source: str | None = None  # how the first Cancelled was raised
        self.sigterm_received = False
        self.job_active = True  # False only while a warm worker waits for its next job
        self.state: Any = None  # what a warm worker's initializer returned
        self.progress = ProgressSlot(ctl)  # workstream.progress()'s publisher

    def begin_job(self) -> None:
        """Forget the previous job's cancel (the parent cleared the flag before sending)."""
        self.cancel_raised = False
        self.cancel_source = None
        self.sigterm_received = False
        self.job_active = True
        self.progress.begin_job()

    def make_cancelled(self, source: str) -> Cancelled:
        self.cancel_raised = True
        if self.cancel_source is None:
            self.cancel_source = source
        return Cancelled(f"the job was cancelled ({source})")


def _context_or_raise(what: str) -> _Context:
    ctx = _current
    if ctx is None:
        raise NotInWorkerError(
            f"workstream.{what}() must be called inside a function run by workstream.start(); "
            "to test fn without a worker, call it directly and drop the emit() calls"
        )
    return ctx


def emit(item: object) -> None:
    """Send ``item`` to the parent; a cancellation point.

    Raises the pickling error if ``item`` cannot be pickled (nothing is sent), and
    :class:`Cancelled` after sending if the job was cancelled.
    """
    ctx = _context_or_raise("emit")
    ctx.sender.send_item(item)
    if ctx.ctl[0]:
        raise ctx.make_cancelled("cooperative")


def cancelled() -> bool:
    """Return True once the job was asked to stop. Cheap (~30 ns); False outside a worker."""
    ctx = _current
    return ctx is not None and ctx.ctl[0] != 0


def check_cancelled() -> None:
    """Raise :class:`Cancelled` if the job was asked to stop (so ``finally`` blocks run).

    Does nothing outside a worker.
    """
    ctx = _current
    if ctx is not None and ctx.ctl[0]:
        raise ctx.make_cancelled("cooperative")


def in_worker() -> bool:
    """True inside a process started by workstream."""
    return _current is not None


def worker_state() -> Any:
    """Return what the ``initializer`` of this ``workstream.Worker`` returned.

    The value lives in the worker process for its whole life (a loaded model, an open
    file), so every job run on the worker sees the same object; it is never pickled.
    None in a worker without an initializer and in a job of ``workstream.start()``.
    Raises :class:`NotInWorkerError` outside a workstream worker.
    """
    return _context_or_raise("worker_state").state


def progress(done: float, total: float | None = None, **fields: Any) -> None:
    """Report how far the job is: ``done`` units of ``total`` (None: unknown), with
    optional ``fields`` (str, int, float, bool or None values: ``loss=0.3``; numpy
    scalars are converted).

    Cheap (well under a microsecond in a flood of calls without fields) and never blocks:
    the parent sees the newest call within ``PUBLISH_INTERVAL`` (20 ms) as
    ``job.progress``, with rate and ETA; earlier calls in between are simply replaced.
    Not a cancellation point, and not an item (it does not enter the stream).
    Raises :class:`NotInWorkerError` outside a worker, ``TypeError`` for a ``done`` /
    ``total`` that is not a number or a field value of another type, ``ValueError`` for
    a negative or non-finite number or fields too long for the slot (about 1 KB).
    """
    ctx = _current
    if ctx is None:
        _context_or_raise("progress")
    assert ctx is not None
    if type(done) not in _NUMBERS or not 0 <= done < _INF:
        done = check_number("done", done)  # raises, or converts (numpy scalars)
    if total is not None and (type(total) not in _NUMBERS or not 0 <= total < _INF):
        total = check_number("total", total)
    if fields:
        check_fields(fields)
    slot = ctx.progress
    slot.values = (done, total, fields)
    if not slot.scheduled:
        slot.schedule()


def stop_requested() -> float | None:
    """The deadline of the current cancel, or None if no stop was requested.

    The deadline is when SIGKILL ends the worker, in ``time.monotonic()`` seconds
    (the same clock in every process of the machine): ``stop_requested() -
    time.monotonic()`` is the time left. It includes the extra grace granted by
    :func:`request_grace`. A stop nobody in workstream asked for (a SIGTERM sent from
    outside) has no known deadline: the time it was noticed is returned (no time to count
    on). Cheap (a few mmap reads). Raises :class:`NotInWorkerError` outside a worker.
    """
    ctx = _context_or_raise("stop_requested")
    ctl = ctx.ctl
    if not ctl[0]:
        return None
    stop_at = _fds.read_f64(ctl, _fds.STOP_AT)
    if stop_at <= 0:
        return _monotonic()
    return stop_at + _fds.read_f64(ctl, _fds.GRACE_GRANTED)


def request_grace(seconds: float) -> float:
    """Ask for ``seconds`` more before SIGTERM and SIGKILL (to save a checkpoint); return
    the seconds granted now (0.0 if none).

    The caller of ``start()`` / ``Worker.start()`` allows at most ``max_grace`` seconds
    in all for the job (default 0: nothing extra); each call is granted what is left of
    it, up to ``seconds``. The deadlines of a cancel move later by what was granted
    (:func:`stop_requested` then returns the new one), also for a cancel that comes
    later. Ask before the deadline: the parent takes the grant into account the next
    time it looks at the ladder (at the latest at the next rung), so a request in the
    last moment may be too late. The job's outcome records ``grace_asked`` and
    ``grace_granted``.
    Raises :class:`NotInWorkerError` outside a worker, ``TypeError`` / ``ValueError``
    for a ``seconds`` that is not a finite number >= 0.
    """
    ctx = _context_or_raise("request_grace")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(
            f"workstream.request_grace(): seconds must be a number, not {type(seconds).__name__}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"workstream.request_grace(): seconds must be a finite number >= 0, not {seconds!r}"
        )
    ctl = ctx.ctl
    cap = max(0.0, _fds.read_f64(ctl, _fds.MAX_GRACE))
    granted = _fds.read_f64(ctl, _fds.GRACE_GRANTED)
    more = max(0.0, min(float(seconds), cap - granted))
    _fds.write_f64(ctl, _fds.GRACE_ASKED, _fds.read_f64(ctl, _fds.GRACE_ASKED) + seconds)
    if more > 0:
        _fds.write_f64(ctl, _fds.GRACE_GRANTED, granted + more)
    return more
