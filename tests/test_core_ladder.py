"""The cancel ladder (``_core._ladder``) driven by a fake clock: no process, no sleep.

Each test jumps the clock straight to the next deadline the ladder names (as trio's
autojump clock does), so a 10 s grace costs nothing, and records which step was due when.
"""

from __future__ import annotations

import pickle
import signal
from dataclasses import dataclass

import pytest

from workstream import CancelledOutcome, Outcome
from workstream._core._ladder import TERM_REPEAT, Due, Ladder, Step
from workstream._core._rules import Facts, Final, FinalKind, decide
from workstream._core._seam import take_steps
from workstream._outcomes import CancelRung

ASK, INTERRUPT, KILL = Step.ASK, Step.INTERRUPT, Step.KILL


@dataclass
class Request:
    """What ``JobCore.request_cancel`` records (later requests only tighten it)."""

    requested_at: float
    term_at: float
    kill_at: float

    @classmethod
    def at(cls, now: float, grace: float, term_delay: float) -> Request:
        return cls(now, now + term_delay, now + grace)

    def tighten(self, now: float, grace: float, term_delay: float) -> None:
        self.term_at = min(self.term_at, now + term_delay)
        self.kill_at = min(self.kill_at, now + grace)


def run_until_quiet(
    ladder: Ladder, request: Request | None, now: float, *, final_at: float | None = None,
    grace: float = 2.0, until: float = 1e9,
) -> tuple[list[tuple[float, Step]], float]:
    """Autojump: ask the ladder, jump to its next deadline, repeat; return the steps
    with their times, and the time at which nothing more was due (or ``until``)."""
    taken: list[tuple[float, Step]] = []
    for _ in range(1000):
        due = ladder.due(request, now, final_at=final_at, grace=grace)
        taken.extend((now, step) for step in due.steps)
        if due.next_at is None or due.next_at > until:
            return taken, now
        assert due.next_at > now or not due.steps, "the ladder must move time forward"
        now = due.next_at
    raise AssertionError("the ladder never went quiet")


@pytest.mark.timeout(5)
def test_nothing_is_due_without_a_request() -> None:
    """No cancel and no final report: no step, no deadline (the runner waits on I/O)."""
    assert Ladder().due(None, 123.0) == Due((), None)


@pytest.mark.timeout(5)
def test_every_rung_in_order_with_repeated_interrupts() -> None:
    """A cancel that nobody obeys: ask at once, SIGTERM at term_at repeated every
    term_repeat, then SIGKILL at kill_at, then nothing more."""
    ladder = Ladder(term_repeat=0.25)
    taken, quiet_at = run_until_quiet(ladder, Request.at(10.0, grace=2.0, term_delay=1.0), 10.0)
    assert taken == [
        (10.0, ASK),
        (11.0, INTERRUPT), (11.25, INTERRUPT), (11.5, INTERRUPT), (11.75, INTERRUPT),
        (12.0, KILL),
    ]
    assert quiet_at == 12.0
    assert ladder.asked and ladder.interrupted and ladder.killed
    assert ladder.due(Request.at(10.0, 2.0, 1.0), 99.0) == Due((), None)


@pytest.mark.timeout(5)
def test_default_repeat_is_a_tenth_of_a_second() -> None:
    """SIGTERM is repeated every TERM_REPEAT (0.1 s) by default."""
    ladder = Ladder()
    due = ladder.due(Request.at(0.0, grace=2.0, term_delay=1.0), 1.0)
    assert due.steps == (ASK, INTERRUPT)
    assert due.next_at == pytest.approx(1.0 + TERM_REPEAT)
    assert due.timeout_ms(1.0) in (100, 101)  # rounded up, float error included


@pytest.mark.timeout(5)
def test_the_poll_timeout_rounds_up() -> None:
    """The runner's poll() timeout never wakes it before the deadline."""
    assert Due((), 1.0001).timeout_ms(1.0) == 1
    assert Due((), 0.5).timeout_ms(1.0) == 0
    assert Due((), None).timeout_ms(1.0) is None


