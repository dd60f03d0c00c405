"""Shared fixtures: the leak check every test runs under, and helpers for bounded waits.

The autouse ``no_leaks`` fixture compares, before and after each test: live child
processes (excluding workstream's and multiprocessing's long-lived helpers: the guard,
the fork server, the resource tracker), open file descriptors, threads, ``/dev/shm``
entries and signal handlers. A failure names exactly what leaked.
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


def open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


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


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaves a child, an fd, a thread, a /dev/shm entry or a
    changed signal handler behind."""
    if request.node.get_closest_marker("no_leak_check"):
        yield
        return
    children0 = live_children()
    fds0 = open_fds()
    threads0 = set(threading.enumerate())
    shm0 = shm_entries()
    handlers0 = signal_handlers()
    yield
    problems = []
    # Jobs still running at the end of a test are a leak in the test; stop them so the
    # next test starts clean, and report.
    live = _registry.live_jobs()
    if live:
        problems.append(f"jobs still running: {live}")
        for job in live:
            job.cancel(grace=0)
        for job in live:
            job._wait_quietly(10)
    for t in set(threading.enumerate()) - threads0:
        t.join(5)
    new_threads = [t.name for t in set(threading.enumerate()) - threads0 if t.is_alive()]
    if new_threads:
        problems.append(f"threads left running: {new_threads}")
    deadline = time.monotonic() + 5
    while (live_children() - children0) and time.monotonic() < deadline:
        time.sleep(0.01)  # ok: sleep (bounded polling for reaping by init)
    extra_children = live_children() - children0
    if extra_children:
        desc = []
        for pid in extra_children:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                desc.append(f"{pid} {p.status()} {' '.join(p.cmdline())[:80]}")
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        problems.append(f"child processes left alive: {desc}")
    extra_fds = open_fds() - fds0
    if extra_fds:
        problems.append(f"file descriptors left open: {_describe_fds(extra_fds)}")
    extra_shm = shm_entries() - shm0
    if extra_shm:
        problems.append(f"/dev/shm entries left: {sorted(extra_shm)}")
    handlers1 = signal_handlers()
    changed = [signal.Signals(s).name for s in handlers0 if handlers0[s] != handlers1.get(s)]
    if changed:
        problems.append(f"signal handlers changed: {changed}")
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
    config.addinivalue_line("markers", "soak: the soak test; --soak N sets its cycle count")
    config.addinivalue_line("markers", "no_leak_check: skip the autouse leak check")
    faulthandler.enable()
    multiprocessing.set_executable(sys.executable)
