"""Leaving the worker process: after its last final frame, or at once if the parent is gone.

Runs only in the child. The worker ends with ``os._exit`` (no interpreter shutdown, which
could run user code or block). After its last job (exit status 0): first
multiprocessing's exit finalizers (named semaphores), then the HAS_CHILDREN note in the
control block, then a flush of stdout and stderr that nothing may turn into another
ending. With the parent gone (exit status 70) only the flush.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn

from .._transport import _fds
from ._context import _Context


def _run_multiprocessing_finalizers() -> None:
    """Run multiprocessing's exit finalizers of priority >= 0 before ``os._exit``.

    A multiprocessing child runs them when its target returns; our workers end with
    ``os._exit`` inside the target, which skipped them. Among them: unlinking the named
    semaphores (``/dev/shm/sem.mp-*``) of every lock and queue created in this process
    whose object is still alive — a queue's feeder thread, closed but not yet finished,
    still holds two (a DataLoader has one queue per worker). Not the rest of
    multiprocessing's exit sequence, which joins child processes without a bound.
    """
    util = sys.modules.get("multiprocessing.util")
    run = getattr(util, "_run_finalizers", None)  # private, stable since Python 2.6
    if run is None:
        return
    with contextlib.suppress(BaseException):  # nothing may change how the worker ends
        run(0)


def _note_children(ctx: _Context) -> None:
    """Set the control block's HAS_CHILDREN byte if this process has child processes.

    Called as a worker exits after its last job: the parent then gives the process group
    the rest of the grace to exit on its own (a DataLoader's workers, a fork server or
    resource tracker started in the worker all notice our exit) before it kills the
    group. Without the byte it kills the group at once, as nothing is left to wait for.
    One ``waitid`` that reaps nothing (``WNOWAIT``); a grandchild whose parent already
    exited is not seen (it is killed with the group).
    """
    waitid = getattr(os, "waitid", None)
    if waitid is None:  # not on this platform: the group is killed at once
        return
    try:
        waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return  # no children at all: the common case
    except OSError:
        pass
    with contextlib.suppress(Exception):
        ctx.ctl[_fds.HAS_CHILDREN] = 1


def _exit_now(code: int) -> NoReturn:
    """Flush stdout and stderr, then ``os._exit(code)``; never returns, never raises."""
    # BaseException: a replaced sys.stdout whose flush() calls sys.exit() must not change
    # how the worker ends once its final frame is sent.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    os._exit(code)


def _exit_after_last_job(ctx: _Context) -> NoReturn:
    """Exit 0 once the last job is reported: finalizers, the HAS_CHILDREN note, flush."""
    _run_multiprocessing_finalizers()
    _note_children(ctx)
    _exit_now(0)