@pytest.mark.timeout(5)
def test_a_child_that_is_gone_gets_no_more_steps() -> None:
    """Once the child's exit was seen nothing is due, whatever the deadlines say."""
    ladder = Ladder()
    request = Request.at(0.0, grace=2.0, term_delay=1.0)
    assert ladder.due(request, 0.0).steps == (ASK,)
    assert ladder.due(request, 5.0, gone=True) == Due((), None)
    assert not ladder.interrupted and not ladder.killed


@pytest.mark.timeout(5)
def test_grace_zero_after_a_cooperative_request_kills_at_once() -> None:
    """cancel(grace=10), then cancel(grace=0) while the child is still winding down:
    the second call only tightens the deadlines, and SIGKILL alone is due at once (no
    SIGTERM first: the exit status then says SIGKILL)."""
    ladder = Ladder()
    request = Request.at(0.0, grace=10.0, term_delay=5.0)
    first = ladder.due(request, 0.0)
    assert first == Due((ASK,), 5.0)
    request.tighten(3.0, grace=0.0, term_delay=0.0)
    assert ladder.due(request, 3.0) == Due((KILL,), None)
    assert ladder.killed and not ladder.interrupted


@pytest.mark.timeout(5)
def test_a_later_cancel_can_only_move_the_steps_earlier() -> None:
    """A shorter grace during the SIGTERM phase brings SIGKILL forward."""
    ladder = Ladder(term_repeat=0.5)
    request = Request.at(0.0, grace=10.0, term_delay=1.0)
    taken, _ = run_until_quiet(ladder, request, 0.0, until=2.0)
    assert taken == [(0.0, ASK), (1.0, INTERRUPT), (1.5, INTERRUPT), (2.0, INTERRUPT)]
    request.tighten(2.2, grace=0.5, term_delay=0.25)
    taken, quiet_at = run_until_quiet(ladder, request, 2.2)
    assert taken == [(2.5, INTERRUPT), (2.7, KILL)]
    assert quiet_at == 2.7


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("grace", "term_delay", "expected"),
    [
        pytest.param(0.0, 0.0, [(0.0, ASK), (0.0, KILL)], id="grace-0"),
        pytest.param(1.0, 1.0, [(0.0, ASK), (1.0, KILL)], id="term_after-equals-grace"),
        pytest.param(
            0.25, 0.0, [(0.0, ASK), (0.0, INTERRUPT), (0.25, KILL)], id="term_after-0"
        ),
    ],
)
def test_edge_deadlines(grace: float, term_delay: float, expected: list[object]) -> None:
    """When SIGTERM and SIGKILL fall due together only SIGKILL is sent; term_after=0
    sends SIGTERM with the request."""
    taken, _ = run_until_quiet(Ladder(term_repeat=1.0), Request.at(0.0, grace, term_delay), 0.0)
    assert taken == expected


@pytest.mark.timeout(5)
def test_a_child_alive_grace_after_its_final_report_is_killed() -> None:
    """No cancel: a child that sent its final report but does not exit (a stuck flush)
    is killed ``grace`` seconds later, and only then."""
    ladder = Ladder()
    taken, quiet_at = run_until_quiet(ladder, None, 3.0, final_at=3.0, grace=2.0)
    assert taken == [(5.0, KILL)]
    assert quiet_at == 5.0
    assert ladder.killed and not ladder.asked


@pytest.mark.timeout(5)
def test_a_cancel_racing_the_final_report_ends_at_the_earlier_deadline() -> None:
    """The final report arrives while a cancel runs: the child is killed at the earlier
    of the cancel's kill_at and grace after the report (here the report's)."""
    ladder = Ladder(term_repeat=10.0)
    request = Request.at(0.0, grace=10.0, term_delay=5.0)
    assert ladder.due(request, 0.0, final_at=None) == Due((ASK,), 5.0)
    assert ladder.due(request, 0.5, final_at=0.5, grace=2.0) == Due((), 2.5)
    assert ladder.due(request, 2.5, final_at=0.5, grace=2.0) == Due((KILL,), None)
    assert not ladder.interrupted


