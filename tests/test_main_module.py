"""Functions defined in ``__main__``, lambdas and closures travel to the worker (by
cloudpickle), and remote tracebacks of such functions name the script's file and line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

SCRIPT = textwrap.dedent(
    '''\
    import json
    import sys

    import workstream


    def gen(n):
        for i in range(n):
            yield i * 10
        return "gen-done"


    def make_closure(offset):
        def closure(n):
            for i in range(n):
                workstream.emit(i + offset)
            return offset
        return closure


    def fail():
        raise ValueError("from main")  # marker: fail


    def failure(job):
        outcome = job.wait(timeout=30)
        err = outcome.error
        return [type(outcome).__name__, err.type_name, err.message, err.remote_traceback]


    if __name__ == "__main__":
        method = sys.argv[1]
        out = {}
        job = workstream.start(gen, 3, start_method=method)
        out["gen"] = [list(job), job.result(timeout=30)]
        job = workstream.start(lambda a, b: a * b, 6, 7, start_method=method)
        out["lambda"] = job.result(timeout=30)
        job = workstream.start(make_closure(100), 3, start_method=method)
        out["closure"] = [list(job), job.result(timeout=30)]
        out["fail"] = failure(workstream.start(fail, start_method=method))
        divide = lambda: 1 / 0  # marker: lambda
        out["lambda-fail"] = failure(workstream.start(divide, start_method=method))
        print(json.dumps(out))
    '''
)


def _line(marker: str) -> int:
    for number, line in enumerate(SCRIPT.splitlines(), 1):
        if line.endswith(f"# marker: {marker}"):
            return number
    raise LookupError(marker)


def _run_script(tmp_path: Any, method: str) -> dict[str, Any]:
    script = tmp_path / "main_script.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), method],
        capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "method",
    [
        "forkserver",
        "spawn",
        pytest.param("fork", marks=pytest.mark.filterwarnings("ignore::DeprecationWarning")),
    ],
)
def test_main_module_functions_lambdas_and_closures(tmp_path: Any, method: str) -> None:
    """A script's __main__ generator, a lambda and a closure run in the worker, and the
    remote tracebacks of failing __main__ functions name the script file and line."""
    out = _run_script(tmp_path, method)
    script = str(tmp_path / "main_script.py")
    assert out["gen"] == [[0, 10, 20], "gen-done"]
    assert out["lambda"] == 42
    assert out["closure"] == [[100, 101, 102], 100]
    kind, type_name, message, tb = out["fail"]
    assert [kind, type_name, message] == ["Failed", "ValueError", "from main"]
    assert f'File "{script}", line {_line("fail")}, in fail' in tb
    assert 'raise ValueError("from main")' in tb
    assert "<dynamic-code>" not in tb
    kind, type_name, message, tb = out["lambda-fail"]
    assert [kind, type_name, message] == ["Failed", "ZeroDivisionError", "division by zero"]
    assert f'File "{script}", line {_line("lambda")}, in <lambda>' in tb
    assert "1 / 0" in tb
    assert "<dynamic-code>" not in tb
