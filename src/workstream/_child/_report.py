"""The final report's body: how a job ended, in the form the parent reads.

Runs only in the child. An ERROR report carries the exception's type name, its message,
the traceback text (from the user's first frame) and the exception itself if it pickles;
a CANCELLED report says how the cancel arrived and carries fn's value if it returned one.
Building a report never raises for a broken ``__str__`` or an unpicklable exception.
"""

from __future__ import annotations

import builtins
import os
import pickle
import traceback
from types import TracebackType
from typing import Any

from .._errors import Cancelled
from ._context import _Context
from ._sender import dumps_with_fallback


def _first_user_frame(exc: BaseException) -> TracebackType | None:
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__", "").startswith(
        "workstream._child"
    ) and tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def _user_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, _first_user_frame(exc)))


_SOURCES: dict[str, list[bytes]] = {}  # file name -> its lines (read once per process)
_MAX_SOURCE = 4 << 20


def _read_source(filename: str) -> list[bytes]:
    """The lines of ``filename`` (cached; [] if unreadable or larger than 4 MiB)."""
    lines = _SOURCES.get(filename)
    if lines is None:
        lines = []
        try:
            fd = os.open(filename, os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, ValueError):
            fd = -1
        if fd >= 0:
            try:
                data = os.read(fd, _MAX_SOURCE + 1)
                if len(data) <= _MAX_SOURCE:
                    lines = data.split(b"\n")
            except OSError:
                pass
            finally:
                os.close(fd)
        _SOURCES[filename] = lines
    return lines


def prefetch_source(fn: object) -> None:
    """Read the source file of ``fn`` now, at the job's start: a cancel's report then
    finds the lines of its frames there without a system call (each one hands the GIL to
    the sender's flusher thread, which may keep it for a while)."""
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    filename = getattr(code, "co_filename", None)
    if isinstance(filename, str):
        _read_source(filename)


def _source_line(filename: str, lineno: int | None) -> str:
    """Line ``lineno`` of the file ``filename`` (UTF-8), stripped; "" if unreadable."""
    if lineno is None or lineno < 1:
        return ""
    lines = _read_source(filename)
    if len(lines) < lineno:
        return ""
    return lines[lineno - 1].decode("utf-8", "replace").strip()


def _cancel_traceback(exc: BaseException) -> str:
    """:func:`_user_traceback` of a :class:`Cancelled`, built without ``traceback``.

    The same text (header, each frame's file, line, function and source line, the
    exception's line) less the 3.11+ column markers. It is on the way to the final
    report of every cancel: ``traceback.format_exception`` took ~0.6 ms in a fresh
    worker, ~0.5 ms of it in ``linecache`` (the import system's source loader); this
    takes a few tens of us (the source of ``fn`` was read at the job's start, see
    :func:`prefetch_source`). A cancel chained to other exceptions gets the full
    formatter.
    """
    if exc.__cause__ is not None or exc.__context__ is not None:
        return _user_traceback(exc)
    parts = ["Traceback (most recent call last):\n"]
    tb = _first_user_frame(exc)
    while tb is not None:
        frame, lineno = tb.tb_frame, tb.tb_lineno
        code = frame.f_code
        parts.append(f'  File "{code.co_filename}", line {lineno}, in {code.co_name}\n')
        line = _source_line(code.co_filename, lineno)
        if line:
            parts.append(f"    {line}\n")
        tb = tb.tb_next
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("__main__", "builtins"):
        name = f"{kind.__module__}.{name}"
    message = str(exc)
    parts.append(f"{name}: {message}\n" if message else f"{name}\n")
    return "".join(parts)


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
