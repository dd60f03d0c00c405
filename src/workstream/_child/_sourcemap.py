"""File names for code sent by value: tracebacks of a worker point at the real source.

Runs only in the child; imports nothing of ours. cloudpickle replaces the ``co_filename``
of what it pickles by value with ``<dynamic-code>``; :func:`_restore_filenames` puts the
file of the function's module back, so a remote traceback shows files and source lines.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types

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
