"""ChildProcess on its own: launch and handshake, signals, the group, reaping, descriptors.

These drive ``_supervisor._child_process.ChildProcess`` directly, without a runner or a
Job: the one owner of a worker process, used by ``start()`` and by ``Worker`` alike.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import sys
from collections.abc import Iterator

import cloudpickle
import pytest

import workers
import workstream
from conftest import wait_until
from workers_lifecycle import pid_alive
from workstream._options import ChildSettings, Options
from workstream._supervisor import _guard
from workstream._supervisor._child_process import ChildProcess
from workstream._transport import _fds, _framing

METHODS = ["fork", "spawn", "forkserver"]


@pytest.fixture
def control() -> Iterator[tuple[int, object]]:
    """A control block: the fd to hand to a child, and the parent's mapping of it."""
    fd, mapping = _fds.make_control_block()
    yield fd, mapping
    mapping.close()


def _read_frames(child: ChildProcess, until: _framing.Kind | None = None) -> list[_framing.Frame]:
    """Read frames from the child's data pipe until ``until`` arrives or end-of-file."""
    assert child.data_r is not None
    decoder = _framing.FrameDecoder()
    frames: list[_framing.Frame] = []
    while True:
        chunk = os.read(child.data_r, 1 << 16)
        if not chunk:
            return frames
        frames += decoder.feed(chunk)
        if until is not None and any(f.kind is until for f in frames):
            return frames


def _launch_one_job(method: str, control_fd: int, fn: object, *args: object) -> ChildProcess:
    child = ChildProcess(Options(start_method=method), "workstream:test")
    try:
        child.launch(
            _fds.PassedFd(control_fd), payload=cloudpickle.dumps((fn, args)),
        )
    except BaseException:
        child.kill_and_reap()
        child.close()
        raise
    return child


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", METHODS)
def test_a_one_job_child_says_ready_runs_and_exits_0(
    method: str, control: tuple[int, object]
) -> None:
    """A launched one-job child sends READY, its items and its result, exits 0 by itself,
    and close() leaves no descriptor of it open."""
    fd, _mapping = control
    child = _launch_one_job(method, fd, workers.count, 3)
    try:
        assert child.pid is not None and child.exit_fd is not None
        frames = _read_frames(child)
        kinds = [f.kind for f in frames]
        assert kinds[0] is _framing.Kind.READY
        assert kinds[-1] is _framing.Kind.RESULT
        items = [pickle.loads(p) for f in frames if f.kind is _framing.Kind.ITEMS
                 for p in f.item_payloads()]
        assert items == [0, 1, 2]
        assert child.wait_exited(20)
        assert child.reap_with_group() == 0
        assert child.exit_code == 0
    finally:
        child.close()
    assert child.data_r is None and child.lifeline_w is None and child.pidfd is None
    assert child.has_exited()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_kill_child_and_group_kills_its_subprocesses(
    method: str, control: tuple[int, object]
) -> None:
    """kill_child_and_group() SIGKILLs the child and what it started in its group; the
    child reaps as killed by SIGKILL and the grandchild is gone."""
    fd, _mapping = control
    child = _launch_one_job(method, fd, workers.spawn_grandchild_then_wait)
    try:
        frames = _read_frames(child, until=_framing.Kind.ITEMS)
        [grandchild] = [pickle.loads(p) for f in frames if f.kind is _framing.Kind.ITEMS
                        for p in f.item_payloads()]
        assert pid_alive(grandchild)
        child.kill_child_and_group()
        assert child.wait_exited(10)
        assert child.reap_with_group() == -signal.SIGKILL
        wait_until(lambda: not pid_alive(grandchild), 10, "the grandchild to die")
    finally:
        child.kill_and_reap()
        child.close()


