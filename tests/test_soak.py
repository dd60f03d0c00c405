"""The soak test: many start/cancel cycles of random job kinds, cancelled at random
moments from random threads, with the whole contract checked after every cycle.

Kinds (``workers_soak``): a flood of small items, large numpy arrays, cooperative work
that polls ``cancelled()``, a child stuck in a C call holding the GIL, a child that
crashes (``os._exit`` / self-SIGKILL), a child with a subprocess of its own. Start method,
buffer bounds, batch window, grace and ``discard`` are random too. A cancel comes right
after ``start()``, from the iterating thread after k items, from another thread once the
iterating thread got k items (while it keeps iterating), or from another thread at a
random moment — or never.

After every cycle: the outcome was delivered exactly once (``on_done`` ran once); the
numbered items received are a contiguous prefix 0, 1, 2, ... (each exactly once, in
order) and, on a clean ending without ``discard``, complete up to the child's own count;
the child was reaped (no zombie), its subprocess is dead, no child process of ours is
left, fds, threads and ``/dev/shm`` are back to the baseline, and nothing was written to
stderr. The run prints its cycle count and its slowest stop.

``pytest tests/test_soak.py --soak 10000`` runs a long soak (set
``WORKSTREAM_SOAK_SEED`` to replay one).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import workers_lifecycle as wl
import workers_soak as wsk
import workstream
from conftest import bounded_wait, live_children, open_fds, shm_entries
from workstream import CancelledOutcome, Completed, Crashed

SEED = int(os.environ.get("WORKSTREAM_SOAK_SEED", "20261127"))
ARRAY_SIZE = 128 * 1024  # float64 values: 1 MiB per array item, bigger than the pipe
KINDS = ["flood", "arrays", "cooperative", "stuck", "crash", "subprocess"]
KIND_WEIGHTS = [4, 1, 2, 1, 1, 1]
CANCELS = ["never", "immediate", "after-k", "other-thread", "random-moment"]
CANCEL_WEIGHTS = [2, 2, 3, 3, 3]


@dataclass
class Plan:
    kind: str
    n: int | None
    cancel: str
    k: int
    delay: float
    discard: bool
    options: dict[str, Any]

    def args(self) -> tuple[Callable[..., Any], tuple[object, ...]]:
        if self.kind == "flood":
            return wsk.flood, (self.n,)
        if self.kind == "arrays":
            return wsk.arrays, (self.n, ARRAY_SIZE)
        if self.kind == "cooperative":
            return wsk.cooperative, (self.n,)
        if self.kind == "stuck":
            return wsk.stuck, (self.n,)
        if self.kind == "crash":
            return wsk.crash, (self.n, random.Random(self.k).choice(["exit", "sigkill"]))
        return wsk.with_subprocess, (self.n,)


def make_plan(rng: random.Random) -> Plan:
    kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
    cancel = rng.choices(CANCELS, CANCEL_WEIGHTS)[0]
    n: int | None = rng.choice([None, rng.randint(0, 200)])
    if kind == "arrays":
        n = rng.choice([None, rng.randint(0, 8)])
    if kind in ("stuck", "crash"):
        n = rng.randint(0, 20)
    if kind == "stuck" or (n is None and cancel == "never"):
        cancel = rng.choice(CANCELS[1:])  # must be stopped
    options: dict[str, Any] = {
        "start_method": rng.choices(["forkserver", "fork", "spawn"], [85, 10, 5])[0],
        # Only a stuck child needs the ladder; every other kind must stop cooperatively
        # within the default grace (an escalation there is a failure).
        "grace": rng.uniform(0.05, 0.3) if kind == "stuck" else 2.0,
    }
    if rng.random() < 0.3:
        options["max_buffered_items"] = rng.randint(1, 16)
    if rng.random() < 0.3:
        options["batch_window"] = 0.0
    k = rng.randint(0, 40)
    if kind == "stuck":
        # Its last items may never leave the child (it holds the GIL, so the flusher
        # cannot run): a cancel must not wait for them.
        k = 0
    return Plan(kind, n, cancel, k, rng.uniform(0, 0.02), rng.random() < 0.2, options)


@dataclass
class Stats:
    cycles: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    slowest_stop: tuple[float, str] = (0.0, "-")
    slowest_over_grace: tuple[float, str] = (0.0, "-")

    def record(self, outcome: workstream.Outcome, grace: float, what: str) -> None:
        self.cycles += 1
        key = outcome.kind + (f"/{outcome.rung}" if isinstance(outcome, CancelledOutcome) else "")
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        stop = getattr(outcome, "stop_latency", None)
        if stop is not None:
            self.slowest_stop = max(self.slowest_stop, (stop, what))
            self.slowest_over_grace = max(self.slowest_over_grace, (stop - grace, what))


class Cancellers:
    """Persistent threads that cancel a job when asked (so the thread baseline holds)."""

    def __init__(self, count: int) -> None:
        self._cond = threading.Condition()
        self._todo: list[tuple[int, Callable[[], None]]] = []
        self._closed = False
        self.threads = [
            threading.Thread(target=self._serve, args=(i,), name=f"soak-canceller-{i}")
            for i in range(count)
        ]
        for t in self.threads:
            t.start()

    def _serve(self, slot: int) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._closed or any(s == slot for s, _ in self._todo)
                )
                mine = [task for task in self._todo if task[0] == slot]
                if not mine:
                    return
                self._todo.remove(mine[0])
            mine[0][1]()

    def ask(self, slot: int, task: Callable[[], None]) -> None:
        with self._cond:
            self._todo.append((slot, task))
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self.threads:
            t.join(10)


def run_cycle(i: int, plan: Plan, rng: random.Random, cancellers: Cancellers) -> tuple[
    workstream.Outcome, list[object], list[bool], int
]:
    """Start one job, consume it while cancelling as planned; return what was seen."""
    done_calls: list[workstream.Outcome] = []
    fn, args = plan.args()
    job = workstream.start(fn, *args, on_done=done_calls.append, **plan.options)
    answers: list[bool] = []
    answered = threading.Event()

    def cancel() -> None:
        answers.append(job.cancel(discard=plan.discard))
        answered.set()

    slot = rng.randrange(len(cancellers.threads))
    if plan.cancel == "immediate":
        cancel()
    elif plan.cancel == "random-moment":

        def later() -> None:
            time.sleep(plan.delay)  # ok: sleep (a random moment to cancel at)
            cancel()

        cancellers.ask(slot, later)
    items: list[object] = []
    asked = False

    def ask_once() -> None:
        nonlocal asked
        if not asked:
            asked = True
            if plan.cancel == "after-k":
                cancel()
            elif plan.cancel == "other-thread":
                cancellers.ask(slot, cancel)

    if plan.k == 0:
        ask_once()
    for item in job:
        items.append(item)
        if len(items) >= plan.k:
            ask_once()
    ask_once()  # the stream ended before k items: cancel the ended job anyway
    outcome = bounded_wait(job, plan.options["grace"] + 30, f"cycle {i} {plan}")
    if plan.cancel != "never":
        assert answered.wait(10), f"cycle {i}: the canceller did not answer"
    items.extend(job)  # nothing may arrive after the outcome (checked below)
    assert job.outcome is outcome
    assert len(done_calls) == 1 and done_calls[0] is outcome, f"cycle {i}: {done_calls}"
    return outcome, items, answers, job.pid or 0


def check_cycle(what: str, plan: Plan, outcome: workstream.Outcome, items: list[object],
                answers: list[bool]) -> None:
    """The per-cycle contract for the items and the outcome."""
    grandchild = [x[1] for x in items if isinstance(x, tuple) and x[0] == "pid"]
    ends = [x for x in items if isinstance(x, tuple) and x[0] == "end"]
    numbered = [x for x in items if isinstance(x, tuple) and isinstance(x[0], int)]
    assert len(grandchild) + len(ends) + len(numbered) == len(items), f"{what}: {items[:5]}"
    wl.assert_contiguous([x[0] for x in numbered])  # type: ignore[index]
    if plan.kind == "arrays":
        for i, array in numbered:  # type: ignore[misc]
            assert isinstance(array, np.ndarray) and array.shape == (ARRAY_SIZE,), what
            assert array[0] == i and array[-1] == i and bool((array == i).all()), what
    assert len(ends) <= 1 and (not ends or items[-1] is ends[0]), f"{what}: {items[-3:]}"
    if grandchild:
        assert items[0][0] == "pid", what  # type: ignore[index]
    cancelled = bool(answers) and answers[0]
    if not plan.discard:
        assert outcome.items_delivered == len(items), f"{what}: {outcome!r}"
    if plan.n is not None:
        assert len(numbered) <= plan.n, what

    assert not isinstance(outcome, workstream.Failed), f"{what}: {outcome!r}"
    clean = isinstance(outcome, Completed) or (
        isinstance(outcome, CancelledOutcome) and outcome.rung in ("cooperative", "sigterm")
    )
    if clean and not plan.discard and plan.kind not in ("stuck", "crash"):
        # A clean ending delivers everything: once the child's loop ran, its own count is
        # the last item (no end item: the cancel came before the loop started).
        assert ends or not numbered, f"{what}: no end item: {outcome!r} {items[-3:]}"
        if ends:
            assert ends[0][1] == len(numbered), f"{what}: {ends[0]} after {len(numbered)}"  # type: ignore[index]
    if isinstance(outcome, Completed):
        if plan.kind == "cooperative" and isinstance(outcome.value, tuple):
            assert cancelled and outcome.value == ("stopped at", len(numbered)), what
        else:
            assert plan.n is not None and outcome.value == plan.n, f"{what}: {outcome!r}"
            if not plan.discard and plan.kind not in ("stuck", "crash"):
                assert len(numbered) == plan.n, what
        assert outcome.exit_code == 0, what
        return
    if isinstance(outcome, CancelledOutcome):
        assert cancelled, f"{what}: cancelled, but cancel() said {answers}"
        if outcome.rung == "before-start":
            assert outcome.pid is None and items == [], what
        elif plan.kind == "stuck":
            # sigterm: the short grace ran out before the child reached its C call.
            assert outcome.rung in ("cooperative", "sigterm", "sigkill"), f"{what}: {outcome!r}"
        elif plan.kind == "crash":
            assert outcome.rung in ("cooperative", "sigkill"), f"{what}: {outcome!r}"
        else:
            assert outcome.rung == "cooperative", f"{what}: escalated: {outcome!r}"
        return
    assert isinstance(outcome, Crashed), f"{what}: {outcome!r}"
    assert plan.kind == "crash", f"{what}: {outcome!r}"
    assert outcome.exit_code in (3, -9), f"{what}: {outcome!r}"
    if not cancelled and not plan.discard and plan.options.get("batch_window") == 0:
        assert len(numbered) == plan.n, f"{what}: lost items before the crash"


def _fd_names(fds: set[int]) -> dict[int, str]:
    """What each descriptor is (for a failure message); '?' if it closed meanwhile."""
    names = {}
    for fd in sorted(fds):
        try:
            names[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            names[fd] = "?"
    return names


def soak(cycles: int, seed: int, capfd: pytest.CaptureFixture[str]) -> Stats:
    rng = random.Random(seed)
    stats = Stats()
    cancellers = Cancellers(3)
    try:
        fds0, threads0 = open_fds(), set(threading.enumerate())
        fd_names0 = _fd_names(fds0)
        children0, shm0 = live_children(), shm_entries()
        capfd.readouterr()
        for i in range(cycles):
            plan = make_plan(rng)
            what = f"cycle {i} (seed {seed}) {plan}"
            outcome, items, answers, pid = run_cycle(i, plan, rng, cancellers)
            check_cycle(what, plan, outcome, items, answers)
            # No zombie: the runner reaped the child before publishing the outcome.
            assert pid == 0 or not os.path.exists(f"/proc/{pid}"), f"{what}: not reaped"
            for x in items:
                if isinstance(x, tuple) and x[0] == "pid":
                    assert not wl.pid_alive(x[1]), f"{what}: its subprocess lives on"  # type: ignore[arg-type]
            for t in set(threading.enumerate()) - threads0:
                t.join(5)  # the job's runner / callback threads are ending
            assert set(threading.enumerate()) == threads0, f"{what}: threads left"
            # No descriptor more than at the start. One may have closed meanwhile: Qt's
            # idle pool threads (from earlier GUI tests) exit with their eventfds.
            fds = open_fds()
            reused = {fd for fd, name in _fd_names(fds & fds0).items() if name != fd_names0[fd]}
            assert fds <= fds0 and not reused, (
                f"{what}: fds opened {_fd_names((fds - fds0) | reused)}, closed "
                f"{_fd_names(fds0 - fds)} "
                f"(at the start: {fd_names0})"
            )
            assert live_children() == children0, f"{what}: child processes left"
            assert shm_entries() == shm0, f"{what}: /dev/shm entries left"
            err = capfd.readouterr().err
            assert err == "", f"{what}: stderr: {err[-2000:]}"
            stats.record(outcome, plan.options["grace"], what)
    finally:
        cancellers.close()
    with capfd.disabled():
        print(
            f"\nsoak: {stats.cycles} cycles (seed {seed}), outcomes {stats.outcomes}; slowest "
            f"stop {stats.slowest_stop[0] * 1000:.0f} ms, slowest beyond its grace "
            f"{stats.slowest_over_grace[0] * 1000:.0f} ms ({stats.slowest_over_grace[1]})"
        )
    return stats


@pytest.mark.soak
@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads (3.12+)
def test_soak_quick(capfd: pytest.CaptureFixture[str], request: pytest.FixtureRequest) -> None:
    """Sixty cycles (the fast set); ``--soak N`` makes it N cycles."""
    cycles = request.config.getoption("--soak") or 60
    stats = soak(cycles, SEED, capfd)
    assert stats.cycles == cycles
    assert stats.slowest_over_grace[0] < 5.0, stats.slowest_over_grace


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads (3.12+)
def test_soak_500(capfd: pytest.CaptureFixture[str]) -> None:
    """Five hundred cycles with another seed: the CI soak."""
    stats = soak(500, SEED + 1, capfd)
    assert stats.cycles == 500
    assert stats.slowest_over_grace[0] < 5.0, stats.slowest_over_grace


EXIT_SCRIPT = """
import sys, warnings
sys.path.insert(0, {tests_dir!r})
warnings.simplefilter("default")  # show every warning, ResourceWarning included
# Python 3.12+ warns when a multi-threaded process forks (from the job's runner thread):
# that is the application's choice of start_method="fork", not a leak.
warnings.filterwarnings("ignore", ".*multi-threaded.*fork", DeprecationWarning)
import workstream
import workers_soak as wsk


def main():
    for method in ("forkserver", "spawn", "fork"):
        jobs = [
            workstream.start(wsk.flood, None, start_method=method),
            workstream.start(wsk.crash, 3, "sigkill", start_method=method),
            workstream.start(wsk.stuck, 2, start_method=method, grace=0.2),
            workstream.start(wsk.with_subprocess, None, start_method=method),
        ]
        for job in jobs:
            it = iter(job)
            next(it, None)
            job.cancel()
        for job in jobs:
            job.wait(30)
    # and one job still running at exit: atexit must stop it
    workstream.start(wsk.stuck, 2, grace=0.2)
    print("ok", flush=True)


if __name__ == "__main__":
    main()
"""


@pytest.mark.timeout(120)
def test_no_warning_at_interpreter_exit(tmp_path: Any) -> None:
    """An application that ran (and crashed, cancelled, left running) jobs with every
    start method exits with status 0 and prints nothing on stderr: no "leaked semaphore"
    or resource-tracker warning, no ResourceWarning, no exception in a thread."""
    import subprocess
    import sys

    script = tmp_path / "app.py"
    script.write_text(EXIT_SCRIPT.format(tests_dir=os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run(
        [sys.executable, "-X", "dev", str(script)], capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"
    assert done.stderr == ""
