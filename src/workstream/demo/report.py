"""The demo's report, in one place for the terminal and the window.

What the report says comes from the job's :data:`workstream.Outcome` and from what the
demo saw: the items received (:class:`Received`), who pressed Stop and when
(:class:`StopPresses`), and the processes left behind (:func:`leftover_processes`).
:func:`report_rows` turns them into (label, value) rows; the terminal prints them as a
table, the window as ``label: value`` lines. How a cancelled job stopped is worded from
one table (:data:`RUNG_WORDS`), and an exit status by the library's own
:func:`workstream.describe_exit`.

Imports only workstream's public API and the standard library (psutil if installed).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workstream import CancelledOutcome, Completed, Crashed, Failed, Outcome, describe_exit

EXIT_OK = 0
"""The demo's exit status after completion or a clean stop."""
EXIT_FAILED = 1
"""The job failed or crashed, or a process was left behind."""
EXIT_USAGE = 2
"""A usage error, missing dependencies, or no display for the window."""
EXIT_INTERRUPTED = 130
"""Ctrl-C outside the live view (before the job started)."""

HELPER_MARKERS = ("forkserver", "resource_tracker", " -I -S ")
"""Command-line fragments of workstream's and multiprocessing's own helper processes
(the fork server, the resource tracker, the guard: ``python -I -S ...``, whether it runs
``-c SOURCE``, ``-m MODULE`` or a file): not left-overs of a job."""

RUNG_WORDS: Mapping[str, str] = {
    "before-start": "stopped before the worker process had started",
    "cooperative": "stopped at a yield",
    "sigterm": "ended by SIGTERM",
    "sigkill": "killed (SIGKILL)",
}
"""How a cancelled job stopped, by its outcome's ``rung``: the one wording of a rung."""


def rung_name(outcome: CancelledOutcome) -> str:
    """The outcome's rung as its public string (``"sigterm"``), whether the library
    gives it as a string or as a string-valued enum."""
    rung: Any = outcome.rung
    return str(getattr(rung, "value", rung))


@dataclass
class Received:
    """What the demo saw of the stream: how many items, and the last one."""

    items: int = 0
    last: Mapping[str, Any] | None = None

    def add(self, items: Sequence[Any]) -> None:
        """Count ``items`` (training steps), keeping the last."""
        if items:
            self.items += len(items)
            self.last = items[-1]


@dataclass
class StopPresses:
    """Who pressed Stop and when (``time.monotonic()``); safe from any thread.

    The first press asks the job to stop (SIGTERM ``term_after`` s later, SIGKILL at
    ``grace``); a kill press (a second Ctrl-C, "Kill now") cuts the grace short.
    ``kill_label`` names that press in the report ("the second Ctrl-C").
    """

    grace: float
    term_after: float
    kill_label: str
    by: str | None = None
    """What pressed Stop (the kill press, if there was one); None if nothing did."""
    at: float | None = None
    """When Stop was first pressed; None if never."""
    kill_at: float | None = None
    """When a kill press cut the grace short; None if none did."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def press(self, by: str, now: float, *, kill: bool = False) -> None:
        """Record a press by ``by`` at ``now``: the first one names who stopped the job,
        and so does a kill press (``kill``)."""
        with self._lock:
            if self.by is None or kill:
                self.by = by
            if self.at is None:
                self.at = now

    def kill_reached(self, now: float) -> None:
        """Record that a kill press at ``now`` found the job still running."""
        with self._lock:
            if self.kill_at is None:
                self.kill_at = now


@dataclass(frozen=True)
class Leftovers:
    """Processes the demo left behind: ``count`` of them, described in ``detail``."""

    count: int
    detail: str


def leftover_processes(pid: int | None) -> Leftovers:
    """Count the processes still alive after the job: the worker itself if its pid
    still exists, plus (with psutil) every live descendant of this process that is not
    one of the helpers in :data:`HELPER_MARKERS`. Their descendants do count: the fork
    server's children are workers."""
    found: list[str] = []
    if pid is not None and pid_exists(pid):
        found.append(f"worker {pid}")
    others = _unexpected_descendants()
    if others is None:
        how = "worker pid checked; install psutil to check all child processes"
    else:
        found += [p for p in others if not p.startswith(f"{pid} ")]
        how = "worker pid and all child processes checked"
    detail = ", ".join(found) if found else how
    return Leftovers(len(found), detail)


