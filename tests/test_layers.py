"""The layering rules of docs/design.md, checked on the source (no processes).

Every module of the package belongs to one layer (:data:`LAYERS`); a layer may import only
the layers :data:`MAY_IMPORT` names. Imports are read from the source (``ast``): at
module level, inside functions (lazy imports) and under ``if TYPE_CHECKING:`` (types
only). The rules apply to all three; the cycle check to the first two, which run.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pathlib
import pickle
import re
import sys
import typing

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "src" / "workstream"
ROOT = PKG.parents[1]

LAYERS: dict[str, tuple[str, ...]] = {
    # layer: its modules (a name ending in "." is a package: it and everything in it)
    "command": ("workstream.__main__",),
    "demo": ("workstream.demo.",),
    "bridges": ("workstream.qt", "workstream.tk", "workstream._pacing", "workstream._qt_compat"),
    "public": ("workstream",),
    "worker": ("workstream._worker", "workstream._pool"),
    "api": ("workstream._api", "workstream._checks", "workstream._jobview"),
    "aio": ("workstream._aio",),
    "supervisor": ("workstream._supervisor.",),
    "child": ("workstream._child.",),
    "transport": ("workstream._transport.",),
    "core": ("workstream._core.",),
    "leaves": ("workstream._errors", "workstream._outcomes", "workstream._options",
               "workstream._linux"),
}
"""Every module's layer, top to bottom. A new module needs a line here (and in the maps
of docs/design.md and ``workstream/__init__.py``)."""

_BOTTOM = {"core", "leaves"}
MAY_IMPORT: dict[str, set[str]] = {
    "command": {"demo", "public"},
    "demo": {"demo", "public", "workstream.qt"},  # the public API only (and the Qt bridge)
    "bridges": {"bridges", "public"},
    "public": {"worker", "api", "child"} | _BOTTOM,
    "worker": {"worker", "api", "supervisor", "child"} | _BOTTOM,  # _pool: JOB_OPTIONS
    "api": {"api", "aio", "supervisor", "child", "transport"} | _BOTTOM,
    "aio": {"api"} | _BOTTOM,
    "supervisor": {"supervisor", "child", "transport"} | _BOTTOM,  # _child._runtime: mp target
    "child": {"child", "transport"} | _BOTTOM,
    "transport": {"transport"},
    "core": {"core", "workstream._errors", "workstream._outcomes", "workstream._options"},
    "leaves": _BOTTOM,  # _outcomes may re-export the job states from _core
}
"""Which layers (or single modules) each layer may import."""

CORE_MAY_NOT_IMPORT = frozenset({
    "os", "signal", "select", "selectors", "threading", "_thread", "subprocess",
    "multiprocessing", "concurrent", "asyncio", "mmap", "socket", "fcntl", "ctypes", "time",
})
"""The core is pure: no I/O, no processes or threads, no clock (time comes in as an
argument). It may import the rest of the standard library."""

TOOLKITS = frozenset({"PySide6", "PyQt6", "tkinter", "rich", "numpy"})
"""Imported only by the GUI bridges and the demo (and numpy lazily by the array support,
which is in neither): ``import workstream`` never imports a toolkit."""
TOOLKIT_USERS = {"bridges", "demo"}
_NUMPY_LAZY_OK = {"workstream._child._arrays", "workstream._supervisor._arrays"}


@dataclasses.dataclass(frozen=True)
class Import:
    target: str
    """The module imported: ``workstream.x.y``, or a third-party / stdlib top-level name."""
    kind: str
    """"runtime" (module level), "lazy" (in a function) or "typing" (TYPE_CHECKING)."""
    line: int


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = ["workstream", *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str) -> list[Import]:
    """Every import in module ``name``, resolved to the module it loads."""
    path = MODULES[name]
    return parse_imports(path.read_text(), name, is_package=path.name == "__init__.py")


def parse_imports(source: str, name: str, *, is_package: bool = False) -> list[Import]:
    """Every import in ``source``, the text of module ``name``, resolved to the module it
    loads (one of ours when it names one)."""
    package = name if is_package else name.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str, kind: str, line: int) -> None:
        if not target.startswith("workstream"):
            target = target.split(".")[0]
        found.append(Import(target, kind, line))

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, "typing")
                for stmt in child.orelse:
                    visit_stmt(stmt, kind)
            else:
                visit_stmt(child, kind)

    def visit_stmt(node: ast.AST, kind: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inner = "typing" if kind == "typing" else "lazy"
            visit(node, inner)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, kind, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                add(sub if sub in MODULES else module, kind, node.lineno)
        visit(node, kind)

    visit(ast.parse(source, name), "runtime")
    return found


def layer_of(name: str) -> str | None:
    for layer, members in LAYERS.items():
        for member in members:
            if name == member or (member.endswith(".") and (
                    name.startswith(member) or name == member[:-1])):
                return layer
    return None


def _allowed(importer_layer: str, target: str) -> bool:
    rules = MAY_IMPORT[importer_layer]
    return target in rules or layer_of(target) in rules


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_has_a_layer_and_keeps_to_it(name: str) -> None:
    """Each module has a rule, and imports only the layers below it (as the rule says)."""
    layer = layer_of(name)
    assert layer is not None, f"{name} has no layer: add it to LAYERS (and the layer maps)"
    bad = [i for i in imports_of(name) if i.target.startswith("workstream")
           and i.target != name and not _allowed(layer, i.target)]
    assert not bad, f"{name} ({layer}) may not import: {bad}"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", sorted(MODULES))
def test_toolkits_only_in_the_bridges_and_the_demo(name: str) -> None:
    """``import workstream`` never imports Qt, Tk, rich or numpy: only the GUI bridges
    and the demo do (and the array support, lazily, numpy)."""
    if layer_of(name) in TOOLKIT_USERS:
        return
    bad = [i for i in imports_of(name) if i.target in TOOLKITS and not (
        i.target == "numpy" and i.kind != "runtime" and name in _NUMPY_LAZY_OK)]
    assert not bad, f"{name} imports {bad}"


def core_violations(imports: list[Import]) -> list[Import]:
    """The imports a core module may not make: outside the standard library, or I/O,
    threads and the clock."""
    return [i for i in imports if not i.target.startswith("workstream") and (
        i.target in CORE_MAY_NOT_IMPORT or i.target not in sys.stdlib_module_names)]


@pytest.mark.timeout(10)
def test_the_core_does_no_io() -> None:
    """The core imports only the standard library, minus I/O, threads and the clock."""
    for name in (n for n in MODULES if layer_of(n) == "core"):
        bad = core_violations(imports_of(name))
        assert not bad, f"{name} imports {bad}"
    probe = [Import(t, "lazy", 1) for t in ("time", "os", "numpy", "enum", "workstream._errors")]
    assert [i.target for i in core_violations(probe)] == ["time", "os", "numpy"]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or with a self-loop
    (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports when it runs (at import or lazily)."""
    return {name: {i.target for i in imports_of(name)
                   if i.target in MODULES and i.target != name and i.kind != "typing"}
            for name in MODULES}


