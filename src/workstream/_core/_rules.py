"""The outcome rules as pure code: from the facts a runner gathered to the ``Outcome``.

A runner (the transport: a local child process today) records what it *saw* in a
:class:`Facts` — the final report if one arrived, the exit status, which steps of the
cancel ladder it took, what was wrong with the channel, the counts — and
:func:`decide` turns them into the job's outcome. The table in docs/design.md ("How the
outcome is decided") is this function, row by row, and ``tests/test_core_rules.py``
checks it row by row.

No I/O, no clock, no threads: times are fields of the facts. Unpickling the final
report's payloads happens here (it is part of deciding: a value that cannot be
unpickled makes the job ``failed``), and runs no I/O of ours.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import pickle
from dataclasses import dataclass
from typing import Any

from .._errors import (
    UNGUARDED_MAIN_EXIT,
    ChannelBroken,
    DeliveryError,
    MemoryLimitExceeded,
    WorkerCrashed,
    WorkerError,
    WorkstreamError,
)
from .._outcomes import CancelledOutcome, CancelRung, Completed, Crashed, Failed, Outcome
from ._faults import innermost_user_frame

SIGTERM_EXIT = -15
"""Exit status of a process ended by SIGTERM's default action (15 on every POSIX system)."""

_loads = pickle.loads


class FinalKind(enum.Enum):
    """Which final report the worker sent (one per job, its last frame)."""

    RESULT = "result"
    """``fn`` returned; the body is the pickled value."""
    ERROR = "error"
    """``fn`` raised; the body is a pickled report dict (type, message, traceback, exc)."""
    CANCELLED = "cancelled"
    """``fn`` unwound from ``Cancelled``; the body is a pickled report (by, traceback, value)."""


@dataclass(frozen=True)
class Final:
    """The worker's final report, as it arrived (not yet unpickled)."""

    kind: FinalKind
    body: bytes | memoryview


@dataclass(frozen=True, kw_only=True)
class Facts:
    """What a runner saw of one job; every field is an observation, none a decision.

    ``now`` is when the outcome is decided (the worker was reaped, or a warm worker's
    job ended); ``duration`` and ``stop_latency`` are measured to it.
    """

    started_at: float
    """When ``start()`` was called."""
    now: float
    """When the job ended (the outcome's moment)."""
    pid: int | None = None
    """The worker's pid; None if no process was ever started for the job."""
    exit_code: int | None = None
    """The worker's exit status (negative: killed by that signal); None if it is alive
    (a warm worker kept for the next job) or was never started."""
    items_delivered: int = 0
    items_discarded: int = 0
    cancel_requested_at: float | None = None
    """When the first cancel was requested (by anyone in workstream); None: never."""
    launched: bool = True
    """False if the job never reached a process: cancelled first (or its Worker closed
    first), refused, or its process could not be started."""
    refused: WorkstreamError | None = None
    """The job was refused before it ran (a Worker whose initializer failed)."""
    start_error: str | None = None
    """The process could not be started: ``"OSError: ..."``."""
    internal_error: str | None = None
    """A bug of workstream's own runner ended the job (the worker was killed)."""
    channel_error: str | None = None
    """The worker sent bytes that are not our protocol (its detail); it was killed."""
    delivery_error: DeliveryError | None = None
    """An item could not be unpickled here; the job was cancelled."""
    final: Final | None = None
    """The final report, if one arrived."""
    interrupted: bool = False
    """The ladder interrupted the worker (SIGTERM sent)."""
    killed: bool = False
    """The ladder, or the kill after a final report, killed the worker (SIGKILL sent)."""
    torn_bytes: int = 0
    """Bytes of an incomplete frame left when the channel ended (dropped)."""
    ready_seen: bool = True
    """The worker's READY frame arrived (it got as far as running our code)."""
    main_file: str | None = None
    """The application's ``__main__.__file__`` (named when a worker stopped importing it)."""
    kept_warm: bool | None = None
    """A Worker's job: whether its process stays for the next job (None: not a Worker's)."""
    fault_stack: str | None = None
    """What the worker's faulthandler wrote at a fatal signal (every thread's stack)."""
    memory_exceeded: bool = False
    """The runner SIGKILLed the worker's process group for going over ``max_memory``."""
    memory_limit: int | None = None
    """``max_memory`` (bytes), if set."""
    memory_peak: int | None = None
    """The most the group held at one measurement (bytes); None: not measured."""
    kernel_oom_kill: bool = False
    """The worker died by a SIGKILL nobody in workstream sent while the kernel's count of
    out-of-memory kills rose (a heuristic: another process may have been the victim)."""
    grace_asked: float = 0.0
    """Seconds of extra grace the worker asked for (``workstream.request_grace``)."""
    grace_granted: float = 0.0
    """Seconds of extra grace granted to it (capped at ``max_grace``)."""
    timed_out: bool = False
    """The job's ``timeout=`` ran out and the runner cancelled it for that."""
    stderr_tail: tuple[str, ...] = ()
    """The last lines of the worker's stderr (``output=`` capture / logging only)."""


