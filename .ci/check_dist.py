"""Check what `python -m build` made, and extract the README's first example.

    python .ci/check_dist.py DIST_DIR              check the one sdist and one wheel in DIST_DIR
    python .ci/check_dist.py --readme-example FILE print FILE's first ```python block

Standard library only: CI runs it with the interpreter that builds, outside any venv of
the project. tests/test_packaging.py imports it to check a wheel built from the working
tree. A check that finds a problem prints it and exits 1.
"""

from __future__ import annotations

import email.parser
import pathlib
import sys
import tarfile
import zipfile

PACKAGE = "workstream"
EXTRAS = ("qt", "demo")
"""Extras a user installs (the README's table); the wheel's metadata must provide them."""
SDIST_NEEDS = (
    "pyproject.toml", "README.md", "CHANGELOG.md", "MANIFEST.in", "dev",
    "src/workstream/py.typed", "src/workstream/__init__.py",
    "tests/conftest.py", "tests/workers.py", "bench/__main__.py",
)
"""Paths (relative to the sdist's top folder) without which the suite cannot run from it."""


def readme_example(readme: pathlib.Path) -> str:
    """Return the README's first ```python block (the example on its first screen)."""
    text = readme.read_text(encoding="utf-8")
    fence = "```python\n"
    begin = text.index(fence) + len(fence)
    return text[begin : text.index("```", begin)]


def wheel_problems(path: pathlib.Path) -> list[str]:
    """Return what is wrong with the wheel at ``path`` (empty: nothing).

    The wheel holds the package and its metadata only (no tests, benchmarks, caches),
    ships ``py.typed``, declares the ``workstream`` command, the runtime dependency
    and the user-facing extras.
    """
    problems = []
    with zipfile.ZipFile(path) as whl:
        names = whl.namelist()
        dist_info = next((n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA")),
                         None)
        if dist_info is None:
            return [f"{path.name}: no *.dist-info/METADATA"]
        metadata = email.parser.Parser().parsestr(
            whl.read(f"{dist_info}/METADATA").decode("utf-8")
        )
        entry_points = whl.read(f"{dist_info}/entry_points.txt").decode("utf-8") if (
            f"{dist_info}/entry_points.txt" in names) else ""
    for name in names:
        top = name.split("/")[0]
        if top not in (PACKAGE, dist_info):
            problems.append(f"unexpected file outside the package: {name}")
        elif "__pycache__" in name or name.endswith((".pyc", ".pyo")):
            problems.append(f"cache file in the wheel: {name}")
        elif "/tests/" in name or "/test_" in name or "conftest" in name:
            problems.append(f"test file in the wheel: {name}")
    for needed in (f"{PACKAGE}/__init__.py", f"{PACKAGE}/py.typed", f"{PACKAGE}/__main__.py",
                   f"{PACKAGE}/_child/__init__.py", f"{PACKAGE}/demo/__init__.py",
                   f"{PACKAGE}/demo/model.py"):
        if needed not in names:
            problems.append(f"missing from the wheel: {needed}")
    if metadata["Name"] != PACKAGE:
        problems.append(f"metadata Name is {metadata['Name']!r}, not {PACKAGE!r}")
    if not (metadata["Requires-Python"] or "").startswith(">=3.10"):
        problems.append(f"Requires-Python is {metadata['Requires-Python']!r}")
    requires = metadata.get_all("Requires-Dist") or []
    if not any(r.startswith("cloudpickle") and "extra ==" not in r for r in requires):
        problems.append(f"cloudpickle is not a runtime dependency: {requires}")
    extras = metadata.get_all("Provides-Extra") or []
    problems += [f"extra {e!r} is not provided" for e in EXTRAS if e not in extras]
    if "workstream = workstream.__main__:main" not in entry_points:
        problems.append("the `workstream` command is not declared in entry_points.txt")
    if metadata["Description-Content-Type"] != "text/markdown" or not str(
        metadata.get_payload()
    ).strip():
        problems.append("the long description (the README, as markdown) is missing")
    return problems


def sdist_problems(path: pathlib.Path) -> list[str]:
    """Return what is wrong with the sdist at ``path`` (empty: nothing): it must hold
    what running the test suite from it needs, and no caches."""
    with tarfile.open(path) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    problems = [f"missing from the sdist: {n}" for n in SDIST_NEEDS if n not in names]
    problems += [f"cache file in the sdist: {n}" for n in sorted(names)
                 if "__pycache__" in n or n.endswith(".pyc") or n.startswith(".venv")]
    return problems


def check_dist_dir(dist: pathlib.Path) -> list[str]:
    """Check the one wheel and the one sdist in ``dist``; return the problems."""
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        return [f"expected one wheel and one sdist in {dist}, found {wheels + sdists}"]
    return wheel_problems(wheels[0]) + sdist_problems(sdists[0])


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--readme-example":
        sys.stdout.write(readme_example(pathlib.Path(argv[1])))
        return 0
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    problems = check_dist_dir(pathlib.Path(argv[0]))
    for problem in problems:
        print(f"check_dist: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_dist: {', '.join(p.name for p in sorted(pathlib.Path(argv[0]).iterdir()))}"
              " look right")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
