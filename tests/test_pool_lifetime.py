"""A Pool's processes end with the application: at interpreter exit with jobs running
and queued (the registry closes the pool), and when the application is SIGKILLed (as
for a Worker: PR_SET_PDEATHSIG, the lifeline, the guard). Each test runs a small driver
script in its own interpreter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_until

TESTS = Path(__file__).resolve().parent

DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import workstream
import workers_pool as wp

if __name__ == "__main__":
    pool = workstream.Pool(2)
    jobs = [pool.start(wp.stream_forever, i) for i in range(2)]
    queued = pool.start(wp.square, 3)
    for job in jobs:
        next(iter(job))
    print(" ".join(str(job.pid) for job in jobs), queued.state, flush=True)
    if sys.argv[1] == "killed":
        sys.stdin.read()  # until the test kills us
    # "exit": leave main with two jobs running and one queued, the pool never closed
"""


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def run_driver(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], list[int]]:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(tests=str(TESTS)))
    proc = subprocess.Popen(
        [sys.executable, str(script), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert len(line) == 3 and line[2] == "queued", (line, proc.stderr and proc.stderr.read())
    return proc, [int(p) for p in line[:2]]


@pytest.mark.timeout(60)
def test_interpreter_exit_closes_a_busy_pool(tmp_path: Path) -> None:
    proc, pids = run_driver(tmp_path, "exit")
    try:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert err == "", err
        wait_until(lambda: not any(pid_alive(p) for p in pids), 10, "the workers to die")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.timeout(60)
def test_parent_sigkill_kills_every_worker(tmp_path: Path) -> None:
    proc, pids = run_driver(tmp_path, "killed")
    try:
        assert all(pid_alive(p) for p in pids)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        wait_until(lambda: not any(pid_alive(p) for p in pids), 5,
                   "the workers to die with their parent")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for p in pids:
            if pid_alive(p):
                os.kill(p, signal.SIGKILL)