def pid_exists(pid: int) -> bool:
    """True if a process with this pid exists (``os.kill(pid, 0)`` does not say
    ProcessLookupError)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unexpected_descendants() -> list[str] | None:
    """Live descendants of this process other than the helpers ("pid cmdline" each);
    None if psutil is not installed."""
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return None
    me = psutil.Process()
    helpers = {p.pid for p in me.children(recursive=False) if _is_helper(p)}
    found = []
    for proc in me.children(recursive=True):
        if proc.pid in helpers:
            continue
        try:
            cmd = " ".join(proc.cmdline())[:60]
        except psutil.ZombieProcess:
            cmd = "(zombie)"
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            cmd = "(?)"
        found.append(f"{proc.pid} {cmd}")
    return found


def _is_helper(proc: Any) -> bool:
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:
        return False
    return any(marker in cmd for marker in HELPER_MARKERS)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def describe_stop(outcome: CancelledOutcome, presses: StopPresses) -> str:
    """Say in plain words how a cancelled job ended, from its outcome and what the Stop
    presses did and when (SIGTERM is sent ``presses.term_after`` s after the first): the
    report's one row on it (it has no row with the bare rung)."""
    rung = rung_name(outcome)
    latency = outcome.stop_latency
    term = presses.term_after
    if rung == "before-start" or latency is None or presses.at is None:
        return RUNG_WORDS.get(rung, rung)  # before start, or cancelled by workstream itself
    kill_after = None if presses.kill_at is None else presses.kill_at - presses.at
    if rung == "cooperative" and outcome.items_delivered == 0:
        # Each item is sent before its yield checks for a cancel: a job that stopped
        # cooperatively with no item sent saw Stop before the function had yielded once.
        return f"stopped before its first item, {_ms(latency)} after Stop"
    if rung == "cooperative":
        return f"{RUNG_WORDS[rung]} {_ms(latency)} after Stop"
    if rung == "sigterm":
        return (f"did not stop within {term:g} s, so it was sent SIGTERM, and stopped "
                f"{_ms(max(latency - term, 0.0))} later")
    killed = RUNG_WORDS["sigkill"]
    if kill_after is not None and kill_after < term:
        return (f"{killed} at {presses.kill_label}, {_ms(kill_after)} after Stop, "
                "before SIGTERM was due")
    sent_term = f"did not stop within {term:g} s, so it was sent SIGTERM; "
    if kill_after is not None and kill_after < presses.grace:
        return sent_term + f"still running at {presses.kill_label}, so it was {killed}"
    return sent_term + (f"still running at the end of the {presses.grace:g} s grace, so it "
                        f"was {killed}")


def describe_kill_press(outcome: Outcome, presses: StopPresses) -> str | None:
    """After a kill press that found the job still running: say whether it killed the
    worker or the worker had stopped by itself first; None if there was no such press."""
    if presses.kill_at is None or not isinstance(outcome, CancelledOutcome):
        return None
    rung = rung_name(outcome)
    label = presses.kill_label
    if rung == "sigkill":
        return f"{label[0].upper()}{label[1:]} killed the worker (SIGKILL)."
    return (f"The worker had already {RUNG_WORDS.get(rung, rung)} when {label} came: "
            "nothing was killed.")


def first_paragraph(error: BaseException) -> str:
    """An error's message up to its first blank line (not the remote traceback)."""
    return str(error).split("\n\n", 1)[0]


def report_rows(
    outcome: Outcome, received: Received, presses: StopPresses, left: Leftovers,
) -> list[tuple[str, str]]:
    """The report as (label, value) rows, in display order."""
    rows = [("outcome", outcome.kind), ("items received", str(received.items))]
    if isinstance(outcome, Completed):
        rows += _completed_rows(outcome.value)
    elif received.last is not None:
        last = received.last
        rows.append(("last loss", f"{last['loss']:.4f} at step {last['step']} "
                                  f"(accuracy {last['accuracy']:.1%})"))
    if isinstance(outcome, CancelledOutcome):
        rows.append(("stopped by", presses.by or "workstream (not the demo)"))
        if outcome.stop_latency is not None:
            rows.append(("stop latency", f"{_ms(outcome.stop_latency)} "
                                         f"(grace {presses.grace:g} s)"))
        rows.append(("how it stopped", describe_stop(outcome, presses)))
    if isinstance(outcome, (Failed, Crashed)):
        rows.append(("error", first_paragraph(outcome.error)))
    pid = "never started" if outcome.pid is None else f"pid {outcome.pid}"
    rows.append(("child", f"{pid}, {describe_exit(outcome.exit_code)}"))
    rows.append(("duration", f"{outcome.duration:.2f} s"))
    rows.append(("processes left", f"{left.count} ({left.detail})"))
    return rows


def _completed_rows(value: object) -> list[tuple[str, str]]:
    if not isinstance(value, dict):
        return [("result", repr(value))]
    return [
        ("steps", str(value.get("steps"))),
        ("final loss", f"{value.get('final_loss', float('nan')):.4f}"),
        ("final accuracy", f"{value.get('final_accuracy', float('nan')):.1%}"),
        ("worker time", f"{value.get('seconds', float('nan')):.2f} s"),
    ]


def exit_status(outcome: Outcome, left: Leftovers) -> int:
    """0 after completion or a clean stop; 1 if the job failed or crashed or a process
    was left behind."""
    if isinstance(outcome, (Failed, Crashed)) or left.count:
        return EXIT_FAILED
    return EXIT_OK