@pytest.mark.timeout(30)
def test_nothing_is_signalled_once_the_child_is_reaped(control: tuple[int, object]) -> None:
    """After reaping, signal() and kill_group() do nothing (the pid may name another
    process by then): no error, and kill_group() reports no group."""
    fd, _mapping = control
    child = _launch_one_job("fork", fd, workers.return_value, 1)
    try:
        _read_frames(child)
        assert child.wait_exited(20)
        assert child.reap() == 0
        child.signal(signal.SIGKILL)
        assert child.kill_group() is False
        child.kill_child_and_group()
        assert child.reap() == 0  # reaping again returns the same status
    finally:
        child.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_warm_child_exits_0_when_its_jobs_pipe_closes(method: str) -> None:
    """A warm child (no payload) waits for jobs after READY; closing its jobs pipe lets it
    exit 0 by itself."""
    fd, mapping = _fds.make_control_block()
    child = ChildProcess(Options(start_method=method), "workstream-worker:test")
    try:
        child.launch(_fds.PassedFd(os.dup(fd)), payload=None, close_in_child=(fd,))
        assert child.jobs_w is not None
        frames = _read_frames(child, until=_framing.Kind.READY)
        assert frames[0].kind is _framing.Kind.READY
        assert not child.has_exited()
        child.close_jobs()
        assert child.jobs_w is None
        assert child.wait_exited(20)
        assert child.reap_with_group() == 0
    finally:
        child.kill_and_reap()
        child.close()
        mapping.close()
        _fds.close_quietly(fd)


@pytest.mark.timeout(30)
def test_a_launch_that_fails_after_start_leaves_a_child_to_kill(
    monkeypatch: pytest.MonkeyPatch, control: tuple[int, object]
) -> None:
    """If the guard refuses the new group, launch() raises but the started child is
    known: kill_and_reap() ends it (it never got the "go" byte) and close() frees all."""
    fd, _mapping = control

    def refuse(pgid: int) -> None:
        raise OSError(24, "Too many open files (injected)")

    monkeypatch.setattr(_guard, "register", refuse)
    child = ChildProcess(Options(start_method="forkserver"), "workstream:test")
    with pytest.raises(OSError, match="injected"):
        child.launch(_fds.PassedFd(fd), payload=cloudpickle.dumps((workers.forever, ())))
    pid = child.pid
    assert pid is not None
    assert child.kill_and_reap() == -signal.SIGKILL
    child.close()
    child.close()  # idempotent
    assert not os.path.exists(f"/proc/{pid}")


@pytest.mark.timeout(10)
def test_a_child_never_launched_is_closed_quietly() -> None:
    """close(), reap() and the signals are no-ops on a ChildProcess that never started."""
    child = ChildProcess(Options(), "workstream:test")
    assert child.has_exited()
    assert child.reap() is None
    child.signal(signal.SIGTERM)
    assert child.kill_group() is False
    assert child.kill_and_reap() is None
    child.close()
    child.close()


@pytest.mark.timeout(30)
def test_a_forked_child_is_not_told_to_close_the_guards_pipe() -> None:
    """Under fork the child is told to close the parent's own ends and the caller's, but
    not the guard's pipe: the guard module's at-fork handler closes that one, and closing
    its number again could close an unrelated descriptor that reused it. (The warm path
    used to list it; the one-job path did not.)"""
    job = workstream.start(workers.return_value, 1)  # starts the guard
    assert job.result(timeout=20) == 1
    guard_fd = _guard.guard_fd()
    assert guard_fd is not None
    child = ChildProcess(Options(start_method="fork"), "workstream-worker:test")
    child.data_r, child.lifeline_w, child.jobs_w = 101, 102, 103
    settings = child._settings("fork", (104,))
    child.data_r = child.lifeline_w = child.jobs_w = None
    assert set(settings.close_fds) == {101, 102, 103, 104}
    assert guard_fd not in settings.close_fds
    assert settings.parent_pid == os.getpid() and not settings.forkserver


@pytest.mark.timeout(10)
def test_child_settings_is_a_frozen_record_that_pickles() -> None:
    """The settings sent to the child are a typed, frozen record that survives pickling
    (spawn and forkserver pickle the child's arguments)."""
    settings = ChildSettings(batch_window=0.001, max_batch_bytes=1024, close_fds=(5, 6),
                             parent_pid=42)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.batch_window = 1.0  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(settings)) == settings
    assert settings.arrays is None and settings.forkserver is False


@pytest.mark.timeout(10)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_SETPIPE_SZ is Linux's")
def test_the_data_pipe_gets_the_buffer_pipe_bytes_asks_for() -> None:
    """make_pipe() raises the pipe's kernel buffer to the size asked for (where the
    system allows it), through fcntl.F_SETPIPE_SZ."""
    import fcntl

    with open("/proc/sys/fs/pipe-max-size") as f:
        allowed = int(f.read())
    size = min(1 << 20, allowed)
    r, w = _fds.make_pipe(size)
    try:
        assert fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) == size
    finally:
        os.close(r)
        os.close(w)
