"""The worker's context, and the calls user code makes in a worker.

Runs only in the child. :data:`_current` is the process's :class:`_Context` (None outside a
worker, and until the start-up installs it); :func:`emit`, :func:`cancelled`,
:func:`check_cancelled`, :func:`in_worker` and :func:`worker_state` read it. Cancellation
is byte 0 of the control block, set by the parent (or by the SIGTERM handler): each call
here reads it with one mmap index (~30 ns).
"""

from __future__ import annotations

from typing import Any

from .._errors import Cancelled, NotInWorkerError
from ._sender import Sender

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

    def begin_job(self) -> None:
        """Forget the previous job's cancel (the parent cleared the flag before sending)."""
        self.cancel_raised = False
        self.cancel_source = None
        self.sigterm_received = False
        self.job_active = True

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
