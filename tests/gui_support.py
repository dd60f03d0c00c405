"""Fixtures and helpers shared by the GUI tests (Qt offscreen, Tk under Xvfb).

Import the fixtures into a test module by name (``from gui_support import ...``); they are
autouse where noted. Nothing here imports Qt or Tk at import time.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import wait_until
from workstream._supervisor import _registry


@pytest.fixture(autouse=True)
def jobs_unregistered() -> Iterator[None]:
    """After each test, give the runner threads of finished jobs the moment they need to
    leave the registry: a GUI thread hears ``finished`` before that last step, and the
    leak check would report a finished job as still running."""
    yield
    wait_until(lambda: not [j for j in _registry.live_jobs() if j.done()], 5,
               "finished jobs to leave the registry")


@pytest.fixture(scope="module", autouse=True)
def qt_ready(qapp: Any) -> None:
    """Create the QApplication and let Qt open its lazy resources (eventfds, fonts, the
    offscreen backing store) once, before the per-test leak check takes its snapshot."""
    from PySide6.QtWidgets import QApplication, QLabel, QWidget

    w = QWidget()
    QLabel("warm-up", w)
    w.show()
    QApplication.processEvents()
    w.grab()
    w.close()
    w.deleteLater()
    QApplication.processEvents()


XVFB_MISSING = ("Xvfb is not installed (Debian: apt-get install xvfb; .ci/run installs it "
                "when it runs as root): the Tk tests need an X display")


@contextlib.contextmanager
def xvfb_display(timeout: float = 20.0) -> Iterator[str]:
    """Start a private Xvfb; yield its display name (":N"); kill and reap it after.

    Xvfb picks a free display number itself (``-displayfd``), so parallel runs on one
    machine never collide. Skips the test if Xvfb is not installed; fails if it does not
    come up within ``timeout`` seconds.
    """
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip(XVFB_MISSING)
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(
            [exe, "-displayfd", str(w), "-screen", "0", "1024x768x24", "-nolisten", "tcp",
             "-noreset"],
            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    finally:
        os.close(w)
    try:
        with os.fdopen(r, "rb") as pipe:
            ready, _, _ = select.select([pipe], [], [], timeout)
            number = pipe.readline().strip().decode() if ready else ""
        if not number.isdigit():
            pytest.fail(f"Xvfb did not report a display within {timeout} s")
        yield f":{number}"
    finally:
        proc.kill()
        proc.wait(timeout=10)
