"""The worker process's life: start-up, the handshake, the job loop, the exit.

Runs only in the child (the ``multiprocessing`` targets are :func:`child_main` and
:func:`worker_main`). The rest of ``_child``, each module one job:

* ``_context``: the process's context, and what user code calls (``emit``, ``cancelled``);
* ``_sigterm``: the SIGTERM handler (a cancel raised into user code, never into ours);
* ``_job``: running one job (call ``fn``, drive its generator, release it) to its frame;
* ``_report``: the final report's body (type, message, traceback text, the exception);
* ``_sourcemap``: real file names for the functions cloudpickle sent by value;
* ``_exit``: leaving the process (exit finalizers, the HAS_CHILDREN note, ``os._exit``);
* ``_sender`` (items: pickling, batching, the flusher thread), ``_arrays`` (large
  buffers in shared memory).

Order of events, each step before any user code runs:

1. leave the parent's process group (``setpgid(0, 0)``), so the parent can kill the whole
   group and a terminal's Ctrl-C does not reach us; ask for SIGKILL on parent death;
   ignore SIGINT, then unblock every signal (we start with SIGINT blocked, see
   ``_supervisor._guard.sigint_blocked``, so a Ctrl-C before this step did nothing);
2. map the control block, install the SIGTERM handler, start the helper threads with
   SIGTERM blocked (so the signal interrupts the *main* thread's blocking calls);
3. send READY, then wait for the parent's "go" byte on the lifeline pipe (the parent
   sends it once our process group is registered with the guard; EOF = parent gone);
4. unpickle ``fn`` and its arguments, run it, drive the generator; then release the
   job (close the generator, detach the tracebacks, drop every reference to it), so
   its ``finally`` blocks, ``with`` exits and finalizers have run;
5. send exactly one final frame (RESULT / ERROR / CANCELLED), flush, run
   multiprocessing's exit finalizers (named semaphores), note in the control block
   whether we have child processes, ``os._exit(0)``.

A warm worker (:func:`worker_main`, for ``workstream.Worker``) does steps 1-3 once, then
loops: read a job (a u64 length and a pickle) from the parent's jobs pipe, run it, send
its final frame, wait for the next. Its first job is the initializer, whose return value
stays in the process (``worker_state()``). EOF on the jobs pipe means "exit now".

Cancellation: the parent sets byte 0 of the control block. Every ``yield``, ``emit()``
and ``cancelled()`` reads it (one mmap index, ~30 ns). SIGTERM sets the same byte and,
while user code runs, raises :class:`Cancelled` at the next bytecode; while our own code
runs (pickling, writing a frame) it only sets the byte, so a frame is never torn and a
yielded item is never half-sent.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import threading
from typing import Any

from .._linux import set_parent_death_signal
from .._options import ChildSettings
from .._transport import _fds, _framing
from .._transport._shm import BlockPool
from . import _arrays, _context, _output
from ._arrays import ArrayPickler
from ._context import _Context
from ._exit import _exit_after_last_job, _exit_now, _note_children, _run_multiprocessing_finalizers
from ._job import _run
from ._sender import Sender
from ._sigterm import _on_sigterm


def _watch_lifeline(fd: int) -> None:
    """Block until the parent's end of the lifeline closes, then kill our process group."""
    while True:
        try:
            data = os.read(fd, 64)
        except InterruptedError:
            continue
        except OSError:
            data = b""
        if not data:
            break
    # The parent is gone (it closes its end only after reaping us): nobody is listening.
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGKILL)
    os._exit(70)


def _drop_forkserver_alive_fd() -> None:
    """Close our copy of the application's end of the fork server's "alive" pipe.

    multiprocessing hands it to every forkserver child, so the server would see EOF (and
    exit, which fires our PR_SET_PDEATHSIG) only once every child is gone: a child
    stuck in C would then outlive a killed application. Without it, user code in the
    worker that uses forkserver simply starts a server of its own.
    """
    try:
        from multiprocessing import forkserver

        server = forkserver._forkserver  # type: ignore[attr-defined]
        fd = getattr(server, "_forkserver_alive_fd", None)
        if fd is not None:
            _fds.close_quietly(fd)
            server._forkserver_alive_fd = None  # type: ignore[attr-defined]
    except Exception:  # a private detail changed; the guard still covers this case
        return


