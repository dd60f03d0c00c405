"""workstream.Pool: the contract of issue 13, each guarantee a test.

Every test runs under the autouse leak check (conftest): no process, zombie, fd or thread
is left after the pool is closed. Synchronisation is on marker files, FIFOs and job
events; the only sleeps are bounded polls of external facts (``wait_until``) and, in the
queued-timeout test, time that must pass for the limit to matter.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import itertools
import os
import threading
import time
import weakref
from typing import Any

import psutil
import pytest

import workers_pool as wp
import workers_stream as ws
import workstream
from conftest import infrastructure_pids, wait_until
from workstream import CancelledOutcome, CancelRung, Completed, JobState

# -- helpers ------------------------------------------------------------------------------


def worker_pids() -> set[int]:
    """Our live descendant processes that are not workstream's or multiprocessing's
    helpers (guard, fork server, resource tracker): the pool's worker processes."""
    infra = infrastructure_pids()
    out = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid in infra or child.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        out.add(child.pid)
    return out


class Sampler:
    """Counts the pool's worker processes in a thread until stopped; keeps the maximum."""

    def __init__(self, interval: float = 0.002) -> None:
        self.most = 0
        self._interval = interval
        self._stop = threading.Event()
        self.lock = threading.Lock()  # held while sampling (hold it to pause the sampler)
        self.thread = threading.Thread(target=self._run, name="test-sampler")
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self.lock:
                self.most = max(self.most, len(worker_pids()))

    def stop(self) -> int:
        self._stop.set()
        self.thread.join()
        return self.most


def blocked_pool_job(pool: workstream.Pool, tmp_path: Any, name: str = "gate") -> tuple[
    workstream.Job[Any, Any], str
]:
    """Occupy one slot of ``pool`` with a job blocked on a FIFO; return it and the FIFO."""
    gate = ws.make_gate(str(tmp_path), name)
    job = pool.start(wp.wait_for_gate, gate)
    wait_until(lambda: job.state is JobState.RUNNING, 30, "the blocker to run")
    return job, gate


# -- the basics ---------------------------------------------------------------------------


def test_a_pool_job_is_a_job_that_streams_and_runs_warm() -> None:
    with workstream.Pool(2, wp.init_tag, ("model",)) as pool:
        job = pool.start(wp.numbers, 5)
        assert isinstance(job, workstream.Job)
        assert list(job) == [0, 1, 2, 3, 4]
        assert job.result(timeout=30) == 5
        outcome = job.wait()
        assert isinstance(outcome, Completed) and outcome.kept_warm is True
        assert outcome.timed_out is False
        state, pid = pool.start(wp.state_and_pid).result(timeout=30)
        assert state == {"tag": "model", "pid": pid}


def test_a_queued_job_has_no_pid_and_the_state_queued(tmp_path: Any) -> None:
    with workstream.Pool(1) as pool:
        blocker, gate = blocked_pool_job(pool, tmp_path)
        job = pool.start(wp.square, 3)
        assert job.state is JobState.QUEUED and job.state == "queued"
        assert job.pid is None
        assert "state=queued" in repr(job)
        assert pool.stats().queued == 1 and pool.stats().running == 1
        ws.release(gate, wait_until)
        assert job.result(timeout=30) == 9
        assert job.pid == blocker.pid  # the same warm process ran it next
        assert blocker.result(timeout=30) == blocker.pid


def test_cancelling_a_queued_job_ends_it_at_once_before_start_and_touches_no_worker(
    tmp_path: Any,
) -> None:
    with workstream.Pool(1) as pool:
        blocker, gate = blocked_pool_job(pool, tmp_path)
        marker = str(tmp_path / "ran")
        job = pool.start(wp.touch, marker)
        assert job.cancel() is True
        # At once: ended before cancel() returned, no waiting for any process.
        assert job.state is JobState.CANCELLED and job.done()
        outcome = job.wait(timeout=0)
        assert isinstance(outcome, CancelledOutcome)
        assert outcome.rung is CancelRung.BEFORE_START and outcome.pid is None
        with pytest.raises(workstream.Cancelled):
            job.result()
        assert blocker.state is JobState.RUNNING and not blocker.cancel_requested
        ws.release(gate, wait_until)
        pid = blocker.result(timeout=30)
        assert pool.start(wp.pid).result(timeout=30) == pid  # the worker was not touched
        assert not os.path.exists(marker)  # it never ran
        stats = pool.stats()
        assert stats.finished == 3 and stats.queued == 0 and stats.lost == 0


