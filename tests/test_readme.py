"""The README's example, pasted into a file and run as a user would."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _first_python_block() -> str:
    text = README.read_text()
    start = text.index("```python\n") + len("```python\n")
    return text[start : text.index("```", start)]


@pytest.mark.timeout(60)
def test_readme_example_runs_and_cancels(tmp_path: pathlib.Path) -> None:
    """The 15-line example prints the first epochs, stops soon after the loss drops under
    0.2, and ends 'cancelled cooperative'."""
    script = tmp_path / "example.py"
    script.write_text(_first_python_block())
    assert len(script.read_text().splitlines()) <= 20
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=50
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "cancelled cooperative"
    epochs = [eval(line)["epoch"] for line in lines[:-1]]
    assert epochs == list(range(len(epochs)))
    assert 6 <= len(epochs) < 20
    assert done.stderr == ""
