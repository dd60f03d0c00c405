"""workstream: run heavy work in a child process, stream its results, stop it cleanly.

Layers, top to bottom; each imports only the layers below it, and nothing in the library
imports the demo or the GUI bridges (``tests/test_layers.py`` checks this and that there
is no import cycle; ``docs/design.md`` draws the same map with one line per module)::

    __main__                  the ``workstream`` command: dispatches to the demo / bench
    demo/                     the demo: an application of the public API only (+ qt)
    qt, tk, _pacing, _qt_compat   GUI bridges: the public API and their toolkit
    workstream (this file)    re-exports the public names (the public API)
    _worker, _pool            Worker: a warm process; Pool: warm processes and a queue
    _api, _checks, _jobview   start(), Job: caller-side checks, a Job's stream and waiting
    _aio                      asyncio for Job (imported on first use)
    _supervisor/              parent side: runner thread, intake, ladder, reaping, guard, registry
    _child/                   runs only in the worker process: start-up, job, report, exit
    _transport/               frames (pure) and fds; imports nothing of ours
    _core/                    job policy as pure code: no I/O, no clock, no threads
    _errors, _outcomes, _options, _linux   leaf modules (stdlib only)

The public classes and functions below show this module as theirs (``workstream.Job``,
not the private module that defines it).
"""

from ._api import Job, start
from ._child._arrays import shared_empty
from ._child._context import (
    cancelled,
    check_cancelled,
    emit,
    in_worker,
    progress,
    request_grace,
    stop_requested,
    worker_state,
)
from ._core._progress import Progress
from ._errors import (
    CallbackError,
    Cancelled,
    ChannelBroken,
    DeliveryError,
    JobTimeout,
    MemoryLimitExceeded,
    NotInWorkerError,
    PoolFull,
    WorkerCrashed,
    WorkerError,
    WorkstreamError,
    describe_exit,
)
from ._options import DEFAULT_GRACE, Options
from ._outcomes import (
    CancelledOutcome,
    CancelRung,
    Completed,
    Crashed,
    Failed,
    JobState,
    Outcome,
    OutputEvent,
)
from ._pool import Pool, PoolStats
from ._worker import Worker

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_GRACE",
    "CallbackError",
    "CancelRung",
    "Cancelled",
    "CancelledOutcome",
    "ChannelBroken",
    "Completed",
    "Crashed",
    "DeliveryError",
    "Failed",
    "Job",
    "JobState",
    "JobTimeout",
    "MemoryLimitExceeded",
    "NotInWorkerError",
    "Options",
    "Outcome",
    "OutputEvent",
    "Pool",
    "PoolFull",
    "PoolStats",
    "Progress",
    "Worker",
    "WorkerCrashed",
    "WorkerError",
    "WorkstreamError",
    "__version__",
    "cancelled",
    "check_cancelled",
    "describe_exit",
    "emit",
    "in_worker",
    "progress",
    "request_grace",
    "shared_empty",
    "start",
    "stop_requested",
    "worker_state",
]


def _present_as_public(names: list[str]) -> None:
    """Make the public classes and functions in ``names`` show ``workstream`` as their
    module (in reprs, tracebacks, pickles and docs). A class's own annotations are
    resolved first, where they were written, so that ``typing.get_type_hints`` still
    finds the names they use."""
    import inspect
    import types
    import typing

    for name in names:
        obj = globals()[name]
        if isinstance(obj, type):
            own = inspect.get_annotations(obj)
            if own:
                hints = typing.get_type_hints(obj, include_extras=True)
                obj.__annotations__ = {key: hints[key] for key in own}
        elif not isinstance(obj, types.FunctionType):
            continue
        obj.__module__ = __name__


_present_as_public(__all__)
