"""One worker process and every parent-side descriptor of it: :class:`ChildProcess`.

The one place that starts, signals, kills, reaps and closes a worker process, for a
one-job ``start()`` (``JobRunner``) and for a warm ``Worker`` (``WorkerProcess``) alike.
It holds no job policy: when to signal, and what an exit status means, are the runner's.

A ChildProcess is used by one thread only, the one that launched it: PR_SET_PDEATHSIG
fires when the *forking thread* exits, and only that thread signals or reaps the child,
so a signal never reaches a recycled pid.

Launch and handshake (:meth:`ChildProcess.launch`): create the data pipe, the lifeline,
the jobs pipe (warm only) and the shared-memory arena (if the options ask for one);
start the process with its :class:`~workstream._options.ChildSettings`; close the
child's ends here; take the process out of multiprocessing's children (we reap it
ourselves); open a pidfd; register its process group with the guard; only then write
the "go" byte on the lifeline, so user code never runs in a group the guard does not know.

The end: :meth:`ChildProcess.reap_with_group` SIGKILLs what is left of the child's
process group while the leader is unreaped (its pid, the group id, cannot be recycled
yet), reaps it and waits, bounded, until the group has no live member;
:meth:`ChildProcess.close` unregisters the group and closes every descriptor
(idempotent; also after a failed launch).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import select
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from .._child._runtime import child_main, worker_main
from .._linux import open_pidfd
from .._options import ChildSettings, Options
from .._transport import _fds
from . import _group, _guard
from ._arrays import ArrayChannel
from ._cgroup import MemoryCgroup
from ._memory import oom_kill_count
from ._output import OutputReader

GROUP_EXIT_WAIT = 0.5
"""Seconds to wait for a killed process group to have no live member."""
FORKSERVER_REAP_WAIT = 5.0
"""Seconds to wait for the fork server to report an exited child's status."""


