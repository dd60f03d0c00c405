"""What ``start()`` and ``Worker`` check on the caller's thread before any process
exists: the platform, that this is no worker, the function, and options mistaken for
its arguments. Each check raises a specific exception that names the call."""

from __future__ import annotations

import contextlib
import functools
import inspect
import multiprocessing
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from ._child._context import in_worker
from ._errors import UNGUARDED_MAIN_EXIT


def check_can_start(what: str) -> None:
    """Raise unless this process may start workers (POSIX, not inside a worker)."""
    if os.name != "posix":
        raise NotImplementedError(
            "workstream needs POSIX process groups and signals; Windows is not supported yet"
        )
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        _stop_unguarded_main(what)
    if in_worker():
        raise RuntimeError(
            f"{what} cannot be called inside a workstream worker; use "
            "multiprocessing or subprocess there (the job's process group is cleaned up "
            "with it)"
        )


def check_options_are_not_arguments(
    fn: Callable[..., Any], args: tuple[Any, ...], options: dict[str, Any], what: str
) -> None:
    """Raise TypeError if an option passed to ``what`` is also a required parameter of
    ``fn`` that ``args`` leave unfilled: the caller meant it for ``fn`` (``start(greet,
    name="bob")``), and the worker would fail with a missing argument."""
    if not options:
        return
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (some builtins): nothing to say
        return
    try:
        bound = sig.bind_partial(*args)
    except TypeError:
        return  # too many arguments: fn's own error in the worker says it best
    empty = inspect.Parameter.empty
    clashing = [
        p.name for p in sig.parameters.values()
        if p.name in options and p.name not in bound.arguments and p.default is empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if clashing:
        name = clashing[0]
        fn_name = describe(fn)
        raise TypeError(
            f"{what}: {name!r} is an option of {what} (its keyword arguments are "
            f"options), but {fn_name}() has a required parameter {name!r} that this call "
            f"leaves unfilled; pass {fn_name}'s argument positionally or with "
            f"functools.partial({fn_name}, {name}=...)"
        )


def _stop_unguarded_main(what: str) -> NoReturn:
    """This process is a worker still importing the application's main module
    (multiprocessing sets ``_inheriting`` then): the script calls ``start()`` at import
    time. Running on would run the whole script again in the worker (and start a worker
    from it); say why on stderr and exit with the status the parent recognises."""
    main = getattr(sys.modules.get("__mp_main__"), "__file__", None) or "the main module"
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
    with contextlib.suppress(OSError):
        os.write(2, (
            f"workstream: {what} was called while a worker process imported {main}; "
            "guard the script's top-level code with 'if __name__ == \"__main__\":'\n"
        ).encode())
    os._exit(UNGUARDED_MAIN_EXIT)


def check_fn(fn: object, what: str) -> None:
    """Raise TypeError unless ``fn`` is a plain or generator callable."""
    if not callable(fn):
        raise TypeError(f"{what} needs a callable, not {type(fn).__name__}")
    target = fn.func if isinstance(fn, functools.partial) else fn
    if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
        raise TypeError(
            f"{what} runs plain and generator functions; {describe(fn)} is async. "
            "Wrap it: def run(*a): return asyncio.run(fn(*a))"
        )


def describe(fn: Callable[..., Any]) -> str:
    if isinstance(fn, functools.partial):
        return describe(fn.func)
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
