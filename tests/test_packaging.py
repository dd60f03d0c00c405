"""The install story: what the sdist and wheel hold, and what ./dev installs for what.

CI (.ci/run) also builds both, installs the wheel into a fresh venv outside the checkout
and runs the README's first example from it; these tests check the parts that need no
network: the checker CI relies on, a wheel built here, and ./dev's choice of extras
(with a stand-in interpreter that records what it is asked to do).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile
from types import ModuleType

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _check_dist() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_dist", ROOT / ".ci" / "check_dist.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_available() -> bool:
    if importlib.util.find_spec("build") is None:
        return False
    import setuptools

    return int(setuptools.__version__.split(".")[0]) >= 77


@pytest.mark.timeout(120)
@pytest.mark.skipif(not _build_available(), reason="needs `build` and setuptools>=77")
def test_built_wheel_and_sdist_hold_what_they_should(tmp_path: pathlib.Path) -> None:
    """A wheel holds the package with py.typed and no tests; the sdist can run the suite."""
    tree = tmp_path / "tree"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "__pycache__", "*.egg-info", "build", "dist", ".*_cache",
        ".hypothesis", "results",
    ))
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"),
         str(tree)],
        capture_output=True, text=True, timeout=110,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _check_dist().check_dist_dir(tmp_path / "dist") == []


def test_check_dist_rejects_tests_in_the_wheel(tmp_path: pathlib.Path) -> None:
    """The checker CI relies on can fail: tests, stray files, no py.typed, no metadata."""
    wheel = tmp_path / "workstream-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        whl.writestr("workstream/__init__.py", "")
        whl.writestr("workstream/tests/test_api.py", "")
        whl.writestr("tests/conftest.py", "")
        whl.writestr("workstream-0.1.0.dist-info/METADATA",
                     "Metadata-Version: 2.4\nName: workstream\nVersion: 0.1.0\n\n")
    problems = "\n".join(_check_dist().wheel_problems(wheel))
    assert "test file in the wheel: workstream/tests/test_api.py" in problems
    assert "unexpected file outside the package: tests/conftest.py" in problems
    assert "missing from the wheel: workstream/py.typed" in problems
    assert "cloudpickle is not a runtime dependency" in problems
    assert "extra 'demo' is not provided" in problems
    assert "the `workstream` command is not declared" in problems


def test_readme_example_for_ci_is_the_first_screens_example() -> None:
    """CI runs the README's first python block and expects its last line's comment."""
    code = _check_dist().readme_example(ROOT / "README.md")
    readme = (ROOT / "README.md").read_text()
    assert readme.index(code) < readme.index("\n## ")  # on the first screen
    last = [line for line in code.splitlines() if line.strip()][-1]
    assert last.strip().startswith("print(") and "#" in last, last


# -- ./dev, with a stand-in interpreter ------------------------------------------------

FAKE_PYTHON = """#!/usr/bin/env bash
# Records each call; `-m venv [--clear] DIR` makes DIR/bin/python a copy of this script.
echo "$*" >> "$FAKE_LOG"
if [ "$1 $2" = "-m venv" ]; then mkdir -p "${@: -1}/bin" && cp "$0" "${@: -1}/bin/python"; fi
exit 0
"""

HALF_MADE_PYTHON = """#!/usr/bin/env bash
# The python of a venv whose creation was interrupted: it has no pip.
echo "$*" >> "$FAKE_LOG"
if [ "$1 $2" = "-m pip" ]; then echo "No module named pip" >&2; exit 1; fi
exit 0
"""


class Dev:
    """``./dev`` copied with pyproject.toml into a folder, run with a recording python."""

    def __init__(self, tmp_path: pathlib.Path) -> None:
        self.root = tmp_path / "checkout"
        self.root.mkdir()
        shutil.copy2(ROOT / "dev", self.root / "dev")
        shutil.copy2(ROOT / "pyproject.toml", self.root / "pyproject.toml")
        self.python = tmp_path / "python"
        self.python.write_text(FAKE_PYTHON)
        self.python.chmod(0o755)
        self.venv = tmp_path / "venv"
        self.log = tmp_path / "calls.log"

    def run(self, *args: str) -> tuple[str, list[str]]:
        """Run ./dev ARGS; return its output and the interpreter calls it made."""
        self.log.write_text("")
        env = {**os.environ, "PYTHON": str(self.python), "VENV": str(self.venv),
               "FAKE_LOG": str(self.log), "DEV_NO_SYSTEM_PACKAGES": "1"}
        done = subprocess.run(["bash", str(self.root / "dev"), *args], env=env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout, self.log.read_text().splitlines()

    def installs(self, calls: list[str]) -> list[str]:
        """The extras of each `pip install -e .[...]` among ``calls``."""
        return [c.split("-e .[", 1)[1].rstrip("]") for c in calls if "-m pip install" in c]


def test_dev_demo_installs_only_the_demo_extra_then_test_adds_the_rest(
    tmp_path: pathlib.Path,
) -> None:
    """./dev demo: the package and `demo`, announced; ./dev test then installs the rest."""
    dev = Dev(tmp_path)
    out, calls = dev.run("demo", "--stop-after", "1")
    assert f"-m venv {dev.venv}" in calls
    assert dev.installs(calls) == ["demo"]
    assert calls[-1] == "-m workstream demo --stop-after 1"
    assert "== creating the virtual environment" in out
    assert "== installing workstream (editable) with .[demo]" in out
    assert "numpy, rich" in out  # what it downloads, and about how long it takes

    out, calls = dev.run("demo")
    assert dev.installs(calls) == [] and out == ""  # installed: straight to the demo

    _, calls = dev.run("test", "-q")
    assert dev.installs(calls) == ["test,dev,gui-test,qt"]
    assert calls[-1] == "-m pytest -q"
    assert (dev.venv / ".installed").exists()

    _, calls = dev.run("demo", "--gui")  # qt came with the test set
    assert dev.installs(calls) == []


def test_dev_reinstalls_when_pyproject_changes(tmp_path: pathlib.Path) -> None:
    """A marker older than pyproject.toml counts as missing (extras or entry points changed)."""
    dev = Dev(tmp_path)
    dev.run("demo")
    later = (dev.venv / ".installed-demo").stat().st_mtime + 10
    os.utime(dev.root / "pyproject.toml", (later, later))
    _, calls = dev.run("demo", "--gui")
    assert dev.installs(calls) == ["demo,qt"]


def test_dev_treats_an_older_full_install_as_complete(tmp_path: pathlib.Path) -> None:
    """A venv made before the per-extra markers (only `.installed`) installs nothing more."""
    dev = Dev(tmp_path)
    dev.run("demo")
    (dev.venv / ".installed-demo").unlink()
    (dev.venv / ".installed").touch()
    for args in (("demo", "--gui"), ("test",)):
        _, calls = dev.run(*args)
        assert dev.installs(calls) == [], args


def test_dev_remakes_a_venv_whose_creation_was_interrupted(tmp_path: pathlib.Path) -> None:
    """Regression: Ctrl-C during `python -m venv` left a venv without pip, and every later
    `./dev demo` failed "No module named pip"; ./dev now makes it again, then installs."""
    dev = Dev(tmp_path)
    (dev.venv / "bin").mkdir(parents=True)
    half_made = dev.venv / "bin" / "python"
    half_made.write_text(HALF_MADE_PYTHON)
    half_made.chmod(0o755)
    out, calls = dev.run("demo")
    assert "has no pip (its creation was interrupted?): making it again" in out
    assert f"-m venv --clear {dev.venv}" in calls
    assert dev.installs(calls) == ["demo"]
    assert half_made.read_text() == FAKE_PYTHON  # the stand-in of a complete venv

    out, calls = dev.run("demo")
    assert dev.installs(calls) == [] and out == ""


def test_dev_says_what_the_qt_extra_downloads() -> None:
    """The size said before installing PySide6 is at least its wheel's (80 MB)."""
    text = (ROOT / "dev").read_text()
    qt_line = text.split("*,qt,*)", 1)[1].split(";;", 1)[0]
    size = int(qt_line.split("about ", 1)[1].split(" MB", 1)[0])
    assert size >= 80, qt_line