def test_a_running_job_cancelled_stops_alone_and_a_cooperative_stop_keeps_the_process(
    tmp_path: Any,
) -> None:
    with workstream.Pool(2) as pool:
        a = pool.start(wp.cooperative_forever)
        b = pool.start(wp.numbers, 3)
        assert next(iter(a)) == 0
        a.cancel()
        outcome = a.wait(timeout=30)
        assert isinstance(outcome, CancelledOutcome) and outcome.rung is CancelRung.COOPERATIVE
        assert outcome.kept_warm is True
        assert b.result(timeout=30) == 3
        assert pool.stats().lost == 0


# -- priorities and FIFO -----------------------------------------------------------------


def test_priorities_then_fifo_hold_under_concurrent_submission(tmp_path: Any) -> None:
    threads_n, per_thread = 4, 12
    with workstream.Pool(1) as pool:
        blocker, gate = blocked_pool_job(pool, tmp_path)
        jobs: list[tuple[int, int, int, workstream.Job[Any, Any]]] = []
        lock = threading.Lock()
        go = threading.Barrier(threads_n)

        def submit(t: int) -> None:
            go.wait()
            for i in range(per_thread):
                prio = (i * 7 + t) % 3  # every thread mixes the three priorities
                job = pool.start(wp.order_mark, (t, i), priority=prio)
                with lock:
                    jobs.append((prio, t, i, job))

        threads = [threading.Thread(target=submit, args=(t,)) for t in range(threads_n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert pool.stats().queued == threads_n * per_thread
        ws.release(gate, wait_until)
        blocker.result(timeout=30)
        ran = sorted(
            (job.result(timeout=30)[0], prio, t, i) for prio, t, i, job in jobs
        )
    order = [(prio, t, i) for _, prio, t, i in ran]
    prios = [p for p, _, _ in order]
    assert prios == sorted(prios, reverse=True), "a lower priority ran before a higher one"
    for t in range(threads_n):
        for p in range(3):
            mine = [i for prio, tt, i in order if tt == t and prio == p]
            assert mine == sorted(mine), f"thread {t}'s priority-{p} jobs ran out of order"


def test_fifo_among_equal_priorities_from_one_thread(tmp_path: Any) -> None:
    with workstream.Pool(1) as pool:
        blocker, gate = blocked_pool_job(pool, tmp_path)
        jobs = [pool.start(wp.order_mark, i) for i in range(20)]
        urgent = pool.start(wp.order_mark, "urgent", priority=5)
        ws.release(gate, wait_until)
        blocker.result(timeout=30)
        first, _ = urgent.result(timeout=30)
        marks = [job.result(timeout=30) for job in jobs]
    assert [label for _, label in sorted(marks)] == list(range(20))
    assert first < min(n for n, _ in marks)


def test_priority_must_be_an_int() -> None:
    with workstream.Pool(1) as pool:
        with pytest.raises(TypeError, match="priority must be an int, not float"):
            pool.start(wp.square, 1, priority=1.5)
        with pytest.raises(TypeError, match="priority must be an int, not bool"):
            pool.start(wp.square, 1, priority=True)


# -- never more than max_workers processes; every job ends exactly once ------------------


def test_never_more_than_max_workers_processes_even_during_replacements(
    tmp_path: Any,
) -> None:
    done_counts: dict[int, int] = {}
    lock = threading.Lock()

    def on_done(key: int) -> Any:
        def record(_outcome: object) -> None:
            with lock:
                done_counts[key] = done_counts.get(key, 0) + 1
        return record

    sampler = Sampler()
    try:
        with workstream.Pool(2) as pool:
            jobs = []
            for k in range(24):
                fn, args = [
                    (wp.square, (k,)), (wp.crash, ()), (wp.numbers, (3,)),
                    (wp.cooperative_forever, ()),
                ][k % 4]
                jobs.append(pool.start(fn, *args, grace=0.2, on_done=on_done(k)))
            for k, job in enumerate(jobs):
                if k % 4 == 3:
                    job.cancel(grace=0.05 if k % 8 == 3 else 0.2)
            for job in jobs:
                job.wait(timeout=60)
            stats = pool.stats()
    finally:
        most = sampler.stop()
    assert 1 <= most <= 2, f"{most} worker processes were alive at once (max_workers=2)"
    assert done_counts == {k: 1 for k in range(24)}, "a job did not end exactly once"
    assert stats.finished == 24 and stats.lost >= 6  # each crash cost its process
    assert stats.processes_started <= 2 + stats.lost + 2


def test_a_stuck_job_is_gone_within_its_grace_while_the_others_keep_streaming(
    tmp_path: Any,
) -> None:
    grace = 0.5
    marker = str(tmp_path / "stuck")
    with workstream.Pool(3) as pool:
        streams = [pool.start(wp.stream_forever, t) for t in range(2)]
        stuck = pool.start(wp.mark_then_stuck, marker)
        wait_until(lambda: os.path.exists(marker), 30, "the stuck job to start")
        gaps: list[float] = []
        stop = threading.Event()

        def read(job: workstream.Job[Any, Any]) -> None:
            last = time.monotonic()
            for _item in job:
                now = time.monotonic()
                if not stop.is_set():
                    gaps.append(now - last)
                last = now

        readers = [threading.Thread(target=read, args=(j,)) for j in streams]
        for r in readers:
            r.start()
        t0 = time.monotonic()
        stuck.cancel(grace=grace)
        outcome = stuck.wait(timeout=30)
        stopped_in = time.monotonic() - t0
        stop.set()
        for j in streams:
            j.cancel()
        for r in readers:
            r.join(30)
        assert isinstance(outcome, CancelledOutcome) and outcome.rung is CancelRung.SIGKILL
        assert outcome.kept_warm is False
        assert stopped_in < grace + 0.5, f"the stuck job took {stopped_in:.3f} s to stop"
        assert all(isinstance(j.wait(timeout=30), CancelledOutcome) for j in streams)
    assert gaps and max(gaps) < 0.5, f"a stream stalled {max(gaps):.3f} s meanwhile"


# -- timeouts -----------------------------------------------------------------------------


def test_a_timeout_cancels_the_job_with_the_ladder_and_result_raises_jobtimeout(
    tmp_path: Any,
) -> None:
    with workstream.Pool(1) as pool:
        job = pool.start(wp.mark_then_sleep, str(tmp_path / "m"), 60, timeout=0.2, grace=1)
        outcome = job.wait(timeout=30)
        assert isinstance(outcome, CancelledOutcome) and outcome.timed_out is True
        assert outcome.rung is CancelRung.SIGTERM
        with pytest.raises(workstream.JobTimeout, match=r"timed out after 0\.2 s") as info:
            job.result()
        assert isinstance(info.value, workstream.Cancelled)
        assert isinstance(outcome.error, workstream.JobTimeout)
        fast = pool.start(wp.square, 4, timeout=30)
        assert fast.result(timeout=30) == 16 and fast.wait().timed_out is False


def test_a_queued_jobs_timeout_does_not_run_while_it_waits(tmp_path: Any) -> None:
    with workstream.Pool(1) as pool:
        blocker, gate = blocked_pool_job(pool, tmp_path)
        job = pool.start(wp.square, 5, timeout=0.2)
        time.sleep(0.4)  # ok: sleep (the job must wait in the queue longer than its limit)
        assert job.state is JobState.QUEUED
        ws.release(gate, wait_until)
        blocker.result(timeout=30)
        assert job.result(timeout=30) == 25
        assert job.wait().timed_out is False


def test_timeout_is_accepted_by_start_and_by_worker_start(tmp_path: Any) -> None:
    job = workstream.start(wp.mark_then_sleep, str(tmp_path / "a"), 60, timeout=0.2)
    with pytest.raises(workstream.JobTimeout):
        job.result(timeout=30)
    assert job.wait().timed_out is True
    with workstream.Worker() as worker:
        job = worker.start(wp.mark_then_sleep, str(tmp_path / "b"), 60, timeout=0.2)
        with pytest.raises(workstream.JobTimeout):
            job.result(timeout=30)
        assert job.wait().timed_out is True and job.wait().kept_warm is False
        job = worker.start(wp.cooperative_forever, timeout=0.2)
        for _item in job:
            pass
        outcome = job.wait(timeout=30)
        assert isinstance(outcome, CancelledOutcome) and outcome.timed_out
        assert outcome.rung is CancelRung.COOPERATIVE and outcome.kept_warm is True
    for bad, exc in [(0, ValueError), (-1, ValueError), ("1", TypeError)]:
        with pytest.raises(exc, match="timeout must be"):
            workstream.start(wp.square, 1, timeout=bad)


def test_a_user_cancel_before_the_timeout_is_not_a_timeout(tmp_path: Any) -> None:
    marker = str(tmp_path / "m")
    job = workstream.start(wp.mark_then_sleep, marker, 60, timeout=30)
    wait_until(lambda: os.path.exists(marker), 30, "the job to start")
    job.cancel(grace=0.5)
    outcome = job.wait(timeout=30)
    assert isinstance(outcome, CancelledOutcome) and outcome.timed_out is False
    with pytest.raises(workstream.Cancelled) as info:
        job.result()
    assert not isinstance(info.value, workstream.JobTimeout)


# -- map -------------------------------------------------------------------------------------


def test_map_yields_results_in_input_order_and_unordered_as_they_end() -> None:
    with workstream.Pool(3) as pool:
        assert list(pool.map(wp.square, range(30))) == [x * x for x in range(30)]
        assert sorted(pool.map(wp.square, range(30), ordered=False)) == sorted(
            x * x for x in range(30)
        )
        assert list(pool.map(wp.square, [])) == []


def test_map_raises_the_first_error_at_its_position_and_cancels_the_rest() -> None:
    with workstream.Pool(2) as pool:
        got = []
        with pytest.raises(workstream.WorkerError, match="bad input 3"):
            for r in pool.map(functools.partial(wp.fail_on, bad=3), range(10)):
                got.append(r)
        assert got == [0, 1, 2]
        wait_until(lambda: pool.stats().running == 0, 30, "the rest to be cancelled")
        assert pool.stats().queued == 0


def test_map_is_lazy_and_leaving_early_cancels_what_it_started() -> None:
    pulled = []

    def endless() -> Any:
        for i in itertools.count():
            pulled.append(i)
            yield i

    with workstream.Pool(2) as pool:
        results = pool.map(wp.square, endless(), prefetch=3)
        assert pulled == []  # nothing is submitted before the first next()
        for r in results:
            if r == 16:
                break
        assert len(pulled) <= 5 + 3  # bounded read-ahead, never the whole iterable
        stats = pool.stats()
        assert stats.queued + stats.running <= 3
        # break left the generator suspended; closing it cancels its jobs
        results.close()  # type: ignore[attr-defined]
        wait_until(lambda: pool.stats().running + pool.stats().queued == 0, 30, "cancels")


def test_map_iterator_dropped_cancels_its_jobs(tmp_path: Any) -> None:
    gates = [None] + [ws.make_gate(str(tmp_path), f"g{i}") for i in range(2)]
    with workstream.Pool(1) as pool:
        it = pool.map(wp.maybe_gate, gates, prefetch=3)
        ref = weakref.ref(it)
        assert next(it) == 0
        # Now the second job runs (blocked on its gate) and the third waits in the queue.
        wait_until(lambda: pool.stats().running == 1, 30, "the second job to run")
        assert pool.stats().queued == 1
        del it
        gc.collect()
        assert ref() is None
        wait_until(lambda: pool.stats().running + pool.stats().queued == 0, 30, "cancels")
        assert pool.stats().finished == 3


def test_map_async_in_order_and_early_exit() -> None:
    async def main(pool: workstream.Pool) -> list[int]:
        out = [r async for r in pool.map_async(wp.square, range(12))]
        unordered = [r async for r in pool.map_async(wp.square, range(12), ordered=False)]
        assert sorted(unordered) == out
        agen = pool.map_async(wp.square, itertools.count(), prefetch=2)
        async for r in agen:
            if r == 9:
                break
        await agen.aclose()  # type: ignore[attr-defined]
        return out

    with workstream.Pool(2) as pool:
        assert asyncio.run(main(pool)) == [x * x for x in range(12)]
        wait_until(lambda: pool.stats().running + pool.stats().queued == 0, 30, "cancels")


def test_map_bad_arguments_raise_at_the_call() -> None:
    with workstream.Pool(1) as pool:
        with pytest.raises(TypeError, match="is not iterable"):
            pool.map(wp.square, 3)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="prefetch must be a positive int or None"):
            pool.map(wp.square, [1], prefetch=0)
        with pytest.raises(TypeError, match="ordered must be a bool"):
            pool.map(wp.square, [1], ordered="yes")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="needs a callable"):
            pool.map(3, [1])  # type: ignore[arg-type]


