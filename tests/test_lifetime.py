"""Process lifetime: reaping, the forking thread, process groups, parent death, fds.

The parent-death tests run a small driver script in its own interpreter and SIGKILL it,
which exercises PR_SET_PDEATHSIG, the child's lifeline watchdog and the guard process.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import workers
import workers_lifecycle as wl
import workstream
from conftest import open_fds, wait_until
from workstream import CancelledOutcome, Completed
from workstream._supervisor import _registry

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
PR_SET_CHILD_SUBREAPER = 36

METHODS = [
    pytest.param("forkserver", id="forkserver"),
    pytest.param("spawn", id="spawn"),
    pytest.param("fork", id="fork", marks=pytest.mark.filterwarnings("ignore::DeprecationWarning")),
]


def wait_for(predicate: Callable[[], bool], timeout: float, describe: Callable[[], str]) -> None:
    """As conftest.wait_until, but the failure message is built when the wait fails."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s: {describe()}")
        time.sleep(0.01)  # ok: sleep (bounded polling of an external fact)


def states(pids: list[int]) -> str:
    return ", ".join(f"{p}={wl.proc_state(p)}" for p in pids)


def wait_for_marker(marker: Path) -> None:
    wait_until(marker.exists, 15, f"the child to create {marker.name}")


# -- reaping -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", METHODS)
def test_dropped_job_is_reaped(method: str) -> None:
    """A job whose Job object the user dropped without wait() still runs to its end, its
    child is reaped (no zombie left), and the Job object is then freed."""
    job = workstream.start(wl.numbers, 20, start_method=method)
    wait_until(lambda j=job: j.pid is not None, 15, "the child to start")
    pid = job.pid
    assert pid is not None
    ref = weakref.ref(job)
    del job  # no wait(), no iteration: the 20 items stay buffered
    wait_until(lambda: wl.pid_gone(pid), 10, f"child {pid} to be reaped")

    def freed() -> bool:
        gc.collect()
        return ref() is None and not _registry.live_jobs()

    wait_until(freed, 10, "the dropped Job to be freed")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", METHODS)
def test_clean_completion_has_exit_status_zero(method: str) -> None:
    """A job that returns normally ends Completed with exit code 0, its pid, every item
    counted, and the child reaped by the time wait() returns."""
    job = workstream.start(workers.count, 3, start_method=method)
    assert list(job) == [0, 1, 2]
    outcome = job.wait(timeout=15)
    assert isinstance(outcome, Completed)
    assert outcome.value == 3
    assert outcome.exit_code == 0
    assert outcome.items_delivered == 3
    assert isinstance(outcome.pid, int) and outcome.pid == job.pid
    assert outcome.duration > 0
    assert wl.pid_gone(outcome.pid)


# -- the forking thread ------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", METHODS)
def test_job_outlives_the_thread_that_started_it(method: str, tmp_path: Path) -> None:
    """A job started from a short-lived thread keeps running after that thread has
    exited (PR_SET_PDEATHSIG follows the forking thread, which must not be the caller's):
    it then yields more items and completes."""
    go = tmp_path / "go"
    box: dict[str, object] = {}

    def starter() -> None:
        job = workstream.start(wl.wait_for_file_then_count, str(go), 10, start_method=method)
        box["job"] = job
        box["first"] = next(iter(job))  # the child exists and runs
        box["tid"] = threading.get_native_id()

    thread = threading.Thread(target=starter, name="short-lived-starter")
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    job = box["job"]
    assert isinstance(job, workstream.Job)
    assert box["first"] == "ready"
    tid = box["tid"]
    # join() returns before the kernel thread is gone; PDEATHSIG fires only then.
    wait_until(lambda: not os.path.exists(f"/proc/self/task/{tid}"), 10, "the thread to exit")
    pid = job.pid
    assert pid is not None and wl.pid_alive(pid)
    go.touch()
    assert list(job) == list(range(10))
    outcome = job.wait(timeout=15)
    assert isinstance(outcome, Completed), outcome
    assert outcome.value == "done"
    assert outcome.exit_code == 0


