"""The cancel ladder as pure code: which step is due now, and when the next one is.

A cancel is carried out in up to three steps, each sent by the runner (the transport)
when this module says it is due:

* ``ASK``: the cooperative request (the control block's cancel flag): at once;
* ``INTERRUPT``: SIGTERM to the child at ``term_at``, repeated every ``term_repeat``
  seconds until the kill (see :class:`Ladder`);
* ``KILL``: SIGKILL to the child and its process group at ``kill_at``.

A child still alive ``grace`` seconds after its final report is killed as well (it has
nothing left to say, and the job must end).

No I/O, no clock, no threads: "now" is an argument, so a test drives the ladder with a
fake clock in zero time. Must not import ``os``, ``signal``, ``select``, ``threading``,
``time`` or anything that touches a process.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Protocol

TERM_REPEAT = 0.1
"""Seconds between two SIGTERMs while the kill is not yet due (see :class:`Ladder`)."""


class Step(enum.Enum):
    """One step of the ladder, as the transport carries it out."""

    ASK = "ask"
    """Set the cooperative cancel flag (seen at the next ``yield`` / ``emit()``)."""
    INTERRUPT = "interrupt"
    """Interrupt the worker (SIGTERM: ``Cancelled`` raised at the next bytecode)."""
    KILL = "kill"
    """Kill the worker and everything it started (SIGKILL to the child and its group)."""


class Request(Protocol):
    """A cancel as requested (by ``cancel()``, ``close()`` or the runner itself).

    Later requests may only move the deadlines earlier (``JobCore.request_cancel``).
    """

    @property
    def requested_at(self) -> float: ...
    @property
    def term_at(self) -> float: ...
    @property
    def kill_at(self) -> float: ...


@dataclass(frozen=True)
class Due:
    """What :meth:`Ladder.due` decided: the steps to take now, in this order, and the
    time of the next decision (None: nothing more will be due without a new fact)."""

    steps: tuple[Step, ...]
    next_at: float | None

    def timeout_ms(self, now: float) -> int | None:
        """Milliseconds from ``now`` until :attr:`next_at`, rounded up (for ``poll()``)."""
        if self.next_at is None:
            return None
        return max(0, math.ceil((self.next_at - now) * 1000))


@dataclass
class Ladder:
    """The steps of one job's cancel that were taken (observed), against the request.

    The request itself is kept apart (``JobCore.cancel``: what was *asked*); this holds
    what was *done*. The transport calls :meth:`due` whenever it wakes, takes the steps
    returned, and sleeps until ``next_at`` at most.

    SIGTERM is repeated every ``term_repeat`` seconds until the kill: CPython runs a
    Python signal handler only between bytecodes, so a SIGTERM that lands just before
    the main thread enters a blocking call (``read()``, a lock) is noticed only when that
    call returns; the next SIGTERM interrupts the call. When the interrupt and the kill
    are due at once, only the kill is taken, so the exit status says what ended it.
    """

    term_repeat: float = TERM_REPEAT
    asked: bool = False
    """True once the cooperative request was taken."""
    interrupted: bool = False
    """True once an interrupt (SIGTERM) was taken."""
    killed: bool = False
    """True once the kill was taken (by the ladder or after the final report)."""
    _next_interrupt: float = 0.0

    def due(
        self,
        request: Request | None,
        now: float,
        *,
        gone: bool = False,
        final_at: float | None = None,
        grace: float = 0.0,
    ) -> Due:
        """Return the steps due at ``now`` and mark them taken; see :class:`Due`.

        ``request``: the cancel requested so far (None: none). ``gone``: the worker has
        exited (nothing is due any more). ``final_at``: when the worker's final report
        arrived (None: not yet); the kill is due ``grace`` seconds after it.
        """
        if gone or self.killed:
            return Due((), None)
        steps: list[Step] = []
        next_at: float | None = None
        if request is not None:
            if not self.asked:
                self.asked = True
                steps.append(Step.ASK)
            kill_at = request.kill_at
            if now >= kill_at:
                self.killed = True
                steps.append(Step.KILL)
                return Due(tuple(steps), None)
            interrupt_at = max(request.term_at, self._next_interrupt)
            if now >= interrupt_at:
                self.interrupted = True
                self._next_interrupt = now + self.term_repeat
                steps.append(Step.INTERRUPT)
                interrupt_at = self._next_interrupt
            next_at = min(kill_at, interrupt_at)
        if final_at is not None:
            kill_after_final = final_at + grace
            if now >= kill_after_final:
                self.killed = True
                steps.append(Step.KILL)
                return Due(tuple(steps), None)
            next_at = kill_after_final if next_at is None else min(next_at, kill_after_final)
        return Due(tuple(steps), next_at)
