"""Cancellation: every rung of the ladder, idempotence, races, backpressure, discard.

Each test asserts the exact outcome (kind, rung, exit code) and bounds the stop time on
both sides where the ladder fixes it (SIGTERM not before ``term_after``, SIGKILL not
before ``grace``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import workers
import workers_lifecycle as wl
import workstream
from conftest import wait_until
from workstream import CancelledOutcome, Completed

METHODS = [
    pytest.param("forkserver", id="forkserver"),
    pytest.param("spawn", id="spawn"),
    pytest.param("fork", id="fork", marks=pytest.mark.filterwarnings("ignore::DeprecationWarning")),
]


def take(it: object, n: int) -> list[object]:
    """Take exactly ``n`` items from the iterator (fails if the stream ends first)."""
    out = []
    for item in it:  # type: ignore[attr-defined]
        out.append(item)
        if len(out) == n:
            return out
    pytest.fail(f"the stream ended after {len(out)} of {n} items")


def cancelled_outcome(job: workstream.Job[object, object], timeout: float = 10) -> CancelledOutcome:
    outcome = job.wait(timeout=timeout)
    assert isinstance(outcome, CancelledOutcome), outcome
    return outcome


def started(job: workstream.Job[object, object], marker: Path) -> None:
    """Wait until the child created ``marker`` (it passed its last cancellation point)."""
    wait_until(marker.exists, 15, f"the child of {job!r} to create {marker.name}")


def split_finally(items: list[object]) -> list[object]:
    """Assert ``items`` ends with exactly one "finally"; return what came before it."""
    assert items and items[-1] == "finally", items[-5:]
    assert items.count("finally") == 1
    return items[:-1]


# -- the cooperative rung ----------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", METHODS)
def test_cooperative_cancel_of_generator(method: str) -> None:
    """A yielding generator stops at its next yield: rung cooperative, its finally item
    arrives last, every earlier item exactly once and in order, within 0.5 s."""
    job = workstream.start(workers.forever, start_method=method)
    it = iter(job)
    first = take(it, 50)
    assert job.cancel() is True
    items = first + list(it)
    numbers = split_finally(items)
    assert wl.assert_contiguous(numbers) >= 50
    outcome = cancelled_outcome(job)
    assert outcome.rung == "cooperative"
    assert outcome.exit_code == 0
    assert outcome.items_delivered == len(items)
    assert outcome.items_discarded == 0
    assert outcome.stop_latency is not None and 0 <= outcome.stop_latency < 0.5
    assert job.state == "cancelled"
    with pytest.raises(workstream.Cancelled):
        job.result(timeout=1)


@pytest.mark.timeout(30)
def test_polling_cancelled_and_returning_is_completed(tmp_path: Path) -> None:
    """A plain function that polls cancelled() and returns normally ends Completed with
    its value: the cancel was observed but never raised into fn (what _job._run does)."""
    marker = tmp_path / "ready"
    job = workstream.start(wl.mark_then_poll_cancelled, str(marker))
    started(job, marker)
    assert job.cancel() is True
    assert list(job) == []
    outcome = job.wait(timeout=10)
    assert isinstance(outcome, Completed), outcome
    assert outcome.value == "saw cancel"
    assert outcome.exit_code == 0
    assert job.cancel_requested is True
    assert job.state == "completed"
    assert job.result(timeout=1) == "saw cancel"


@pytest.mark.timeout(30)
def test_check_cancelled_raises_into_fn(tmp_path: Path) -> None:
    """check_cancelled() raises Cancelled after a cancel, so finally blocks run and the
    outcome is cancelled (cooperative) with the remote traceback naming the call."""
    marker = tmp_path / "ready"
    job = workstream.start(wl.mark_then_check_cancelled, str(marker))
    started(job, marker)
    assert job.cancel() is True
    assert list(job) == ["finally"]
    outcome = cancelled_outcome(job)
    assert outcome.rung == "cooperative"
    assert outcome.exit_code == 0
    assert "check_cancelled" in outcome.remote_traceback
    assert outcome.stop_latency is not None and outcome.stop_latency < 0.5
    with pytest.raises(workstream.Cancelled):
        job.result(timeout=1)


@pytest.mark.timeout(30)
def test_catching_cancelled_and_returning_a_value() -> None:
    """fn that catches Cancelled and returns gives CancelledOutcome.value == that value,
    while result() still raises Cancelled."""
    job = workstream.start(workers.catch_cancel_and_return)
    it = iter(job)
    assert take(it, 3) == ["tick"] * 3
    assert job.cancel() is True
    rest = list(it)
    assert set(rest) <= {"tick"}
    outcome = cancelled_outcome(job)
    assert outcome.rung == "cooperative"
    assert outcome.value == "checkpoint.pt"
    assert outcome.exit_code == 0
    with pytest.raises(workstream.Cancelled):
        job.result(timeout=1)


@pytest.mark.timeout(30)
def test_cleanup_after_cooperative_cancel_gets_the_whole_grace() -> None:
    """A finally block unwinding from a cooperative cancel that needs 1.3 s (less than
    the default 2 s grace) runs to its end: its last item arrives, rung cooperative."""
    job = workstream.start(wl.emit_ready_then_slow_cleanup, 1.3)
    it = iter(job)
    assert take(it, 1) == ["tick"]
    assert job.cancel() is True
    rest = list(it)
    outcome = cancelled_outcome(job)
    assert rest and rest[-1] == "saved", rest[-3:]
    assert outcome.rung == "cooperative"
    assert outcome.stop_latency is not None and 1.25 <= outcome.stop_latency < 2.0


# -- the SIGTERM and SIGKILL rungs -------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", METHODS)
def test_sigterm_rung_interrupts_a_sleep(method: str, tmp_path: Path) -> None:
    """A child asleep in time.sleep gets Cancelled raised inside the sleep at SIGTERM
    (term_after=0.2): rung sigterm, its finally item arrives, gone long before grace=2."""
    marker = tmp_path / "ready"
    job = workstream.start(wl.mark_then_sleep, str(marker), 30, start_method=method)
    started(job, marker)
    t0 = time.monotonic()
    assert job.cancel(grace=2, term_after=0.2) is True
    assert list(job) == ["finally"]
    outcome = cancelled_outcome(job)
    elapsed = time.monotonic() - t0
    assert outcome.rung == "sigterm"
    assert outcome.exit_code == 0  # it reported CANCELLED and exited by itself
    assert "sleep" in outcome.remote_traceback
    assert outcome.stop_latency is not None
    assert 0.18 <= outcome.stop_latency < 1.0, outcome.stop_latency
    assert elapsed < 1.2


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", METHODS)
def test_sigkill_rung_for_a_child_stuck_in_c(method: str, tmp_path: Path) -> None:
    """A child ignoring SIGTERM inside a C call is SIGKILLed at grace=0.5: rung sigkill,
    exit code -9, gone within [0.45, 1.0] s of the cancel."""
    marker = tmp_path / "ready"
    job = workstream.start(wl.mark_then_sleep_in_c, str(marker), 30, start_method=method)
    started(job, marker)
    t0 = time.monotonic()
    assert job.cancel(grace=0.5) is True
    assert list(job) == []
    outcome = cancelled_outcome(job)
    elapsed = time.monotonic() - t0
    assert outcome.rung == "sigkill"
    assert outcome.exit_code == -9
    assert outcome.stop_latency is not None
    assert 0.45 <= outcome.stop_latency <= 1.0, outcome.stop_latency
    assert 0.45 <= elapsed <= 1.2, elapsed
    assert not wl.pid_alive(outcome.pid)  # type: ignore[arg-type]


@pytest.mark.timeout(30)
def test_sigkill_rung_for_a_child_spinning_in_python(tmp_path: Path) -> None:
    """A pure-Python busy loop with SIGTERM ignored never sees the cancel and is
    SIGKILLed at grace=0.5: rung sigkill, exit code -9, within [0.45, 1.0] s."""
    marker = tmp_path / "ready"
    job = workstream.start(wl.mark_then_spin_ignoring_sigterm, str(marker))
    started(job, marker)
    assert job.cancel(grace=0.5) is True
    assert list(job) == []
    outcome = cancelled_outcome(job)
    assert outcome.rung == "sigkill"
    assert outcome.exit_code == -9
    assert outcome.stop_latency is not None
    assert 0.45 <= outcome.stop_latency <= 1.0, outcome.stop_latency


# -- cancel before the child runs --------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", METHODS)
def test_cancel_immediately_after_start(method: str) -> None:
    """A cancel issued right after start(), before any item, ends the job cancelled
    (before-start with no pid, or cooperative before/at the first yield) and fast."""
    job = workstream.start(wl.numbers_with_finally, None, start_method=method)
    assert job.cancel() is True
    items = list(job)
    outcome = cancelled_outcome(job)
    assert outcome.rung in ("before-start", "cooperative"), outcome
    if outcome.rung == "before-start":
        assert outcome.pid is None and outcome.exit_code is None and items == []
    else:
        assert isinstance(outcome.pid, int) and outcome.exit_code == 0
        # Either fn never ran (cancelled before it was called) or it ran to a yield.
        if items:
            wl.assert_contiguous(split_finally(items))
    assert outcome.items_delivered == len(items)
    assert outcome.stop_latency is not None and outcome.stop_latency < 1.0


@pytest.mark.timeout(30)
def test_zero_grace_rung_matches_exit_status(tmp_path: Path) -> None:
    """The rung names the signal that ended the child: a child that dies of SIGTERM's
    default action on cancel(grace=0) reports rung sigterm, not sigkill."""
    marker = tmp_path / "ready"
    job = workstream.start(wl.mark_then_sleep_default_sigterm, str(marker), 30)
    started(job, marker)
    assert job.cancel(grace=0) is True
    outcome = cancelled_outcome(job)
    assert outcome.exit_code in (-9, -15)
    expected = {-9: "sigkill", -15: "sigterm"}[outcome.exit_code]
    assert outcome.rung == expected, (outcome.rung, outcome.exit_code)


# -- repeated and concurrent cancels -----------------------------------------------------


@pytest.mark.timeout(30)
def test_second_cancel_with_zero_grace_kills_at_once(tmp_path: Path) -> None:
    """cancel() is idempotent (True while running, False after the end) and a second
    cancel(grace=0) shortens a 10 s grace to an immediate SIGKILL."""
    marker = tmp_path / "ready"
    job = workstream.start(wl.mark_then_sleep_in_c, str(marker), 30)
    started(job, marker)
    assert job.cancel(grace=10) is True
    assert job.cancel(grace=0) is True
    assert list(job) == []
    outcome = cancelled_outcome(job)
    assert outcome.rung == "sigkill"
    assert outcome.exit_code == -9
    assert outcome.stop_latency is not None and outcome.stop_latency < 0.5
    assert job.cancel() is False
    assert job.cancel(grace=0, discard=True) is False
    assert job.outcome is outcome


@pytest.mark.timeout(30)
def test_later_cancel_cannot_extend_the_grace(tmp_path: Path) -> None:
    """A second cancel with a longer grace keeps the first, shorter deadline."""
    marker = tmp_path / "ready"
    job = workstream.start(wl.mark_then_sleep_in_c, str(marker), 30)
    started(job, marker)
    assert job.cancel(grace=0.5) is True
    assert job.cancel(grace=30, term_after=20) is True
    assert list(job) == []
    outcome = cancelled_outcome(job)
    assert outcome.rung == "sigkill"
    assert outcome.stop_latency is not None
    assert 0.45 <= outcome.stop_latency <= 1.0, outcome.stop_latency


@pytest.mark.timeout(30)
def test_cancel_from_another_thread_ends_the_iteration() -> None:
    """A cancel from another thread ends the main thread's iteration, with every item
    before the stop delivered once and in order, then the finally item."""
    job = workstream.start(workers.forever)
    go = threading.Event()
    result: list[bool] = []

    def canceller() -> None:
        assert go.wait(10)
        result.append(job.cancel())

    thread = threading.Thread(target=canceller)
    thread.start()
    items: list[object] = []
    for item in job:
        items.append(item)
        if len(items) == 100:
            go.set()
    thread.join(10)
    assert result == [True]
    assert wl.assert_contiguous(split_finally(items)) >= 100
    outcome = cancelled_outcome(job)
    assert outcome.rung == "cooperative"
    assert outcome.items_delivered == len(items)


# -- backpressure and discard ------------------------------------------------------------

PAD = 64 << 10


@pytest.mark.timeout(30)
def test_cancel_while_child_blocked_on_full_channel_delivers_everything() -> None:
    """A child blocked writing to a full channel (consumer not reading) still stops
    within 1 s of cancel(), and every item it yielded is delivered in order."""
    job = workstream.start(wl.padded_numbers, PAD, max_buffered_items=4)
    wait_until(lambda: job.pid is not None, 10, "the child to start")
    assert job.pid is not None
    wait_until(wl.writes_stalled(job.pid), 10, "the child to block on the full channel")
    t0 = time.monotonic()
    assert job.cancel() is True
    outcome = cancelled_outcome(job, timeout=5)
    elapsed = time.monotonic() - t0
    assert outcome.rung == "cooperative"
    assert elapsed < 1.0, elapsed
    items = list(job)
    body = split_finally(items)
    assert all(isinstance(x, tuple) and len(x[1]) == PAD for x in body)
    n = wl.assert_contiguous([x[0] for x in body])  # type: ignore[index]
    assert n > 4  # more than the buffer: the pipe was full too
    assert outcome.items_delivered == len(items)


@pytest.mark.timeout(30)
def test_cancel_with_discard_drops_buffered_items() -> None:
    """cancel(discard=True) on a blocked child drops what was buffered and what follows:
    the iteration gets nothing, items_discarded counts them, and the stop is fast."""
    job = workstream.start(wl.padded_numbers, PAD, max_buffered_items=4)
    wait_until(lambda: job.pid is not None, 10, "the child to start")
    assert job.pid is not None
    wait_until(wl.writes_stalled(job.pid), 10, "the child to block on the full channel")
    assert job.cancel(discard=True) is True
    assert list(job) == []
    outcome = cancelled_outcome(job, timeout=5)
    assert outcome.rung == "cooperative"
    assert outcome.items_discarded >= 4
    assert outcome.items_delivered == 0
    assert outcome.stop_latency is not None and outcome.stop_latency < 1.0


@pytest.mark.timeout(30)
def test_discard_drops_the_rest_of_the_batch_being_iterated() -> None:
    """After cancel(discard=True) returns, iteration yields no further item, even ones
    that arrived in the same batch as the item just consumed."""
    job = workstream.start(
        wl.one_then_batch, 100, 1 << 16, batch_window=5.0, max_batch_bytes=1 << 16
    )
    it = iter(job)
    assert take(it, 2) == [0, 1]  # 1 came in one batch with 2..99 and the big item
    assert job.cancel(discard=True) is True
    rest = list(it)
    outcome = cancelled_outcome(job)
    assert outcome.rung == "cooperative"
    assert rest == [], f"{len(rest)} items delivered after cancel(discard=True)"
    assert outcome.items_delivered == 2


# -- cancel versus the end of the job ----------------------------------------------------


@pytest.mark.timeout(30)
def test_cancel_after_completion_changes_nothing() -> None:
    """cancel() after the job completed returns False and leaves the outcome as it was."""
    job = workstream.start(workers.count, 5)
    assert list(job) == [0, 1, 2, 3, 4]
    outcome = job.wait(timeout=10)
    assert isinstance(outcome, Completed) and outcome.value == 5
    assert outcome.exit_code == 0
    assert job.cancel() is False
    assert job.cancel(grace=0, discard=True) is False
    assert job.outcome is outcome
    assert job.state == "completed"
    assert job.cancel_requested is False
    assert job.result(timeout=1) == 5


RACE_KINDS = {
    "default": {},
    "term-now": {"grace": 0.5, "term_after": 0.0},
    "kill-now": {"grace": 0.0},
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cancel_kw", RACE_KINDS.values(), ids=RACE_KINDS.keys())
def test_cancel_racing_completion(method: str, cancel_kw: dict[str, float]) -> None:
    """A cancel racing a child that returns at once gives exactly one outcome, completed
    or cancelled, never crashed or failed, and the job's state agrees with it."""
    seen: dict[str, int] = {}
    for _ in range(8):
        job = workstream.start(wl.return_immediately, start_method=method)
        assert job.cancel(**cancel_kw) is True
        assert list(job) == []
        outcome = job.wait(timeout=10)
        assert job.outcome is outcome
        assert job.state == outcome.kind
        if isinstance(outcome, Completed):
            assert outcome.value == "done" and outcome.exit_code == 0
            key = "completed"
        else:
            assert isinstance(outcome, CancelledOutcome), outcome
            key = outcome.rung
            if outcome.rung == "sigkill":
                # -15: SIGTERM, sent together with SIGKILL at grace=0, killed it first
                # (see test_zero_grace_rung_matches_exit_status).
                assert outcome.exit_code in (-9, -15)
            elif outcome.rung == "sigterm":
                assert outcome.exit_code in (0, -15)
            elif outcome.rung == "before-start":
                assert outcome.pid is None
        seen[key] = seen.get(key, 0) + 1
        assert job.cancel() is False
    print(f"{method} {cancel_kw}: {seen}")