# -- the child's own subprocesses --------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", METHODS)
def test_sigkill_rung_kills_the_childs_subprocesses(method: str, tmp_path: Path) -> None:
    """A stuck child's grandchild (same process group) is dead by the time wait()
    returns after a sigkill-rung cancel."""
    marker = tmp_path / "grandchild.pid"
    job = workstream.start(wl.mark_then_spawn_grandchild_and_wait, str(marker), start_method=method)
    wait_for_marker(marker)
    grandchild = int(marker.read_text())
    assert wl.pid_alive(grandchild)
    assert job.cancel(grace=0.5) is True
    outcome = job.wait(timeout=10)
    assert isinstance(outcome, CancelledOutcome) and outcome.rung == "sigkill", outcome
    assert outcome.exit_code == -9
    assert not wl.pid_alive(grandchild), wl.proc_state(grandchild)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("fn", "cancel", "kind"),
    [
        pytest.param(wl.spawn_grandchild_then_tick, True, "cancelled", id="cooperative-cancel"),
        pytest.param(wl.spawn_grandchild_then_return, False, "completed", id="completed"),
    ],
)
def test_group_is_killed_after_the_child_exits(fn: object, cancel: bool, kind: str) -> None:
    """When the child itself exits normally (cooperative cancel or completion), the
    grandchild it left behind is killed with its process group before wait() returns."""
    job = workstream.start(fn)  # type: ignore[arg-type]
    it = iter(job)
    grandchild = next(it)
    assert isinstance(grandchild, int)
    if cancel:  # (a completing child may already be gone, with its group)
        assert wl.pid_alive(grandchild)
        assert job.cancel() is True
    list(it)
    outcome = job.wait(timeout=10)
    assert outcome.kind == kind, outcome
    assert outcome.exit_code == 0
    if isinstance(outcome, CancelledOutcome):
        assert outcome.rung == "cooperative"
    assert not wl.pid_alive(grandchild), wl.proc_state(grandchild)


@pytest.fixture
def subreaper() -> Iterator[list[int]]:
    """Make this process a child subreaper (as an init-less container's PID 1, a
    service manager or a process supervisor is): orphans of our jobs become our
    zombies until we reap them. Yields a list of pids to reap at the end."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip("PR_SET_CHILD_SUBREAPER is not available")
    to_reap: list[int] = []
    try:
        yield to_reap
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        for pid in to_reap:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


@pytest.mark.timeout(30)
def test_group_kill_does_not_wait_for_unreaped_zombies(subreaper: list[int]) -> None:
    """A cooperative stop of a child that left a subprocess ends within 0.3 s of the
    grace even when the killed subprocess stays a zombie (its reaper is busy or absent).
    The subprocess ignores the child's exit: it gets the rest of the grace to exit on its
    own (the wait for descendants), then is killed; its zombie adds no wait."""
    grace = 0.5
    job = workstream.start(wl.spawn_grandchild_then_tick, grace=grace)
    it = iter(job)
    grandchild = next(it)
    assert isinstance(grandchild, int)
    subreaper.append(grandchild)
    assert job.cancel() is True
    list(it)
    outcome = job.wait(timeout=10)
    assert isinstance(outcome, CancelledOutcome) and outcome.rung == "cooperative"
    assert not wl.pid_alive(grandchild)
    assert outcome.stop_latency is not None
    assert outcome.stop_latency < grace + 0.3, f"stop took {outcome.stop_latency:.3f} s"


@pytest.mark.timeout(30)
def test_kill_group_false_leaves_the_grandchild_alone() -> None:
    """With kill_group=False the child's own subprocess survives the job (documented)."""
    job = workstream.start(wl.spawn_grandchild_then_tick, kill_group=False)
    it = iter(job)
    grandchild = next(it)
    assert isinstance(grandchild, int)
    try:
        assert job.cancel() is True
        list(it)
        outcome = job.wait(timeout=10)
        assert isinstance(outcome, CancelledOutcome) and outcome.rung == "cooperative"
        assert wl.pid_alive(grandchild)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)
    wait_until(lambda: not wl.pid_alive(grandchild), 5, "the grandchild to die")


