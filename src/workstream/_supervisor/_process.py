"""One warm worker process and every parent-side descriptor of it (process level).

A :class:`WorkerProcess` lives across the jobs of a ``workstream.Worker``; the jobs
themselves (their stream, cancel flag and outcome) are ``JobRunner``/``JobCore``
business. It is created, used and retired only by the Worker's supervisor thread, which
is also the thread that forks it (PR_SET_PDEATHSIG follows the forking thread).

Per process the parent holds: ``data_r`` (frames from the child), ``lifeline_w`` (EOF
tells the child the application died), ``jobs_w`` (non-blocking; each job is a u64
length and a pickle), the control block's memfd and the process's own mapping of it (a
job maps it again for itself), and a pidfd or multiprocessing's sentinel. The child's
ends travel as in a one-job start and are closed here right after ``Process.start()``.
:meth:`WorkerProcess.retire` stops the child (closing ``jobs_w`` lets an idle one exit
0; otherwise SIGKILL), gives its own children (if it said it had some) until a deadline
to exit on their own, kills its process group, reaps it and closes every descriptor.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

from .._child._runtime import worker_main
from .._linux import open_pidfd
from .._options import Options
from .._transport import _fds
from . import _group, _guard
from ._arrays import ArrayChannel
from ._runner import _add_forkserver_preload

RETIRE_WAIT = 1.0
"""Seconds an idle child gets to exit after its jobs pipe was closed, before SIGKILL."""
_GROUP_EXIT_WAIT = 0.5


class WorkerProcess:
    """A started (or starting) warm worker process; see the module docstring."""

    def __init__(self, options: Options, name: str) -> None:
        self._options = options
        self._name = name
        self.proc: Any = None
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.exit_fd: int | None = None
        self.data_r: int | None = None
        self.lifeline_w: int | None = None
        self.jobs_w: int | None = None
        self._control_fd: int | None = None
        self._control: mmap.mmap | None = None
        # Large buffers in shared memory: one arena per process, used by its jobs in turn
        # (a block a user still holds from an earlier job stays taken until dropped).
        self.arrays: ArrayChannel | None = None
        self._registered_group = False
        self._retired = False
        self.said_ready = False  # its READY frame was decoded (by its first job's runner)
        self.exit_code: int | None = None

    def launch(self, parent_only_fds: tuple[int, ...]) -> None:
        """Start the child and let it run (its group is registered with the guard first).

        ``parent_only_fds``: descriptors a forked child must close (the Worker's wake
        pipe). Raises what ``Process.start()`` raises; call :meth:`retire` then.
        """
        opts = self._options
        method = opts.resolved_start_method
        ctx: Any = multiprocessing.get_context(method)
        if method == "forkserver":
            _add_forkserver_preload()
        self.data_r, data_w = _fds.make_pipe(opts.pipe_bytes)
        life_r, self.lifeline_w = os.pipe()
        jobs_r, self.jobs_w = os.pipe()
        os.set_blocking(self.jobs_w, False)
        self._control_fd, self._control = _fds.make_control_block()
        settings: dict[str, Any] = {
            "batch_window": opts.batch_window,
            "max_batch_bytes": opts.max_batch_bytes,
        }
        if method == "fork":
            parent_ends = (
                _guard.guard_fd(), self.lifeline_w, self.data_r, self.jobs_w,
                self._control_fd, *parent_only_fds,
            )
            settings["close_fds"] = [fd for fd in parent_ends if fd is not None]
        self.arrays = ArrayChannel.for_options(opts)
        if self.arrays is not None:
            settings["arrays"] = self.arrays.child_settings(opts.max_buffered_bytes)
        if method in ("fork", "spawn"):
            settings["parent_pid"] = os.getpid()
        else:
            settings["forkserver"] = True
        conns = [
            _fds.PassedFd(data_w), _fds.PassedFd(life_r),
            _fds.PassedFd(os.dup(self._control_fd)), _fds.PassedFd(jobs_r),
        ]
        try:
            proc = ctx.Process(
                target=worker_main, args=(*conns, settings),
                name=f"workstream-worker:{self._name}", daemon=False,
            )
            proc.start()
        finally:
            for conn in conns:
                conn.close()
            if self.arrays is not None:
                self.arrays.close_fd()  # the child has its copy; our mapping needs none
        self.proc = proc
        with contextlib.suppress(AttributeError, KeyError):
            multiprocessing.process._children.discard(proc)  # type: ignore[attr-defined]
        pid = proc.pid
        assert pid is not None
        self.pid = pid
        self.pidfd = open_pidfd(pid)
        self.exit_fd = self.pidfd if self.pidfd is not None else proc.sentinel
        if opts.kill_group:
            _guard.register(pid)
            self._registered_group = True
        with contextlib.suppress(OSError):
            os.write(self.lifeline_w, b"g")

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

    def has_exited(self) -> bool:
        if self.exit_fd is None:
            return True
        ready, _, _ = select.select([self.exit_fd], [], [], 0)
        return bool(ready)

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
        if self._retired:
            return self.exit_code
        self._retired = True
        try:
            if self.proc is not None:
                exited_by_itself = False
                if graceful and not self.has_exited():
                    _fds.close_quietly(self.jobs_w)
                    self.jobs_w = None
                    assert self.exit_fd is not None
                    select.select([self.exit_fd], [], [], RETIRE_WAIT)
                    exited_by_itself = self.has_exited()
                if not self.has_exited():
                    self._signal(signal.SIGKILL)
                if exited_by_itself and children_deadline is not None:
                    self._let_children_exit(children_deadline, wake_fd, on_wake)
                group_signalled = self._kill_group()
                method = self._options.resolved_start_method
                self.proc.join(5.0 if method == "forkserver" else None)
                self.exit_code = self.proc.exitcode
                self._wait_group_gone(group_signalled)
        finally:
            if self._registered_group and self.pid is not None:
                with contextlib.suppress(Exception):
                    _guard.unregister(self.pid)
                self._registered_group = False
            self._close_fds()
        return self.exit_code

    def _let_children_exit(
        self,
        deadline: Callable[[], float],
        wake_fd: int | None,
        on_wake: Callable[[], None] | None,
    ) -> None:
        """Wait (bounded) for the group if the exited child set HAS_CHILDREN; before
        the child is reaped (see ``_group`` on why the group id stays ours)."""
        control = self._control
        if self.pid is None or not self._options.kill_group or control is None:
            return
        if control[_fds.HAS_CHILDREN]:
            _group.wait_until_empty(self.pid, deadline, wake_fd, on_wake)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            elif self.pid is not None:
                os.kill(self.pid, sig)

    def _kill_group(self) -> bool:
        if self.pid is None or not self._options.kill_group:
            return False
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            return False
        return True

    def _wait_group_gone(self, signalled: bool) -> None:
        if self.pid is None or not signalled:
            return
        deadline = time.monotonic() + _GROUP_EXIT_WAIT
        delay = 0.0005
        while time.monotonic() < deadline and _group.has_live_members(self.pid):
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def _close_fds(self) -> None:
        for name in ("data_r", "lifeline_w", "jobs_w", "pidfd", "_control_fd"):
            _fds.close_quietly(getattr(self, name))
            setattr(self, name, None)
        if self._control is not None:
            self._control.close()
            self._control = None
        if self.arrays is not None:
            self.arrays.close()  # arrays the user still holds stay valid
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.proc.close()
