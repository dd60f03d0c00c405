"""_pacing.Pacer, the GUI bridges' core, with a fake job, a fake clock and no GUI: order,
time boxes, one list per turn for list consumers, backpressure for per-item consumers,
latest_only, max_rate and the end-of-stream rule (no processes, no sleeps)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from workstream._pacing import PER_ITEM_CHUNK, Pacer


class FakeJob:
    """drain() hands out what the test queued; done() is set by the test."""

    name = "fake"

    def __init__(self) -> None:
        self.queued: list[Any] = []
        self.finished = False
        self.drains = 0

    def drain(self) -> list[Any]:
        self.drains += 1
        out, self.queued = self.queued, []
        return out

    def done(self) -> bool:
        return self.finished


class FakeClock:
    """A clock that only moves when a consumer says it worked (``advance``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def pacer(job: FakeJob, clock: FakeClock | None = None, **kwargs: Any) -> Pacer:
    options = {"latest_only": False, "max_rate": None, "slice_ms": 8.0, **kwargs}
    return Pacer(job, clock=clock or FakeClock(), **options)  # type: ignore[arg-type]


def costing(clock: FakeClock, got: list[Any], *, per_item: float = 0.0,
            per_call: float = 0.0, calls: list[int] | None = None) -> Any:
    """A consumer that records what it gets and costs ``per_call + per_item * n`` of the
    fake clock's time; ``calls`` gets the length of each list it was handed."""

    def consume(chunk: list[Any]) -> None:
        assert chunk, "a consumer is never called with an empty list"
        got.extend(chunk)
        if calls is not None:
            calls.append(len(chunk))
        clock.advance(per_call + per_item * len(chunk))

    return consume


@pytest.mark.timeout(10)
def test_every_item_in_order_then_the_end() -> None:
    job = FakeJob()
    p = pacer(job)
    got: list[int] = []
    job.queued = list(range(1000))
    assert p.turn(None, got.extend) == math.inf  # all delivered, job still running
    job.queued = list(range(1000, 1500))
    job.finished = True
    assert p.turn(None, got.extend) is None
    assert got == list(range(1500))


@pytest.mark.timeout(10)
def test_a_slow_per_item_consumer_gets_a_time_boxed_slice_and_the_rest_later() -> None:
    clock = FakeClock()
    job = FakeJob()
    p = pacer(job, clock, slice_ms=10.0)
    got: list[int] = []
    slow = costing(clock, got, per_item=0.002)  # 2 ms per item
    job.queued = list(range(200))
    job.finished = True
    t0 = clock()
    assert p.turn(None, slow) == 0.0  # items left: call again as soon as the loop is free
    assert 0 < len(got) < 200
    # The first chunk is sized from a guess (1 ms per item), the slice ends after it.
    assert clock() - t0 <= 0.010 + 0.002 * 10, clock() - t0
    turns = 1
    while True:
        t0 = clock()
        delay = p.turn(None, slow)
        if delay is None:
            break
        turns += 1
        assert clock() - t0 <= 0.0101, "a slice overran once the cost was measured"
        assert turns < 1000
    assert got == list(range(200))
    assert turns >= 40  # 0.4 s of work in 10 ms slices


@pytest.mark.timeout(10)
def test_a_list_consumer_gets_everything_in_one_call_whatever_it_costs() -> None:
    """Regression test for issue 9 §1: a list consumer costing 5 ms per call (more than
    the 4 ms that used to make the pacer hand it one item per call) gets everything
    queued in one list per turn, so it keeps up with a flood."""
    clock = FakeClock()
    job = FakeJob()
    p = pacer(job, clock)
    got: list[int] = []
    calls: list[int] = []
    plot = costing(clock, got, per_call=0.005, calls=calls)
    for burst in range(10):
        job.queued = list(range(burst * 300, (burst + 1) * 300))
        assert p.turn(plot, None) == math.inf  # everything delivered
    assert calls == [300] * 10
    job.finished = True
    assert p.turn(plot, None) is None
    assert got == list(range(3000))


@pytest.mark.timeout(10)
def test_a_slow_list_consumer_does_not_shrink_the_per_item_chunks() -> None:
    """Both kinds connected: the list consumer gets each drain at once, ahead of the
    per-item one; the per-item cost is measured on the per-item calls only, so a 20 ms
    list call does not turn the per-item delivery into one item per call."""
    clock = FakeClock()
    job = FakeJob()
    p = pacer(job, clock)
    lists: list[int] = []
    items: list[int] = []
    list_calls: list[int] = []
    item_calls: list[int] = []
    plot = costing(clock, lists, per_call=0.020, calls=list_calls)
    label = costing(clock, items, per_item=1e-6, calls=item_calls)
    job.queued = list(range(5000))
    job.finished = True
    turns = 0
    while p.turn(plot, label) is not None:
        turns += 1
        assert turns < 100
    assert lists == items == list(range(5000))
    assert list_calls == [5000]
    assert max(item_calls) == PER_ITEM_CHUNK


@pytest.mark.timeout(10)
def test_a_per_item_backlog_leaves_new_items_in_the_job() -> None:
    """Backpressure: while the per-item consumer has a backlog, the pacer takes nothing
    more from the job (its bounded buffer then slows the worker); the end is reported
    only after the job's last items were taken and delivered."""
    clock = FakeClock()
    job = FakeJob()
    p = pacer(job, clock, slice_ms=10.0)
    got: list[int] = []
    slow = costing(clock, got, per_item=0.001)
    job.queued = list(range(100))
    assert p.turn(None, slow) == 0.0
    drains = job.drains
    job.queued = list(range(100, 150))
    job.finished = True
    while len(got) < 100:
        assert p.turn(None, slow) == 0.0  # the backlog (then the job) still holds items
        assert job.queued == list(range(100, 150)) and job.drains == drains
    turns = 0
    while p.turn(None, slow) is not None:
        turns += 1
        assert turns < 100
    assert got == list(range(150))
    assert job.drains > drains


@pytest.mark.timeout(10)
def test_without_consumers_items_are_taken_and_dropped() -> None:
    job = FakeJob()
    p = pacer(job)
    job.queued = list(range(10))
    job.finished = True
    assert p.turn(None, None) is None
    assert job.queued == []


@pytest.mark.timeout(10)
def test_latest_only_delivers_the_newest_and_counts_the_rest() -> None:
    clock = FakeClock()
    job = FakeJob()
    p = pacer(job, clock, latest_only=True, max_rate=1000.0)
    lists: list[list[int]] = []
    items: list[int] = []
    job.queued = [1, 2, 3]
    assert p.turn(lists.append, items.extend) == math.inf
    assert lists == [[3]] and items == [3]
    job.queued = [4, 5]
    wait = p.turn(lists.append, items.extend)  # within the 1 ms interval: drained only
    assert wait == pytest.approx(0.001)
    assert job.queued == [] and lists == [[3]]
    clock.advance(0.001)
    job.queued = [6]
    job.finished = True
    assert p.turn(lists.append, items.extend) is None
    assert lists == [[3], [6]] and items == [3, 6]
    assert p.skipped == 4  # 1, 2, 4, 5


@pytest.mark.timeout(10)
def test_max_rate_spaces_the_turns_for_both_kinds_of_consumer() -> None:
    clock = FakeClock()
    job = FakeJob()
    p = pacer(job, clock, max_rate=10.0)
    got: list[list[int]] = []
    job.queued = [1]
    assert p.turn(got.append, None) == math.inf
    clock.advance(0.02)
    job.queued = [2, 3]
    assert p.turn(got.append, None) == pytest.approx(0.08)
    assert got == [[1]] and job.queued == [2, 3]  # left in the job until the turn is due
    clock.advance(0.08)
    assert p.turn(got.append, None) == math.inf
    assert got == [[1], [2, 3]]


@pytest.mark.timeout(10)
def test_done_is_read_before_the_drain() -> None:
    """An item queued after done() was read is delivered before the end is reported."""

    class RacyJob(FakeJob):
        def done(self) -> bool:
            was = self.finished
            self.finished = True  # the job ends right after this look
            self.queued.append("last")
            return was

    job = RacyJob()
    p = pacer(job)
    got: list[Any] = []
    assert p.turn(got.extend, None) == math.inf
    assert got == ["last"]
    assert p.turn(got.extend, None) is None
    assert got == ["last", "last"]


class Item:
    """An item that a weak reference can watch."""


@pytest.mark.timeout(10)
def test_the_per_item_backlog_keeps_no_item_it_handed_out() -> None:
    """While a slow per-item consumer works through its backlog over several turns, the
    items already handed to it are not kept by the pacer (a zero-copy shared-memory array
    is freed as soon as the slot drops it), and the list consumer's lists are left
    untouched."""
    import weakref

    clock = FakeClock()
    job = FakeJob()
    p = pacer(job, clock, slice_ms=10.0)
    refs: list[weakref.ref[Item]] = []
    lists: list[list[Item]] = []

    def slow(chunk: list[Item]) -> None:
        refs.extend(weakref.ref(x) for x in chunk)
        clock.advance(0.002 * len(chunk))

    job.queued = [Item() for _ in range(100)]
    assert p.turn(lists.append, slow) == 0.0
    handed = len(refs)
    assert 0 < handed < 100
    held_by_lists = lists.pop()
    assert len(held_by_lists) == 100 and all(isinstance(x, Item) for x in held_by_lists)
    del held_by_lists
    assert [r() for r in refs] == [None] * handed, "the pacer keeps items it handed out"
    job.finished = True
    while p.turn(None, slow) is not None:
        pass
    assert len(refs) == 100 and all(r() is None for r in refs)