def stopped_from_outside(facts: Facts) -> bool:
    """True if the worker reported a cancel that nobody in workstream requested: it
    raised ``Cancelled`` on a SIGTERM sent from outside (``kill PID``)."""
    final = facts.final
    return (
        final is not None and final.kind is FinalKind.CANCELLED
        and facts.cancel_requested_at is None
    )


def keeps_worker(facts: Facts, *, gone: bool, job_written: bool) -> bool:
    """Whether a warm worker process may run the next job after this one.

    Only if it is alive, ended the job with its final report, got the whole job, needed
    no signal, and left the channel clean (nothing torn, nothing malformed, no cancel
    from outside that it obeyed).
    """
    return (
        not gone and job_written and facts.final is not None
        and not facts.interrupted and not facts.killed and not facts.memory_exceeded
        and facts.channel_error is None and facts.torn_bytes == 0
        and not stopped_from_outside(facts)
    )


def decide(facts: Facts) -> Outcome:
    """Return the job's outcome for ``facts`` (see the table in docs/design.md).

    Never raises for anything a worker can send: a malformed report is a
    ``ChannelBroken`` crash, a value that cannot be unpickled a ``DeliveryError``.
    """
    common: dict[str, Any] = {
        "pid": facts.pid,
        "items_delivered": facts.items_delivered,
        "exit_code": facts.exit_code,
        "duration": facts.now - facts.started_at,
        "kept_warm": facts.kept_warm,
        "grace_asked": facts.grace_asked,
        "grace_granted": facts.grace_granted,
        "timed_out": facts.timed_out,
    }
    if facts.refused is not None:
        return Failed(**common, error=facts.refused)
    if facts.start_error is not None:
        return _crashed(facts, common, facts.start_error)
    if not facts.launched:  # cancelled (or its Worker closed) before a process took it
        return _cancelled(facts, common, CancelRung.BEFORE_START)
    if facts.internal_error is not None:
        return _crashed(
            facts, common, f"internal error in workstream's runner: {facts.internal_error}"
        )
    if facts.channel_error is not None:
        err = ChannelBroken(facts.pid, facts.exit_code, facts.channel_error)
        return _with_stderr_tail(facts, Crashed(**common, error=err, signal_name=err.signal_name))
    if facts.delivery_error is not None:
        return Failed(**common, error=facts.delivery_error)
    if facts.memory_exceeded:  # even if fn returned meanwhile: the group went over
        over = MemoryLimitExceeded(
            facts.pid, facts.exit_code, limit=facts.memory_limit or 0,
            peak=facts.memory_peak or 0,
        )
        return Crashed(**common, error=over, signal_name=over.signal_name)
    if facts.final is not None:
        return _from_final(facts, facts.final, common)
    if facts.cancel_requested_at is not None:
        if facts.interrupted and facts.exit_code == SIGTERM_EXIT:
            return _cancelled(facts, common, CancelRung.SIGTERM)
        if facts.killed:
            return _cancelled(facts, common, CancelRung.SIGKILL)
    if facts.exit_code == UNGUARDED_MAIN_EXIT and not facts.ready_seen and not facts.torn_bytes:
        return _crashed(facts, common, "", summary=_unguarded_main_summary(facts))
    if facts.kernel_oom_kill and not facts.torn_bytes:
        return _crashed(facts, common, "", summary=(
            f"worker process {facts.pid} was killed by the kernel's out-of-memory killer "
            f"(SIGKILL (-9); the kernel's OOM kill count rose while it ran)"
        ))
    detail = ""
    if facts.torn_bytes:
        detail = f"it died in the middle of writing a frame ({facts.torn_bytes} bytes dropped)"
    elif facts.cancel_requested_at is not None:
        detail = "it died on its own while being cancelled"
    return _crashed(facts, common, detail)


def _stop_latency(facts: Facts) -> float | None:
    at = facts.cancel_requested_at
    return None if at is None else facts.now - at


