"""The outcome rules (``_core._rules.decide``): docs/design.md's table, row by row.

Pure: each case is a ``Facts`` record, as a runner would have gathered it, and the
outcome it must give. No process, no clock (times are numbers in the facts).
"""

from __future__ import annotations

import pickle
import signal
from dataclasses import replace
from typing import Any

import pytest

from workstream import (
    CancelledOutcome,
    ChannelBroken,
    Completed,
    Crashed,
    DeliveryError,
    Failed,
    MemoryLimitExceeded,
    WorkerCrashed,
    WorkerError,
)
from workstream._core._rules import Facts, Final, FinalKind, decide, keeps_worker
from workstream._errors import UNGUARDED_MAIN_EXIT
from workstream._outcomes import CancelRung

PID = 4242
BASE = Facts(started_at=100.0, now=103.5, pid=PID, exit_code=0, items_delivered=7)
CANCEL = replace(BASE, cancel_requested_at=102.0, items_discarded=3)


def result(value: object) -> Final:
    return Final(FinalKind.RESULT, pickle.dumps(value))


def error(**report: object) -> Final:
    body = {"type": "ValueError", "message": "bad", "traceback": "Traceback ...", **report}
    return Final(FinalKind.ERROR, pickle.dumps(body))


def cancelled(by: str, value: object = None) -> Final:
    report = {"by": by, "traceback": "tb", "value": None if value is None else pickle.dumps(value)}
    return Final(FinalKind.CANCELLED, pickle.dumps(report))


class Unpicklable:
    def __reduce__(self) -> Any:
        return (_refuse, ())


def _refuse() -> None:
    raise RuntimeError("cannot rebuild this here")


