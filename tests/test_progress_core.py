"""Progress and extra grace as pure code, under a fake clock: no process, no sleep.

Rate and ETA (``_core._progress``), the report's encoding, and how a grant of extra grace
moves a cancel's deadlines (``_core._states.JobMachine.grant_grace``) as the cancel
ladder (``_core._ladder``) sees them.
"""

from __future__ import annotations

import math

import pytest

from workstream import Progress
from workstream._core._ladder import Ladder, Step
from workstream._core._progress import (
    RATE_WINDOW,
    RateEstimator,
    decode_report,
    encode_report,
    eta,
    snapshot,
)
from workstream._core._states import JobMachine, JobState

pytestmark = pytest.mark.timeout(10)


def test_a_steady_rate_is_measured_exactly() -> None:
    est = RateEstimator()
    for i in range(50):
        est.observe(100.0 + 0.1 * i, 5.0 * i)  # 50 units per second
    rate = est.rate()
    assert rate is not None and math.isclose(rate, 50.0)


def test_no_rate_until_two_reports_at_different_times() -> None:
    est = RateEstimator()
    assert est.rate() is None
    est.observe(1.0, 10)
    assert est.rate() is None
    est.observe(1.0, 12)  # the same moment: replaces the report, still no rate
    assert est.rate() is None
    est.observe(2.0, 20)
    assert est.rate() == 8.0


def test_the_rate_follows_a_change_within_the_window() -> None:
    """Old reports leave the window: after RATE_WINDOW at the new speed, only it counts."""
    est = RateEstimator()
    t = 0.0
    done = 0.0
    while t < 30:
        est.observe(t, done)
        t += 0.5
        done += 0.5 * 100  # 100 per second
    t0 = t
    while t < t0 + RATE_WINDOW + 1:
        est.observe(t, done)
        t += 0.5
        done += 0.5 * 10  # then 10 per second
    rate = est.rate()
    assert rate is not None and math.isclose(rate, 10.0)


def test_a_slow_reporter_keeps_a_rate() -> None:
    """Reports further apart than the window: the one before the window is the anchor."""
    est = RateEstimator(window=10.0)
    est.observe(0.0, 0)
    est.observe(60.0, 30)
    est.observe(120.0, 60)
    assert est.rate() == 0.5


def test_done_going_down_starts_afresh() -> None:
    est = RateEstimator()
    est.observe(0.0, 100)
    est.observe(1.0, 200)
    est.observe(2.0, 5)  # a new epoch counts from 0 again
    assert est.rate() is None
    est.observe(3.0, 15)
    assert est.rate() == 10.0


def test_eta() -> None:
    assert eta(25, 100, 5.0) == 15.0
    assert eta(100, 100, 5.0) == 0.0
    assert eta(120, 100, None) == 0.0
    assert eta(25, None, 5.0) is None
    assert eta(25, 100, None) is None
    assert eta(25, 100, 0.0) is None


def test_a_report_round_trips_into_a_snapshot() -> None:
    est = RateEstimator()
    first = decode_report(encode_report(10, 100, {}, 50.0, 48.0))
    assert first is not None
    est.observe(first.at, first.done)
    report = decode_report(encode_report(30, 100, {"loss": 0.25, "phase": "train"}, 52.0, 48.0))
    assert report is not None
    est.observe(report.at, report.done)
    p = snapshot(report, est)
    assert p == Progress(done=30, total=100, rate=10.0, eta=7.0, elapsed=4.0,
                         fields={"loss": 0.25, "phase": "train"})
    alone = decode_report(encode_report(30, 100, {}, 52.0, 48.0))
    assert alone is not None
    # the first report read: the average since the job's start
    assert snapshot(alone, RateEstimator()).rate == 7.5
    at_start = decode_report(encode_report(0, 100, {}, 48.0, 48.0))
    assert at_start is not None
    assert snapshot(at_start, RateEstimator()).rate is None
    assert p.fraction == 0.3
    with pytest.raises(TypeError):
        p.fields["loss"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        p.done = 3  # type: ignore[misc]


def test_a_progress_pickles_and_copies_and_stays_read_only() -> None:
    import copy
    import pickle

    p = Progress(done=3, total=4, rate=1.5, eta=0.5, elapsed=2.0, fields={"loss": 0.1})
    for q in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p), copy.copy(p)):
        assert q == p
        with pytest.raises(TypeError):
            q.fields["loss"] = 1  # type: ignore[index]
    source = {"a": 1}
    r = Progress(done=1, total=None, rate=None, eta=None, elapsed=0.0, fields=source)
    source["a"] = 2
    assert r.fields["a"] == 1  # a copy, not a view of the caller's dict