# -- recycling ---------------------------------------------------------------------------


def test_max_jobs_per_worker_retires_the_process_after_that_many_jobs() -> None:
    with workstream.Pool(1, max_jobs_per_worker=2) as pool:
        jobs = [pool.start(wp.pid) for _ in range(5)]
        pids = [j.result(timeout=30) for j in jobs]
        kept = [j.wait().kept_warm for j in jobs]
        stats = pool.stats()
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert kept == [True, False, True, False, True]
    assert stats.retired_max_jobs == 2 and stats.lost == 0
    assert stats.retired["max_jobs_per_worker"] == 2


def test_max_worker_memory_retires_a_process_that_grew() -> None:
    with workstream.Pool(1, max_worker_memory=200 << 20) as pool:
        small = pool.start(wp.pid)
        first = small.result(timeout=30)
        assert small.wait().kept_warm is True
        big = pool.start(wp.hoard, 256)
        assert big.result(timeout=30) == first
        assert big.wait().kept_warm is False
        after = pool.start(wp.pid).result(timeout=30)
        stats = pool.stats()
    assert after != first
    assert stats.retired_max_memory == 1 and stats.lost == 0


def test_max_queued_raises_poolfull_and_map_waits_for_room(tmp_path: Any) -> None:
    with workstream.Pool(1, max_queued=2) as pool:
        blocker, gate = blocked_pool_job(pool, tmp_path)
        a = pool.start(wp.square, 1)
        b = pool.start(wp.square, 2)
        with pytest.raises(workstream.PoolFull, match="max_queued=2") as info:
            pool.start(wp.square, 3)
        assert isinstance(info.value, RuntimeError)
        assert isinstance(info.value, workstream.WorkstreamError)
        b.cancel()
        c = pool.start(wp.square, 3)  # room again
        ws.release(gate, wait_until)
        assert [a.result(timeout=30), c.result(timeout=30)] == [1, 9]
        blocker.result(timeout=30)
        assert list(pool.map(wp.square, range(10), prefetch=6)) == [x * x for x in range(10)]