# One row per line of the table in docs/design.md ("How the outcome is decided"), in
# its order; then the rows that only the Worker or a failed start produce.
ROWS = [
    pytest.param(
        replace(BASE, channel_error="malformed data channel: frame #2: a second READY frame",
                final=result(1)),
        Crashed, ChannelBroken, "a second READY frame", id="malformed-frame",
    ),
    pytest.param(
        replace(BASE, final=Final(FinalKind.ERROR, pickle.dumps(["not", "a", "dict"]))),
        Crashed, ChannelBroken, "ERROR frame's report cannot be read", id="unreadable-report",
    ),
    pytest.param(
        replace(CANCEL, delivery_error=DeliveryError("item #3 could not be unpickled"),
                final=result(1)),
        Failed, DeliveryError, "item #3", id="item-not-unpicklable",
    ),
    pytest.param(
        replace(BASE, final=Final(FinalKind.RESULT, pickle.dumps(Unpicklable()))),
        Failed, DeliveryError, "final value could not be unpickled", id="value-not-unpicklable",
    ),
    pytest.param(
        replace(BASE, exit_code=-signal.SIGKILL, memory_exceeded=True, memory_limit=1 << 30,
                memory_peak=(1 << 30) + (1 << 20), final=result(1)),
        Crashed, MemoryLimitExceeded, "over max_memory=1073741824 (1024.0 MiB; peak 1025.0 MiB)",
        id="over-the-memory-limit",
    ),
    pytest.param(replace(BASE, final=result(42)), Completed, None, None, id="result"),
    pytest.param(
        replace(CANCEL, final=result(42), interrupted=True, killed=True, exit_code=-9),
        Completed, None, None, id="result-wins-the-race-with-a-cancel",
    ),
    pytest.param(
        replace(BASE, final=error(exc=pickle.dumps(ValueError("bad")))),
        Failed, WorkerError, "ValueError: bad", id="error",
    ),
    pytest.param(
        replace(BASE, final=cancelled("sigterm")),
        Crashed, WorkerCrashed, "sent from outside workstream", id="cancelled-from-outside",
    ),
    pytest.param(
        replace(CANCEL, final=cancelled("cooperative", value="ckpt")),
        CancelledOutcome, CancelRung.COOPERATIVE, None, id="cancelled-cooperative",
    ),
    pytest.param(
        replace(CANCEL, final=cancelled("sigterm"), interrupted=True),
        CancelledOutcome, CancelRung.SIGTERM, None, id="cancelled-by-sigterm-as-reported",
    ),
    pytest.param(
        replace(CANCEL, interrupted=True, killed=True, exit_code=-signal.SIGKILL),
        CancelledOutcome, CancelRung.SIGKILL, None, id="no-final-we-killed",
    ),
    pytest.param(
        replace(CANCEL, interrupted=True, exit_code=-signal.SIGTERM),
        CancelledOutcome, CancelRung.SIGTERM, None, id="no-final-died-of-our-sigterm",
    ),
    pytest.param(
        replace(BASE, exit_code=UNGUARDED_MAIN_EXIT, ready_seen=False, main_file="/app/x.py"),
        Crashed, WorkerCrashed, "stopped while importing /app/x.py", id="unguarded-main",
    ),
    pytest.param(
        replace(BASE, exit_code=-signal.SIGKILL, kernel_oom_kill=True),
        Crashed, WorkerCrashed, "killed by the kernel's out-of-memory killer",
        id="no-final-kernel-oom-kill",
    ),
    pytest.param(
        replace(BASE, exit_code=-signal.SIGSEGV),
        Crashed, WorkerCrashed, "SIGSEGV (-11)", id="no-final-crash",
    ),
    pytest.param(
        replace(BASE, exit_code=-signal.SIGSEGV, fault_stack=(
            'Current thread 0x1 (most recent call first):\n'
            '  File "/home/me/train.py", line 42 in step\n'
        )),
        Crashed, WorkerCrashed, "SIGSEGV (-11)) in step() at /home/me/train.py:42",
        id="no-final-crash-with-a-fault-stack",
    ),
    pytest.param(
        replace(BASE, exit_code=-signal.SIGSEGV, torn_bytes=5),
        Crashed, WorkerCrashed, "5 bytes dropped", id="no-final-torn-frame",
    ),
    pytest.param(
        replace(CANCEL, exit_code=3),
        Crashed, WorkerCrashed, "died on its own while being cancelled", id="died-while-cancelled",
    ),
    pytest.param(
        replace(CANCEL, exit_code=-signal.SIGTERM),
        Crashed, WorkerCrashed, "SIGTERM (-15)", id="sigterm-we-never-sent",
    ),
    pytest.param(
        replace(CANCEL, pid=None, exit_code=None, launched=False, items_delivered=0),
        CancelledOutcome, CancelRung.BEFORE_START, None, id="cancel-before-start",
    ),
    pytest.param(
        replace(BASE, exit_code=None, launched=False, start_error="OSError: no fds"),
        Crashed, WorkerCrashed, "OSError: no fds", id="could-not-start",
    ),
    pytest.param(
        replace(BASE, pid=None, exit_code=None, launched=False,
                refused=WorkerCrashed(None, 1, "the initializer failed")),
        Failed, WorkerCrashed, "the initializer failed", id="refused-by-a-broken-worker",
    ),
    pytest.param(
        replace(BASE, exit_code=-signal.SIGKILL, internal_error="RuntimeError: bug"),
        Crashed, WorkerCrashed, "internal error in workstream's runner: RuntimeError: bug",
        id="internal-error",
    ),
]


@pytest.mark.timeout(5)
@pytest.mark.parametrize(("facts", "kind", "detail", "message"), ROWS)
def test_outcome_table(facts: Facts, kind: type, detail: object, message: str | None) -> None:
    """Each row of the outcome table: the facts give that outcome, with the facts'
    common fields (pid, exit status, counts, duration) carried over unchanged."""
    outcome = decide(facts)
    assert type(outcome) is kind
    assert outcome.pid == facts.pid
    assert outcome.exit_code == facts.exit_code
    assert outcome.items_delivered == facts.items_delivered
    assert outcome.duration == facts.now - facts.started_at
    if isinstance(outcome, CancelledOutcome):
        assert outcome.rung is detail
        assert outcome.items_discarded == facts.items_discarded
        assert outcome.stop_latency == facts.now - 102.0
    elif isinstance(detail, type):
        assert isinstance(outcome, (Failed, Crashed))
        assert type(outcome.error) is detail
        assert message is not None and message in str(outcome.error), str(outcome.error)
        if isinstance(outcome, Crashed):
            assert outcome.error.exit_code == facts.exit_code  # never the pid