# -- parent death ------------------------------------------------------------------------

DRIVER = """
import os, sys, threading, time
sys.path.insert(0, {tests_dir!r})
import workstream
import workers, workers_lifecycle as wl
from workstream._supervisor import _guard


def infrastructure():
    from multiprocessing import forkserver, resource_tracker
    return [
        _guard.guard_pid() or 0,
        getattr(forkserver._forkserver, "_forkserver_pid", None) or 0,
        getattr(resource_tracker._resource_tracker, "_pid", None) or 0,
    ]


def main():
    mode, method, marker = sys.argv[1:4]
    if mode in ("killed", "killed-holding-gil", "killed-holding-gil-no-group"):
        fn = (
            workers.spawn_grandchild_then_wait
            if mode == "killed"
            else wl.spawn_grandchild_then_hold_gil
        )
        kill_group = mode != "killed-holding-gil-no-group"
        job = workstream.start(fn, start_method=method, kill_group=kill_group)
        grandchild = next(iter(job))
        print(job.pid, grandchild, *infrastructure(), flush=True)
        threading.Event().wait()  # until SIGKILLed
    elif mode == "guard-restarted":
        # Job A registers its group with the guard; the guard then dies (someone killed
        # it) and job B starts a new one. A's group must still be covered.
        # A's child holds the GIL: only the guard can kill its grandchild.
        a = workstream.start(wl.spawn_grandchild_then_hold_gil, start_method=method)
        grandchild = next(iter(a))
        old_guard = _guard.guard_pid()
        os.kill(old_guard, 9)
        while wl.pid_alive(old_guard):
            time.sleep(0.005)  # ok: sleep (bounded poll of an external fact)
        b = workstream.start(workers.spawn_grandchild_then_wait, start_method=method)
        b_grandchild = next(iter(b))
        assert _guard.guard_pid() != old_guard
        print(a.pid, grandchild, b.pid, b_grandchild, *infrastructure(), flush=True)
        threading.Event().wait()  # until SIGKILLed
    elif mode == "dies-at-start":
        # SIGKILL ourselves right after start(): the child may be anywhere in its boot.
        job = workstream.start(
            wl.mark_then_spawn_grandchild_and_wait, marker, start_method=method
        )
        print(*infrastructure(), flush=True)
        os.kill(os.getpid(), 9)
    elif mode == "dies-at-fork":
        # Die the moment the child is forked, before the runner let it run ("go"); the
        # child holds back until we are dead, so it asks for PR_SET_PDEATHSIG too late
        # (as a child slowed down by a loaded machine would).
        print(*infrastructure(), flush=True)
        me = os.getpid()

        def hold_back_until_parent_died():
            deadline = time.monotonic() + 10
            while os.getppid() == me and time.monotonic() < deadline:
                time.sleep(0.001)  # ok: sleep (bounded poll of an external fact)

        os.register_at_fork(
            after_in_parent=lambda: os.kill(os.getpid(), 9),
            after_in_child=hold_back_until_parent_died,
        )
        job = workstream.start(
            wl.mark_then_spawn_grandchild_and_wait, marker, start_method=method
        )
        job.wait()
    else:  # "exits": return from main with the job running; atexit must stop it
        job = workstream.start(
            wl.mark_then_spawn_grandchild_and_wait, marker, start_method=method, grace=0.5
        )
        deadline = time.monotonic() + 30
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.005)  # ok: sleep (bounded poll of an external fact)
        with open(marker) as f:
            grandchild = int(f.read())
        print(job.pid, grandchild, *infrastructure(), flush=True)


if __name__ == "__main__":
    main()
"""


