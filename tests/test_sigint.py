"""A Ctrl-C to the application's process group while a worker (or multiprocessing's fork
server) is still starting: the application's handler decides, the job is unaffected.

Each test runs ``sigint_script.py`` in a new session, so its SIGINT to its own process
group reaches nothing else; the script synchronises on FIFOs, never on time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("sigint_script.py")
SIGINT_BIT = 1 << (2 - 1)  # SIGINT (2) in /proc/<pid>/status's Sig* masks


def _run_script(method: str, mode: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    window, sent = tmp_path / "window", tmp_path / "sent"
    os.mkfifo(window)
    os.mkfifo(sent)
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parent.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(SCRIPT), method, mode, str(window), str(sent)],
        capture_output=True,
        text=True,
        timeout=50,
        start_new_session=True,
        env=env,
        cwd=tmp_path,
    )


def _masks(stdout: str) -> dict[str, int]:
    line = next(x for x in stdout.splitlines() if x.startswith("masks "))
    fields = line.split()[1:]
    return {fields[i].rstrip(":"): int(fields[i + 1], 16) for i in range(0, len(fields), 2)}


@pytest.mark.parametrize("mode", ["ignore", "cancel"])
@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_ctrl_c_while_the_worker_starts_leaves_the_job_alone(
    method: str, mode: str, tmp_path: Path
) -> None:
    """A SIGINT to the group while the first worker starts runs only the application's
    handler: no traceback, the job completes (or is cancelled by that handler's choice),
    no zombie is left, and neither a job's subprocess nor the application's own process
    from the fork server that workstream started gets SIGINT blocked."""
    proc = _run_script(method, mode, tmp_path)
    out = proc.stdout + "\n--- stderr:\n" + proc.stderr
    assert proc.returncode == 0, (out, proc.stderr)
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr
    assert out.count("handler ran in") == 1 and "handler ran in parent" in out, out
    if mode == "ignore":
        assert "items [0, 1, 2] outcome completed" in out, out
    else:
        assert "outcome cancelled" in out, out
    assert "zombies []" in out, out
    masks = _masks(out)
    assert not masks["SigBlk"] & SIGINT_BIT, out
    if method == "forkserver":
        line = next(x for x in out.splitlines() if x.startswith("app child SigBlk:"))
        assert not int(line.split()[-1], 16) & SIGINT_BIT, out
