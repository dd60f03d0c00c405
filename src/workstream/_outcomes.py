"""The outcome values, and the rung a cancel ended at.

An outcome is a frozen dataclass; ``Outcome`` is their union, so ``match`` can be
exhaustive. Exceptions are raised only when someone asks for the value (``Job.result()``).
The job's states and their table live in ``_core._states`` (pure policy) and are
re-exported here, where the public API has always found ``JobState``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

from ._core._states import IllegalTransition as IllegalTransition
from ._core._states import JobState as JobState
from ._core._states import check_transition as check_transition
from ._errors import Cancelled, JobTimeout, WorkerCrashed, WorkstreamError


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
    grace_asked: float = field(default=0.0, kw_only=True)
    """Seconds of extra grace the worker asked for (``workstream.request_grace``), in all."""
    grace_granted: float = field(default=0.0, kw_only=True)
    """Seconds of it granted (at most the job's ``max_grace``)."""
    timed_out: bool = field(default=False, kw_only=True)
    """True if the job's ``timeout=`` ran out and workstream cancelled it for that (the
    outcome is then ``cancelled``, unless the job ended on its own during the grace)."""


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
        if self.timed_out:
            return JobTimeout(f"job timed out: it was cancelled ({self.rung})")
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
    fault_stack: str | None = None
    """For a fatal signal (SIGSEGV, SIGFPE, SIGABRT, SIGBUS, SIGILL): the Python stack of
    every thread at the crash, as the child's ``faulthandler`` wrote it; else None."""
    stderr_tail: tuple[str, ...] = ()
    """The last lines the child wrote to its stderr (at most
    ``STDERR_TAIL_LINES``, oldest first), with ``output="capture"`` or ``"logging"``;
    empty with ``output="inherit"`` (the child's stderr is the application's own)."""


Outcome = Completed | CancelledOutcome | Failed | Crashed


# -- OUTPUT: what the worker printed or logged ----------------------------------------

STDERR_TAIL_LINES = 20
"""Lines of the child's stderr a crash outcome carries (``Crashed.stderr_tail``)."""


@dataclass(frozen=True)
class OutputEvent:
    """One line the worker wrote, or one logging record it emitted (``output=``).

    ``stream`` is ``"stdout"`` or ``"stderr"`` (a whole line, without its newline:
    Python's ``print``, C code writing to fd 1/2, the worker's subprocesses) or ``"log"``
    (a ``logging`` record of the worker: ``logger``, ``level``, ``levelname`` set, and
    ``text`` its formatted message, with the traceback if it had one). ``time`` is the
    wall-clock time (``time.time()``) the line was read by the parent, or a record's
    creation time in the worker.
    """

    stream: Literal["stdout", "stderr", "log"]
    text: str
    time: float
    logger: str | None = None
    """A log record's logger name in the worker (None for lines)."""
    level: int | None = None
    """A log record's level (``logging.WARNING``...; None for lines)."""
    levelname: str | None = None
    """A log record's level name (None for lines)."""
    pid: int | None = None
    """The worker process that wrote it."""