def test_fraction_needs_a_positive_total() -> None:
    assert Progress(done=3, total=None, rate=None, eta=None, elapsed=0.0).fraction is None
    assert Progress(done=3, total=0, rate=None, eta=None, elapsed=0.0).fraction is None


@pytest.mark.parametrize("data", [
    b"", b"not json", b"[1, 2]", b'{"d": "x", "a": 1, "s": 0}', b'{"d": 1, "s": 0}',
    b'{"d": 1, "a": 1, "s": 0, "t": true}', b'{"d": 1, "a": 1, "s": 0, "f": [1]}',
    b'{"d": NaN, "a": 1, "s": 0}', b"[" * 100_000,
])
def test_a_malformed_report_is_ignored(data: bytes) -> None:
    assert decode_report(data) is None


# -- extra grace: the cancel's deadlines move, the ladder follows -----------------------


def test_a_grant_moves_both_deadlines_of_a_cancel() -> None:
    life = JobMachine()
    life.started()
    life.request_cancel(100.0, grace=2.0, term_delay=1.0, discard=False)
    assert life.grant_grace(5.0, cap=3.0) == 3.0  # capped
    req = life.cancel
    assert req is not None and (req.term_at, req.kill_at) == (104.0, 105.0)
    assert life.grant_grace(3.0, cap=3.0) == 0.0  # nothing new
    assert life.grant_grace(1.0, cap=3.0) == 0.0  # the total only grows
    assert (req.term_at, req.kill_at) == (104.0, 105.0)


def test_a_grant_before_the_cancel_applies_to_it() -> None:
    life = JobMachine()
    life.started()
    assert life.grant_grace(1.5, cap=10.0) == 1.5
    life.request_cancel(100.0, grace=2.0, term_delay=1.0, discard=False)
    req = life.cancel
    assert req is not None and (req.term_at, req.kill_at) == (102.5, 103.5)
    life.request_cancel(101.0, grace=1.0, term_delay=0.5, discard=False)  # tighter
    assert (req.term_at, req.kill_at) == (101.5, 102.0)  # no extra for the tighter one
    life.request_cancel(101.2, grace=0.0, term_delay=0.0, discard=False)  # "kill now"
    assert (req.term_at, req.kill_at) == (101.2, 101.2)
    assert life.grant_grace(2.0, cap=10.0) == 0.5  # a later grant still moves them
    assert (req.term_at, req.kill_at) == (101.7, 101.7)


def test_nothing_is_granted_without_a_cap_or_after_the_end() -> None:
    life = JobMachine()
    life.started()
    assert life.grant_grace(5.0, cap=0.0) == 0.0
    life.end(JobState.COMPLETED)
    assert life.grant_grace(5.0, cap=10.0) == 0.0


def _steps_until_quiet(ladder: Ladder, life: JobMachine, now: float,
                       grant_at: float | None = None, grant: float = 0.0,
                       cap: float = 0.0) -> list[tuple[float, Step]]:
    taken: list[tuple[float, Step]] = []
    for _ in range(1000):
        if grant_at is not None and now >= grant_at:
            life.grant_grace(grant, cap)  # the runner reads the grant before the ladder
        due = ladder.due(life.cancel, now)
        taken.extend((now, s) for s in due.steps)
        if due.next_at is None:
            return taken
        now = due.next_at
    raise AssertionError("the ladder never went quiet")


def test_the_ladder_waits_for_the_granted_time() -> None:
    """Without a grant SIGKILL comes at 102; a grant of 3 s (cap 5) asked at 100.5 moves
    SIGTERM from 101 to 104 and SIGKILL from 102 to 105."""
    plain = JobMachine()
    plain.started()
    plain.request_cancel(100.0, grace=2.0, term_delay=1.0, discard=False)
    steps = _steps_until_quiet(Ladder(), plain, 100.0)
    assert steps[0] == (100.0, Step.ASK) and steps[1] == (101.0, Step.INTERRUPT)
    assert steps[-1] == (102.0, Step.KILL)

    life = JobMachine()
    life.started()
    life.request_cancel(100.0, grace=2.0, term_delay=1.0, discard=False)
    # the runner wakes at 100 (ask); the grant is seen at its next wake (101, SIGTERM due)
    steps = _steps_until_quiet(Ladder(), life, 100.0, grant_at=100.5, grant=3.0, cap=5.0)
    assert steps[0] == (100.0, Step.ASK)
    assert (101.0, Step.INTERRUPT) not in steps
    assert steps[1] == (104.0, Step.INTERRUPT)
    assert steps[-1] == (105.0, Step.KILL)