@pytest.mark.timeout(10)
def test_no_import_cycle() -> None:
    """No module reaches itself through imports, lazy (function-level) ones included."""
    assert _cycles(import_graph()) == []


@pytest.mark.timeout(10)
def test_the_cycle_check_finds_a_lazy_cycle() -> None:
    """The check itself: a cycle closed by a lazy import is found, a type-only one is not."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    graph["workstream._errors"] = {"workstream._api"}  # as if _errors imported _api lazily
    assert any("workstream._api" in c and "workstream._errors" in c for c in _cycles(graph))


_SAMPLE = """
import os
from typing import TYPE_CHECKING
from .. import _errors, Job
from .._supervisor import _runner
from ._ladder import Ladder

if TYPE_CHECKING:
    from .._api import Job as _Job

def later():
    from .. import _aio
    import numpy
"""


@pytest.mark.timeout(10)
def test_imports_are_resolved_and_told_apart() -> None:
    """The parser resolves relative imports to our modules (a name that is not a module
    counts as its package) and tells module-level, lazy and type-only imports apart."""
    seen = {(i.target, i.kind) for i in parse_imports(_SAMPLE, "workstream._core._probe")}
    assert seen == {
        ("os", "runtime"), ("typing", "runtime"), ("workstream._errors", "runtime"),
        ("workstream", "runtime"), ("workstream._supervisor._runner", "runtime"),
        ("workstream._core._ladder", "runtime"), ("workstream._api", "typing"),
        ("workstream._aio", "lazy"), ("numpy", "lazy"),
    }
    in_init = {i.target for i in parse_imports("from . import Job, _api", "workstream",
                                                is_package=True)}
    assert in_init == {"workstream", "workstream._api"}


def _top_level_entries() -> set[str]:
    """The package's top-level modules and subpackages, as the maps name them."""
    return {p.stem if p.is_file() else p.name for p in PKG.iterdir()
            if (p.suffix == ".py" and p.name != "__init__.py")
            or (p.is_dir() and (p / "__init__.py").exists())}


