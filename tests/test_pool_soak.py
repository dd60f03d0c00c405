"""The Pool soak: random submit / cancel (queued, running, stuck) / timeout / close from
several threads, with the contract checked after every cycle.

A cycle submits a few jobs of random kinds (``workers_pool``: quick, a stream of
numbered items, cooperative until cancelled, stuck in a C call with SIGTERM blocked, a
crash, a sleep cut by ``timeout=``) from two threads at once, at random priorities, and
cancels some of them at random moments: at once (most often while still queued), from
the reading thread after k items, or from another thread after a random delay. Every
tenth cycle of a pool's life closes it from another thread while its jobs run, and a
new pool takes over.

After every cycle: each job ended exactly once (``on_done`` ran once) with an outcome
its plan allows, its numbered items are a contiguous prefix 0, 1, 2, ... (complete on
a clean ending), a timed-out job says so. Across the run: never more worker processes
alive than ``max_workers`` (sampled in a thread). After each pool is closed: no worker
process, zombie, fd or thread is left (the autouse leak check repeats this at the end).

``pytest tests/test_pool_soak.py --soak 10000`` runs a long soak (``-m "not slow"``
runs 100 cycles, the slow CI test 1,000; set ``WORKSTREAM_SOAK_SEED`` to replay one).
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

import workers_pool as wp
import workstream
from conftest import _describe_fds, open_fds, zombie_children
from test_pool import Sampler, worker_pids
from workstream import CancelledOutcome, CancelRung, Completed, Crashed

SEED = int(os.environ.get("WORKSTREAM_SOAK_SEED", "20261207"))
MAX_WORKERS = 3
KINDS = ["quick", "stream", "coop", "stuck", "crash", "timeout"]
KIND_WEIGHTS = [5, 4, 2, 1, 1, 1]
CANCELS = ["never", "immediate", "after-k", "other-thread"]
CANCEL_WEIGHTS = [3, 2, 2, 3]
POOL_LIFE = 10  # cycles; the last one closes the pool while its jobs run


@dataclass
class Plan:
    kind: str
    cancel: str
    k: int
    delay: float
    priority: int
    done: list[object] = field(default_factory=list)
    job: workstream.Job[Any, Any] | None = None

    def args(self, tmp: str, n: int) -> tuple[Any, tuple[object, ...], dict[str, Any]]:
        if self.kind == "quick":
            return wp.square, (n,), {}
        if self.kind == "stream":
            return wp.numbers, (self.k + 5,), {}
        if self.kind == "coop":
            return wp.cooperative_forever, (), {"timeout": 0.05}
        if self.kind == "stuck":
            return wp.mark_then_stuck, (os.path.join(tmp, f"s{n}"),), {
                "timeout": 0.05, "grace": 0.05}
        if self.kind == "crash":
            return wp.crash, (), {}
        return wp.mark_then_sleep, (os.path.join(tmp, f"t{n}"), 60), {
            "timeout": 0.03, "grace": 0.1}


def plan(rng: random.Random) -> Plan:
    kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
    cancel = rng.choices(CANCELS, CANCEL_WEIGHTS)[0]
    if kind == "stream" and cancel == "after-k":
        pass
    elif cancel == "after-k":
        cancel = "other-thread"
    return Plan(kind, cancel, rng.randint(0, 20), rng.uniform(0, 0.02), rng.randint(0, 2))


def check(p: Plan, items: list[object], closing: bool) -> None:
    assert p.job is not None
    outcome = p.job.wait(timeout=30)
    assert len(p.done) == 1, f"{p}: on_done ran {len(p.done)} times"
    assert p.done[0] is outcome
    assert items == list(range(len(items))), f"{p}: items {items[:20]}"
    cancelled = p.cancel != "never" or closing
    if isinstance(outcome, Completed):
        assert p.kind in ("quick", "stream"), f"{p}: completed"
        if p.kind == "stream":
            assert items == list(range(p.k + 5)) and outcome.value == p.k + 5
    elif isinstance(outcome, CancelledOutcome):
        limited = p.kind in ("coop", "stuck", "timeout")
        assert cancelled or limited, f"{p}: cancelled without a cancel: {outcome}"
        assert outcome.timed_out is False or limited
        if outcome.rung is CancelRung.BEFORE_START:
            assert outcome.pid is None and not items
        if p.kind == "stuck" and outcome.rung is CancelRung.SIGKILL:
            assert outcome.kept_warm is False
        if p.kind == "stuck":  # a cancel before it blocked SIGTERM: at its first check
            assert outcome.rung is not CancelRung.SIGTERM
    elif isinstance(outcome, Crashed):
        assert p.kind == "crash", f"{p}: crashed: {outcome.error}"
    else:
        raise AssertionError(f"{p}: {outcome}")


def _sweep(pool: workstream.Pool, delay: float, never: threading.Event) -> None:
    """After ``delay`` seconds (an event nobody sets), cancel every job of ``pool``."""
    never.wait(delay)
    pool.cancel_all()


@pytest.mark.soak
@pytest.mark.timeout(120)
def test_pool_soak_quick(request: pytest.FixtureRequest, tmp_path: Any) -> None:
    """A hundred cycles (about 7 s); ``--soak N`` makes it N cycles."""
    soak(request.config.getoption("--soak") or 100, SEED, str(tmp_path))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pool_soak_1000(tmp_path: Any) -> None:
    """A thousand cycles with another seed (about a minute): the CI soak."""
    soak(1000, SEED + 1, str(tmp_path))


def soak(cycles: int, seed: int, tmp: str) -> None:
    rng = random.Random(seed)
    fds0 = open_fds()
    threads0 = set(threading.enumerate())
    sampler = Sampler(interval=0.01)
    pool = workstream.Pool(MAX_WORKERS, grace=0.3)
    n = 0
    slowest = 0.0
    try:
        for cycle in range(cycles):
            closing = cycle % POOL_LIFE == POOL_LIFE - 1
            plans = [plan(rng) for _ in range(rng.randint(2, 6))]
            half = len(plans) // 2

            def submit(pool: workstream.Pool, mine: list[Plan], base: int) -> None:
                for i, p in enumerate(mine):
                    fn, args, opts = p.args(tmp, base + i)
                    p.job = pool.start(
                        fn, *args, priority=p.priority, on_done=p.done.append, **opts
                    )
                    if p.cancel == "immediate":
                        p.job.cancel()

            submitters = [
                threading.Thread(target=submit, args=(pool, plans[:half], n)),
                threading.Thread(target=submit, args=(pool, plans[half:], n + half)),
            ]
            n += len(plans)
            for t in submitters:
                t.start()
            for t in submitters:
                t.join()
            cancellers = []
            for p in plans:
                if p.cancel == "other-thread":
                    job = p.job
                    assert job is not None
                    stop = threading.Event()
                    t = threading.Thread(
                        target=lambda j=job, d=p.delay, s=stop: s.wait(d) or j.cancel()
                    )
                    t.start()
                    cancellers.append(t)
            sweeping = not closing and cycle % 7 == 3  # cancel_all() from another thread
            if sweeping:
                t = threading.Thread(
                    target=_sweep, args=(pool, rng.uniform(0, 0.02), threading.Event())
                )
                t.start()
                cancellers.append(t)
            closer = None
            if closing:
                closer = threading.Thread(
                    target=pool.close, kwargs={"grace": 0.2},
                )
                closer.start()
            t0 = time.monotonic()
            for p in plans:
                assert p.job is not None
                items: list[object] = []
                for item in p.job:
                    items.append(item)
                    if p.cancel == "after-k" and len(items) == p.k:
                        p.job.cancel()
                check(p, items, closing or sweeping)
            slowest = max(slowest, time.monotonic() - t0)
            for t in cancellers:
                t.join(30)
            if closer is not None:
                closer.join(60)
                assert not closer.is_alive(), "close() did not return"
                with sampler.lock:  # its /proc reads are no leak
                    assert not worker_pids(), "a worker process outlived close()"
                    assert not zombie_children()
                    leaked = open_fds() - fds0
                assert not leaked, f"fds left after close(): {_describe_fds(leaked)}"
                extra = [t.name for t in set(threading.enumerate()) - threads0 if t.is_alive()
                         and t is not sampler.thread]
                assert not extra, f"threads left after close(): {extra}"
                pool = workstream.Pool(MAX_WORKERS, grace=0.3)
    finally:
        pool.close(grace=0)
        most = sampler.stop()
    print(f"pool soak: {cycles} cycles (seed {seed}), {n} jobs, slowest cycle {slowest:.3f} s, "
          f"at most {most} worker processes at once")
    assert most <= MAX_WORKERS, f"{most} worker processes alive at once"
