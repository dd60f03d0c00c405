"""Shared fixtures: the leak check every test runs under, and helpers for bounded waits.

The autouse ``no_leaks`` fixture compares, before and after each test: live child
processes (excluding workstream's and multiprocessing's long-lived helpers: the guard,
the fork server, the resource tracker) and live members of every worker's process group
(descendants reparented to init), unreaped (zombie) children, open file descriptors,
threads, ``/dev/shm`` entries (by name, and shared memory this process registered with
the resource tracker), signal handlers, the signal mask and the wakeup fd. A failure
names exactly what leaked (see :class:`Snapshot`).
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psutil
import pytest

import workstream
from workstream._supervisor import _guard, _registry

# Children run in fresh interpreters (spawn/forkserver) that import this directory's
# modules by name: make sure they can.
sys.path.insert(0, os.path.dirname(__file__))

import workers


def infrastructure_pids() -> set[int]:
    """Long-lived helper processes that are not leaks: guard, fork server, resource tracker."""
    pids = {_guard.guard_pid()}
    with contextlib.suppress(Exception):
        from multiprocessing import forkserver

        pids.add(forkserver._forkserver._forkserver_pid)
    with contextlib.suppress(Exception):
        from multiprocessing import resource_tracker

        pids.add(resource_tracker._resource_tracker._pid)
    pids.discard(None)
    return {p for p in pids if p is not None}


def live_children() -> set[int]:
    infra = infrastructure_pids()
    out = set()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.pid in infra or child.status() == psutil.STATUS_ZOMBIE:
                continue
            out.add(child.pid)
    return out - infra


def _qt_owns(fd: int) -> bool:
    """True for an eventfd while Qt is loaded: Qt's own threads (its thread pool, the xcb
    event reader) each keep one and outlive a test at their own pace. workstream never
    creates an eventfd, so no leak of ours hides behind this."""
    if not any(m in sys.modules for m in ("PySide6.QtCore", "PyQt6.QtCore")):
        return False
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


def open_fds() -> set[int]:
    """Open descriptors of this process. Listing /proc/self/fd opens one more for the
    listing itself, closed again at once: it is dropped (else a later leak that reuses
    its number would pass unnoticed)."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            os.fstat(fd)
        except OSError:
            continue
        out.add(fd)
    return out


def shm_entries() -> set[str]:
    """/dev/shm entries that workstream (or multiprocessing on its behalf) could create.

    Only names that contain this test process's pid or 'workstream' count: other
    programs on the machine create and remove their own entries at any time.
    """
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return set()
    pid = str(os.getpid())
    return {n for n in names if "workstream" in n or pid in n}


def signal_handlers() -> dict[int, object]:
    """Handlers of every signal except SIGALRM (pytest-timeout's own)."""
    out = {}
    for sig in set(signal.valid_signals()) - {signal.SIGALRM}:
        with contextlib.suppress(ValueError, OSError):
            out[int(sig)] = signal.getsignal(sig)
    return out