# -- stats, cancel_all, close, garbage collection ----------------------------------------


def test_stats_is_an_immutable_snapshot() -> None:
    with workstream.Pool(2) as pool:
        pool.start(wp.square, 2).result(timeout=30)
        stats = pool.stats()
        assert isinstance(stats, workstream.PoolStats)
        assert stats.max_workers == 2 and stats.submitted == 1 and stats.finished == 1
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.queued = 3  # type: ignore[misc]
        wait_until(lambda: pool.stats().idle_workers == 2, 30, "both workers warm")
        assert pool.stats().workers == 2
    assert pool.stats().closed and pool.stats().workers == 0


def test_close_ends_queued_jobs_before_start_and_cancels_running_ones(tmp_path: Any) -> None:
    pool = workstream.Pool(1)
    running = pool.start(wp.cooperative_forever)
    queued = [pool.start(wp.square, i) for i in range(3)]
    assert next(iter(running)) == 0
    pool.close(grace=1)
    out = running.wait(timeout=0)
    assert isinstance(out, CancelledOutcome) and out.rung is CancelRung.COOPERATIVE
    for job in queued:
        o = job.wait(timeout=0)
        assert isinstance(o, CancelledOutcome) and o.rung is CancelRung.BEFORE_START
    with pytest.raises(RuntimeError, match="is closed"):
        pool.start(wp.square, 1)
    pool.close()  # idempotent


