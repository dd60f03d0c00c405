"""The item stream: order, exactly-once, big items, backpressure, partial iteration,
drain(), unpicklable items, batching and latency, and the context manager."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

import workers
import workers_stream as ws
import workstream
from conftest import wait_until
from workstream import JobState

METHODS = [
    "forkserver",
    "spawn",
    pytest.param("fork", marks=pytest.mark.filterwarnings("ignore::DeprecationWarning")),
]

MB = 1 << 20


# -- order and exactly-once -----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_100k_ints_in_order_exactly_once() -> None:
    """100,000 yielded ints arrive in order, each exactly once."""
    job = workstream.start(workers.count, 100_000)
    assert list(job) == list(range(100_000))
    assert job.result(timeout=30) == 100_000
    assert job.outcome is not None and job.outcome.items_delivered == 100_000


@pytest.mark.timeout(60)
def test_100k_dicts_in_order_exactly_once() -> None:
    """100,000 yielded dicts arrive in order, each exactly once and equal to what was sent."""
    job = workstream.start(ws.gen_count_dicts, 100_000)
    assert list(job) == [{"i": i, "square": i * i} for i in range(100_000)]
    assert job.result(timeout=30) == 100_000


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_order_with_every_start_method(method: str) -> None:
    """Items and the result arrive the same way under every start method."""
    job = workstream.start(workers.flood_dicts, 3000, start_method=method)
    assert list(job) == [{"step": i, "loss": 1.0 / (i + 1)} for i in range(3000)]
    assert job.result(timeout=30) is None


# -- big items ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "options",
    [{}, {"batch_window": 0}, {"max_buffered_bytes": MB}, {"pipe_bytes": 4096}],
    ids=["defaults", "batch_window-0", "buffer-smaller-than-item", "small-pipe"],
)
def test_items_larger_than_the_pipe_arrive_intact(options: dict[str, object]) -> None:
    """5 MB items (bigger than the pipe buffer, and than the byte bound) arrive intact."""
    size = 5 * MB
    job = workstream.start(ws.big_items, 4, size, **options)
    got = list(job)
    assert len(got) == 4
    for i, item in enumerate(got):
        assert len(item) == size
        assert item == ws.expected_big_item(i, size)
    assert job.result(timeout=30) == 4


# -- backpressure ---------------------------------------------------------------------------

# How far the child may get ahead of the consumer beyond the parent's bound: the pipe
# (4 KiB), one read chunk and one child batch (4 KiB each), the item being produced.
# Without backpressure the child gets to the end of its n items.
SLACK = 30


def _progress_reader(path: str) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            data = os.pread(fd, 8, 0)
            yield int.from_bytes(data, "little", signed=True) if len(data) == 8 else -1
    finally:
        os.close(fd)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("n", "pad", "options", "bound"),
    [
        (10_000, 1000, {"max_buffered_items": 100}, 100),
        # 1 MiB of ~100 kB items: the reader pauses once 11 items are buffered.
        (500, 100_000, {"max_buffered_items": None, "max_buffered_bytes": 1 << 20}, 11),
    ],
    ids=["max-items-100", "max-bytes-1MiB"],
)
def test_backpressure_stops_the_child(  # type: ignore[no-untyped-def]
    tmp_path, n: int, pad: int, options: dict[str, object], bound: int
) -> None:
    """With a bounded buffer a slow consumer holds the child back: it never gets more
    than the bound plus the in-flight slack ahead, and the parent's buffer never holds
    more than the bound plus one read."""
    path = str(tmp_path / "progress")
    open(path, "wb").close()
    job = workstream.start(
        ws.record_progress, n, path, pad, pipe_bytes=4096, max_batch_bytes=4096, **options
    )
    progress = _progress_reader(path)
    try:
        it = iter(job)
        first = next(it)
        assert first[0] == 0
        wait_until(lambda: job._core.reader_paused, 20, "the runner to pause reading")
        last = [-2, time.monotonic()]

        def stalled() -> bool:
            p = next(progress)
            now = time.monotonic()
            if p != last[0]:
                last[:] = [p, now]
                return False
            return now - last[1] >= 0.3

        wait_until(stalled, 20, "the child to stop making progress")
        ahead = next(progress)
        assert bound <= ahead <= bound + SLACK
        assert job._core.buffered_items <= bound + 8
        assert job.state is JobState.RUNNING
        assert job.done() is False
        indices = [0]
        max_lead = ahead
        max_buffered = job._core.buffered_items
        for i, data in it:
            indices.append(i)
            assert len(data) == pad
            max_lead = max(max_lead, next(progress) - i)
            max_buffered = max(max_buffered, job._core.buffered_items)
        assert indices == list(range(n))
        assert max_lead <= bound + SLACK
        assert max_buffered <= bound + 8
        assert job.result(timeout=30) == n
    finally:
        progress.close()


@pytest.mark.timeout(60)
def test_unbounded_buffer_lets_the_child_finish(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With max_buffered_items=None and max_buffered_bytes=None the child runs to its end
    while the consumer holds the first item, and everything is delivered afterwards."""
    path = str(tmp_path / "progress")
    open(path, "wb").close()
    n = 10_000
    job = workstream.start(
        ws.record_progress, n, path, 1000,
        max_buffered_items=None, max_buffered_bytes=None, pipe_bytes=4096,
        max_batch_bytes=4096,
    )
    progress = _progress_reader(path)
    try:
        it = iter(job)
        assert next(it)[0] == 0
        outcome = job.wait(timeout=30)
        assert type(outcome) is workstream.Completed
        assert next(progress) == n - 1
        assert job._core.buffered_items + job._view.left == n - 1  # first batch taken
        assert [i for i, _ in it] == list(range(1, n))
        assert outcome.value == n
    finally:
        progress.close()