class Driver:
    """A driver interpreter running one job; cleans up everything it learned of."""

    def __init__(self, tmp_path: Path, mode: str, method: str) -> None:
        script = tmp_path / "driver.py"
        script.write_text(textwrap.dedent(DRIVER.format(tests_dir=TESTS_DIR)))
        self.stderr_path = tmp_path / "driver.stderr"
        self.pids: list[int] = []
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), mode, method, str(tmp_path / "marker")],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,  # its descendants share its session id
            )

    def read_pids(self, timeout: float) -> list[int]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            pytest.fail(f"the driver printed no pids; stderr:\n{self.stderr()}")
        self.pids = [int(x) for x in line.split()]
        return self.pids

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def session_members(self) -> list[int]:
        """Live (non-zombie) processes in the driver's session: everything it started
        except the guard, which runs in a session of its own."""
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.proc.pid and fields[0] not in ("Z", "X"):
                out.append(int(entry))
        return out

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        for pid in [*self.pids, *self.session_members()]:
            if pid and wl.pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("killed", id="sleeping"),
        # The child holds the GIL: its lifeline watchdog cannot run, the guard must act.
        pytest.param("killed-holding-gil", id="holding-gil"),
    ],
)
def test_parent_sigkill_kills_child_and_grandchild(method: str, mode: str, tmp_path: Path) -> None:
    """When the application is SIGKILLed, its stuck child (SIGTERM blocked, in a C call)
    and the child's own subprocess are gone within 5 s, and so are the guard, the fork
    server and the resource tracker."""
    driver = Driver(tmp_path, mode, method)
    try:
        child, grandchild, *infra = driver.read_pids(30)
        assert wl.pid_alive(child) and wl.pid_alive(grandchild)
        os.kill(driver.proc.pid, signal.SIGKILL)
        assert driver.proc.wait(10) == -signal.SIGKILL
        t0 = time.monotonic()
        wait_for(
            lambda: not wl.pid_alive(child) and not wl.pid_alive(grandchild),
            5,
            lambda: f"child and grandchild still alive: {states([child, grandchild])}",
        )
        elapsed = time.monotonic() - t0
        helpers = [p for p in infra if p]
        wait_for(
            lambda: not any(wl.pid_alive(p) for p in helpers),
            5,
            lambda: f"the driver's helper processes live on: {states(helpers)}",
        )
        print(f"{method}: child and grandchild gone {elapsed:.3f} s after the parent died")
    finally:
        driver.cleanup()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_parent_sigkill_kills_child_without_guard(method: str, tmp_path: Path) -> None:
    """With kill_group=False (no guard for the job), a child holding the GIL still dies
    when the application is SIGKILLed (PR_SET_PDEATHSIG), as do the driver's helpers."""
    driver = Driver(tmp_path, "killed-holding-gil-no-group", method)
    try:
        child, _grandchild, *infra = driver.read_pids(30)
        assert wl.pid_alive(child)
        os.kill(driver.proc.pid, signal.SIGKILL)
        assert driver.proc.wait(10) == -signal.SIGKILL
        wait_for(
            lambda: not wl.pid_alive(child), 3, lambda: f"the child lives on: {states([child])}"
        )
        helpers = [p for p in infra if p]
        wait_for(
            lambda: not any(wl.pid_alive(p) for p in helpers),
            5,
            lambda: f"the driver's helper processes live on: {states(helpers)}",
        )
    finally:
        driver.cleanup()  # kills the grandchild too: kill_group=False leaves it by design


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_parent_sigkill_after_guard_restart_kills_earlier_groups(
    method: str, tmp_path: Path
) -> None:
    """A job registered with a guard that later died (and was replaced when the next job
    started) still has its subprocess killed when the application is SIGKILLed, even
    while the job's child holds the GIL."""
    driver = Driver(tmp_path, "guard-restarted", method)
    try:
        a_child, a_grandchild, b_child, b_grandchild, *infra = driver.read_pids(30)
        pids = [a_child, a_grandchild, b_child, b_grandchild]
        assert all(wl.pid_alive(p) for p in pids)
        os.kill(driver.proc.pid, signal.SIGKILL)
        assert driver.proc.wait(10) == -signal.SIGKILL
        wait_for(
            lambda: not any(wl.pid_alive(p) for p in pids),
            3,
            lambda: f"children/grandchildren of jobs A and B live on: {states(pids)}",
        )
        helpers = [p for p in infra if p]  # the fork server, the resource tracker
        wait_for(
            lambda: not any(wl.pid_alive(p) for p in helpers),
            5,
            lambda: f"the driver's helper processes live on: {states(helpers)}",
        )
    finally:
        driver.cleanup()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_interpreter_exit_stops_running_jobs(method: str, tmp_path: Path) -> None:
    """An application that returns from main with a stuck job still running exits
    promptly (atexit cancels with the job's grace=0.5) and leaves neither the child nor
    its subprocess behind."""
    driver = Driver(tmp_path, "exits", method)
    try:
        child, grandchild, *_ = driver.read_pids(30)
        t0 = time.monotonic()
        assert driver.proc.wait(10) == 0, driver.stderr()
        elapsed = time.monotonic() - t0
        assert 0.4 <= elapsed < 3.0, elapsed
        assert not wl.pid_alive(child), wl.proc_state(child)
        wait_until(lambda: not wl.pid_alive(grandchild), 5, "the grandchild to die")
    finally:
        driver.cleanup()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_parent_sigkill_right_after_start_leaves_nothing(method: str, tmp_path: Path) -> None:
    """An application SIGKILLed right after start(), while its child is still booting,
    leaves no process behind: neither the child (whatever step it reached), nor a
    subprocess it started, nor the guard, fork server or resource tracker."""
    for attempt in range(3):
        driver = Driver(tmp_path, "dies-at-start", method)
        try:
            infra = [p for p in driver.read_pids(30) if p]
            assert driver.proc.wait(30) == -signal.SIGKILL
            wait_for(
                lambda d=driver: not d.session_members(),
                5,
                lambda d=driver, a=attempt: (
                    f"attempt {a}: the dead driver's processes live on: "
                    f"{states(d.session_members())}"
                ),
            )
            wait_for(
                lambda i=infra: not any(wl.pid_alive(p) for p in i),
                5,
                lambda i=infra, a=attempt: f"attempt {a}: guard/helpers live on: {states(i)}",
            )
            marker = tmp_path / "marker"
            if marker.exists():  # the child got as far as starting its subprocess
                grandchild = int(marker.read_text())
                driver.pids.append(grandchild)
                assert not wl.pid_alive(grandchild), f"attempt {attempt}: grandchild lives"
                marker.unlink()
        finally:
            driver.cleanup()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.timeout(60)
