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


def test_every_script_snippet_has_the_main_guard() -> None:
    """Regression: the "Large arrays" snippet started its job at module level, so pasted
    into a script it printed nothing (spawn re-imports the main module). Every snippet that
    starts a job outside a function, except those meant for a notebook cell, is guarded."""
    text = README.read_text()
    unguarded = []
    for block in text.split("```python\n")[1:]:
        code = block.split("```", 1)[0]
        starts_at_top = any(line.startswith(("for ", "with ", "job = "))
                            and "workstream.start(" in line for line in code.splitlines())
        if starts_at_top and "# in a cell" not in code:
            unguarded.append(code)
    assert unguarded == []