# -- partial iteration, drain, end of stream ------------------------------------------------


@pytest.mark.timeout(30)
def test_break_and_resume_iteration() -> None:
    """Breaking out of a loop and iterating again later gives the rest, exactly once."""
    job = workstream.start(workers.count, 1000)
    first = []
    for x in job:
        first.append(x)
        if x == 10:
            break
    assert first == list(range(11))
    second = []
    for x in job:
        second.append(x)
        if x == 500:
            break
    assert second == list(range(11, 501))
    assert list(job) == list(range(501, 1000))
    assert job.result(timeout=20) == 1000


@pytest.mark.timeout(30)
def test_drain_never_blocks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """drain() returns what arrived so far ([] when nothing did) without blocking."""
    gate = ws.make_gate(str(tmp_path))
    job = workstream.start(ws.yield_then_block, gate)
    assert job.drain() == []
    got: list[object] = []

    def drained_first() -> bool:
        got.extend(job.drain())
        return bool(got)

    wait_until(drained_first, 20, "the first item")
    assert got == ["first"]
    # The child is blocked: nothing more arrives, and drain() still returns at once.
    assert job.drain() == []
    assert job.done() is False
    ws.release(gate, wait_until)
    assert job.result(timeout=20) == "released"
    assert job.drain() == ["second"]
    assert job.drain() == []
    assert list(job) == []


@pytest.mark.timeout(30)
def test_drain_and_iteration_share_the_stream() -> None:
    """drain() returns exactly the items iteration has not taken yet."""
    job = workstream.start(workers.count, 50, batch_window=30.0)
    it = iter(job)
    assert next(it) == 0
    job.wait(timeout=20)
    assert next(it) == 1
    assert job.drain() == list(range(2, 50))
    assert list(job) == []


@pytest.mark.timeout(30)
def test_iteration_after_the_end_yields_nothing() -> None:
    """Once the stream ended, iterating again yields nothing and does not block."""
    job = workstream.start(workers.count, 3)
    assert list(job) == [0, 1, 2]
    assert list(job) == []
    it = iter(job)
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
    assert job.drain() == []
    assert job.result(timeout=20) == 3