def _cancelled(
    facts: Facts, common: dict[str, Any], rung: CancelRung, value: object = None,
    remote_traceback: str = "",
) -> CancelledOutcome:
    return CancelledOutcome(
        **common, rung=rung, value=value, items_discarded=facts.items_discarded,
        stop_latency=_stop_latency(facts), remote_traceback=remote_traceback,
    )


def _crashed(
    facts: Facts, common: dict[str, Any], detail: str, summary: str | None = None,
    signal_name: str | None = None,
) -> Crashed:
    stack = facts.fault_stack
    frame = None if stack is None else innermost_user_frame(stack)
    err = WorkerCrashed(
        facts.pid, facts.exit_code, detail, summary=summary, fault_stack=stack,
        where=None if frame is None else str(frame),
    )
    if signal_name is not None:
        err.signal_name = signal_name
    return _with_stderr_tail(facts, Crashed(
        **common, error=err, signal_name=err.signal_name, fault_stack=stack
    ))


def _unguarded_main_summary(facts: Facts) -> str:
    main = facts.main_file or "the main module"
    return (
        f"worker process {facts.pid} stopped while importing {main}: that script starts "
        "a job at import time. forkserver and spawn import the main module in every "
        "worker, so put the code that starts jobs under "
        "'if __name__ == \"__main__\":' (or in a function it calls)"
    )


def _from_final(facts: Facts, final: Final, common: dict[str, Any]) -> Outcome:
    if final.kind is FinalKind.RESULT:
        try:
            value = _loads(final.body)
        except BaseException as exc:  # a reconstructor may even call sys.exit()
            err = DeliveryError(
                f"the final value could not be unpickled in the parent "
                f"({type(exc).__name__}: {exc})"
            )
            err.__cause__ = exc
            return Failed(**common, error=err)
        return Completed(**common, value=value)
    try:
        report = read_report(final)
    except BaseException as exc:  # not what our child writes: the channel is corrupt
        broken = ChannelBroken(
            facts.pid, facts.exit_code,
            f"malformed data channel: the {final.kind.name} frame's report cannot be "
            f"read ({type(exc).__name__}: {exc})",
        )
        return _with_stderr_tail(
            facts, Crashed(**common, error=broken, signal_name=broken.signal_name)
        )
    if stopped_from_outside(facts):
        # Nobody here asked for a cancel: the SIGTERM came from outside workstream
        # (``kill PID``, a system shutdown). Not the user's Stop: a crash-like end.
        return _crashed(
            facts, common, "",
            summary=(
                f"worker process {facts.pid} was stopped by SIGTERM (-15) sent from "
                "outside workstream (nobody called job.cancel()); its fn unwound "
                "from Cancelled"
            ),
            signal_name="SIGTERM",
        )
    if final.kind is FinalKind.CANCELLED:
        value = None
        if report.get("value") is not None:
            with contextlib.suppress(Exception):
                value = _loads(report["value"])
        rung = CancelRung.SIGTERM if report["by"] == "sigterm" else CancelRung.COOPERATIVE
        return _cancelled(facts, common, rung, value, report["traceback"])
    error: WorkstreamError = WorkerError(report["type"], report["message"], report["traceback"])
    if report.get("exc") is not None:
        with contextlib.suppress(Exception):
            error.__cause__ = _loads(report["exc"])
    return Failed(**common, error=error)


_REPORT_KEYS = {
    FinalKind.ERROR: {"type": str, "message": str, "traceback": str},
    FinalKind.CANCELLED: {"by": str, "traceback": str},
}


def read_report(final: Final) -> dict[str, Any]:
    """Unpickle the report of an ERROR / CANCELLED report; ValueError unless it has the
    fields our child writes, with the right types."""
    report = _loads(final.body)
    if not isinstance(report, dict):
        raise ValueError(f"a {type(report).__name__}, not a dict")
    for key, kind in _REPORT_KEYS[final.kind].items():
        if not isinstance(report.get(key), kind):
            raise ValueError(f"field {key!r} missing or not a {kind.__name__}")
    for key in ("exc", "value"):
        if report.get(key) is not None and not isinstance(report[key], bytes):
            raise ValueError(f"field {key!r} is not bytes")
    return report


def _with_stderr_tail(facts: Facts, outcome: Crashed) -> Crashed:
    """``outcome`` carrying the last lines of the worker's stderr (also on its error)."""
    if not facts.stderr_tail:
        return outcome
    outcome.error.stderr_tail = facts.stderr_tail
    return dataclasses.replace(outcome, stderr_tail=facts.stderr_tail)
