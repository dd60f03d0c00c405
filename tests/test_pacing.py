"""_pacing.Pacer, the GUI bridges' core, with a fake job and no GUI: order, time boxes,
latest_only, max_rate and the end-of-stream rule (no processes)."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from workstream._pacing import Pacer


class FakeJob:
    """drain() hands out what the test queued; done() is set by the test."""

    name = "fake"

    def __init__(self) -> None:
        self.queued: list[Any] = []
        self.finished = False

    def drain(self) -> list[Any]:
        out, self.queued = self.queued, []
        return out

    def done(self) -> bool:
        return self.finished


def pacer(job: FakeJob, **kwargs: Any) -> Pacer:
    options = {"latest_only": False, "max_rate": None, "slice_ms": 8.0, **kwargs}
    return Pacer(job, **options)  # type: ignore[arg-type]


@pytest.mark.timeout(10)
def test_every_item_in_order_then_the_end() -> None:
    job = FakeJob()
    p = pacer(job)
    got: list[int] = []
    job.queued = list(range(1000))
    assert p.turn(got.extend, 256) == math.inf  # all delivered, job still running
    job.queued = list(range(1000, 1500))
    job.finished = True
    assert p.turn(got.extend, 256) is None
    assert got == list(range(1500))


@pytest.mark.timeout(10)
def test_a_slow_consumer_gets_a_time_boxed_slice_and_the_rest_later() -> None:
    job = FakeJob()
    p = pacer(job, slice_ms=10.0)
    got: list[int] = []

    def slow(chunk: list[int]) -> None:
        for x in chunk:
            end = time.perf_counter() + 0.002  # 2 ms of work per item (busy, not a sleep)
            while time.perf_counter() < end:
                pass
            got.append(x)

    job.queued = list(range(200))
    job.finished = True
    t0 = time.perf_counter()
    assert p.turn(slow, 256) == 0.0  # items left: call again as soon as the loop is free
    first = time.perf_counter() - t0
    assert 0 < len(got) < 200
    assert first < 0.3, first  # far less than the 0.4 s all 200 items take
    turns = 1
    while p.turn(slow, 256) is not None:
        turns += 1
        assert turns < 1000
    assert got == list(range(200))
    assert turns > 5


@pytest.mark.timeout(10)
def test_latest_only_delivers_the_newest_and_counts_the_rest() -> None:
    job = FakeJob()
    p = pacer(job, latest_only=True, max_rate=1000.0)
    got: list[list[int]] = []
    job.queued = [1, 2, 3]
    p.turn(got.append, 256)
    assert got == [[3]]
    job.queued = [4, 5]
    wait = p.turn(got.append, 256)  # within the 1 ms interval: drained, not delivered
    if wait is not None and 0 < wait < math.inf:
        time.sleep(wait)  # ok: sleep (the rate interval under test)
        p.turn(got.append, 256)
    assert got[-1] == [5]
    job.finished = True
    while p.turn(got.append, 256) is not None:
        time.sleep(0.001)  # ok: sleep (the rate interval under test)
    assert p.skipped + len(got) == 5


@pytest.mark.timeout(10)
def test_max_rate_spaces_the_slices() -> None:
    job = FakeJob()
    p = pacer(job, max_rate=10.0)
    got: list[list[int]] = []
    job.queued = [1]
    assert p.turn(got.append, 256) == math.inf
    job.queued = [2]
    wait = p.turn(got.append, 256)
    assert wait is not None and 0.05 < wait <= 0.1
    assert got == [[1]]


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
    assert p.turn(got.extend, 256) == math.inf
    assert got == ["last"]
    assert p.turn(got.extend, 256) is None
    assert got == ["last", "last"]