@pytest.mark.timeout(30)
def test_iteration_ends_for_a_failed_job() -> None:
    """The loop ends normally (no exception) when the job fails; result() raises."""
    job = workstream.start(workers.raise_after, 4)
    assert list(job) == [0, 1, 2, 3]
    assert list(job) == []
    with pytest.raises(workstream.WorkerError):
        job.result(timeout=20)


# -- unpicklable items ----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_unpicklable_yield_fails_at_the_yield() -> None:
    """An unpicklable item raises inside the child at its yield: earlier items are delivered
    and the job fails with a traceback naming the yield line."""
    job = workstream.start(ws.yield_unpicklable_at_line)
    assert list(job) == ["first"]
    outcome = job.wait(timeout=20)
    assert type(outcome) is workstream.Failed
    assert outcome.items_delivered == 1
    err = outcome.error
    assert type(err) is workstream.WorkerError
    assert err.type_name == "TypeError"
    assert err.message == "cannot pickle '_thread.lock' object"
    line = ws.line_of("yield-lock")
    assert f'File "{ws.__file__}", line {line}, in yield_unpicklable_at_line' in (
        err.remote_traceback
    )
    assert "yield threading.Lock()" in err.remote_traceback
    assert type(err.__cause__) is TypeError


@pytest.mark.timeout(30)
def test_unpicklable_yield_can_be_caught_at_the_yield() -> None:
    """fn can catch the pickling error at its yield and go on streaming."""
    job = workstream.start(ws.yield_unpicklable_and_recover)
    assert list(job) == ["first", "caught TypeError", "last"]
    assert job.result(timeout=20) == "recovered"


@pytest.mark.timeout(30)
def test_unpicklable_emit_fails_at_the_emit() -> None:
    """emit() of an unpicklable item raises at the emit call, naming its line."""
    job = workstream.start(ws.emit_unpicklable)
    assert list(job) == ["first"]
    outcome = job.wait(timeout=20)
    assert type(outcome) is workstream.Failed
    err = outcome.error
    assert type(err) is workstream.WorkerError
    assert err.type_name == "TypeError"
    line = ws.line_of("emit-lock")
    assert f'File "{ws.__file__}", line {line}, in emit_unpicklable' in err.remote_traceback


# -- batching and latency -------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "options",
    [
        {"batch_window": 0},
        {"batch_window": 0.001},
        {"batch_window": 30.0},
        {"batch_window": 30.0, "max_batch_bytes": 1},
        {"batch_window": 0.01, "max_batch_bytes": 64 << 20},
    ],
    ids=["window-0", "window-1ms", "window-30s", "window-30s-batch-1-byte", "huge-batches"],
)
def test_every_batch_setting_delivers_everything(options: dict[str, object]) -> None:
    """Whatever the batching settings, every item arrives, in order, then the result."""
    job = workstream.start(workers.count, 20_000, **options)
    assert list(job) == list(range(20_000))
    assert job.result(timeout=30) == 20_000


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("fn", "window"),
    [
        (ws.yield_then_block, 0.001),
        (ws.yield_then_block, 30.0),
        (ws.emit_then_block, 30.0),
    ],
    ids=["yield-default-window", "yield-30s-window", "emit-30s-window"],
)
def test_lone_item_is_not_held_for_the_batch_window(
    tmp_path, fn: object, window: float  # type: ignore[no-untyped-def]
) -> None:
    """An item produced on an idle channel reaches the parent at once (within 2 s, while
    the child is still blocked), not after the batch window."""
    gate = ws.make_gate(str(tmp_path))
    job = workstream.start(fn, gate, batch_window=window)
    wait_until(lambda: job.state == JobState.RUNNING, 30, "the child to start")
    got: list[object] = []

    def arrived() -> bool:
        got.extend(job.drain())
        return bool(got)

    wait_until(arrived, 2.0, "the lone first item")
    assert got == ["first"]
    assert job.done() is False
    assert job.outcome is None
    ws.release(gate, wait_until)
    assert list(job) == ["second"]
    assert job.result(timeout=20) == "released"


