"""The layering rules of docs/design.md, checked on the source (no processes)."""

from __future__ import annotations

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "src" / "workstream"

LEAVES = {"_errors", "_outcomes", "_options", "_linux"}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    return ".".join(rel.parts)


def _internal_imports(path: pathlib.Path) -> set[str]:
    """Names of workstream modules imported by ``path``, as dotted paths under the package."""
    tree = ast.parse(path.read_text())
    here = _module_name(path).split(".")
    package = here[:-1]  # for __init__.py, "pkg.__init__" minus the last part is pkg
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = [*base, *(node.module.split(".") if node.module else [])]
                if node.module:
                    found.add(".".join(target))
                else:
                    found.update(".".join([*target, a.name]) for a in node.names)
            elif node.module and node.module.startswith("workstream"):
                found.add(node.module.removeprefix("workstream").lstrip("."))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("workstream"):
                    found.add(alias.name.removeprefix("workstream").lstrip("."))
    return {f for f in found if f}


def _modules() -> list[pathlib.Path]:
    return sorted(PKG.rglob("*.py"))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("path", _modules(), ids=lambda p: _module_name(p))
def test_layer_rules(path: pathlib.Path) -> None:
    """Each module imports only the layers below it."""
    name = _module_name(path)
    imports = _internal_imports(path)
    top = name.split(".")[0]
    if top == "_transport":
        assert all(i.startswith("_transport") for i in imports), imports
    elif top in LEAVES:
        assert all(i.split(".")[0] in LEAVES for i in imports), imports
    elif top == "_child":
        bad = {i for i in imports if i.split(".")[0] in {"_supervisor", "_api", "_cli"}}
        assert not bad, f"{name} (child side) imports {bad}"
    elif top == "_supervisor":
        bad = {i for i in imports if i.split(".")[0] in {"_api", "_cli"}}
        assert not bad, f"{name} imports {bad}"
    elif top == "_aio":
        bad = {i for i in imports if i.split(".")[0] not in LEAVES | {"_api"}}
        assert not bad, f"{name} imports {bad}"
    elif top in {"_cli", "_demo", "__main__"}:
        ok = {"_cli", "_demo", "_gui_demo"}  # _cli imports _gui_demo only for --gui
        bad = {i for i in imports if i.split(".")[0].startswith("_") and i not in ok}
        assert not bad, f"{name} should use the public API only, imports {bad}"
    elif top in {"qt", "tk", "_qt_compat", "_pacing", "_gui_demo"}:  # GUI integrations, demo
        allowed = {"_qt_compat", "_pacing"}
        if top == "_gui_demo":
            allowed |= {"qt", "_cli", "_demo"}
        bad = {i for i in imports if i.split(".")[0].startswith("_") and i not in allowed}
        assert not bad, f"{name} should use the public API only, imports {bad}"


@pytest.mark.timeout(10)
def test_public_names_are_exported() -> None:
    """Everything in __all__ exists, and the contract names are there."""
    import workstream

    for name in workstream.__all__:
        assert hasattr(workstream, name), name
    for name in ("start", "Job", "emit", "cancelled", "check_cancelled", "Cancelled",
                 "WorkerError", "WorkerCrashed"):
        assert name in workstream.__all__
