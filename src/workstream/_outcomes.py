"""Job states, the table of allowed transitions, and the outcome values.

A job has exactly one stored state, changed only through :func:`check_transition`.
The terminal states are entered only after the child was reaped and the stream closed.

::

    STARTING ──► RUNNING ──► COMPLETED | FAILED | CRASHED
        │           │
        └──────┬────┘
               ▼
          CANCELLING ──► CANCELLED | COMPLETED | FAILED | CRASHED
    STARTING ──► CANCELLED   (cancelled before the process existed: pid is None)
    STARTING ──► CRASHED     (the process could not be started)

An outcome is a frozen dataclass; ``Outcome`` is their union, so ``match`` can be
exhaustive. Exceptions are raised only when someone asks for the value (``Job.result()``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

from ._errors import Cancelled, WorkerCrashed, WorkstreamError


class JobState(str, enum.Enum):
    """Where a job is in its life. Compares equal to its lower-case name."""

    STARTING = "starting"
    RUNNING = "running"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    CRASHED = "crashed"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    def __str__(self) -> str:
        return self.value


_TERMINAL = frozenset(
    {JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED, JobState.CRASHED}
)

_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.STARTING: frozenset(
        {JobState.RUNNING, JobState.CANCELLING, JobState.CANCELLED, JobState.CRASHED,
         JobState.FAILED, JobState.COMPLETED}
    ),
    JobState.RUNNING: frozenset({JobState.CANCELLING} | _TERMINAL),
    JobState.CANCELLING: _TERMINAL,
    JobState.COMPLETED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CRASHED: frozenset(),
}


class IllegalTransition(AssertionError):
    """An internal error: the code tried a state change the table forbids."""


def check_transition(old: JobState, new: JobState) -> None:
    """Raise :class:`IllegalTransition` unless ``old -> new`` is in the table."""
    if new not in _ALLOWED[old]:
        raise IllegalTransition(f"job state {old.value} -> {new.value} is not allowed")


class CancelRung(str, enum.Enum):
    """How a cancel ended. Compares (and hashes) equal to its string value, so
    ``outcome.rung == "sigterm"`` and dicts keyed by the strings keep working."""

    BEFORE_START = "before-start"
    """Before the process existed (or before a Worker's process took the job)."""
    COOPERATIVE = "cooperative"
    """At a cancellation point (``yield``, ``emit()``, ``check_cancelled()``)."""
    SIGTERM = "sigterm"
    """By SIGTERM: ``Cancelled`` raised at the next bytecode, or the default action."""
    SIGKILL = "sigkill"
    """By SIGKILL (the grace ran out)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    __hash__ = str.__hash__


@dataclass(frozen=True)
class _Common:
    pid: int | None
    """The child's pid, or None if it was never started."""
    items_delivered: int
    """Items handed to the consumer (iteration or ``on_item``) before the stream ended."""
    exit_code: int | None
    """Child exit status as in multiprocessing (negative = signal); None if never started."""
    duration: float
    """Seconds from ``start()`` until the child was reaped (a Worker's job: until its
    final frame arrived, or its process was reaped)."""
    kept_warm: bool | None = field(default=None, kw_only=True)
    """Jobs of a :class:`workstream.Worker` only (None otherwise): True if the worker
    process survived the job and runs the next one; False if the job cost the process
    (it needed SIGTERM/SIGKILL, crashed, or left the channel unclean) and the Worker
    replaces it."""


@dataclass(frozen=True)
class Completed(_Common):
    """``fn`` returned; ``value`` is what it returned."""

    value: object
    kind: Literal["completed"] = "completed"


@dataclass(frozen=True)
class CancelledOutcome(_Common):
    """The job was cancelled.

    ``rung`` says what ended it; ``value`` is what ``fn`` returned if it caught
    ``Cancelled`` and returned anyway (e.g. a checkpoint path), else None.
    ``items_discarded`` counts items dropped by ``cancel(discard=True)``.
    ``stop_latency`` is seconds from the first ``cancel()`` to the child being reaped.
    """

    rung: CancelRung
    value: object = None
    items_discarded: int = 0
    stop_latency: float | None = None
    remote_traceback: str = ""
    kind: Literal["cancelled"] = "cancelled"

    @property
    def error(self) -> Cancelled:
        return Cancelled(f"job was cancelled ({self.rung})")


@dataclass(frozen=True)
class Failed(_Common):
    """``fn`` raised (``error`` is a :class:`WorkerError`), or the parent could not
    unpickle what arrived (``error`` is a :class:`DeliveryError`)."""

    error: WorkstreamError
    kind: Literal["failed"] = "failed"

    @property
    def remote_traceback(self) -> str:
        return getattr(self.error, "remote_traceback", "")


@dataclass(frozen=True)
class Crashed(_Common):
    """The child died without reporting (``error`` says how), or could not be started."""

    error: WorkerCrashed
    signal_name: str | None = None
    kind: Literal["crashed"] = "crashed"


Outcome = Completed | CancelledOutcome | Failed | Crashed
