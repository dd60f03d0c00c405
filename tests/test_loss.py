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