def _design_layers() -> str:
    text = (ROOT / "docs" / "design.md").read_text()
    section = text.split("## Layers\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


@pytest.mark.timeout(10)
def test_the_layer_maps_name_every_module() -> None:
    """docs/design.md's Layers map and ``workstream/__init__.py``'s name every top-level
    module and subpackage."""
    import workstream

    maps = {"docs/design.md": _design_layers(), "workstream/__init__.py": workstream.__doc__}
    for where, text in maps.items():
        assert text is not None
        words = set(re.findall(r"[\w]+", text))
        missing = _top_level_entries() - words
        assert not missing, f"{where}'s layer map does not name {sorted(missing)}"


@pytest.mark.timeout(10)
def test_the_design_map_names_every_module_of_a_subpackage() -> None:
    """docs/design.md's Layers map has a line for every module of ``_supervisor``,
    ``_child``, ``_transport``, ``_core`` and ``demo`` (``name.py``), and none that is gone."""
    text = _design_layers()
    listed = set(re.findall(r"^ +(\w+)\.py ", text, re.MULTILINE))
    subpackages = [p for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    files = {p.stem for d in subpackages for p in d.glob("*.py") if p.name != "__init__.py"}
    assert sorted(files - listed) == [], "docs/design.md's Layers map lacks these modules"
    assert sorted(listed - files) == [], "docs/design.md's Layers map names modules now gone"


@pytest.mark.timeout(10)
def test_the_layer_maps_list_the_layers_in_the_same_order() -> None:
    """The two maps tell the same story: the top-level entries come in the same order
    (read from their first column)."""
    import workstream

    def order(text: str) -> list[str]:
        """The entries named in the map's first column, in order."""
        entries = _top_level_entries() | {"workstream"}
        seen: list[str] = []
        for line in text.splitlines():
            for word in re.findall(r"\w+", line.strip().split("  ")[0]):
                if word in entries and word not in seen:
                    seen.append(word)
        return seen

    assert workstream.__doc__ is not None
    init_map = workstream.__doc__.split("::", 1)[1]
    assert order(_design_layers()) == order(init_map)


@pytest.mark.timeout(10)
def test_public_names_are_exported() -> None:
    """Everything in __all__ exists, and the contract names are there."""
    import workstream

    for name in workstream.__all__:
        assert hasattr(workstream, name), name
    for name in ("start", "Job", "emit", "cancelled", "check_cancelled", "Cancelled",
                 "WorkerError", "WorkerCrashed", "describe_exit"):
        assert name in workstream.__all__


@pytest.mark.timeout(10)
def test_public_classes_show_their_public_module() -> None:
    """``workstream.Job``, not ``workstream._api.Job``: every public class and function
    names the module users import it from; type hints and pickles still work."""
    import workstream

    checked = 0
    for name in workstream.__all__:
        obj = getattr(workstream, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == "workstream", f"{name}: {obj.__module__}"
            checked += 1
        if inspect.isclass(obj):
            typing.get_type_hints(obj)  # resolvable although the module changed
            assert pickle.loads(pickle.dumps(obj)) is obj
    assert checked >= 20
    assert repr(workstream.Job) == "<class 'workstream.Job'>"
    assert pickle.loads(pickle.dumps(workstream.JobState.RUNNING)) is workstream.JobState.RUNNING
    outcome = workstream.Completed(pid=1, items_delivered=0, exit_code=0, duration=0.0, value=3)
    assert pickle.loads(pickle.dumps(outcome)) == outcome


@pytest.mark.timeout(10)
def test_the_demo_modules_import_only_those_below_them() -> None:
    """``workstream.demo``'s map is true: each module imports only modules listed below it
    (lazy imports included), and every module of the demo is listed."""
    import workstream.demo

    doc = workstream.demo.__doc__
    assert doc is not None
    listed = [f"workstream.demo.{m}" for m in re.findall(r"^\s+(\w+)\.py\s", doc, re.MULTILINE)]
    assert sorted(listed) == sorted(n for n in MODULES if n.startswith("workstream.demo."))
    for position, name in enumerate(listed):
        above = set(listed[: position + 1])
        bad = {i.target for i in imports_of(name) if i.target in above and i.target != name}
        assert not bad, f"{name} imports {bad}, listed above it"