@pytest.mark.timeout(5)
def test_completed_and_cancelled_carry_the_value() -> None:
    """The return value (or the value fn returned after catching Cancelled) is unpickled."""
    done = decide(replace(BASE, final=result({"a": 1})))
    assert isinstance(done, Completed) and done.value == {"a": 1}
    stopped = decide(replace(CANCEL, final=cancelled("cooperative", value="/tmp/ckpt")))
    assert isinstance(stopped, CancelledOutcome)
    assert stopped.value == "/tmp/ckpt" and stopped.remote_traceback == "tb"


@pytest.mark.timeout(5)
def test_an_error_carries_the_original_exception_as_cause() -> None:
    """A WorkerError has the remote traceback and the unpickled exception as __cause__."""
    outcome = decide(replace(BASE, final=error(exc=pickle.dumps(KeyError("k")))))
    assert isinstance(outcome, Failed)
    assert outcome.remote_traceback == "Traceback ..."
    assert isinstance(outcome.error.__cause__, KeyError)


@pytest.mark.timeout(5)
def test_a_cancel_from_outside_names_the_signal() -> None:
    """A CANCELLED report nobody requested is a crash whose signal is SIGTERM."""
    outcome = decide(replace(BASE, final=cancelled("sigterm"), exit_code=0))
    assert isinstance(outcome, Crashed) and outcome.signal_name == "SIGTERM"


@pytest.mark.timeout(5)
def test_kept_warm_is_passed_through() -> None:
    """A Worker's job says whether its process stays; a one-shot job says None."""
    assert decide(replace(BASE, final=result(1))).kept_warm is None
    assert decide(replace(BASE, final=result(1), kept_warm=True)).kept_warm is True


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("change", "gone", "written", "keep"),
    [
        pytest.param({}, False, True, True, id="clean-end"),
        pytest.param({}, True, True, False, id="process-died"),
        pytest.param({}, False, False, False, id="job-not-fully-written"),
        pytest.param({"final": None}, False, True, False, id="no-final-report"),
        pytest.param({"interrupted": True}, False, True, False, id="needed-sigterm"),
        pytest.param({"killed": True}, False, True, False, id="needed-sigkill"),
        pytest.param({"torn_bytes": 1}, False, True, False, id="torn-channel"),
        pytest.param({"channel_error": "x"}, False, True, False, id="malformed-channel"),
        pytest.param({"final": cancelled("sigterm")}, False, True, False, id="killed-from-outside"),
    ],
)
def test_when_a_warm_process_is_kept(
    change: dict[str, Any], gone: bool, written: bool, keep: bool
) -> None:
    """A warm process runs the next job only after a clean, unsignalled end."""
    facts = replace(BASE, **{"exit_code": None, "final": result(1), **change})
    assert keeps_worker(facts, gone=gone, job_written=written) is keep


@pytest.mark.timeout(5)
def test_the_rung_compares_and_hashes_as_its_string() -> None:
    """Users compare ``outcome.rung`` with strings and key dicts by them: both still work,
    and it prints as the string."""
    assert CancelRung.SIGTERM == "sigterm"
    assert {"sigkill": "killed"}[CancelRung.SIGKILL] == "killed"
    assert f"{CancelRung.BEFORE_START}" == str(CancelRung.BEFORE_START) == "before-start"
    assert [r.value for r in CancelRung] == ["before-start", "cooperative", "sigterm", "sigkill"]
    assert pickle.loads(pickle.dumps(CancelRung.COOPERATIVE)) is CancelRung.COOPERATIVE
