"""The worker's SIGTERM handler: the cancel ladder's second rung, as the child sees it.

Runs only in the child. SIGTERM sets the cancel flag and, while user code runs, raises
:class:`Cancelled` at the next bytecode; while our own code runs (pickling, writing a
frame) it only sets the flag, so a frame is never torn and a yielded item is never
half-sent. Between a warm worker's jobs it means "exit", as for any process.

A process the job forks (a ``multiprocessing.Pool`` or DataLoader worker under fork) is
not the worker: it leaves the worker's context and gets SIGTERM's default action back
(:func:`_leave_worker_in_fork`), so terminating it does not raise our ``Cancelled`` in
it, nor set the job's cancel flag in the control block it shares with the worker.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

from .._errors import Cancelled
from . import _context
from ._job import _USER_CODE_CALLERS


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Handle SIGTERM as the module docstring says (installed by the start-up, and again
    before each job of a warm worker)."""
    ctx = _context._current
    if ctx is None:
        raise Cancelled("SIGTERM before the worker was set up")
    if not ctx.job_active:
        # A warm worker between jobs: nothing to cancel, so SIGTERM means "exit", as for
        # any process. The parent replaces a worker that died while idle.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    ctx.ctl[0] = 1
    ctx.sigterm_received = True
    # Raise only into user code that has not seen the cancel yet: a fn already unwinding
    # from a cooperative Cancelled keeps the rest of the grace for its finally blocks
    # (SIGKILL at the end of the grace stays the backstop). Inside our own code (pickling,
    # writing a frame) only the flag is set; the next cancellation point raises.
    if ctx.cancel_source is None and _interrupted_user_code(frame):
        raise ctx.make_cancelled("sigterm")


def _interrupted_user_code(frame: FrameType | None) -> bool:
    """True if the main thread was interrupted in user code called by ``_drive``/``_run``.

    Walks out from the interrupted frame: reaching one of our two call sites of user code
    from a user frame means user code; meeting any other workstream frame first (emit,
    the sender, our own loop between statements) means our code, which must not be torn.
    Costs nothing per item: it runs only when SIGTERM arrives.
    """
    f = frame
    while f is not None:
        code = f.f_code
        if code in _USER_CODE_CALLERS:
            return f is not frame
        if f.f_globals.get("__name__", "").startswith("workstream."):
            return False
        f = f.f_back
    return False


def _leave_worker_in_fork() -> None:
    """In a child forked by a worker: forget the worker's context and restore SIGTERM's
    default action. A no-op in any other process (the application, the fork server)."""
    if _context._current is None:
        return
    _context._current = None
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_leave_worker_in_fork)