class FakeWorker:
    """A worker as the core sees it through the seam (``_core._seam.Transport``): it
    records the steps taken, and ends on the step it obeys (None: only SIGKILL)."""

    def __init__(self, obeys: Step | None) -> None:
        self.obeys = obeys
        self.log: list[str] = []
        self.exit_code: int | None = None
        self.final: Final | None = None

    def ask(self) -> None:
        self.log.append("ask")
        if self.obeys is ASK:  # unwinds from Cancelled at its next yield, reports it
            self.final = Final(FinalKind.CANCELLED, pickle.dumps({"by": "cooperative",
                                                                 "traceback": ""}))
            self.exit_code = 0

    def interrupt(self) -> None:
        self.log.append("interrupt")
        if self.obeys is INTERRUPT:  # SIGTERM's default action: no report
            self.exit_code = -signal.SIGTERM

    def kill(self) -> None:
        self.log.append("kill")
        self.exit_code = -signal.SIGKILL

    def gone(self) -> bool:
        return self.exit_code is not None


def run_job(worker: FakeWorker, *, cancel_at: float | None, start: float = 0.0) -> Outcome:
    """Drive one job through the ladder with an autojump clock, then decide its outcome."""
    ladder = Ladder(term_repeat=0.25)
    request = None if cancel_at is None else Request.at(cancel_at, grace=2.0, term_delay=1.0)
    now = start if cancel_at is None else cancel_at
    while True:
        due = ladder.due(request, now, gone=worker.gone())
        take_steps(due, worker)
        if due.next_at is None or worker.gone():
            break
        now = due.next_at
    return decide(Facts(
        started_at=start, now=now, pid=7, exit_code=worker.exit_code, final=worker.final,
        cancel_requested_at=cancel_at, interrupted=ladder.interrupted, killed=ladder.killed,
    ))


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("obeys", "rung", "log", "latency"),
    [
        pytest.param(ASK, CancelRung.COOPERATIVE, ["ask"], 0.0, id="cooperative"),
        pytest.param(INTERRUPT, CancelRung.SIGTERM, ["ask", "interrupt"], 1.0, id="sigterm"),
        pytest.param(
            None, CancelRung.SIGKILL, ["ask", *["interrupt"] * 4, "kill"], 2.0, id="sigkill"
        ),
    ],
)
def test_every_rung_through_the_seam(
    obeys: Step | None, rung: CancelRung, log: list[str], latency: float
) -> None:
    """Each rung end to end in zero time: the ladder's steps go through the seam to a
    fake worker, and the outcome rules name the rung that ended it."""
    worker = FakeWorker(obeys)
    outcome = run_job(worker, cancel_at=5.0)
    assert worker.log == log
    assert isinstance(outcome, CancelledOutcome) and outcome.rung is rung
    assert outcome.stop_latency == latency


@pytest.mark.timeout(5)
def test_a_cancel_before_start_takes_no_step() -> None:
    """A job cancelled before any worker took it: no step is taken on any worker, and
    it ends cancelled before-start, with no pid and no exit status."""
    outcome = decide(Facts(started_at=0.0, now=0.25, launched=False, cancel_requested_at=0.1))
    assert isinstance(outcome, CancelledOutcome)
    assert outcome.rung is CancelRung.BEFORE_START
    assert (outcome.pid, outcome.exit_code, outcome.stop_latency) == (None, None, 0.15)


@pytest.mark.timeout(5)
def test_grace_zero_after_a_cooperative_request_ends_sigkill() -> None:
    """End to end: cancel(grace=10) that the worker ignores, then cancel(grace=0) three
    seconds later: the next wake-up kills (no SIGTERM in between), and the outcome is
    cancelled by SIGKILL, 3 s after the first request."""
    worker = FakeWorker(obeys=None)
    ladder = Ladder()
    request = Request.at(0.0, grace=10.0, term_delay=5.0)
    take_steps(ladder.due(request, 0.0, gone=worker.gone()), worker)
    request.tighten(3.0, grace=0.0, term_delay=0.0)  # JobCore.request_cancel wakes the runner
    due = ladder.due(request, 3.0, gone=worker.gone())
    take_steps(due, worker)
    assert worker.log == ["ask", "kill"] and due.next_at is None
    outcome = decide(Facts(
        started_at=0.0, now=3.0, pid=7, exit_code=worker.exit_code, cancel_requested_at=0.0,
        interrupted=ladder.interrupted, killed=ladder.killed,
    ))
    assert isinstance(outcome, CancelledOutcome) and outcome.rung is CancelRung.SIGKILL
    assert outcome.stop_latency == 3.0