def test_close_without_cancelling_runs_every_job_to_its_end(tmp_path: Any) -> None:
    pool = workstream.Pool(2)
    jobs = [pool.start(wp.square, i) for i in range(8)]
    pool.close(cancel_pending=False)
    assert [j.result(timeout=0) for j in jobs] == [i * i for i in range(8)]


def test_cancel_all_cancels_queued_and_running_and_keeps_the_pool_open(tmp_path: Any) -> None:
    with workstream.Pool(1) as pool:
        running = pool.start(wp.cooperative_forever)
        queued = pool.start(wp.square, 2)
        assert next(iter(running)) == 0
        assert pool.cancel_all() == 2
        assert queued.state is JobState.CANCELLED
        assert isinstance(running.wait(timeout=30), CancelledOutcome)
        assert pool.start(wp.square, 3).result(timeout=30) == 9


def test_a_forgotten_pool_is_closed_when_collected() -> None:
    pool = workstream.Pool(2)
    pool.start(wp.square, 2).result(timeout=30)
    slots = list(pool._core.slots)
    ref = weakref.ref(pool)
    del pool
    # The slot's thread lets go of the ended job (which holds its pool) just after
    # publishing its outcome.
    wait_until(lambda: gc.collect() >= 0 and ref() is None, 10, "the pool to be collected")
    for slot in slots:
        assert slot.closed.wait(30), "a slot of a collected pool was not closed"


