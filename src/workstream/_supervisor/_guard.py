"""The per-application guard: kills every job's process group when the application dies.

Why a separate process: PR_SET_PDEATHSIG kills the worker itself but not the children it
started (data loaders, ``subprocess`` calls), and a watchdog thread inside the worker
cannot run while user code holds the GIL in a long C call. The guard is a tiny Python
process (``python -I -S .../_guard_main.py``: a module of its own, checked like the rest)
that never runs user code. It reads ``+PGID`` / ``-PGID`` lines from a pipe; when the
pipe reaches end-of-file (the application exited or was SIGKILLed: the kernel closes our
end) it sends SIGKILL to every registered group and exits.

It is started lazily by the first job that asks for it, in its own session (so a
terminal's Ctrl-C does not reach it), with no inherited descriptors but its stdin.
Only POSIX systems have process groups; elsewhere :func:`register` is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

from . import _guard_main


def guard_command() -> list[str]:
    """The guard's command line: this interpreter, isolated (``-I``: no environment
    variables, user site or current directory; ``-S``: no site packages), running
    ``_guard_main``'s file, which needs nothing but the standard library."""
    return [sys.executable, "-I", "-S", os.path.abspath(_guard_main.__file__)]


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Block SIGINT in the calling thread for the body (a process started meanwhile).

    A process inherits the signal mask of the thread that forks it, across ``exec`` too.
    Until it leaves our process group (a worker's boot, the guard's ``setsid()``) or sets
    SIGINT to SIG_IGN (multiprocessing's fork server, once it has imported its preload
    modules), a Ctrl-C to the terminal's foreground group would raise KeyboardInterrupt
    in it (a spawned worker, the fork server starting up), run the application's handler
    in it (a forked worker) or kill it (the guard, between fork and ``setsid()``).
    Blocked, the SIGINT stays pending there and is discarded once SIGINT is set to
    SIG_IGN; CPython's resource tracker starts itself the same way. A worker unblocks
    every signal at boot; the fork server and the guard keep the mask for life (both
    ignore SIGINT). Other threads keep SIGINT unblocked: the application's handler runs.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _Guard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid = -1
        self._groups: set[int] = set()  # replayed to a guard started after one died

    def _ensure_started(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is not None and self._owner_pid == os.getpid() and proc.poll() is None:
            return proc
        # Until setsid() the new process is in our group: SIGINT blocked, a Ctrl-C then
        # is discarded when the guard ignores SIGINT (see sigint_blocked).
        with sigint_blocked():
            proc = subprocess.Popen(
                guard_command(),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,
            )
        self._proc = proc
        self._owner_pid = os.getpid()
        if self._groups:
            assert proc.stdin is not None
            # A guard that died at once is seen (and replaced) by send()'s own write.
            with contextlib.suppress(OSError):
                os.write(proc.stdin.fileno(), b"".join(b"+%d\n" % g for g in self._groups))
        return proc

    def send(self, line: bytes) -> None:
        with self._lock:
            pgid = int(line[1:])
            if line[:1] == b"+":
                self._groups.add(pgid)
            else:
                self._groups.discard(pgid)
            for _attempt in range(2):
                proc = self._ensure_started()
                assert proc.stdin is not None
                try:
                    os.write(proc.stdin.fileno(), line)
                    return
                except OSError:  # the guard died (someone killed it): start a new one
                    with contextlib.suppress(Exception):
                        proc.stdin.close()
                        proc.wait(1.0)
                    self._proc = None

    def fileno(self) -> int | None:
        """The write end of the guard's pipe (a forked child must close it), if started."""
        proc = self._proc
        if proc is None or proc.stdin is None or self._owner_pid != os.getpid():
            return None
        return proc.stdin.fileno()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid


_guard = _Guard()


def register(pgid: int) -> None:
    """Have the guard kill process group ``pgid`` if this application dies."""
    if os.name == "posix":
        _guard.send(b"+%d\n" % pgid)


def unregister(pgid: int) -> None:
    """Forget ``pgid`` (call once the job's group was killed or left on purpose)."""
    if os.name == "posix" and _guard.pid is not None:
        _guard.send(b"-%d\n" % pgid)


def guard_fd() -> int | None:
    return _guard.fileno()


def guard_pid() -> int | None:
    """Pid of the guard process, or None before the first job (tests exclude it)."""
    return _guard.pid


def shutdown() -> None:
    """Release the guard: close its pipe (it kills whatever is still registered, then
    exits) and reap it. Called at interpreter exit, after every job was stopped."""
    with _guard._lock:
        proc = _guard._proc
        if proc is None or _guard._owner_pid != os.getpid():
            return
        _guard._proc = None
        with contextlib.suppress(Exception):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_inherited: list[subprocess.Popen[bytes]] = []


def _forget_in_forked_child() -> None:
    # The inherited pipe belongs to the parent's guard; never write to it from here. Close
    # our copy now (a forked worker must not keep the guard's pipe open), and keep the
    # Popen object: dropping it would warn "subprocess ... is still running" and, later,
    # close the same fd number again when garbage-collected, whatever it then is.
    proc = _guard._proc
    if proc is not None:
        # The raw file, not the buffered one: its lock may have been held by another
        # thread at the fork. Once the raw file is closed, the buffered one is closed too.
        raw = getattr(proc.stdin, "raw", None)
        if raw is not None:
            with contextlib.suppress(Exception):
                raw.close()
        _inherited.append(proc)
    _guard._lock = threading.Lock()
    _guard._proc = None
    _guard._owner_pid = -1
    _guard._groups = set()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_forked_child)