def _describe_fds(fds: set[int]) -> str:
    parts = []
    for fd in sorted(fds):
        try:
            parts.append(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            parts.append(f"{fd}->?")
    return ", ".join(parts)


@pytest.fixture(scope="session", autouse=True)
def _warm_infrastructure() -> None:
    """Start the guard, the fork server and the resource tracker once, before any
    measurement, so the leak check does not count them."""
    for method in ("forkserver", "spawn"):
        job = workstream.start(workers.return_value, 1, start_method=method)
        assert job.result(timeout=30) == 1


def bounded_wait(job: workstream.Job, bound: float, what: str) -> workstream.Outcome:  # type: ignore[type-arg]
    """``job.wait(bound)``; past the bound dump every thread's stack to stderr, list the
    live children, kill the job and fail the test (a deadlock report, not a hang)."""
    try:
        return job.wait(timeout=bound)
    except TimeoutError:
        pass
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    described = []
    for pid in live_children():
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            described.append(f"{pid} {p.status()} {' '.join(p.cmdline())[:80]}")
    job.cancel(grace=0)
    job._wait_quietly(10)
    pytest.fail(
        f"{what}: no outcome within {bound} s (state {job.state}); live children: "
        f"{described}; every thread's stack was dumped to stderr"
    )


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` with a growing delay until true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)  # ok: sleep (bounded polling of an external fact)
        delay = min(delay * 2, 0.05)


# -- what the leak check tracks beyond snapshots ------------------------------------------
# Process groups handed to the guard (every worker's, with kill_group=True): a descendant
# that outlived its worker is reparented to init, so it is no longer among our children;
# it is found by its group instead. Shared-memory names registered with multiprocessing's
# resource tracker by this process: a leak is one still registered and still in /dev/shm.
_groups_registered: list[int] = []
_shm_registered: set[str] = set()


def _install_trackers() -> None:
    from multiprocessing import resource_tracker

    real_register = _guard.register

    def register(pgid: int) -> None:
        _groups_registered.append(pgid)
        real_register(pgid)

    _guard.register = register  # type: ignore[assignment]
    real_rt_register, real_rt_unregister = resource_tracker.register, resource_tracker.unregister

    def rt_register(name: str, rtype: str) -> None:
        if rtype == "shared_memory":
            _shm_registered.add(name)
        real_rt_register(name, rtype)

    def rt_unregister(name: str, rtype: str) -> None:
        if rtype == "shared_memory":
            _shm_registered.discard(name)
        real_rt_unregister(name, rtype)

    resource_tracker.register = rt_register
    resource_tracker.unregister = rt_unregister


def group_members(pgids: set[int], since: float = 0.0) -> set[int]:
    """Live (non-zombie) processes of our session, started at ``since`` (wall clock) or
    later, whose process group is one of ``pgids``.

    Session and start time rule out strangers whose group id is a recycled worker pid
    (pids wrap around during a long soak)."""
    out = set()
    sid = os.getsid(0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in pgids and int(fields[3]) == sid and fields[0] not in (b"Z", b"X"):
            with contextlib.suppress(psutil.Error):
                if psutil.Process(int(entry)).create_time() >= since - 1.0:
                    out.add(int(entry))
    return out - {os.getpid()} - infrastructure_pids()


def zombie_children() -> set[int]:
    """Our own direct children that exited and were not reaped (by us: nobody else can)."""
    out = set()
    for child in psutil.Process().children(recursive=False):
        with contextlib.suppress(psutil.Error):
            if child.status() == psutil.STATUS_ZOMBIE:
                out.add(child.pid)
    return out - infrastructure_pids()


def signal_state() -> dict[str, object]:
    """The main thread's signal mask and the wakeup fd (the handlers are compared apart)."""
    state: dict[str, object] = {}
    if threading.current_thread() is threading.main_thread():
        state["mask"] = sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))
        old = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(old)
        state["wakeup_fd"] = old
    return state


def _describe_pids(pids: set[int]) -> list[str]:
    desc = []
    for pid in sorted(pids):
        try:
            p = psutil.Process(pid)
            desc.append(f"{pid} {p.status()} {' '.join(p.cmdline())[:80]}")
        except psutil.Error:
            desc.append(f"{pid} (gone)")
    return desc


@dataclass
class Snapshot:
    """What exists before a test; :meth:`leaks` lists what the test left behind."""

    children: set[int] = field(default_factory=live_children)
    zombies: set[int] = field(default_factory=zombie_children)
    fds: set[int] = field(default_factory=open_fds)
    threads: set[threading.Thread] = field(default_factory=lambda: set(threading.enumerate()))
    shm: set[str] = field(default_factory=shm_entries)
    handlers: dict[int, object] = field(default_factory=signal_handlers)
    signals: dict[str, object] = field(default_factory=signal_state)
    groups_seen: int = field(default_factory=lambda: len(_groups_registered))
    taken_at: float = field(default_factory=time.time)
    shm_registered: set[str] = field(default_factory=lambda: set(_shm_registered))

    def leaks(self, *, clean_up: bool = True, patience: float = 5.0) -> list[str]:
        """One line per kind of leak, naming what leaked (empty: nothing leaked).

        Threads and processes get ``patience`` seconds to end. With ``clean_up``,
        running jobs are cancelled and leaked processes killed, so the next test starts
        clean.
        """
        problems = []
        live = _registry.live_jobs()
        if live:
            problems.append(f"jobs still running: {live}")
            if clean_up:
                for job in live:
                    job.cancel(grace=0)
                for job in live:
                    job._wait_quietly(10)
        for t in set(threading.enumerate()) - self.threads:
            t.join(patience)
        new_threads = [t.name for t in set(threading.enumerate()) - self.threads if t.is_alive()]
        if new_threads:
            problems.append(f"threads left running: {sorted(new_threads)}")
        groups = set(_groups_registered[self.groups_seen :])

        def extra() -> set[int]:
            return (live_children() - self.children) | group_members(groups, self.taken_at)

        deadline = time.monotonic() + patience
        while extra() and time.monotonic() < deadline:
            time.sleep(0.01)  # ok: sleep (bounded polling for reaping by init)
        leaked = extra()
        if leaked:
            problems.append(
                f"processes left alive (children, or members of a worker's process group "
                f"{sorted(groups)}): {_describe_pids(leaked)}"
            )
            if clean_up:
                for pid in leaked:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        zombies = zombie_children() - self.zombies
        if zombies:
            problems.append(f"child processes never reaped (zombies): {_describe_pids(zombies)}")
        extra_fds = {fd for fd in open_fds() - self.fds if not _qt_owns(fd)}
        if extra_fds:
            problems.append(f"file descriptors left open: {_describe_fds(extra_fds)}")
        extra_shm = shm_entries() - self.shm
        registered = {n.lstrip("/") for n in _shm_registered - self.shm_registered}
        with contextlib.suppress(OSError):
            extra_shm |= registered & set(os.listdir("/dev/shm"))
        if extra_shm:
            problems.append(f"/dev/shm entries left: {sorted(extra_shm)}")
        handlers1 = signal_handlers()
        changed = [
            signal.Signals(s).name for s in self.handlers if self.handlers[s] != handlers1.get(s)
        ]
        if changed:
            problems.append(f"signal handlers changed: {changed}")
        signals1 = signal_state()
        for key, before in self.signals.items():
            if signals1.get(key) != before:
                problems.append(f"signal {key} changed: {before} -> {signals1.get(key)}")
        return problems


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaves a job, a process (child or member of a worker's group),
    a zombie, an fd, a thread, a /dev/shm entry, a changed signal handler, signal mask or
    wakeup fd behind."""
    if request.node.get_closest_marker("no_leak_check"):
        yield
        return
    before = Snapshot()
    yield
    problems = before.leaks()
    if problems:
        pytest.fail("leak check failed:\n  " + "\n  ".join(problems))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak", type=int, default=None, metavar="N",
        help="run the soak test (tests/test_soak.py) for N start/cancel cycles",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cycles = config.getoption("--soak")
    if cycles:  # a long soak gets a timeout that grows with it (about 1 s per cycle)
        for item in items:
            if item.get_closest_marker("soak"):
                item.add_marker(pytest.mark.timeout(60 + cycles), append=False)


def pytest_configure(config: pytest.Config) -> None:
    _install_trackers()
    config.addinivalue_line("markers", "soak: the soak test; --soak N sets its cycle count")
    config.addinivalue_line("markers", "no_leak_check: skip the autouse leak check")
    faulthandler.enable()
    multiprocessing.set_executable(sys.executable)