class ChildProcess:
    """A worker process (started, or about to be) and the parent's descriptors of it."""

    def __init__(self, options: Options, name: str) -> None:
        """``name``: the process's name (``multiprocessing``'s, shown in tracebacks)."""
        self._options = options
        self._name = name
        self.proc: BaseProcess | None = None
        self.pid: int | None = None
        """Set once the process started; kept after it is reaped (for reports)."""
        self.pidfd: int | None = None
        self.exit_fd: int | None = None
        """Readable once the child exited: the pidfd, else multiprocessing's sentinel."""
        self.data_r: int | None = None
        """Read end of the data pipe (frames from the child)."""
        self.lifeline_w: int | None = None
        """Its end-of-file tells the child that the application died."""
        self.jobs_w: int | None = None
        """Warm child only: non-blocking write end of the jobs pipe; EOF = "exit now"."""
        self.arrays: ArrayChannel | None = None
        """The shared-memory arena's parent side, or None (buffers travel in-band)."""
        self.exit_code: int | None = None
        """The exit status once reaped (negative: killed by that signal)."""
        self.fault_fd: int | None = None
        """The file the child's faulthandler writes into on a fatal signal."""
        self.fault_stack: str | None = None
        """What it wrote (every thread's Python stack at the crash), read once the child
        was reaped; None if nothing."""
        self.oom_kills_at_launch: int | None = None
        """The kernel's out-of-memory kill count when the child started (``_memory``)."""
        self.cgroup: MemoryCgroup | None = None
        """The child's memory cgroup (``max_memory`` where the machine allows one)."""
        self.output: OutputReader | None = None
        """``output=`` capture / logging: the read ends of the output pipes."""
        self._output_passed: tuple[_fds.PassedFd, _fds.PassedFd, _fds.PassedFd] | None = None
        self._reaped = False  # True once the exit status was collected: pid may be reused
        self._registered_group = False  # True while the guard knows the child's group

    # -- launch and handshake -----------------------------------------------------------

    def launch(
        self,
        control: _fds.PassedFd,
        *,
        payload: bytes | None,
        close_in_child: tuple[int, ...] = (),
    ) -> None:
        """Start the child and let it run, once its group is registered with the guard.

        ``control``: the control block's fd, handed over (closed here once the child has
        its copy). ``payload``: a one-job child's pickled ``(fn, args)``, run before it
        exits; None starts a warm child that reads jobs from :attr:`jobs_w`.
        ``close_in_child``: other descriptors of the parent that a forked child must close
        (wake pipes, a control fd the parent keeps). Does not wait for the child.

        Raises what creating the pipes, ``Process.start()`` or the guard raises; a child
        that was started is then left to the caller (:meth:`kill_child_and_group`,
        :meth:`reap`, :meth:`close`).
        """
        opts = self._options
        method = opts.resolved_start_method
        ctx: Any = multiprocessing.get_context(method)
        if method == "forkserver":
            _add_forkserver_preload()
        if method != "fork":
            _start_resource_tracker()
        passed = [control]  # the child's ends: closed here whatever happens
        try:
            self.data_r, data_w = _fds.make_pipe(opts.pipe_bytes)
            data_conn = _fds.PassedFd(data_w)
            passed.append(data_conn)
            life_r, self.lifeline_w = os.pipe()
            life_conn = _fds.PassedFd(life_r)
            passed.append(life_conn)
            jobs_conn: _fds.PassedFd | None = None
            if payload is None:
                jobs_r, self.jobs_w = os.pipe()
                os.set_blocking(self.jobs_w, False)
                jobs_conn = _fds.PassedFd(jobs_r)
                passed.append(jobs_conn)
            self.fault_fd = _fds.make_fault_file()
            faults_conn = _fds.PassedFd(os.dup(self.fault_fd))
            passed.append(faults_conn)
            self.arrays = ArrayChannel.for_options(opts)
            if opts.output_mode != "inherit":
                self._make_output_pipes(passed)
            settings = self._settings(method, close_in_child, faults_conn)
            if jobs_conn is None:
                assert payload is not None
                target: Callable[..., None] = child_main
                args: tuple[object, ...] = (payload, data_conn, life_conn, control, settings)
            else:
                target = worker_main
                args = (data_conn, life_conn, control, jobs_conn, settings)
            proc = ctx.Process(target=target, args=args, name=self._name, daemon=False)
            # A Ctrl-C before the child's boot must not reach it, nor a fork server
            # started now (see _guard.sigint_blocked).
            with _guard.sigint_blocked():
                proc.start()
        finally:
            for conn in passed:
                conn.close()
            if self.arrays is not None:
                self.arrays.close_fd()  # the child has its copy; our mapping needs none
        self.proc = proc
        # We reap our children ourselves; multiprocessing's own reaping (active_children(),
        # the next Process.start()) must not race with us for the exit status.
        with contextlib.suppress(AttributeError, KeyError):
            multiprocessing.process._children.discard(proc)  # type: ignore[attr-defined]
        pid = proc.pid
        assert pid is not None
        self.pid = pid
        if self.output is not None:
            self.output.pid = pid
        self.pidfd = open_pidfd(pid)
        self.exit_fd = self.pidfd if self.pidfd is not None else proc.sentinel
        if opts.max_memory is not None:  # before any user code: its descendants follow
            self.cgroup = MemoryCgroup.create(opts.max_memory)
            if self.cgroup is not None and not self.cgroup.add(pid):
                self.cgroup.remove()
                self.cgroup = None
        if opts.kill_group:
            _guard.register(pid)
            self._registered_group = True
        # Let the child run user code only now that its group is registered.
        with contextlib.suppress(OSError):
            os.write(self.lifeline_w, b"g")
        # After "go": the ~0.1 ms it takes overlaps the child's start instead of delaying it.
        self.oom_kills_at_launch = oom_kill_count()

    def _settings(
        self, method: str, close_in_child: tuple[int, ...],
        faults: _fds.PassedFd | None = None,
    ) -> ChildSettings:
        opts = self._options
        close_fds: tuple[int, ...] = ()
        if method == "fork":
            # A forked child inherits every fd: it must not hold the parent's ends of its
            # own pipes (its lifeline would never reach EOF). The guard's pipe is closed
            # in the child by _guard's at-fork handler (closing it here again could close
            # an unrelated fd that reused its number).
            output_ends = () if self.output is None else self.output.fds
            parent_ends = (
                self.lifeline_w, self.data_r, self.jobs_w, self.fault_fd, *output_ends,
                *close_in_child
            )
            close_fds = tuple(fd for fd in parent_ends if fd is not None)
        arrays = None
        if self.arrays is not None:
            arrays = self.arrays.child_settings(opts.max_buffered_bytes)
        return ChildSettings(
            batch_window=opts.batch_window,
            max_batch_bytes=opts.max_batch_bytes,
            close_fds=close_fds,
            arrays=arrays,
            parent_pid=os.getpid() if method in ("fork", "spawn") else None,
            forkserver=method == "forkserver",
            faults=faults,
            output_fds=self._output_passed,
            log_level=_job_log_level(self._name) if self._output_passed else logging.WARNING,
        )

    def _make_output_pipes(self, passed: list[_fds.PassedFd]) -> None:
        """The stdout, stderr and tagged pipes (see ``_output``); their write ends join
        ``passed`` (closed here once the child has them)."""
        ends = [os.pipe() for _ in range(3)]
        self.output = OutputReader(ends[0][0], ends[1][0], ends[2][0])
        out, err, tagged = (_fds.PassedFd(w) for _, w in ends)
        passed.extend((out, err, tagged))
        self._output_passed = (out, err, tagged)

    # -- signals ------------------------------------------------------------------------

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child (not its group). No-op if it was never started or is
        reaped already; a child that is gone meanwhile is not an error."""
        if self.pid is None or self._reaped:
            return
        with contextlib.suppress(ProcessLookupError, OSError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                os.kill(self.pid, sig)

    def kill_group(self) -> bool:
        """SIGKILL the child's process group (``kill_group`` option); True if it existed.

        Only while the leader is unreaped, or its pid (the group id) may name another
        group (see ``_group`` for forkserver, whose server reaps at once).
        """
        if self.pid is None or self._reaped or not self._options.kill_group:
            return False
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            return False  # no such group: the child never made one, or nothing is left
        return True

    def kill_child_and_group(self) -> None:
        """SIGKILL the child, then what else is in its process group."""
        self.signal(signal.SIGKILL)
        self.kill_group()

    # -- the end ------------------------------------------------------------------------

    def wait_exited(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the child to exit; True if it has (or never ran)."""
        if self.exit_fd is None:
            return True
        ready, _, _ = select.select([self.exit_fd], [], [], timeout)
        return bool(ready)

    def has_exited(self) -> bool:
        """True if the child has exited (or never ran); never blocks."""
        return self.wait_exited(0)

    def let_children_exit(
        self,
        control: Any,
        deadline: Callable[[], float],
        wake_fd: int | None,
        on_wake: Callable[[], None] | None,
    ) -> None:
        """If the exited child said it had children (``control``'s HAS_CHILDREN byte), wait
        until its group is empty or ``deadline()`` passes (asked again whenever ``wake_fd``
        wakes us, after ``on_wake()``). Call before :meth:`reap_with_group`: the group id
        stays ours while the leader is unreaped. No-op without ``kill_group``, or with a
        closed ``control`` mapping (a one-byte read otherwise)."""
        if self.pid is None or self._reaped or not self._options.kill_group or control is None:
            return
        try:
            has_children = control[_fds.HAS_CHILDREN]
        except ValueError:  # closed: the job is over already
            return
        if has_children:
            _group.wait_until_empty(self.pid, deadline, wake_fd, on_wake)

    def reap(self, timeout: float | None = None) -> int | None:
        """Collect the exit status; return it (None if not known).

        Without ``timeout``, call only once the child exited or was SIGKILLed: under fork
        and spawn it waits for the exit, under forkserver at most
        :data:`FORKSERVER_REAP_WAIT` s for the server's report. None: never started, or
        the status did not come within the wait.
        """
        proc = self.proc
        if proc is None:
            return None
        if self._reaped:
            return self.exit_code
        if timeout is None and self._options.resolved_start_method == "forkserver":
            timeout = FORKSERVER_REAP_WAIT
        proc.join(timeout)
        self.exit_code = proc.exitcode
        self._reaped = self.exit_code is not None
        if self._reaped and self.fault_fd is not None:
            self.fault_stack = _fds.read_fault_file(self.fault_fd)
        return self.exit_code

    def reap_with_group(self) -> int | None:
        """SIGKILL what is left of the group, reap the child, wait (at most
        :data:`GROUP_EXIT_WAIT` s) until the group has no live member; return the exit
        status (as :meth:`reap`). Zombies do not count: killed descendants are reaped by
        whoever adopted them (init, or a subreaper that may never do it), not by us."""
        signalled = self.kill_group()
        code = self.reap()
        if signalled and self.pid is not None:
            deadline = time.monotonic() + GROUP_EXIT_WAIT
            delay = 0.0005
            while time.monotonic() < deadline and _group.has_live_members(self.pid):
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
        return code

    def kill_and_reap(self, timeout: float = FORKSERVER_REAP_WAIT) -> int | None:
        """After a failure of ours: SIGKILL the child and its group, reap it (at most
        ``timeout`` s); never raises."""
        try:
            if not self._reaped:
                self.kill_child_and_group()
            return self.reap(timeout)
        except Exception:
            return self.exit_code

    def close_jobs(self) -> None:
        """Close the jobs pipe: an idle warm child exits 0 when it reads its end-of-file."""
        _fds.close_quietly(self.jobs_w)
        self.jobs_w = None

    def close(self) -> None:
        """Unregister the group from the guard, close every descriptor and release the
        ``Process`` (idempotent). Call once the child is reaped, or was never started.
        Arrays the user still holds stay valid."""
        if self._registered_group and self.pid is not None:
            self._registered_group = False
            with contextlib.suppress(Exception):
                _guard.unregister(self.pid)
        for fd in (self.data_r, self.lifeline_w, self.jobs_w, self.pidfd, self.fault_fd):
            _fds.close_quietly(fd)
        if self.output is not None:
            self.output.close()
        self.data_r = self.lifeline_w = self.jobs_w = self.pidfd = self.exit_fd = None
        self.fault_fd = None
        if self.arrays is not None:
            self.arrays.close()
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.proc.close()


def _job_log_level(process_name: str) -> int:
    """The level a worker's root logger starts at: what this process's logging lets
    through for ``workstream.job.<name>`` (so nothing is sent only to be dropped here)."""
    name = process_name.split(":", 1)[-1]
    return logging.getLogger(f"workstream.job.{name}").getEffectiveLevel()


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker now, if it does not run, so that
    ``Process.start()`` need not: its start unblocks SIGINT in the calling thread
    (``resource_tracker.ensure_running`` ends with ``SIG_UNBLOCK``, not a restore), which
    would undo ``sigint_blocked()`` before the fork server or the worker starts."""
    try:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    except Exception:  # Process.start() starts it then, or reports why it cannot
        return


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