def test_a_grant_after_sigterm_moves_only_the_kill_that_is_still_ahead() -> None:
    """The worker asks from its except Cancelled (after SIGTERM at 101): SIGKILL moves from
    102 to 103.5; SIGTERM, already sent, is repeated only from 102.5 (and raises nothing
    more in the worker: Cancelled is raised once)."""
    life = JobMachine()
    life.started()
    life.request_cancel(100.0, grace=2.0, term_delay=1.0, discard=False)
    ladder = Ladder()
    assert ladder.due(life.cancel, 100.0).steps == (Step.ASK,)
    assert ladder.due(life.cancel, 101.0).steps == (Step.INTERRUPT,)
    life.grant_grace(1.5, cap=1.5)
    due = ladder.due(life.cancel, 101.1)
    assert due.steps == () and due.next_at == 102.5
    assert ladder.due(life.cancel, 102.0).steps == ()  # the old kill time: nothing
    assert ladder.due(life.cancel, 103.5).steps == (Step.KILL,)


# -- the slot in the control block (a seqlock; _transport._fds) --------------------------


def test_the_progress_slot_seqlock() -> None:
    import mmap

    from workstream._transport import _fds

    block = mmap.mmap(-1, _fds.CONTROL_BLOCK_SIZE)
    try:
        assert _fds.read_progress(block, 0) == (0, None)  # nothing written yet
        _fds.write_progress(block, b"first")
        seq, data = _fds.read_progress(block, 0)
        assert (seq, data) == (2, b"first")
        assert _fds.read_progress(block, seq) == (2, None)  # nothing new
        _fds.write_progress(block, b"second!")
        assert _fds.read_progress(block, seq) == (4, b"second!")
        block[_fds.PROGRESS_SEQ] = 5  # a writer in the middle of a report: keep the old
        assert _fds.read_progress(block, 4, tries=3) == (4, None)
        _fds.write_progress(block, b"x")  # the next write makes it whole again
        assert _fds.read_progress(block, 4) == (6, b"x")
        with pytest.raises(ValueError, match="at most"):
            _fds.write_progress(block, b"y" * (_fds.PROGRESS_MAX + 1))
        assert _fds.PROGRESS_DATA + _fds.PROGRESS_MAX <= _fds.STOP_AT
        assert _fds.PROGRESS_END == 2048  # the PROGRESS block ends where CRASH's begins
        _fds.write_f64(block, _fds.GRACE_GRANTED, 1.5)
        _fds.clear_progress_block(block)
        assert _fds.read_progress(block, 0) == (0, None)
        assert _fds.read_f64(block, _fds.GRACE_GRANTED) == 0.0
    finally:
        block.close()


def test_field_checks_in_the_worker() -> None:
    """What ``workstream.progress()`` accepts as fields (``_child._progress``)."""
    import enum

    from workstream._child._progress import check_fields

    class Phase(str, enum.Enum):
        TRAIN = "train"

    check_fields({"loss": 0.5, "n": 3, "ok": True, "none": None, "phase": "x" * 100})
    check_fields({"big": 10**30, "phase": Phase.TRAIN, "inf": math.inf})
    np = pytest.importorskip("numpy")
    fields = {"a": np.float64(0.25), "b": np.float32(0.5), "c": np.int64(3), "d": object()}
    with pytest.raises(TypeError, match=r"field d=<object object at .* must be a str, int"):
        check_fields(fields)
    assert fields["b"] == 0.5 and type(fields["b"]) is float  # converted
    assert fields["c"] == 3 and type(fields["c"]) is int
    with pytest.raises(ValueError, match="bytes as JSON; at most"):
        check_fields({"note": "\x00" * 300})  # 6 bytes each as JSON
    check_fields({"note": "a" * 1000})  # fits: 1 byte each