def test_fork_child_of_a_parent_dead_before_go_exits(tmp_path: Path) -> None:
    """start_method=fork: a child whose parent died right after forking it (before
    PR_SET_PDEATHSIG and before "go") exits instead of waiting forever."""
    driver = Driver(tmp_path, "dies-at-fork", "fork")
    try:
        driver.read_pids(30)
        assert driver.proc.wait(30) == -signal.SIGKILL
        wait_for(
            lambda: not driver.session_members(),
            3,
            lambda: f"the orphaned child lives on: {states(driver.session_members())}",
        )
        assert not (tmp_path / "marker").exists()  # no user code ran
    finally:
        driver.cleanup()


# -- descriptors -------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_no_fds_left_after_twenty_jobs(method: str) -> None:
    """Twenty concurrent jobs hold descriptors while they run and leave none once each
    was waited for (completed and cancelled alike)."""
    before = open_fds()
    jobs = [
        workstream.start(wl.numbers_with_finally, None if i % 2 else 50, start_method=method)
        for i in range(20)
    ]
    wait_until(lambda: all(j.pid is not None for j in jobs), 30, "all children to start")
    assert len(open_fds() - before) >= 20
    for i, job in enumerate(jobs):
        if i % 2:
            assert job.cancel() is True
        items = list(job)
        # A child cancelled before fn was called sends nothing (spawn boots slowly when
        # twenty start at once); otherwise its finally block's item comes last.
        assert items[-1:] == ["finally"] or (i % 2 and items == []), items[-3:]
        outcome = job.wait(timeout=15)
        assert outcome.kind == ("cancelled" if i % 2 else "completed"), outcome
    leaked = open_fds() - before
    assert not leaked, {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked}
