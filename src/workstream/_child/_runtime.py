"""The worker process: set-up, running ``fn``, cancellation points, the final report.

Runs only in the child (the ``multiprocessing`` target is :func:`child_main`). Order of
events, each step before any user code runs:

1. leave the parent's process group (``setpgid(0, 0)``), so the parent can kill the whole
   group and a terminal's Ctrl-C does not reach us; ask for SIGKILL on parent death;
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
stays in the process (:func:`worker_state`). EOF on the jobs pipe means "exit now".

Cancellation: the parent sets byte 0 of the control block. Every ``yield``, ``emit()``
and ``cancelled()`` reads it (one mmap index, ~30 ns). SIGTERM sets the same byte and,
while user code runs, raises :class:`Cancelled` at the next bytecode; while our own code
runs (pickling, writing a frame) it only sets the byte, so a frame is never torn and a
yielded item is never half-sent.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import os
import pickle
import signal
import sys
import threading
import traceback
import types
from types import FrameType, TracebackType
from typing import Any, NoReturn

from .._errors import Cancelled, NotInWorkerError
from .._linux import set_parent_death_signal
from .._options import ChildSettings
from .._transport import _fds, _framing
from .._transport._shm import BlockPool
from ._arrays import ArrayPickler
from ._sender import Sender, dumps_with_fallback

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


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    ctx = _current
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


def _drive(ctx: _Context, gen: Any) -> Any:
    """Run the generator to its end: send each yielded item, then check for a cancel.

    However it ends (return, exception, a cancel thrown in at a ``yield``, an error of
    ours), the generator is closed when this returns or raises: its ``finally`` blocks
    and ``with`` exits have run. ``gen.close()`` may itself raise (a ``finally`` that
    raises, or yields again: ``RuntimeError``); that exception then propagates, chained
    to the one it interrupted. No local here refers to the exception on its way out: a
    cycle exception -> traceback -> this frame -> exception would keep the generator's
    frame, and so its locals, alive until a garbage collection that a one-job worker
    never runs (it ends with ``os._exit``).
    """
    send = ctx.sender.send_item
    ctl = ctx.ctl
    throw: BaseException | None = None
    pending: BaseException | None = None
    item: Any = None
    try:
        item = next(gen)
        while True:
            try:
                send(item)
            except Exception as exc:  # unpicklable item: raise it at the yield
                throw = exc
            else:
                if ctl[0]:
                    throw = ctx.make_cancelled("cooperative")
            if throw is None:
                item = next(gen)
            else:
                pending, throw = throw, None
                item = gen.throw(pending)
    except StopIteration as stop:
        return stop.value
    finally:
        throw = pending = item = None
        gen.close()  # a no-op unless something of ours ended the loop at a yield


_DYNAMIC = "<dynamic-code>"


def _restore_filenames(root: object) -> None:
    """Give functions that cloudpickle sent by value their real file name back.

    cloudpickle replaces ``co_filename`` with ``<dynamic-code>`` (for deterministic
    payloads); tracebacks would then show no file and no source line. The function's
    ``__module__`` survives, and its module (``__main__`` included: multiprocessing
    imports it in the child) knows the file. Reached from ``root``: plain functions, and
    the functions behind bound methods, classmethods and staticmethods, classes sent by
    value (their methods), partials, closures and the globals of what was fixed.
    """
    seen: set[int] = set()
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, functools.partial):
            todo.append(obj.func)
            todo.extend(obj.args)
            continue
        if isinstance(obj, types.MethodType):  # C().method, C.classmethod
            todo.append(obj.__func__)
            todo.append(obj.__self__ if isinstance(obj.__self__, type) else type(obj.__self__))
            continue
        if isinstance(obj, (classmethod, staticmethod)):
            todo.append(obj.__func__)
            continue
        if isinstance(obj, type):
            if _sent_by_value(obj):
                todo.extend(vars(obj).values())
            continue
        if not isinstance(obj, types.FunctionType) or obj.__code__.co_filename != _DYNAMIC:
            continue
        module = sys.modules.get(obj.__module__)
        filename = getattr(module, "__file__", None)
        if filename:
            obj.__code__ = _with_filename(obj.__code__, filename)
        todo.extend(
            v for v in obj.__globals__.values() if isinstance(v, (types.FunctionType, type))
        )
        for cell in obj.__closure__ or ():
            with contextlib.suppress(ValueError):
                todo.append(cell.cell_contents)


def _sent_by_value(cls: type) -> bool:
    """True for a class cloudpickle rebuilt here (not the one its module defines)."""
    module = sys.modules.get(cls.__module__)
    return getattr(module, cls.__qualname__, None) is not cls and cls.__module__ != "builtins"


def _with_filename(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(
        _with_filename(c, filename) if isinstance(c, types.CodeType) else c
        for c in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)


def _user_traceback(exc: BaseException) -> str:
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__", "").startswith(
        "workstream._child"
    ) and tb.tb_next is not None:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _error_body(exc: BaseException, context: str = "") -> bytes:
    try:
        exc_bytes: bytes | None = dumps_with_fallback(exc)
    except BaseException:  # unpicklable, or a __reduce__ that calls sys.exit()
        exc_bytes = None
    try:
        message = str(exc)
    except BaseException as str_error:  # a broken __str__ must not lose the report
        message = f"<str() of the exception raised {type(str_error).__name__}>"
    if context:
        message = f"{context}: {message}" if message else context
    report = {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
        "message": message,
        "traceback": _user_traceback(exc),
        "exc": exc_bytes,
    }
    return pickle.dumps(report, pickle.HIGHEST_PROTOCOL)


def _cancelled_body(ctx: _Context, remote_traceback: str, value: bytes | None) -> bytes:
    report = {
        "by": ctx.cancel_source or ("sigterm" if ctx.sigterm_received else "cooperative"),
        "traceback": remote_traceback,
        "value": value,
    }
    return pickle.dumps(report, pickle.HIGHEST_PROTOCOL)


def _run(ctx: _Context, payload: bytes) -> tuple[_framing.Kind, bytes]:
    """Run the user's function; return the final frame to send.

    By the time this returns, the job holds nothing in this process: a generator was
    closed (:func:`_drive`), the exception that ended the job and every exception chained
    to it have no traceback any more (their text is in the report), and nothing here
    refers to ``fn``, its arguments or its value. So the ``finally`` blocks, ``with``
    exits and the finalizers of the job's locals (a DataLoader's iterator, a model) have
    run before the parent sees the final frame; only objects in reference cycles of the
    job's own wait for Python's cyclic garbage collector, as anywhere.

    An exception other than :class:`Cancelled` raised while a cancel unwinds the job (a
    ``finally`` that raises) ends it as an ERROR whose message says so; its remote
    traceback shows the ``Cancelled`` it interrupted.
    """
    try:
        fn, args = pickle.loads(payload)
        with contextlib.suppress(Exception):
            _restore_filenames(fn)
        if ctx.ctl[0]:
            raise ctx.make_cancelled("cooperative")
        value = fn(*args)
        if isinstance(value, types.GeneratorType):
            value = _drive(ctx, value)
    except Cancelled as exc:
        body = _cancelled_body(ctx, _user_traceback(exc), None)
        _drop_tracebacks(exc)
        return _framing.Kind.CANCELLED, body
    except BaseException as exc:
        context = "raised while the job was being cancelled" if _interrupts_cancel(exc) else ""
        body = _error_body(exc, context)
        _drop_tracebacks(exc)
        return _framing.Kind.ERROR, body
    del fn, args
    if ctx.cancel_raised:  # fn caught Cancelled and returned: still a cancel, with a value
        try:
            value_bytes: bytes | None = dumps_with_fallback(value)
        except Exception:
            value_bytes = None
        return _framing.Kind.CANCELLED, _cancelled_body(ctx, "", value_bytes)
    try:
        return _framing.Kind.RESULT, dumps_with_fallback(value)
    except BaseException as exc:  # a __reduce__ calling sys.exit() fails the job, too
        body = _error_body(exc, "the return value of fn cannot be pickled")
        _drop_tracebacks(exc)
        return _framing.Kind.ERROR, body


def _chained(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception reachable from it: causes, contexts, group members."""
    group_type: Any = getattr(builtins, "BaseExceptionGroup", ())
    seen: set[int] = set()
    out: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        todo.append(e.__cause__)
        todo.append(e.__context__)
        if isinstance(e, group_type):
            todo.extend(e.exceptions)
    return out


