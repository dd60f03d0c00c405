"""Running one job in the worker: call ``fn``, drive its generator, release it, report.

Runs only in the child. :func:`_run` turns a job's payload into the final frame to send;
by the time it returns the job holds nothing in this process (the generator is closed,
the tracebacks of the exception that ended it are detached), so its ``finally`` blocks,
``with`` exits and finalizers have run before the parent hears of the end.
:data:`_USER_CODE_CALLERS` names the frames that call user code, for the SIGTERM handler.
"""

from __future__ import annotations

import contextlib
import pickle
import types
from typing import Any

from .._errors import Cancelled
from .._transport import _framing
from . import _context
from ._context import _Context
from ._mainmodule import adopt_main_definitions
from ._report import (
    _cancel_traceback,
    _cancelled_body,
    _chained,
    _error_body,
    _interrupts_cancel,
    prefetch_source,
)
from ._sender import dumps_with_fallback
from ._sourcemap import _restore_filenames


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
            adopt_main_definitions((fn, args))
        with contextlib.suppress(Exception):
            prefetch_source(fn)
        if ctx.ctl[0]:
            raise ctx.make_cancelled("cooperative")
        value = fn(*args)
        if isinstance(value, types.GeneratorType):
            value = _drive(ctx, value)
    except Cancelled as exc:
        body = _cancelled_body(ctx, _cancel_traceback(exc), None)
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
        adopt_main_definitions((initializer, args))
    ctx = _context._current
    assert ctx is not None
    ctx.state = initializer(*args) if initializer is not None else None


_USER_CODE_CALLERS = frozenset({_drive.__code__, _run.__code__, _initialize.__code__})