@pytest.mark.timeout(60)
def test_pending_batch_is_flushed_while_the_child_blocks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Items batched in the child are written by the flusher within the batch window even
    when the child blocks right after yielding them."""
    gate = ws.make_gate(str(tmp_path))
    job = workstream.start(ws.burst_then_block, 1000, gate, batch_window=0.05)
    got: list[object] = []

    def all_arrived() -> bool:
        got.extend(job.drain())
        return len(got) >= 1000

    wait_until(all_arrived, 10, "the burst")
    assert got == list(range(1000))
    assert job.done() is False
    ws.release(gate, wait_until)
    assert list(job) == ["tail"]
    assert job.result(timeout=20) == "released"


# -- context manager ------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_with_block_left_early_cancels_and_waits() -> None:
    """Leaving a with block before the stream ended cancels the job and waits for it."""
    with workstream.start(ws.forever_marked) as job:
        seen = []
        for x in job:
            seen.append(x)
            if x == 3:
                break
    assert seen == [0, 1, 2, 3]
    assert job.done() is True
    assert job.cancel_requested is True
    outcome = job.outcome
    assert type(outcome) is workstream.CancelledOutcome
    assert outcome.rung == "cooperative"
    assert job.state is JobState.CANCELLED


@pytest.mark.timeout(30)
def test_with_block_after_consuming_everything_completes() -> None:
    """Leaving a with block after the stream ended leaves the job completed, not cancelled."""
    with workstream.start(workers.count, 10) as job:
        assert list(job) == list(range(10))
    assert job.done() is True
    assert job.cancel_requested is False
    outcome = job.outcome
    assert type(outcome) is workstream.Completed
    assert outcome.value == 10


@pytest.mark.timeout(30)
def test_with_block_of_a_failed_job_does_not_raise() -> None:
    """Leaving a with block normally does not raise for a failed job; the outcome says it."""
    with workstream.start(workers.raise_after, 2) as job:
        assert list(job) == [0, 1]
    assert type(job.outcome) is workstream.Failed
    with pytest.raises(workstream.WorkerError):
        job.result(timeout=1)


@pytest.mark.timeout(30)
def test_exception_in_with_block_propagates_and_cancels() -> None:
    """An exception raised in the with block propagates unchanged and the job is cancelled."""
    boom = KeyError("from the block")
    with pytest.raises(KeyError) as info, workstream.start(ws.forever_marked) as job:
        assert next(iter(job)) == 0
        raise boom
    assert info.value is boom
    assert info.value.__context__ is None
    assert info.value.__cause__ is None
    assert job.done() is True
    outcome = job.outcome
    assert type(outcome) is workstream.CancelledOutcome
    assert outcome.rung == "cooperative"


# -- several producers ----------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("window", [0, 0.001], ids=["window-0", "window-1ms"])
def test_emit_from_several_child_threads(window: float) -> None:
    """Items emitted from several child threads at once all arrive exactly once, each
    thread's items in its own order."""
    job = workstream.start(ws.emit_from_threads, 4, 20_000, batch_window=window)
    items = list(job)
    assert job.result(timeout=30) == 80_000
    assert len(items) == 80_000
    for t in range(4):
        assert [i for (tt, i) in items if tt == t] == list(range(20_000))


@pytest.mark.timeout(30)
def test_yield_and_emit_interleave_in_order() -> None:
    """A generator that both yields and emits streams the items in the order produced."""
    job = workstream.start(ws.yield_and_emit, 500)
    expected = [x for i in range(500) for x in (("yield", i), ("emit", i))]
    assert list(job) == expected
    assert job.result(timeout=20) == 500