def _unblock_sigint_in_foreign_forkserver_child(_: object) -> None:
    """In a process of the application's own that a fork server we started forked:
    unblock SIGINT, which that server keeps blocked (see ``_guard.sigint_blocked``).

    Registered with ``multiprocessing.util.register_after_fork`` when the fork server
    preloads this module: it runs in each child's bootstrap, before its target. Our own
    workers keep SIGINT blocked until their boot ignores it; other start methods and a
    server the application started are left alone.
    """
    try:
        from multiprocessing import process

        current = process.current_process()
        if getattr(current, "_start_method", None) != "forkserver":
            return
        if getattr(current, "_target", None) in (child_main, worker_main):
            return
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    except Exception:  # a private detail changed: the process keeps the server's mask
        return


class _AfterForkKey:
    """Kept alive for the after-fork registry (it holds its key object weakly)."""


_AFTER_FORK_KEY = _AfterForkKey()


def _register_after_fork() -> None:
    from multiprocessing import util

    util.register_after_fork(_AFTER_FORK_KEY, _unblock_sigint_in_foreign_forkserver_child)


_register_after_fork()


def _arrays_from_settings(settings: ChildSettings, ctl: Any) -> ArrayPickler | None:
    """Map the job's shared-memory arena if the parent passed one (see ``_arrays``)."""
    passed = settings.arrays
    if passed is None:
        return None
    try:
        pickler = ArrayPickler(
            BlockPool(passed.fd.fd), passed.threshold, passed.max_in_pipe, ctl
        )
    except (OSError, ValueError):
        return None  # large buffers then travel in-band: correct, slower
    finally:
        passed.fd.close()
    _arrays.current = pickler
    return pickler


_fault_fd: int | None = None
"""The file faulthandler writes into (the parent's memfd), once enabled."""


def _enable_fault_reports(settings: ChildSettings) -> None:
    """Have faulthandler write every thread's Python stack into the parent's fault file
    on a fatal signal (SIGSEGV, SIGFPE, SIGABRT, SIGBUS, SIGILL). Never fails the boot."""
    global _fault_fd
    passed = settings.faults
    if passed is None:
        return
    fd = passed.fd
    try:
        os.set_inheritable(fd, False)  # not for the job's own subprocesses
        faulthandler.enable(file=fd, all_threads=True)
    except (OSError, ValueError, RuntimeError):
        passed.close()
        return
    _fault_fd = fd


def _reset_fault_reports() -> None:
    """Before each job of a warm worker: an empty fault file, and faulthandler writing
    into it again (a previous job may have pointed it elsewhere, or disabled it)."""
    fd = _fault_fd
    if fd is None:
        return
    _fds.reset_fault_file(fd)
    with contextlib.suppress(OSError, ValueError, RuntimeError):
        faulthandler.enable(file=fd, all_threads=True)


