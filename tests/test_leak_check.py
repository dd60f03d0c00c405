"""The leak check itself: each kind of leak is found and named (a check that cannot fail
is a defect). Everything leaked here on purpose is cleaned up before the test ends, so
the autouse check around the test passes."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from multiprocessing import shared_memory

import pytest

import conftest
from conftest import Snapshot, wait_until


def _only(problems: list[str], start: str) -> str:
    hits = [p for p in problems if p.startswith(start)]
    assert len(hits) == 1, problems
    return hits[0]


@pytest.mark.timeout(30)
def test_thread_and_fd_are_named() -> None:
    """A thread still running and an fd still open are reported by name / target."""
    before = Snapshot()
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="leaky-thread")
    t.start()
    r, w = os.pipe()
    try:
        problems = before.leaks(clean_up=False, patience=0.2)
        assert "leaky-thread" in _only(problems, "threads left running")
        text = _only(problems, "file descriptors left open")
        assert f"{r}->pipe:" in text and f"{w}->pipe:" in text
    finally:
        stop.set()
        t.join(5)
        os.close(r)
        os.close(w)
    assert before.leaks(clean_up=False, patience=0.2) == []


@pytest.mark.timeout(30)
def test_orphan_in_a_workers_group_and_zombie_are_named() -> None:
    """A process reparented to init but still in a worker's process group (in our
    session), and a child nobody reaped, are both reported."""
    before = Snapshot()
    sh = subprocess.Popen(
        ["sh", "-c", "sleep 60 & echo $!"], stdout=subprocess.PIPE, preexec_fn=os.setpgrp
    )
    assert sh.stdout is not None
    orphan = int(sh.stdout.readline())
    sh.stdout.close()
    conftest._groups_registered.append(sh.pid)  # as if the guard got this worker's group
    wait_until(lambda: conftest.zombie_children() >= {sh.pid}, 10, "sh to exit")
    try:
        problems = before.leaks(clean_up=False, patience=0.2)
        assert f"{orphan} " in _only(problems, "processes left alive")
        assert f"{sh.pid} " in _only(problems, "child processes never reaped (zombies)")
    finally:
        os.kill(orphan, signal.SIGKILL)
        sh.wait(10)
        wait_until(lambda: not conftest.group_members({sh.pid}), 10, "the orphan to die")
    assert before.leaks(clean_up=False, patience=0.2) == []


@pytest.mark.timeout(30)
def test_signal_handler_mask_and_shared_memory_are_named() -> None:
    """A changed handler, a blocked signal and a shared-memory segment left behind are
    reported."""
    before = Snapshot()
    old = signal.signal(signal.SIGUSR1, lambda *a: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    shm = shared_memory.SharedMemory(create=True, size=64)
    try:
        problems = before.leaks(clean_up=False, patience=0.2)
        assert "SIGUSR1" in _only(problems, "signal handlers changed")
        assert str(int(signal.SIGUSR2)) in _only(problems, "signal mask changed")
        assert shm.name.lstrip("/") in _only(problems, "/dev/shm entries left")
    finally:
        signal.signal(signal.SIGUSR1, old)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
        shm.close()
        shm.unlink()
    assert before.leaks(clean_up=False, patience=0.2) == []
