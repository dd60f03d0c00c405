"""``workstream demo --jobs N``: N trainings at once on a Pool, run as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("numpy")
pytest.importorskip("rich")

DEMO = [sys.executable, "-m", "workstream", "demo"]
ENV = {**os.environ, "COLUMNS": "200", "PYTHONIOENCODING": "utf-8", "NO_COLOR": "1"}


def rows(stdout: str) -> dict[str, list[str]]:
    """The report table's rows as {seed: cells}."""
    out = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.replace("|", "│").split("│")]
        if len(cells) == 9 and cells[1].isdigit():
            out[cells[1]] = cells[2:-1]
    return out


@pytest.mark.timeout(60)
def test_jobs_train_at_once_with_their_own_seeds() -> None:
    proc = subprocess.run([*DEMO, "--jobs", "3", "--steps", "40", "--seed", "5"],
                          capture_output=True, text=True, env=ENV, timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = rows(proc.stdout)
    assert sorted(report) == ["5", "6", "7"], proc.stdout
    assert all(r[0] == "completed" and r[1] == "40" for r in report.values()), proc.stdout
    assert len({r[2] for r in report.values()}) == 3  # different seeds, different losses
    assert len({r[4] for r in report.values()}) == 3  # three processes at once


@pytest.mark.timeout(60)
def test_ctrl_c_stops_every_job() -> None:
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        pytest.skip("SIGINT is ignored in this process (and so in the demo): no Ctrl-C")
    seen = []
    with subprocess.Popen(
        [*DEMO, "--jobs", "2", "--steps", "1000000"], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=ENV,
    ) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # plain output: each job prints every 100,000 steps
                seen.append(line)
                if "jobs queued" in line:
                    break
            # Right after the jobs were queued: they may still be queued or starting.
            proc.send_signal(signal.SIGINT)
            rest, _ = proc.communicate(timeout=40)
        finally:
            if proc.poll() is None:
                proc.kill()
    out = "".join(seen) + rest
    assert proc.returncode == 0, out
    report = rows(out)
    assert sorted(report) == ["0", "1"], out
    assert all(r[0].startswith("cancelled") for r in report.values()), out
    assert "Stop: cancelling" in out
