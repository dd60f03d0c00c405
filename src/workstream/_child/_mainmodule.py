"""Make what the parent's main script sent by value findable by name in the child.

cloudpickle sends the functions and classes of the parent's ``__main__`` by value (so
lambdas, closures and code in a notebook work), while multiprocessing has already
imported the script in the child as its ``__main__`` (forkserver, spawn; fork keeps the
parent's). The job then holds copies that plain ``pickle`` cannot name: a DataLoader or a
``multiprocessing.Pool`` inside the job, pickling a ``Dataset`` or a function of the
script by reference, fails with "it's not the same object as __main__.X".
:func:`adopt_main_definitions` binds those copies under their names in the child's
``__main__``, so pickle names them, and a process the job starts finds the script's own
definition by the same name, as it would under plain multiprocessing.

Runs only in the child; imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types

_MAIN = "__main__"
_MAX_VISITS = 10_000  # a job's arguments may hold a million values: look at the first few


def adopt_main_definitions(root: object) -> None:
    """Bind every top-level function and class of the parent's ``__main__`` reachable
    from ``root`` (the job's function and arguments: their globals, closures, methods,
    the types of argument values) under its name in the child's ``__main__``.

    Only names at the top of the script (``__qualname__`` without a dot) are bound;
    lambdas and nested definitions have no name pickle could use. Looks at no more than
    ``_MAX_VISITS`` objects (a long list argument is not walked to its end). Never
    raises for an odd object: what cannot be inspected is skipped.
    """
    main = sys.modules.get(_MAIN)
    if not isinstance(main, types.ModuleType):
        return
    seen: set[int] = set()
    todo = [root]
    budget = _MAX_VISITS
    while todo and budget:
        budget -= 1
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (tuple, list)):
            todo.extend(obj)
        elif isinstance(obj, dict):
            todo.extend(obj.values())
        elif isinstance(obj, functools.partial):
            todo.append(obj.func)
            todo.extend(obj.args)
            todo.extend(obj.keywords.values())
        elif isinstance(obj, (types.MethodType, classmethod, staticmethod)):
            todo.append(obj.__func__)
        elif isinstance(obj, type):
            if _adopt(main, obj):
                todo.extend(vars(obj).values())
        elif isinstance(obj, types.FunctionType):
            if _adopt(main, obj):
                todo.extend(
                    v for v in obj.__globals__.values()
                    if isinstance(v, (types.FunctionType, type))
                )
                for cell in obj.__closure__ or ():
                    with contextlib.suppress(ValueError):
                        todo.append(cell.cell_contents)
        else:
            todo.append(type(obj))


def _adopt(main: types.ModuleType, obj: type | types.FunctionType) -> bool:
    """Bind ``obj`` in ``main`` if it is a top-level definition of the parent's main
    script; True if it came from there (bound or not), so its insides are walked too."""
    if getattr(obj, "__module__", None) != _MAIN:
        return False
    name = getattr(obj, "__qualname__", "")
    if isinstance(name, str) and name.isidentifier():
        with contextlib.suppress(Exception):
            setattr(main, name, obj)
    return True
