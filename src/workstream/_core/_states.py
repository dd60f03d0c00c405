"""The job and Worker state machines: states, allowed moves, one place that moves them.

As in trio, what was *requested* (a cancel with its deadlines; a Worker's close) is kept
apart from what was *observed* (the state the job or the Worker is in). A request never
changes the observed state by itself except where the table says so (a job's first
cancel moves it to CANCELLING); the observed state moves only on facts the owner saw.

The job's states (``JobState``, public through ``workstream``) and the Worker's are both
here, each with its table of allowed moves. An illegal move raises ``IllegalTransition``:
an internal error.

Job states::

    QUEUED ──► STARTING   (a Pool's job: a warm process took it from the queue)
    QUEUED ──► CANCELLING ──► CANCELLED   (cancelled while queued: rung before-start)
    STARTING ──► RUNNING ──► COMPLETED | FAILED | CRASHED
        │           │
        └──────┬────┘
               ▼
          CANCELLING ──► CANCELLED | COMPLETED | FAILED | CRASHED
    STARTING ──► CANCELLED   (cancelled before the process existed: pid is None)
    STARTING ──► CRASHED     (the process could not be started)

The terminal states are entered only after the child was reaped and the stream closed.

No I/O, no clock, no threads: "now" is an argument; the owner holds the lock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class JobState(str, enum.Enum):
    """Where a job is in its life. Compares equal to its lower-case name."""

    QUEUED = "queued"
    """A :class:`workstream.Pool`'s job waiting in the pool's queue (no process yet)."""
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
    JobState.QUEUED: frozenset({JobState.STARTING, JobState.CANCELLING} | _TERMINAL),
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


@dataclass
class CancelRequest:
    """A job's cancel as requested so far (later requests only tighten it)."""

    requested_at: float
    """When the first cancel was requested."""
    term_at: float
    """When the worker is to be interrupted (SIGTERM)."""
    kill_at: float
    """When the worker is to be killed (SIGKILL): the end of the grace."""
    discard: bool
    """Drop items not yet handed out, and those still to come."""


class JobMachine:
    """One job's observed state and its requested cancel; see the module docstring."""

    def __init__(self, queued: bool = False) -> None:
        self.state = JobState.QUEUED if queued else JobState.STARTING
        """Observed: moved only through :meth:`_move`, against the table above."""
        self.cancel: CancelRequest | None = None
        """Requested: None until the first cancel."""
        self.grace_granted = 0.0
        """Extra grace granted to the worker so far (``workstream.request_grace``): every
        cancel's deadlines are this much later."""

    def request_cancel(self, now: float, grace: float, term_delay: float, discard: bool) -> bool:
        """Record a cancel ``grace`` seconds long (SIGTERM after ``term_delay``), plus the
        extra grace granted so far, or tighten an earlier one (deadlines only move
        earlier, and the extra grace is not added: ``cancel(grace=0)`` kills at once;
        ``discard`` only turns on). Return False, changing nothing, once the job is
        terminal."""
        if self.state.is_terminal:
            return False
        req = self.cancel
        extra = self.grace_granted
        if req is None:
            self.cancel = CancelRequest(
                now, now + term_delay + extra, now + grace + extra, discard
            )
            self._move(JobState.CANCELLING)
        else:
            req.term_at = min(req.term_at, now + term_delay)
            req.kill_at = min(req.kill_at, now + grace)
            req.discard = req.discard or discard
        return True

    def grant_grace(self, granted: float, cap: float) -> float:
        """Record that the worker was granted ``granted`` seconds of extra grace in all
        (capped at ``cap``, the job's ``max_grace``; the total only grows) and move the
        cancel's deadlines (SIGTERM and SIGKILL), if any, later by the increase; return
        the increase. Changes nothing once the job is terminal."""
        if self.state.is_terminal:
            return 0.0
        more = min(granted, cap) - self.grace_granted
        if not more > 0:
            return 0.0
        self.grace_granted += more
        req = self.cancel
        if req is not None:
            req.term_at += more
            req.kill_at += more
        return more

    def dequeued(self) -> bool:
        """A Pool's queued job was taken by a warm process: STARTING. False (no move) if
        it is no longer queued (a cancel came first: CANCELLING, or it ended)."""
        if self.state is JobState.QUEUED:
            self._move(JobState.STARTING)
            return True
        return False

    def started(self) -> None:
        """The worker took the job (READY, or a warm worker got it): RUNNING, unless a
        cancel came first (then it stays CANCELLING)."""
        if self.state is JobState.STARTING:
            self._move(JobState.RUNNING)

    def end(self, state: JobState) -> None:
        """Enter the terminal ``state`` (the outcome's kind), once."""
        if not state.is_terminal:
            raise IllegalTransition(f"job state {state.value} is not terminal")
        self._move(state)

    def _move(self, new: JobState) -> None:
        if new is not self.state:
            check_transition(self.state, new)
            self.state = new


