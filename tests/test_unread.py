"""issue 9 §3: a job whose buffer is full and that nobody reads never makes wait() or
result() hang silently. Without a timeout they raise RuntimeError at once (the job keeps
running) when no other thread reads the stream; with a live reader elsewhere, or with a
timeout, they wait, and the TimeoutError says that the worker is blocked on a full
buffer nobody reads. pytest-timeout (60 s) turns a hang into a failure."""

from __future__ import annotations

import asyncio
import threading

import pytest

import workers_badinput as wb
import workstream
from workstream import JobState


def _full_job(**options: object) -> workstream.Job:  # type: ignore[type-arg]
    return workstream.start(wb.flood, max_buffered_items=10, name="flood", **options)


def _end(job: workstream.Job) -> None:  # type: ignore[type-arg]
    job.cancel(discard=True)
    assert job.wait(timeout=20).kind == "cancelled"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", ["wait", "result"])
def test_nobody_ever_read(method: str) -> None:
    """Regression test for issue 9 §3: start(gen).result() with a stream bigger than the
    buffer raises a RuntimeError naming the full buffer instead of hanging; the job
    is left running, and reading it afterwards works."""
    job = _full_job()
    try:
        with pytest.raises(RuntimeError, match="its worker is blocked because") as info:
            getattr(job, method)()
        assert "max_buffered_items=10" in str(info.value)
        assert job.state is JobState.RUNNING and not job.cancel_requested
        it = iter(job)
        assert [next(it) for _ in range(25)] == list(range(25))  # the ways out work
    finally:
        _end(job)


@pytest.mark.timeout(30)
def test_the_reader_stopped_reading_then_waits() -> None:
    """The thread that iterated breaks out of its loop and then waits: it was the only
    reader, so wait() raises instead of hanging."""
    job = _full_job()
    try:
        for item in job:
            assert item == 0
            break
        with pytest.raises(RuntimeError, match="nothing reads them while this thread waits"):
            job.wait()
    finally:
        _end(job)


@pytest.mark.timeout(30)
def test_a_finished_reader_thread_reads_no_more() -> None:
    """A reader thread that has ended reads nothing more: wait() on another thread
    raises."""
    job = _full_job()
    try:
        reader = threading.Thread(target=lambda: next(iter(job)))
        reader.start()
        reader.join(10)
        with pytest.raises(RuntimeError, match="its worker is blocked because"):
            job.result()
    finally:
        _end(job)


@pytest.mark.timeout(30)
def test_a_live_reader_elsewhere_keeps_wait_waiting() -> None:
    """With another thread reading (slowly), wait() waits; its timeout message says the
    worker is blocked on a full buffer nobody reads, with the numbers."""
    job = _full_job()
    took_one = threading.Event()
    go_on = threading.Event()

    def slow_reader() -> None:
        for _ in job:
            took_one.set()
            go_on.wait(20)

    reader = threading.Thread(target=slow_reader)
    reader.start()
    try:
        assert took_one.wait(10)
        with pytest.raises(TimeoutError) as info:
            job.wait(timeout=0.5)
        text = str(info.value)
        assert text.startswith(f"job 'flood' (pid {job.pid}) is still running after 0.5 s: ")
        assert "its worker is blocked on a full buffer nobody reads: " in text
        assert "wait unread in its buffer (max_buffered_items=10," in text
        assert "and none was taken for " in text
    finally:
        job.cancel(discard=True)
        go_on.set()
        reader.join(20)
        assert job.wait(timeout=20).kind == "cancelled"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", ["wait", "result"])
def test_with_a_timeout_it_waits_and_says_why(method: str) -> None:
    """With a timeout, wait()/result() on a job nobody reads wait (the worker may end on
    its own, or another thread may cancel it) and the TimeoutError names the cause."""
    job = _full_job()
    try:
        with pytest.raises(TimeoutError) as info:
            getattr(job, method)(timeout=1.0)
        text = str(info.value)
        assert "is still running after 1.0 s: its worker is blocked on a full buffer" in text
        assert "nobody reads: " in text
        canceller = threading.Timer(0.05, job.cancel)  # e.g. a watchdog on another thread
        canceller.start()
        assert job.wait(timeout=20).kind == "cancelled"
        canceller.join()
    finally:
        _end(job)


@pytest.mark.timeout(30)
def test_a_consumer_thread_lets_result_return() -> None:
    """The usual pattern (one thread iterates, another waits for the value) works with a
    stream many times the buffer."""
    job = workstream.start(wb.fn, *range(2000), max_buffered_items=10)
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.extend(job))
    reader.start()
    assert job.result(timeout=20) == 2000
    reader.join(20)
    assert got == list(range(2000))


@pytest.mark.timeout(30)
def test_on_item_counts_as_a_reader() -> None:
    """A job with on_item is read by its callback thread: wait() just waits."""
    seen: list[object] = []
    job = workstream.start(wb.fn, *range(500), max_buffered_items=10, on_item=seen.append)
    assert job.wait(timeout=20).kind == "completed"
    assert seen == list(range(500))


@pytest.mark.timeout(30)
def test_await_wait_with_nobody_reading() -> None:
    """await job.wait_async() on a job nobody reads raises the same RuntimeError instead of
    waiting for ever."""

    async def main() -> None:
        job = _full_job()
        try:
            with pytest.raises(RuntimeError, match="its worker is blocked because"):
                await job.wait_async()
        finally:
            job.cancel(discard=True)
            await job.wait_async(timeout=20)

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_cancelled_job_is_not_stuck() -> None:
    """After cancel() the runner reads (and drops) the rest: wait() returns, no error."""
    job = _full_job()
    next(iter(job))
    job.cancel()
    assert job.wait(timeout=20).kind == "cancelled"
