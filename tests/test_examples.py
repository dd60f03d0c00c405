"""examples/seed_qt.py and examples/seed_tk.py run as a user runs them, headless: each
presses Start, presses Stop after a moment, and exits 0 having received every item."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest

from gui_support import jobs_unregistered, xvfb_display  # noqa: F401 (autouse fixture)

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
SEED_LINES = 68  # the seed's Worker + Listener + System program, with no window at all
REPORT = re.compile(r"^cancelled: (\d+) of (\d+) items$", re.MULTILINE)


def run_example(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--stop-after", "0.5"],
        capture_output=True, text=True, env=env, timeout=50, cwd=EXAMPLES,
    )


def check_report(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = REPORT.search(proc.stdout)
    assert match, proc.stdout + proc.stderr
    received, sent = int(match[1]), int(match[2])
    assert received == sent > 0, proc.stdout


@pytest.mark.timeout(60)
def test_seed_qt_runs_headless_and_stops_cleanly() -> None:
    pytest.importorskip("PySide6.QtWidgets")  # the error says why
    check_report(run_example("seed_qt.py", {**os.environ, "QT_QPA_PLATFORM": "offscreen"}))


@pytest.fixture(scope="module")
def display() -> Any:
    with xvfb_display() as name:
        yield name


@pytest.mark.timeout(60)
def test_seed_tk_runs_under_xvfb_and_stops_cleanly(display: str) -> None:
    check_report(run_example("seed_tk.py", {**os.environ, "DISPLAY": display}))


@pytest.mark.parametrize("name", ["seed_qt.py", "seed_tk.py"])
def test_examples_are_shorter_than_the_seed(name: str) -> None:
    """The README's claim: the port, window included, is shorter than the seed."""
    assert len((EXAMPLES / name).read_text().splitlines()) < SEED_LINES


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["seed_qt.py", "seed_tk.py"])
def test_examples_say_their_options_on_help(name: str) -> None:
    """Regression: ``--help`` was ignored and opened a window that never closed by itself."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--help"], capture_output=True,
                          text=True, timeout=30, env={**os.environ, "QT_QPA_PLATFORM": "offscreen",
                                                      "DISPLAY": ":nothing"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {name} [-h] [--stop-after SECONDS]"), proc.stdout
