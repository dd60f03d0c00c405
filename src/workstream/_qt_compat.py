"""Pick the Qt binding for :mod:`workstream.qt`: PySide6 (preferred) or PyQt6.

Only the few names the bridge and the GUI demo use are exported, under PySide6's spelling
(``Signal``, ``Slot``). The choice, in order: the ``QT_API`` environment variable
(``pyside6`` or ``pyqt6``, as qtpy and pytest-qt read it); a binding the application has
already imported; PySide6 if it can be imported; PyQt6. Imported only by ``workstream.qt``
and the GUI demo; must not be imported by the core.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

BINDINGS = ("PySide6", "PyQt6")
INSTALL_HINT = "pip install 'workstream[qt]'"


def _order() -> list[str]:
    """The bindings to try, best first (see the module docstring)."""
    wanted = os.environ.get("QT_API", "").strip().lower()
    chosen = next((n for n in BINDINGS if n.lower() == wanted), None) or next(
        (n for n in BINDINGS if n in sys.modules), None)
    if chosen is None:
        return list(BINDINGS)
    return [chosen, *(n for n in BINDINGS if n != chosen)]


@dataclass(frozen=True)
class Binding:
    """The chosen binding's modules, and its signal and slot factories."""

    name: str
    QtCore: ModuleType
    QtGui: ModuleType
    QtWidgets: ModuleType
    Signal: Any
    Slot: Any


def load() -> Binding:
    """Import a binding and return it.

    Raises ``ImportError`` naming both bindings and the install command if none imports.
    """
    errors = []
    for name in _order():
        try:
            core = importlib.import_module(f"{name}.QtCore")
            gui = importlib.import_module(f"{name}.QtGui")
            widgets = importlib.import_module(f"{name}.QtWidgets")
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        if name == "PyQt6":
            return Binding(name, core, gui, widgets, core.pyqtSignal, core.pyqtSlot)
        return Binding(name, core, gui, widgets, core.Signal, core.Slot)
    raise ImportError(
        "workstream.qt needs PySide6 (or PyQt6); none could be imported "
        f"({'; '.join(errors)}). Install it with:  {INSTALL_HINT}"
    )
