"""The memory limit (issue 12 §3): ``max_memory=`` bytes for the worker's process group.

Over the limit the group is SIGKILLed and the job ends crashed with
``MemoryLimitExceeded`` (limit and peak named); a worker the kernel's out-of-memory
killer killed is reported as such. The leak check (conftest) makes sure no member of
the group survives.
Each end-to-end test runs twice where the machine allows a memory cgroup of ours
(root, a writable cgroup v1/v2 memory controller): enforced by the kernel, and by polling
(``_cgroup.ENABLED`` off). After each, no cgroup of ours is left.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
from collections.abc import Iterator
from dataclasses import replace

import pytest

import workers_crash as wc
import workstream
from workstream import Crashed, MemoryLimitExceeded, Worker, WorkerCrashed
from workstream._core._rules import Facts, decide, keeps_worker
from workstream._supervisor import _cgroup, _memory

MiB = 1 << 20
LIMIT = 200 * MiB

np = pytest.importorskip("numpy")


def _our_cgroups() -> set[str]:
    found = set()
    for _, parent in _cgroup._parent_dirs():
        with contextlib.suppress(OSError):
            found |= {os.path.join(parent, n) for n in os.listdir(parent)
                      if n.startswith(f"workstream-{os.getpid()}-")}
    return found


def _cgroups_work() -> bool:
    group = _cgroup.MemoryCgroup.create(LIMIT)
    if group is None:
        return False
    group.remove()
    return True


CGROUPS = _cgroups_work()


@pytest.fixture(params=["poll", "cgroup"])
def mechanism(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """How the limit is enforced: "poll" (cgroups off) or "cgroup" (skipped where none
    can be made). Checks that no cgroup of ours is left behind."""
    if request.param == "cgroup" and not CGROUPS:
        pytest.skip("no memory cgroup can be created here")
    if request.param == "poll":
        monkeypatch.setattr(_cgroup, "ENABLED", False)
    yield request.param
    assert _our_cgroups() == set()


def _assert_over_limit(
    outcome: workstream.Outcome, exit_codes: tuple[int, ...] = (-signal.SIGKILL,)
) -> MemoryLimitExceeded:
    assert isinstance(outcome, Crashed), outcome
    err = outcome.error
    assert isinstance(err, MemoryLimitExceeded) and isinstance(err, WorkerCrashed)
    assert err.limit == LIMIT and err.peak > LIMIT * 0.9
    assert outcome.exit_code in exit_codes
    assert f"over max_memory={LIMIT} (200.0 MiB; peak " in str(err)
    assert "out-of-memory killer" not in str(err)
    return err


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_a_worker_allocating_past_the_limit_is_killed_with_the_typed_error(
    method: str, mechanism: str
) -> None:
    job = workstream.start(
        wc.allocate, 10, 4000, max_memory=LIMIT, start_method=method, batch_window=0
    )
    held = list(job)
    outcome = job.wait(timeout=30)
    _assert_over_limit(outcome)
    assert held and held[-1] < 4000  # stopped long before it got all it asked for
    with pytest.raises(MemoryLimitExceeded, match="was killed by workstream"):
        job.result()


def test_a_subprocess_allocating_counts_and_is_killed_with_the_group(mechanism: str) -> None:
    job = workstream.start(wc.subprocess_allocates, 400, max_memory=LIMIT)
    list(job)
    # With a cgroup the kernel kills the subprocess (the largest member): the worker may
    # then return before the runner kills it; the job still ends over its limit.
    _assert_over_limit(job.wait(timeout=30), exit_codes=(-signal.SIGKILL, 0))


def test_under_the_limit_nothing_happens(mechanism: str) -> None:
    job = workstream.start(wc.allocate, 10, 50, max_memory=LIMIT)
    it = iter(job)
    assert [next(it) for _ in range(5)] == [10, 20, 30, 40, 50]
    job.cancel(grace=10)
    assert job.wait(timeout=30).kind == "cancelled"


def test_other_jobs_are_not_touched(mechanism: str) -> None:
    """Only the job over its limit is killed: a job running beside it, with the same
    limit and under it, goes on and completes."""
    calm = workstream.start(wc.allocate, 10, 20, max_memory=LIMIT)
    it = iter(calm)
    assert next(it) == 10 and next(it) == 20
    hog = workstream.start(wc.allocate, 10, 4000, max_memory=LIMIT)
    _assert_over_limit(hog.wait(timeout=30))
    assert calm.state == "running"
    calm.cancel(grace=10)
    assert calm.wait(timeout=30).kind == "cancelled"


def test_a_warm_worker_over_the_limit_is_retired_and_replaced(mechanism: str) -> None:
    with Worker(max_memory=LIMIT) as worker:
        first = worker.start(wc.pid).result(timeout=30)
        outcome = worker.start(wc.allocate, 10, 4000).wait(timeout=30)
        _assert_over_limit(outcome)
        assert outcome.kept_warm is False and outcome.pid == first
        assert worker.start(wc.pid).result(timeout=30) != first
        assert worker.restarts == 1


@pytest.mark.parametrize(
    ("value", "exc"),
    [(0, ValueError), (-1, ValueError), (True, TypeError), (1.5e9, TypeError),
     ("1G", TypeError)],
)
def test_bad_max_memory_is_refused_at_the_call_site(value: object, exc: type) -> None:
    with pytest.raises(exc, match="max_memory must be a positive number of bytes or None"):
        workstream.start(wc.small_job, 1, max_memory=value)


def test_max_memory_is_refused_where_it_cannot_be_enforced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workstream import _options

    monkeypatch.setattr(_options.sys, "platform", "darwin")
    with pytest.raises(NotImplementedError, match="enforced on Linux only"):
        workstream.Options(max_memory=LIMIT)
    assert workstream.Options().max_memory is None  # no limit: fine anywhere


def test_max_memory_belongs_to_the_worker_process() -> None:
    with Worker(prestart=False) as worker, pytest.raises(TypeError, match="max_memory"):
        worker.start(wc.small_job, 1, max_memory=LIMIT)


# -- the rules (pure) ------------------------------------------------------------------------

BASE = Facts(started_at=1.0, now=2.0, pid=4242, exit_code=-signal.SIGKILL)


def test_rules_over_the_limit() -> None:
    facts = replace(BASE, memory_exceeded=True, memory_limit=LIMIT, memory_peak=LIMIT + MiB)
    outcome = decide(facts)
    assert isinstance(outcome, Crashed) and isinstance(outcome.error, MemoryLimitExceeded)
    assert (outcome.error.limit, outcome.error.peak) == (LIMIT, LIMIT + MiB)
    assert "peak 201.0 MiB" in str(outcome.error) and outcome.signal_name == "SIGKILL"
    back = pickle.loads(pickle.dumps(outcome.error))
    assert type(back) is MemoryLimitExceeded and str(back) == str(outcome.error)
    assert (back.limit, back.peak) == (LIMIT, LIMIT + MiB)
    assert not keeps_worker(replace(facts, exit_code=None), gone=False, job_written=True)


def test_rules_kernel_oom_kill() -> None:
    outcome = decide(replace(BASE, kernel_oom_kill=True))
    assert isinstance(outcome, Crashed) and type(outcome.error) is WorkerCrashed
    assert "killed by the kernel's out-of-memory killer" in str(outcome.error)
    plain = decide(BASE)
    assert "often means the out-of-memory killer" in str(plain.error)  # type: ignore[union-attr]


def test_group_measurement_counts_every_member() -> None:
    watch = _memory.MemoryWatch(os.getpid(), 1 << 50, 0.0)
    assert watch.check(0.0) is False
    own = _memory.resident_bytes(os.getpid())
    assert own is not None and watch.peak >= own // 2
    assert watch.ms_until_due(0.0) == int(_memory.POLL_INTERVAL * 1000) + 1
    assert watch.check(0.01) is False  # not due: nothing measured
    assert _memory.resident_bytes(2**22 + 12345) is None  # no such process
    count = _memory.oom_kill_count()
    assert count is None or count >= 0


# -- the kernel's OOM killer, where this machine lets a test provoke it ------------------------


@contextlib.contextmanager
def _small_memory_cgroup(limit: int) -> Iterator[str]:
    """A cgroup v1 memory controller group with ``limit`` (root only); removed after."""
    parents = [d for v, d in _cgroup._parent_dirs() if v == 1]
    if not parents:
        pytest.skip("no cgroup v1 memory controller")
    path = os.path.join(parents[0], f"workstream-test-{os.getpid()}")
    try:
        os.mkdir(path)
    except OSError as exc:
        pytest.skip(f"no writable cgroup v1 memory controller here ({exc})")
    try:
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit))
        with contextlib.suppress(OSError), open(
            os.path.join(path, "memory.memsw.limit_in_bytes"), "w"
        ) as f:
            f.write(str(limit))
        yield os.path.join(path, "cgroup.procs")
    finally:
        os.rmdir(path)


def test_a_worker_killed_by_the_kernels_oom_killer_is_reported_as_such() -> None:
    """Not our limit (no max_memory): a cgroup the worker joins itself, whose kernel
    OOM kill workstream did not cause; reported by the /proc/vmstat heuristic."""
    with _small_memory_cgroup(100 * MiB) as procs:
        job = workstream.start(wc.join_cgroup_then_allocate, procs, 10, 4000)
        outcome = job.wait(timeout=30)
    assert isinstance(outcome, Crashed) and outcome.exit_code == -signal.SIGKILL, outcome
    assert "killed by the kernel's out-of-memory killer" in str(outcome.error)


def test_a_descendant_that_left_the_group_is_moved_out_of_the_cgroup() -> None:
    """The cgroup is removed when the worker is gone even if a descendant that left the
    process group (``setsid``) still runs: that process is moved back out (not killed,
    as without a limit)."""
    if not CGROUPS:
        pytest.skip("no memory cgroup can be created here")
    pid = workstream.start(wc.start_detached_sleeper, max_memory=LIMIT).result(timeout=30)
    try:
        assert _our_cgroups() == set()
        os.kill(pid, 0)  # still alive
    finally:
        os.kill(pid, signal.SIGKILL)
