"""The user's original question, rewritten with workstream.

The seed: a GUI thread, a listener thread reading a ``multiprocessing.Queue`` and a
worker process that floods it; ``terminate()`` on Stop left the listener blocked in
``queue.get()`` or the queue corrupted, "sometimes it works, sometimes not". Each
failure mode is a test here: the stop never hangs, every item up to the stop arrives
(whole, once, in order), the worker is reaped, and the next job is unaffected.
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest

import workers
import workers_lifecycle as wl
import workstream
from conftest import wait_until
from workstream import CancelledOutcome, Completed, Crashed


class Listener:
    """The seed's listener thread: on_item / on_done callbacks run on the job's thread."""

    def __init__(self, stop_after: int) -> None:
        self.items: list[object] = []
        self.outcomes: list[object] = []
        self.threads: set[str] = set()
        self.reached = threading.Event()
        self.done = threading.Event()
        self._stop_after = stop_after

    def on_item(self, item: object) -> None:
        self.threads.add(threading.current_thread().name)
        self.items.append(item)
        if len(self.items) >= self._stop_after:
            self.reached.set()

    def on_done(self, outcome: object) -> None:
        self.outcomes.append(outcome)
        self.done.set()


# -- (1) GUI + listener + flooding worker ------------------------------------------------


@pytest.mark.timeout(30)
def test_gui_listener_and_flooding_worker_stop_cleanly() -> None:
    """GUI thread + listener (on_item) + flooding worker: Stop after N items never hangs,
    delivers every item up to the stop in order and once, reaps the worker, and takes
    under 0.5 s."""
    listener = Listener(stop_after=5000)
    job = workstream.start(
        wl.numbers_with_finally, None, on_item=listener.on_item, on_done=listener.on_done
    )
    assert listener.reached.wait(15), "the listener never saw 5000 items"
    t0 = time.monotonic()
    assert job.cancel() is True  # the GUI's Stop button
    outcome = job.wait(timeout=5)
    elapsed = time.monotonic() - t0
    assert isinstance(outcome, CancelledOutcome) and outcome.rung == "cooperative", outcome
    assert elapsed < 0.5, elapsed
    assert outcome.stop_latency is not None and outcome.stop_latency < 0.5
    assert listener.outcomes == [outcome]
    assert listener.items[-1] == "finally"
    assert wl.assert_contiguous(listener.items[:-1]) >= 5000
    assert outcome.items_delivered == len(listener.items)
    assert threading.current_thread().name not in listener.threads
    assert outcome.pid is not None
    wait_until(lambda: wl.pid_gone(outcome.pid), 5, "the worker to be reaped")  # type: ignore[arg-type]


@pytest.mark.timeout(30)
def test_gui_timer_polling_drain_stops_cleanly() -> None:
    """A GUI event loop that polls drain() on a timer stops a flooding worker without a
    listener thread: nothing hangs and the drained items are contiguous, then "finally"."""
    job = workstream.start(wl.numbers_with_finally, None, max_buffered_items=1000)
    items: list[object] = []
    deadline = time.monotonic() + 15
    while len(items) < 3000:
        assert time.monotonic() < deadline, f"only {len(items)} items drained"
        items.extend(job.drain())
        time.sleep(0.001)  # ok: sleep (the GUI's timer tick)
    t0 = time.monotonic()
    assert job.cancel() is True
    while not job.done():
        assert time.monotonic() - t0 < 5, "the job did not end after Stop"
        items.extend(job.drain())
        time.sleep(0.001)  # ok: sleep (the GUI's timer tick)
    items.extend(job.drain())
    outcome = job.wait(timeout=1)
    assert isinstance(outcome, CancelledOutcome) and outcome.rung == "cooperative", outcome
    assert items[-1] == "finally"
    assert wl.assert_contiguous(items[:-1]) >= 3000
    assert outcome.items_delivered == len(items)


@pytest.mark.timeout(30)
def test_worker_that_swallows_cancel_is_killed_and_listener_ends() -> None:
    """The seed's worker (an endless put loop that never looks at a stop flag, here also
    swallowing Cancelled and ignoring SIGTERM) is SIGKILLed at grace; the listener still
    ends, every item it got is whole and in increasing order, on_done runs once."""
    listener = Listener(stop_after=1000)
    job = workstream.start(
        wl.stubborn_flood, grace=0.5, on_item=listener.on_item, on_done=listener.on_done
    )
    assert listener.reached.wait(15)
    assert job.cancel() is True
    assert listener.done.wait(5), "on_done never ran: the listener hangs"
    outcome = job.wait(timeout=1)
    assert isinstance(outcome, CancelledOutcome) and outcome.rung == "sigkill", outcome
    assert outcome.exit_code == -9
    assert outcome.stop_latency is not None and 0.45 <= outcome.stop_latency <= 1.5
    assert listener.outcomes == [outcome]
    items = listener.items
    assert all(isinstance(x, int) for x in items)
    assert all(a < b for a, b in itertools.pairwise(items)), "items repeated or reordered"
    assert items[:1000] == list(range(1, 1001))


# -- (2) Stop before the spawned child installed any handler -----------------------------

EARLY = {
    "default": ({}, {"before-start", "cooperative"}),
    # SIGTERM may land in workstream's own start-up code: it then only sets the flag and
    # the first cancellation point raises (cooperative).
    "term-now": ({"grace": 1.0, "term_after": 0.0}, {"before-start", "sigterm", "cooperative"}),
    "kill-now": ({"grace": 0.0}, {"before-start", "sigterm", "sigkill"}),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize("case", EARLY.keys())
def test_stop_before_child_installed_handlers_never_hangs(method: str, case: str) -> None:
    """Stop pressed right after start, while the child interpreter is still booting (no
    SIGTERM handler yet), always ends cancelled within grace + 1 s with nothing leaked."""
    kwargs, rungs = EARLY[case]
    grace = float(kwargs.get("grace", workstream.DEFAULT_GRACE))
    for _ in range(5):
        job = workstream.start(wl.numbers_with_finally, None, start_method=method)
        t0 = time.monotonic()
        assert job.cancel(**kwargs) is True
        items = list(job)
        outcome = job.wait(timeout=grace + 5)
        assert time.monotonic() - t0 < grace + 1.0
        assert isinstance(outcome, CancelledOutcome), outcome
        assert outcome.rung in rungs, outcome
        if items:
            assert items[-1] == "finally"
            wl.assert_contiguous(items[:-1])
        if outcome.rung in ("sigterm", "sigkill"):
            assert outcome.exit_code in (0, -15, -9), outcome


# -- (3) a child killed in the middle of writing a large item ----------------------------

MB = 1 << 20


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("mode", "kill_after", "options"),
    [
        # The consumer does not read: after an item or two the child blocks inside a
        # frame bigger than the pipe, and is killed there (the frame is always torn).
        pytest.param("stalled", 1, {"max_buffered_items": 1, "batch_window": 0.0}, id="stalled"),
        # The consumer reads: the kill lands while items 3, 4, ... are being written.
        pytest.param("streaming", 3, {}, id="streaming"),
    ],
)
def test_child_killed_mid_item_never_delivers_a_torn_item(
    mode: str, kill_after: int, options: dict[str, object]
) -> None:
    """A child SIGKILLed while writing 1 MB items delivers only whole items (content
    checked, indices contiguous), ends Crashed with exit code -9, and the next job works."""
    job = workstream.start(wl.big_items_then_die, MB, mode, kill_after, **options)
    if mode == "stalled":
        outcome = job.wait(timeout=30)
        items = list(job)
    else:
        items = list(job)
        outcome = job.wait(timeout=30)
    assert isinstance(outcome, Crashed), outcome
    assert outcome.exit_code == -9
    assert outcome.signal_name == "SIGKILL"
    # Every item whose yield returned was written whole, so it must arrive.
    assert len(items) >= kill_after
    for item in items:
        assert wl.check_big_item(item, MB), "a torn or corrupted item was delivered"
    wl.assert_contiguous([item[0] for item in items])  # type: ignore[index]
    assert outcome.items_delivered == len(items)
    if mode == "stalled":
        assert "middle of writing a frame" in str(outcome.error), outcome.error
    # The channel was the dead job's alone: the next job is unaffected.
    nxt = workstream.start(workers.count, 5)
    assert list(nxt) == [0, 1, 2, 3, 4]
    nxt_outcome = nxt.wait(timeout=15)
    assert isinstance(nxt_outcome, Completed) and nxt_outcome.value == 5