def _interrupts_cancel(exc: BaseException) -> bool:
    """True if ``exc`` was raised while a :class:`Cancelled` was propagating."""
    return any(isinstance(e, Cancelled) for e in _chained(exc)[1:])


def _drop_tracebacks(exc: BaseException) -> None:
    """Detach the tracebacks of ``exc`` and of every exception chained to it.

    A traceback holds the frames it passed through, and so their locals; user code that
    kept the exception in one of those locals (``err = e``) made a cycle that only the
    garbage collector would break. The job is over and its report is built: nothing
    needs the frames any more.
    """
    for e in _chained(exc):
        e.__traceback__ = None


def _initialize(initializer: Any, *args: Any) -> None:
    """A warm worker's first job: run the initializer and keep what it returns."""
    with contextlib.suppress(Exception):
        _restore_filenames(initializer)
    ctx = _current
    assert ctx is not None
    ctx.state = initializer(*args) if initializer is not None else None


_USER_CODE_CALLERS = frozenset({_drive.__code__, _run.__code__, _initialize.__code__})


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
    # BaseException: a replaced sys.stdout whose flush() calls sys.exit() must not change
    # how the worker ends once its final frame is sent.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    os._exit(code)


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


def _arrays_from_settings(settings: ChildSettings, ctl: Any) -> ArrayPickler | None:
    """Map the job's shared-memory arena if the parent passed one (see ``_arrays``)."""
    passed = settings.arrays
    if passed is None:
        return None
    try:
        return ArrayPickler(BlockPool(passed.fd.fd), passed.threshold, passed.max_in_pipe, ctl)
    except (OSError, ValueError):
        return None  # large buffers then travel in-band: correct, slower
    finally:
        passed.fd.close()


