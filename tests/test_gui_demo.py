"""``workstream demo --gui``: the Qt window, headless (QT_QPA_PLATFORM=offscreen).

End-to-end tests run ``python -m workstream demo --gui ...`` as a user would and read the
short report it prints after the window closed; in-process tests drive the window with
pytest-qt. ``test_clean_stop_saves_a_screenshot`` writes its screenshot into a temporary
folder; the committed docs/screenshots/gui_demo.png is made with the same command by hand
(``workstream demo --gui --stop-after 1.5 --screenshot docs/screenshots/gui_demo.png``).
"""

from __future__ import annotations

import os
import pathlib
import signal
import struct
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("numpy")
pytest.importorskip("PySide6.QtWidgets")  # the error says why: not installed, or a missing library

from gui_support import jobs_unregistered, qt_ready  # noqa: F401 (autouse fixtures)
from workstream import CancelledOutcome
from workstream.demo.gui import DemoWindow
from workstream.demo.settings import DemoSettings

DEMO = [sys.executable, "-m", "workstream", "demo", "--gui"]
ENV = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}


def run_gui(
    *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    proc = subprocess.run([*DEMO, *args], capture_output=True, text=True, env=env or ENV,
                          timeout=50)
    return proc, time.monotonic() - t0


def report(stdout: str) -> dict[str, str]:
    """The "label: value" lines printed after the window closed."""
    return dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)