class WorkerState(str, enum.Enum):
    """Where a ``workstream.Worker`` is (observed by its supervisor thread)."""

    NO_PROCESS = "no-process"
    """No process: none started yet, or the last one was lost (replaced on demand)."""
    BOOTING = "booting"
    """A process is being started and runs its initializer."""
    IDLE = "idle"
    """A warm process waits for a job."""
    RUNNING = "running"
    """A job runs on the warm process."""
    BROKEN = "broken"
    """The initializer failed: every job is refused with its error."""
    CLOSING = "closing"
    """close() was requested and is being carried out (the job cancelled, the process
    retired)."""
    CLOSED = "closed"
    """Everything was reaped; the thread is done."""

    def __str__(self) -> str:
        return self.value


_WORKER_ALLOWED: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.NO_PROCESS: frozenset({WorkerState.BOOTING, WorkerState.CLOSING}),
    WorkerState.BOOTING: frozenset(
        {WorkerState.IDLE, WorkerState.NO_PROCESS, WorkerState.BROKEN, WorkerState.CLOSING}
    ),
    WorkerState.IDLE: frozenset(
        {WorkerState.RUNNING, WorkerState.NO_PROCESS, WorkerState.CLOSING}
    ),
    WorkerState.RUNNING: frozenset(
        {WorkerState.IDLE, WorkerState.NO_PROCESS, WorkerState.CLOSING}
    ),
    WorkerState.BROKEN: frozenset({WorkerState.CLOSING}),
    WorkerState.CLOSING: frozenset({WorkerState.CLOSED}),
    WorkerState.CLOSED: frozenset(),
}


def check_worker_transition(old: WorkerState, new: WorkerState) -> None:
    """Raise :class:`IllegalTransition` unless ``old -> new`` is in the Worker's table."""
    if new not in _WORKER_ALLOWED[old]:
        raise IllegalTransition(f"worker state {old.value} -> {new.value} is not allowed")


class WorkerMachine:
    """A Worker's observed state and its requested close; see the module docstring."""

    def __init__(self) -> None:
        self.state = WorkerState.NO_PROCESS
        """Observed: moved only through :meth:`move`, against the table."""
        self.close_requested = False
        """Requested: ``close()`` was called (the thread carries it out when it wakes)."""
        self.close_grace: float | None = None
        """Requested: the smallest ``close(grace=...)`` so far; caps every job's grace."""

    def move(self, new: WorkerState) -> None:
        """Enter ``new`` (no-op if already there); IllegalTransition if not allowed."""
        if new is not self.state:
            check_worker_transition(self.state, new)
            self.state = new

    def request_close(self, grace: float | None) -> None:
        """Record ``close(grace=...)``: later calls can only shorten the grace."""
        self.close_requested = True
        if grace is not None:
            old = self.close_grace
            self.close_grace = grace if old is None else min(old, grace)

    def job_grace(self, grace: float) -> float:
        """A job's grace once close() was requested: its own, capped by close's."""
        cap = self.close_grace
        return grace if cap is None else min(cap, grace)
