"""The guard process: its program is a real module (``_guard_main``), run isolated.

The guard's behaviour when the application dies is covered end to end by
``test_lifetime.py``; here its program is checked on its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import workers
import workstream
from workstream._supervisor import _guard, _guard_main


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("buf", "before", "after", "rest"),
    [
        (b"+12\n", set(), {12}, b""),
        (b"+12\n+13\n-12\n", set(), {13}, b""),
        (b"-7\n", {7, 8}, {8}, b""),
        (b"+12\n+3", set(), {12}, b"+3"),  # an incomplete line waits for the rest
        (b"", {1}, {1}, b""),
        (b"+\n-\n+x1\n?5\n+-3\n\n", {1}, {1}, b""),  # malformed lines are ignored
    ],
)
def test_apply_lines(buf: bytes, before: set[int], after: set[int], rest: bytes) -> None:
    """+N registers group N, -N forgets it, anything else is ignored; the incomplete
    last line is returned to be completed by the next read."""
    groups = set(before)
    assert _guard_main.apply_lines(buf, groups) == rest
    assert groups == after


@pytest.mark.timeout(30)
def test_the_guard_runs_its_module_isolated() -> None:
    """The guard started for a job runs ``_guard_main``'s file under ``-I -S`` (no
    program passed as a string with ``-c``)."""
    assert workstream.start(workers.return_value, 1).result(timeout=20) == 1
    pid = _guard.guard_pid()
    assert pid is not None
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().rstrip(b"\0").split(b"\0")
    assert b"-c" not in argv
    assert argv[1:3] == [b"-I", b"-S"]
    assert argv[3].decode() == os.path.abspath(_guard_main.__file__)


@pytest.mark.timeout(30)
def test_the_guard_program_kills_registered_groups_at_eof() -> None:
    """Run on its own, the guard SIGKILLs the groups still registered when its stdin
    reaches end-of-file, and leaves a group that was unregistered alone."""
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]  # ok: sleep (victim)
    kept = subprocess.Popen(sleep, start_new_session=True)
    killed = subprocess.Popen(sleep, start_new_session=True)
    guard = subprocess.Popen(
        _guard.guard_command(), stdin=subprocess.PIPE, start_new_session=True
    )
    try:
        assert guard.stdin is not None
        guard.stdin.write(b"+%d\n+%d\n-%d\n" % (kept.pid, killed.pid, kept.pid))
        guard.stdin.close()  # the application "died"
        assert guard.wait(timeout=20) == 0
        assert killed.wait(timeout=20) == -signal.SIGKILL
        assert kept.poll() is None
    finally:
        for proc in (kept, killed, guard):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
