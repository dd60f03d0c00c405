"""workstream: run heavy work in a child process, stream its results, stop it cleanly.

Layers (each may import only the ones below it; ``tests/test_layers.py`` checks this)::

    workstream (this file)   re-exports the public names
    _api, _cli               start(), Job; the demo
    _supervisor              parent side: runner thread, ladder, reaping, guard, registry
    _child                   runs only in the worker process
    _transport               frames (pure) and fds
    _errors, _outcomes, _options, _linux   leaf modules
"""

from ._api import Job, start
from ._child._runtime import cancelled, check_cancelled, emit, in_worker, worker_state
from ._errors import (
    CallbackError,
    Cancelled,
    ChannelBroken,
    DeliveryError,
    NotInWorkerError,
    WorkerCrashed,
    WorkerError,
    WorkstreamError,
)
from ._options import DEFAULT_GRACE, Options
from ._outcomes import CancelledOutcome, Completed, Crashed, Failed, JobState, Outcome
from ._worker import Worker

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_GRACE",
    "CallbackError",
    "Cancelled",
    "CancelledOutcome",
    "ChannelBroken",
    "Completed",
    "Crashed",
    "DeliveryError",
    "Failed",
    "Job",
    "JobState",
    "NotInWorkerError",
    "Options",
    "Outcome",
    "Worker",
    "WorkerCrashed",
    "WorkerError",
    "WorkstreamError",
    "__version__",
    "cancelled",
    "check_cancelled",
    "emit",
    "in_worker",
    "start",
    "worker_state",
]