def _boot(
    data_conn: _fds.PassedFd,
    lifeline_conn: _fds.PassedFd,
    control_conn: _fds.PassedFd,
    settings: ChildSettings,
) -> _Context:
    """Steps 1-3 of the module docstring; returns once the parent said "go"."""
    data_fd, lifeline_fd, control_fd = data_conn.fd, lifeline_conn.fd, control_conn.fd
    for fd in settings.close_fds:
        _fds.close_quietly(fd)
    _enable_fault_reports(settings)
    if settings.forkserver:
        _drop_forkserver_alive_fd()
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    set_parent_death_signal(signal.SIGKILL)
    expected_parent = settings.parent_pid
    if expected_parent is not None and os.getppid() != expected_parent:
        _exit_now(70)  # the parent died before PR_SET_PDEATHSIG was armed
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The parent started us with SIGINT blocked, and a fork server passes on its own
    # mask: with SIGINT ignored, a Ctrl-C that came meanwhile is discarded, and the job
    # (and what it starts: subprocesses, a DataLoader's workers) gets an empty mask.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    ctl = _fds.map_control_block(control_fd)
    os.close(control_fd)
    _output.install(settings)  # output="capture"/"logging": fds 1, 2, sys.std*, logging

    arrays = _arrays_from_settings(settings, ctl)
    sender = Sender(data_fd, settings.batch_window, settings.max_batch_bytes, ctl, arrays)
    ctx = _Context(ctl, sender)
    _context._current = ctx
    signal.signal(signal.SIGTERM, _on_sigterm)

    # Helper threads inherit the signal mask: create them with SIGTERM blocked so the
    # kernel delivers SIGTERM to the main thread and interrupts *its* blocking calls.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        sender.start_flusher()
        try:
            sender.send_ready()
            go = os.read(lifeline_fd, 1)
        except OSError:
            go = b""
        if not go:
            _exit_now(70)  # the parent died before it let us run
        threading.Thread(
            target=_watch_lifeline, args=(lifeline_fd,), name="workstream-lifeline", daemon=True
        ).start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    return ctx


def child_main(
    payload: bytes,
    data_conn: _fds.PassedFd,
    lifeline_conn: _fds.PassedFd,
    control_conn: _fds.PassedFd,
    settings: ChildSettings,
) -> None:
    """The ``multiprocessing`` target of a one-job worker. Never returns (``os._exit``)."""
    ctx = _boot(data_conn, lifeline_conn, control_conn, settings)
    kind, body = _run(ctx, payload)
    ctx.progress.end_job()  # the newest progress is in the slot before the final frame
    _output.end_of_job()
    try:
        ctx.sender.send_final(kind, body)
    except OSError:
        _exit_now(70)  # parent gone
    _run_multiprocessing_finalizers()
    _note_children(ctx)
    _exit_now(0)


def _read_exact(fd: int, n: int) -> bytes | None:
    """Read exactly ``n`` bytes from the blocking ``fd``; None at end of file."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = os.readv(fd, [view[got:]])
        except OSError:
            return None
        if k == 0:
            return None
        got += k
    return bytes(buf)


def worker_main(
    data_conn: _fds.PassedFd,
    lifeline_conn: _fds.PassedFd,
    control_conn: _fds.PassedFd,
    jobs_conn: _fds.PassedFd,
    settings: ChildSettings,
) -> None:
    """The ``multiprocessing`` target of a warm worker: run jobs until the jobs pipe closes.

    Each job is a u64 length and a pickle of ``(fn, args)``; each ends with exactly one
    final frame. The parent clears the cancel flag before it sends the next job (it has
    seen the final frame by then), so a job never inherits its predecessor's cancel.
    Never returns: ends with ``os._exit(0)`` at EOF, or 70 if the parent is gone.
    """
    ctx = _boot(data_conn, lifeline_conn, control_conn, settings)
    jobs_fd = jobs_conn.fd
    size = _framing.JOB_HEADER.size
    while True:
        ctx.job_active = False
        header = _read_exact(jobs_fd, size)
        if header is None:
            _exit_after_last_job(ctx)  # the parent closed the worker (or died: the lifeline acts)
        (length,) = _framing.JOB_HEADER.unpack(header)
        payload = _read_exact(jobs_fd, length)
        if payload is None:
            _exit_after_last_job(ctx)
        ctx.begin_job()
        _reset_fault_reports()
        # A previous job may have changed how SIGTERM is handled (ignored it, blocked
        # it): every job starts with the ladder working as documented.
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        kind, body = _run(ctx, payload)
        ctx.progress.end_job()
        del payload
        _output.end_of_job()
        try:
            ctx.sender.send_final(kind, body, last=False)
        except OSError:
            _exit_now(70)  # parent gone