def png_size(path: pathlib.Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.timeout(60)
def test_clean_stop_saves_a_screenshot(tmp_path: pathlib.Path) -> None:
    """--stop-after presses Stop, the window closes by itself, the screenshot is saved
    just before, the process exits 0 with the job cancelled at a yield and nothing left."""
    screenshot = tmp_path / "gui_demo.png"
    proc, wall = run_gui("--stop-after", "1.5", "--screenshot", str(screenshot))
    rows = report(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert rows["outcome"] == "cancelled", proc.stdout
    assert rows["stopped by"] == "--stop-after 1.5 s"
    assert float(rows["stop latency"].split(" ms")[0]) < 1000
    assert rows["how it stopped"].startswith("stopped at a yield "), proc.stdout
    assert int(rows["items received"]) > 0
    assert rows["processes left"].startswith("0 ")
    assert rows["screenshot"] == str(screenshot)
    width, height = png_size(screenshot)
    assert width >= 500 and height >= 400, (width, height)
    assert wall < 30


@pytest.mark.timeout(60)
def test_stop_takes_effect_within_the_grace_in_stuck_mode() -> None:
    """--stuck: the worker sits in a long C call; Stop still ends it by the grace (1 s)."""
    proc, wall = run_gui("--stuck", "--grace", "1", "--stop-after", "0.5")
    rows = report(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert rows["outcome"] == "cancelled"
    assert "SIGTERM" in rows["how it stopped"], proc.stdout
    assert float(rows["stop latency"].split(" ms")[0]) < 2500
    assert rows["processes left"].startswith("0 ")
    assert wall < 20


@pytest.mark.timeout(60)
def test_a_failing_worker_exits_1_and_shows_the_error() -> None:
    proc, _ = run_gui("--fail-at", "3", "--stop-after", "10")
    rows = report(proc.stdout)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert rows["outcome"] == "failed"
    assert "InjectedFailure" in rows["error"]
    assert rows["items received"] == "3"
    assert rows["processes left"].startswith("0 ")


@pytest.mark.timeout(60)
def test_ctrl_c_closes_the_window_and_stops_the_job() -> None:
    """SIGINT while training (Qt's loop running) closes the window; the job ends
    cancelled, the report says Ctrl-C, exit 0, nothing left."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # inherited: Python keeps it
        pytest.skip("SIGINT is ignored in this process (and so in the demo): no Ctrl-C")
    with subprocess.Popen([*DEMO, "--steps", "1000000"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=ENV) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert "is training" in first, first
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=40)
        finally:
            if proc.poll() is None:
                proc.kill()
    rows = report(out)
    assert proc.returncode == 0, out + err
    assert rows["outcome"] == "cancelled"
    assert rows["stopped by"] == "Ctrl-C"
    assert rows["processes left"].startswith("0 ")


@pytest.mark.timeout(60)
def test_no_display_gives_a_hint_not_an_abort() -> None:
    env = {k: v for k, v in ENV.items()
           if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    proc, _ = run_gui("--stop-after", "1", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "QT_QPA_PLATFORM=offscreen" in proc.stderr


@pytest.mark.timeout(60)
def test_missing_qt_says_how_to_install() -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["PySide6"] = None
        sys.modules["PyQt6"] = None
        from workstream.__main__ import main
        sys.exit(main(["demo", "--gui", "--stop-after", "1"]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=ENV, timeout=50)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'workstream[demo,qt]'" in proc.stderr


@pytest.mark.timeout(60)
def test_screenshot_without_gui_is_a_usage_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "workstream", "demo", "--screenshot", "x.png"],
                          capture_output=True, text=True, env=ENV, timeout=50)
    assert proc.returncode == 2
    assert "--screenshot needs --gui" in proc.stderr


# -- in process, driven by pytest-qt -----------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _demo_window_warm(request: pytest.FixtureRequest) -> None:
    """The first demo window makes Qt open two eventfds for good (once per process):
    open one before the leak check's first snapshot."""
    from PySide6.QtWidgets import QApplication

    request.getfixturevalue("qt_ready")
    win = DemoWindow(DemoSettings(steps=10), None)
    win.show()
    QApplication.processEvents()
    win.close()
    win.deleteLater()
    QApplication.processEvents()


def _window(qtbot: Any, **settings: Any) -> Any:
    win = DemoWindow(DemoSettings(steps=settings.pop("steps", 100_000), **settings), None)
    qtbot.addWidget(win)
    win.show()
    return win


@pytest.mark.timeout(60)
def test_closing_the_window_mid_run_cancels_the_job(qtbot: Any) -> None:
    """Closing the window while training returns at once; the job ends cancelled."""
    win = _window(qtbot)
    win.start_job()
    qtbot.waitUntil(lambda: win.items_received >= 5, timeout=30_000)
    job = win.qjob.job
    t0 = time.monotonic()
    win.close()
    assert time.monotonic() - t0 < 1.0
    outcome = job.wait(timeout=15)
    assert isinstance(outcome, CancelledOutcome), outcome


@pytest.mark.timeout(60)
def test_stop_then_kill_now_on_a_stuck_worker(qtbot: Any) -> None:
    """In --stuck mode with a 60 s grace, Stop asks and the button becomes "Kill now";
    pressing it kills the worker at once; Start can then run a new job."""
    win = _window(qtbot, steps=2000, stuck=True, grace=60.0)
    win.start_job()
    qtbot.waitUntil(lambda: "long C call" in win.status.text(), timeout=30_000)
    win.stop_button.click()
    assert win.stop_button.text() == "Kill now"
    assert "cancelling" in win.status.text()
    win.stop_button.click()
    with qtbot.waitSignal(win.qjob.finished, timeout=30_000) as blocker:
        pass
    outcome = blocker.args[0]
    assert isinstance(outcome, CancelledOutcome) and outcome.rung == "sigkill", outcome
    assert outcome.stop_latency is not None and outcome.stop_latency < 30
    assert "cancelled by Kill now: killed (SIGKILL) at Kill now, " in win.status.text()
    assert win.start_button.isEnabled() and not win.stop_button.isEnabled()
    win.settings = DemoSettings(steps=20)
    win.start_job()
    with qtbot.waitSignal(win.qjob.finished, timeout=30_000) as blocker:
        pass
    assert blocker.args[0].kind == "completed"
    assert win.items_received == 20
    assert win.progress.value() == 20


@pytest.mark.timeout(60)
def test_kill_now_is_disabled_as_soon_as_the_worker_is_gone(qtbot: Any) -> None:
    """Regression test for issue 9 §1: when the job's final state arrives (before the
    last items are drawn and ``finished``), the window already says "stopped" and "Kill
    now" is disabled; the full report follows with ``finished``."""
    win = _window(qtbot)
    win.start_job()
    qtbot.waitUntil(lambda: win.items_received >= 5, timeout=30_000)
    seen: list[tuple[bool, str]] = []

    def on_state(state: str) -> None:  # connected after the window's own slot: runs after
        if state == "cancelled":
            seen.append((win.stop_button.isEnabled(), win.status.text()))

    win.qjob.state_changed.connect(on_state)
    win.stop_button.click()
    assert win.stop_button.text() == "Kill now" and win.stop_button.isEnabled()
    with qtbot.waitSignal(win.qjob.finished, timeout=30_000):
        pass
    assert len(seen) == 1
    enabled, text = seen[0]
    assert not enabled, "Kill now still enabled once the worker was gone"
    assert text.startswith("stopped"), text
    assert win.status.text().startswith("cancelled by the Stop button"), win.status.text()