def _boot(
    data_conn: _fds.PassedFd,
    lifeline_conn: _fds.PassedFd,
    control_conn: _fds.PassedFd,
    settings: ChildSettings,
) -> _Context:
    """Steps 1-3 of the module docstring; returns once the parent said "go"."""
    global _current
    data_fd, lifeline_fd, control_fd = data_conn.fd, lifeline_conn.fd, control_conn.fd
    for fd in settings.close_fds:
        _fds.close_quietly(fd)
    if settings.forkserver:
        _drop_forkserver_alive_fd()
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    set_parent_death_signal(signal.SIGKILL)
    expected_parent = settings.parent_pid
    if expected_parent is not None and os.getppid() != expected_parent:
        _exit_now(70)  # the parent died before PR_SET_PDEATHSIG was armed
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctl = _fds.map_control_block(control_fd)
    os.close(control_fd)

    arrays = _arrays_from_settings(settings, ctl)
    sender = Sender(data_fd, settings.batch_window, settings.max_batch_bytes, ctl, arrays)
    ctx = _Context(ctl, sender)
    _current = ctx
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
    try:
        ctx.sender.send_final(kind, body)
    except OSError:
        _exit_now(70)  # parent gone
    _run_multiprocessing_finalizers()
    _note_children(ctx)
    _exit_now(0)


def _exit_after_last_job(ctx: _Context) -> NoReturn:
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
        # A previous job may have changed how SIGTERM is handled (ignored it, blocked
        # it): every job starts with the ladder working as documented.
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        kind, body = _run(ctx, payload)
        del payload
        try:
            ctx.sender.send_final(kind, body, last=False)
        except OSError:
            _exit_now(70)  # parent gone
