"""One warm worker process of a ``workstream.Worker``: a ``ChildProcess`` kept across jobs.

A :class:`WorkerProcess` lives across the jobs of a ``workstream.Worker``; the jobs
themselves (their stream, cancel flag and outcome) are ``JobRunner``/``JobCore``
business. It is created, used and retired only by the Worker's supervisor thread, which
is also the thread that forks it (PR_SET_PDEATHSIG follows the forking thread).

Launching, signalling, reaping and the descriptors are the :class:`ChildProcess`'s
(``child``), as for a one-job start; this class adds what outlives a job: the control
block (its memfd and the process's own mapping of it; each job maps it again for
itself), whether the child said READY, and :meth:`WorkerProcess.retire`, which stops the
child (closing the jobs pipe lets an idle one exit 0; otherwise SIGKILL), gives its own
children (if it said it had some) until a deadline to exit on their own, kills its
process group, reaps it and closes every descriptor.
"""

from __future__ import annotations

import mmap
import os
import signal
from collections.abc import Callable

from .._options import Options
from .._transport import _fds
from ._child_process import ChildProcess

RETIRE_WAIT = 1.0
"""Seconds an idle child gets to exit after its jobs pipe was closed, before SIGKILL."""


class WorkerProcess:
    """A started (or starting) warm worker process; see the module docstring."""

    def __init__(self, options: Options, name: str) -> None:
        self.child = ChildProcess(options, f"workstream-worker:{name}")
        self._control_fd: int | None = None
        self._control: mmap.mmap | None = None
        self._retired = False
        self.said_ready = False  # its READY frame was decoded (by its first job's runner)

    def launch(self, parent_only_fds: tuple[int, ...]) -> None:
        """Start the child and let it run (its group is registered with the guard first).

        ``parent_only_fds``: descriptors a forked child must close (the Worker's wake
        pipe). Raises what ``ChildProcess.launch`` raises; call :meth:`retire` then.
        """
        self._control_fd, self._control = _fds.make_control_block()
        control = _fds.PassedFd(os.dup(self._control_fd))
        self.child.launch(
            control, payload=None, close_in_child=(self._control_fd, *parent_only_fds)
        )

    def map_control(self) -> mmap.mmap:
        """A new mapping of the control block, for one job (its JobCore closes it)."""
        assert self._control_fd is not None
        return mmap.mmap(self._control_fd, _fds.CONTROL_BLOCK_SIZE)

    def reset_control(self) -> None:
        """Clear the cancel and reader-idle bytes between two jobs.

        Only after the previous job's final frame was seen and its JobCore finished
        (closing its mapping, so a late ``cancel()`` of it cannot set the flag again).
        """
        control = self._control
        if control is not None:
            control[_fds.CANCEL_FLAG] = 0
            control[_fds.READER_IDLE] = 0
            _fds.clear_progress_block(control)

    def retire(
        self,
        *,
        graceful: bool,
        children_deadline: Callable[[], float] | None = None,
        wake_fd: int | None = None,
        on_wake: Callable[[], None] | None = None,
    ) -> int | None:
        """Stop the child, kill its group, reap it, close every descriptor (idempotent).

        ``graceful``: the child is idle between jobs; closing its jobs pipe makes it exit
        0 (SIGKILL after :data:`RETIRE_WAIT` if it does not). If it exited so and said it
        had children of its own, the group may exit on its own until
        ``children_deadline()`` (asked again whenever ``wake_fd`` wakes us, after
        ``on_wake()``); None: the group is killed at once. Returns the exit status.
        Bounded: at most ``RETIRE_WAIT`` + the children's deadline + 5 s (forkserver's
        status report) + 0.5 s.
        """
        child = self.child
        if self._retired:
            return child.exit_code
        self._retired = True
        try:
            if child.proc is not None:
                exited_by_itself = False
                if graceful and not child.has_exited():
                    child.close_jobs()
                    exited_by_itself = child.wait_exited(RETIRE_WAIT)
                if not child.has_exited():
                    child.signal(signal.SIGKILL)
                if exited_by_itself and children_deadline is not None:
                    child.let_children_exit(self._control, children_deadline, wake_fd, on_wake)
                child.reap_with_group()
        finally:
            child.close()
            _fds.close_quietly(self._control_fd)
            self._control_fd = None
            if self._control is not None:
                self._control.close()
                self._control = None
        return child.exit_code
