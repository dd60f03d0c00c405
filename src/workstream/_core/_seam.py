"""The seam: what a runner (a transport) offers the core, and what it hands to it.

The core decides; a runner carries out. A runner for a local child process
(``_supervisor._runner.JobRunner``) is one; a pool of warm processes or a Ray actor
would be another, without copying any policy. The data flow (docs/design.md, "The
seam")::

    user threads ──request──► JobCore (lock) ◄──deliver(items)── runner ◄── worker
                               │ cancel (requested)              │  ▲
                               ▼                                 │  │ ask / interrupt / kill
                     _core._ladder.Ladder.due(request, now) ─────┘  │ (Transport)
                                                                    │
    Outcome ◄── _core._rules.decide(Facts) ◄── facts the runner saw (final report,
                                                exit status, steps taken, counts)

A runner must:

* **deliver items**: hand decoded batches to ``JobCore.deliver`` (which applies the
  backpressure and discard rules), and stop reading while ``should_pause_reading()``;
* **deliver the final report**: record it as a :class:`_core._rules.Final` and its
  arrival time (``final_at`` for :meth:`Ladder.due`);
* offer the three steps of the ladder and the one observation below
  (:class:`Transport`), and call :func:`take_steps` with what :meth:`Ladder.due`
  returned whenever it wakes, sleeping no longer than ``Due.next_at``;
* once the worker is gone (or, for a warm one, its job ended), fill a
  :class:`_core._rules.Facts` and publish ``decide(facts)`` with ``JobCore.finish``.
"""

from __future__ import annotations

from typing import Protocol

from ._ladder import Due, Step


class Transport(Protocol):
    """The steps a runner can take on its worker; each returns at once, never raises
    for a worker that is already gone, and may be called again (idempotent in effect).
    """

    def ask(self) -> None:
        """Ask the worker to stop at its next cancellation point (cooperative)."""

    def interrupt(self) -> None:
        """Interrupt the worker's current code (SIGTERM: ``Cancelled`` at the next
        bytecode, its ``finally`` blocks run)."""

    def kill(self) -> None:
        """End the worker and everything it started, now (SIGKILL to the child and its
        process group)."""

    def gone(self) -> bool:
        """True once the worker is known to have exited (nothing more can be taken)."""


def take_steps(due: Due, transport: Transport) -> None:
    """Carry out ``due.steps`` in order on ``transport``."""
    for step in due.steps:
        if step is Step.ASK:
            transport.ask()
        elif step is Step.INTERRUPT:
            transport.interrupt()
        else:
            transport.kill()
