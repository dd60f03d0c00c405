"""issue 9 §7: in a Jupyter kernel, where every cell runs on an asyncio loop, waiting for
a job blocks the cell as in a script (``for item in job``, ``wait()``, ``result()``),
the ``await`` forms keep working, and an interrupt during iteration cancels the job.
Runs ``examples/notebook.ipynb`` on a real kernel (nbclient + ipykernel)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest

import workstream

nbclient = pytest.importorskip("nbclient", reason="needs nbclient (the 'test' extra)")
nbformat = pytest.importorskip("nbformat", reason="needs nbformat (with nbclient)")
pytest.importorskip("ipykernel", reason="needs ipykernel (the 'test' extra)")

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "examples" / "notebook.ipynb"


def _text(cell: Any) -> str:
    outputs = cell.get("outputs", [])
    return "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")


def _errors(cell: Any) -> list[str]:
    return [o["ename"] for o in cell.get("outputs", []) if o["output_type"] == "error"]


_RUNNER = """\
import sys
import nbclient
import nbformat

nb = nbformat.read(sys.argv[1], as_version=4)
nbclient.NotebookClient(nb, timeout=60, kernel_name="python3").execute()
nbformat.write(nb, sys.argv[2])
"""


@pytest.mark.timeout(120)
def test_example_notebook_runs_on_a_real_kernel(tmp_path: Any) -> None:
    """Every cell of the example notebook runs: items, wait(), result(), await forms,
    a lambda with a closure, and an interrupt (SIGINT, as Jupyter's button sends) during
    iteration that leaves the job cancelled and its process gone."""
    # The kernel imports the workstream under test (this checkout's, not another one).
    # nbclient runs in a process of its own: its zmq context outlives the run.
    src = str(pathlib.Path(workstream.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (src, os.environ.get("PYTHONPATH", "")) if p
    )}
    out = tmp_path / "executed.ipynb"
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(NOTEBOOK), str(out)],
        env=env, capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 0, proc.stderr
    nb = nbformat.read(out, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [_errors(c) for c in code] == [[], [], [], [], [], ["KeyboardInterrupt"], []]
    texts = [_text(c) for c in code]
    assert texts[1] == "".join(
        f"{{'epoch': {e}, 'loss': {round(1.0 / (e + 1), 3)}}}\n" for e in range(5)
    ) + "model.pt\n"
    assert texts[2].startswith("completed 3\n[{'epoch': 0,")
    assert texts[3].endswith("completed model.pt\n")
    assert texts[4] == "[100, 101, 104, 109]\n"
    assert texts[5].startswith("{'epoch': 0, 'loss': 1.0}")
    assert texts[6] == "cancelled cooperative\n"