def test_a_pool_is_closed_from_another_thread_while_jobs_stream(tmp_path: Any) -> None:
    pool = workstream.Pool(2)
    jobs = [pool.start(wp.stream_forever, t) for t in range(2)]
    extra = [pool.start(wp.square, i) for i in range(4)]
    for j in jobs:
        assert next(iter(j))[1] == 0
    closer = threading.Thread(target=pool.close, kwargs={"grace": 0.5})
    closer.start()
    for j in jobs:
        for _ in j:
            pass
    closer.join(30)
    assert not closer.is_alive()
    assert all(j.done() for j in jobs + extra)


def test_pool_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_workers must be a positive int or None, not 0"):
        workstream.Pool(0)
    with pytest.raises(TypeError, match="max_workers must be a positive int or None, not str"):
        workstream.Pool("2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_queued must be a positive int or None"):
        workstream.Pool(1, max_queued=0)
    with pytest.raises(TypeError, match="got unknown option"):
        workstream.Pool(1, epochs=3)
    with workstream.Pool(1) as pool:
        with pytest.raises(TypeError, match="got process option"):
            pool.start(wp.square, 1, start_method="spawn")
        with pytest.raises(TypeError, match="cannot be pickled"):
            pool.start(wp.square, threading.Lock())


def test_the_initializers_failure_fails_jobs_and_then_start_raises() -> None:
    with workstream.Pool(1, wp.fail_on, (1, 1)) as pool:
        job = pool.start(wp.square, 2)
        with pytest.raises(workstream.WorkerError, match="bad input 1"):
            job.result(timeout=30)
        with pytest.raises(workstream.WorkerError, match="bad input 1"):
            pool.start(wp.square, 2)
