"""What a hard crash can lose (docs/design.md, 'Batching, latency and what a hard crash
can lose'): nothing with batch_window=0, nothing for a stream the parent keeps up with."""

from __future__ import annotations

import signal

import pytest

import workers
import workstream


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_write_through_loses_nothing_when_the_child_is_killed(method: str) -> None:
    """With batch_window=0 every item yielded before a SIGKILL is delivered, in order,
    even from a flood of 50,000 items killed right after its last yield."""
    n = 50_000
    job = workstream.start(workers.flood_then_die, n, batch_window=0, start_method=method)
    assert list(job) == list(range(n))
    outcome = job.wait(timeout=30)
    assert isinstance(outcome, workstream.Crashed)
    assert outcome.exit_code == -signal.SIGKILL
    assert outcome.items_delivered == n


@pytest.mark.timeout(60)
def test_sparse_stream_loses_nothing_with_the_default_window() -> None:
    """With the default options, items yielded while the parent waits are written before
    the yield returns: a SIGKILL right after the last yield loses none of them."""
    n = 20
    job = workstream.start(workers.sparse_then_die, n, 0.02)
    assert list(job) == list(range(n))
    outcome = job.wait(timeout=30)
    assert isinstance(outcome, workstream.Crashed)
    assert outcome.exit_code == -signal.SIGKILL


@pytest.mark.timeout(60)
def test_flood_with_the_default_window_never_delivers_a_torn_or_reordered_item() -> None:
    """With the default window a killed flood may lose its last batch, but what arrives is
    a gap-free prefix 0..k-1 (nothing torn, duplicated or out of order)."""
    n = 200_000
    job = workstream.start(workers.flood_then_die, n)
    got = list(job)
    assert got == list(range(len(got)))
    assert len(got) > n // 2
    outcome = job.wait(timeout=30)
    assert isinstance(outcome, workstream.Crashed)


# -- goal: zero loss on a hard crash with the default options (the item log) ---------------

METHODS = [
    pytest.param("fork", id="fork", marks=pytest.mark.filterwarnings("ignore::DeprecationWarning")),
    "forkserver",
    "spawn",
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("kind", "n", "code"), [
    ("os_exit", 100, 3), ("segv", 10, -signal.SIGSEGV), ("kill", 20_000, -signal.SIGKILL),
])
def test_default_options_lose_nothing_on_a_hard_crash(
    method: str, kind: str, n: int, code: int
) -> None:
    """With the default options every item whose yield returned is delivered, exactly
    once and in order, even when the child dies on the next line (os._exit, a segfault,
    SIGKILL right after a flood)."""
    job = workstream.start(workers.crash_with, kind, n, start_method=method)
    assert list(job) == list(range(n))
    outcome = job.wait(timeout=30)
    assert isinstance(outcome, workstream.Crashed)
    assert outcome.exit_code == code
    assert outcome.items_delivered == n


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_warm_worker_loses_nothing_on_a_hard_crash(method: str) -> None:
    """A warm Worker's job that dies right after its last yield delivers every item,
    also after earlier jobs on the same process (their items are not delivered again)."""
    with workstream.Worker(start_method=method) as worker:
        first = worker.start(workers.count, 300)
        assert list(first) == list(range(300))
        assert isinstance(first.wait(timeout=30), workstream.Completed)
        job = worker.start(workers.crash_with, "os_exit", 100)
        assert list(job) == list(range(100))
        outcome = job.wait(timeout=30)
        assert isinstance(outcome, workstream.Crashed)
        assert outcome.items_delivered == 100
        again = worker.start(workers.crash_with, "segv", 10)
        assert list(again) == list(range(10))
        assert isinstance(again.wait(timeout=30), workstream.Crashed)


@pytest.mark.timeout(60)
def test_emit_from_a_helper_thread_is_not_lost_on_a_hard_crash() -> None:
    """Items emitted from several threads are all delivered, exactly once, when the
    child dies right after the last emit() returned."""
    job = workstream.start(workers.emit_from_threads_then_die, 4, 2_000)
    got = list(job)
    assert sorted(got) == sorted((t, i) for t in range(4) for i in range(2_000))
    for t in range(4):
        assert [i for tt, i in got if tt == t] == list(range(2_000))
    assert isinstance(job.wait(timeout=30), workstream.Crashed)
