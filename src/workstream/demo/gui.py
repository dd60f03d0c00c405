"""``workstream demo --gui``: the training demo in a Qt window.

A window with Start and Stop buttons, a live loss/accuracy curve (a small QPainter
widget), a progress bar (with steps/s and ETA from the worker's ``workstream.progress()``
reports) and a status line (running / cancelling / the outcome and the
stop latency). The worker is the terminal demo's (:func:`workstream.demo.model.train`),
bridged to the GUI thread by :class:`workstream.qt.QtJob`; the GUI thread never waits for
it.
Stop asks the worker to stop (grace from ``--grace``); pressed again it kills at once.
Closing the window cancels a running job and returns at once.

After the window closed it prints the demo's report (:mod:`workstream.demo.report`) as
``label: value`` lines. Headless: ``--stop-after S`` presses Stop S seconds after the
first step and closes the window when the job has ended; ``--screenshot PATH`` saves the
window as a PNG just before it closes (on a display, the screen's pixels; offscreen, Qt's
rendering); with ``QT_QPA_PLATFORM=offscreen`` no display is needed. Exit status as the
terminal demo: 0 after completion or a clean stop, 1 failed/crashed/left a process, 2
missing dependencies or no display.

Imported only when ``--gui`` is given (:mod:`workstream.demo.cli` turns an ImportError
here into an install hint). Imports only workstream's public API: Qt comes from the
binding :mod:`workstream.qt` chose (``workstream.qt.QT_BINDING``).
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from workstream import (
    CancelledOutcome,
    Completed,
    Crashed,
    Failed,
    Options,
    Outcome,
    Progress,
    describe_exit,
)
from workstream import progress as report_progress
from workstream.qt import QT_BINDING, QtJob

from . import model
from .report import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Received,
    StopPresses,
    describe_stop,
    exit_status,
    first_paragraph,
    leftover_processes,
    report_rows,
)
from .settings import DemoSettings

if TYPE_CHECKING:
    from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, qInstallMessageHandler
    from PySide6.QtGui import (
        QCloseEvent,
        QColor,
        QFont,
        QGuiApplication,
        QPainter,
        QPaintEvent,
        QPen,
        QPolygonF,
    )
    from PySide6.QtWidgets import (
        QApplication,
        QHBoxLayout,
        QLabel,
        QProgressBar,
        QPushButton,
        QVBoxLayout,
        QWidget,
    )
else:
    _QtCore, _QtGui, _QtWidgets = (importlib.import_module(f"{QT_BINDING}.{m}")
                                   for m in ("QtCore", "QtGui", "QtWidgets"))
    QPointF, QRectF, Qt, QTimer, qInstallMessageHandler = (
        getattr(_QtCore, n) for n in
        ("QPointF", "QRectF", "Qt", "QTimer", "qInstallMessageHandler"))
    QCloseEvent, QColor, QFont, QGuiApplication, QPainter, QPaintEvent, QPen, QPolygonF = (
        getattr(_QtGui, n) for n in
        ("QCloseEvent", "QColor", "QFont", "QGuiApplication", "QPainter", "QPaintEvent",
         "QPen", "QPolygonF"))
    QApplication, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget = (
        getattr(_QtWidgets, n) for n in
        ("QApplication", "QHBoxLayout", "QLabel", "QProgressBar", "QPushButton",
         "QVBoxLayout", "QWidget"))

ENDED_STATES = frozenset({"completed", "cancelled", "failed", "crashed"})
"""``state_changed`` values that mean the worker process is gone (reaped)."""
_AUTO_CLOSE_MS = 150  # after the job ended, with --stop-after: let the last frame paint
_BAR_FORMAT = "step %v of %m"  # then rate and ETA from the worker's progress reports


def run_gui_demo(settings: DemoSettings, screenshot: str | None = None) -> int:
    """Open the demo window, run its event loop, and return the exit status.

    Returns only once the window is closed and the job has ended (a job still running
    when the window closed was cancelled; its grace bounds the wait). Prints a short
    report on stdout: outcome, stop latency, processes left, the screenshot's path.
    """
    problem = _no_display()
    if problem is not None:
        print(problem, file=sys.stderr)
        return EXIT_USAGE
    previous = qInstallMessageHandler(_quiet_offscreen_notice)
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "workstream"])
    QApplication.setStyle("Fusion")
    window = DemoWindow(settings, screenshot)
    window.show()
    window.start_job()
    # Ctrl-C in the terminal closes the window (which cancels the job). Python runs signal
    # handlers only between bytecodes, so a slow timer gives it the chance in Qt's loop.
    old_sigint = signal.signal(signal.SIGINT, lambda *_: window.close_by("Ctrl-C"))
    heartbeat = QTimer()
    heartbeat.timeout.connect(lambda: None)
    heartbeat.start(200)
    try:
        app.exec()
    finally:
        heartbeat.stop()
        signal.signal(signal.SIGINT, old_sigint)
        qInstallMessageHandler(previous)
    outcome = window.wait_for_last_job(settings.grace + 5.0)
    if outcome is None:
        print("outcome: none (no job was started)")
        return EXIT_OK
    left = leftover_processes(outcome.pid)
    rows = report_rows(outcome, window.received, window.presses, left)
    rows.append(("display", _describe_display()))
    if screenshot is not None:
        rows.append(("screenshot", screenshot))
        if window.screenshot_source is not None:
            rows.append(("screenshot taken from", window.screenshot_source))
    for label, value in rows:
        print(f"{label}: {value}")
    return exit_status(outcome, left) if not window.screenshot_error else EXIT_FAILED


def _describe_display() -> str:
    """Qt's platform plugin, and the X display it uses under xcb ("xcb on :77")."""
    platform = QGuiApplication.platformName()
    if platform == "xcb":
        return f"xcb on {os.environ.get('DISPLAY', '?')}"
    return platform


def _quiet_offscreen_notice(mode: Any, context: Any, message: str) -> None:
    """Qt's message handler: drop the offscreen platform's notice about size hints (noise
    in every headless run), print the rest as Qt would."""
    if "does not support propagateSizeHints" not in message:
        print(message, file=sys.stderr)


def _no_display() -> str | None:
    """A message if Qt would find no display to open (it would abort), else None."""
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if not platform and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return ("workstream demo --gui: no display (DISPLAY is not set). Run it headless with "
                "QT_QPA_PLATFORM=offscreen, e.g.\n  QT_QPA_PLATFORM=offscreen workstream demo "
                "--gui --stop-after 1 --screenshot demo.png")
    return None


class LossPlot(QWidget):
    """The loss (left axis, log-free linear scale) and accuracy (right axis, 0-100 %)
    of every step received so far, drawn with QPainter."""

    def __init__(self, total_steps: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.total = total_steps
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.accuracies: list[float] = []
        self.setMinimumSize(560, 300)

    def clear(self, total_steps: int) -> None:
        self.total = total_steps
        self.steps, self.losses, self.accuracies = [], [], []
        self.update()

    def add(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            self.steps.append(item["step"])
            self.losses.append(item["loss"])
            self.accuracies.append(item["accuracy"])
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor("#ffffff"))
        left, top, right, bottom = 56.0, 28.0, 56.0, 36.0
        area = QRectF(left, top, self.width() - left - right, self.height() - top - bottom)
        top_loss = max(self.losses[:50], default=1.0) * 1.05 or 1.0
        grid = QPen(QColor("#e3e3e3"))
        p.setFont(QFont(p.font().family(), 8))
        for i in range(5):
            y = area.top() + area.height() * i / 4
            p.setPen(grid)
            p.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
            p.setPen(QColor("#1f5fbf"))
            p.drawText(QRectF(0, y - 8, left - 6, 16), Qt.AlignmentFlag.AlignRight
                       | Qt.AlignmentFlag.AlignVCenter, f"{top_loss * (4 - i) / 4:.2f}")
            p.setPen(QColor("#2e8b3a"))
            p.drawText(QRectF(area.right() + 6, y - 8, right, 16),
                       Qt.AlignmentFlag.AlignVCenter, f"{100 * (4 - i) / 4:.0f}%")
        p.setPen(QColor("#555555"))
        p.drawRect(area)
        for i in range(5):
            x = area.left() + area.width() * i / 4
            p.drawText(QRectF(x - 30, area.bottom() + 2, 60, 14), Qt.AlignmentFlag.AlignCenter,
                       f"{round(self.total * i / 4)}")
        p.drawText(QRectF(area.left(), area.bottom() + 16, area.width(), 16),
                   Qt.AlignmentFlag.AlignCenter, "training step")
        p.setPen(QColor("#1f5fbf"))
        p.drawText(QRectF(area.left(), 4, 200, 18), Qt.AlignmentFlag.AlignLeft,
                   "loss (cross-entropy)")
        p.setPen(QColor("#2e8b3a"))
        p.drawText(QRectF(area.right() - 200, 4, 200, 18), Qt.AlignmentFlag.AlignRight,
                   "accuracy")
        if self.steps:
            x_scale = area.width() / max(1, self.total)
            stride = max(1, len(self.steps) // max(1, int(area.width())))
            for values, scale, colour in (
                (self.losses, top_loss, "#1f5fbf"),
                (self.accuracies, 1.0, "#2e8b3a"),
            ):
                line = QPolygonF()
                for i in range(0, len(self.steps), stride):
                    v = min(max(values[i] / scale, 0.0), 1.0) if math.isfinite(values[i]) else 0
                    line.append(QPointF(area.left() + self.steps[i] * x_scale,
                                        area.bottom() - v * area.height()))
                pen = QPen(QColor(colour))
                pen.setWidthF(2.0)
                p.setPen(pen)
                p.drawPolyline(line)
        p.end()

class DemoWindow(QWidget):
    """The demo window: plot, progress, status, Start/Stop. Never blocks."""

    def __init__(self, settings: DemoSettings, screenshot: str | None) -> None:
        super().__init__()
        self.settings = settings
        self.screenshot = screenshot
        self.screenshot_error = False
        self.screenshot_source: str | None = None  # how the screenshot was taken, once saved
        self.qjob: QtJob | None = None
        self.received = Received()
        """What the window received of the last job's stream."""
        self.presses = self._new_presses()
        """Who pressed Stop on the last job, and when."""
        self._stop_presses = 0
        self._auto_stop_armed = False
        self._closing = False
        self._worker_gone = False  # True from the job's final state until a new start
        self.setWindowTitle("workstream demo")
        title = QLabel(
            f"<b>workstream demo</b>: a 2-{model.HIDDEN}-1 tanh MLP (numpy) learns two "
            f"spirals ({model.POINTS} points) in a worker process", self)
        title.setWordWrap(True)
        method = settings.resolved_start_method
        extra = " · <b>--stuck</b>: the worker enters a long C call at step " \
            f"{model.STUCK_AT_STEP}" if settings.stuck else ""
        self.details = QLabel(f"start method {method} · grace {settings.grace:g} s{extra}",
                              self)
        self.plot = LossPlot(settings.steps, self)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, settings.steps)
        self.progress.setFormat(_BAR_FORMAT)
        self.status = QLabel("ready", self)
        self.status.setWordWrap(True)
        self.status.setMinimumHeight(36)
        self.start_button = QPushButton("Start", self)
        self.stop_button = QPushButton("Stop", self)
        self.start_button.clicked.connect(self.start_job)
        self.stop_button.clicked.connect(lambda: self.press_stop("the Stop button"))
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(self.details)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addLayout(buttons)
        self.resize(680, 500)
        self._set_running(False)

    # -- the job ----------------------------------------------------------------

    def start_job(self) -> None:
        """Start a training job (when none runs); never blocks."""
        if self.qjob is not None and not self.qjob.ended():
            return
        s = self.settings
        fn = functools.partial(model.train, s.steps, seed=s.seed, stuck=s.stuck,
                               fail_at=s.fail_at, report=report_progress)
        self.received = Received()
        self.presses = self._new_presses()
        self._stop_presses = 0
        self._worker_gone = False
        self.plot.clear(s.steps)
        self.progress.setValue(0)
        self.progress.setFormat(_BAR_FORMAT)
        try:
            qjob = QtJob.start(fn, parent=self, max_rate=60, grace=s.grace,
                               start_method=s.start_method, name="workstream-demo")
        except (TypeError, ValueError) as exc:
            self.status.setText(f"could not start the worker: {exc}")
            return
        self.qjob = qjob
        qjob.items.connect(self._on_items)
        qjob.state_changed.connect(self._on_state)
        qjob.progress.connect(self._on_progress)
        qjob.finished.connect(self._on_finished)
        self._set_running(True)
        self.status.setText("starting the worker process…")

    def press_stop(self, by: str = "the Stop button") -> None:
        """Stop: the first press cancels (cooperative, SIGTERM, SIGKILL at the grace);
        the second kills now. ``by`` says who pressed it, for the status line."""
        if self.qjob is None or self.qjob.ended() or self._worker_gone:
            return
        self._stop_presses += 1
        now = time.monotonic()
        if self._stop_presses == 1:
            self.presses.press(by, now)
            self.qjob.cancel()
            self.stop_button.setText("Kill now")
        else:
            self.presses.press("Kill now", now, kill=True)
            if self.qjob.kill():
                self.presses.kill_reached(now)

    @property
    def items_received(self) -> int:
        """Items the window received of the last job's stream."""
        return self.received.items

    def _new_presses(self) -> StopPresses:
        grace = self.settings.grace
        return StopPresses(grace=grace, term_after=Options().term_delay(grace),
                           kill_label="Kill now")

    def _auto_stop(self) -> None:
        if self.qjob is not None and not self.qjob.ended():
            self.press_stop(f"--stop-after {self.settings.stop_after:g} s")

    def _on_items(self, items: list[dict[str, Any]]) -> None:
        if self.qjob is None:
            return
        if self._closing:  # the window is closed; the job is being cancelled
            return
        if self.items_received == 0:
            print(f"worker pid {self.qjob.job.pid} is training", flush=True)
            if self.settings.stop_after is not None and not self._auto_stop_armed:
                self._auto_stop_armed = True
                QTimer.singleShot(round(self.settings.stop_after * 1000), self._auto_stop)
        self.received.add(items)
        self.plot.add(items)
        last = items[-1]
        self.progress.setValue(last["step"] + 1)
        if self._worker_gone:  # the status line already says "stopped"; draw the rest
            return
        state = self.qjob.job.state.value
        text = (f"{state} · pid {self.qjob.job.pid} · step {last['step'] + 1} · "
                f"loss {last['loss']:.4f} · accuracy {last['accuracy']:.1%}")
        if any("stuck" in item for item in items):
            text = ("running · the worker is now in a long C call that cannot see a "
                    "cooperative cancel: Stop escalates to SIGTERM, then SIGKILL "
                    f"at {self.settings.grace:g} s")
        self.status.setText(text)

    def _on_progress(self, progress: Progress) -> None:
        """The worker's newest report (``workstream.progress``): rate and ETA on the bar."""
        if self._closing:
            return
        text = _BAR_FORMAT
        if progress.rate is not None:
            text += f" · {progress.rate:,.0f} steps/s"
        if progress.eta is not None:
            text += f" · ETA {progress.eta:.1f} s"
        self.progress.setFormat(text)

    def _on_state(self, state: str) -> None:
        """A new job state: "cancelling" says what Kill now does; a final state (the
        worker is gone) disables Stop / Kill now at once, even while the last items are
        still being drawn (``finished`` then shows the full report)."""
        if state == "cancelling":
            self.status.setText(f"cancelling… (the worker has {self.settings.grace:g} s "
                                "before SIGKILL; press Kill now to kill it at once)")
        elif state in ENDED_STATES:
            self._worker_gone = True
            self.stop_button.setEnabled(False)
            self.stop_button.setText("Stop")
            self.status.setText(f"stopped: the worker process has ended ({state})")

    def _on_finished(self, outcome: Outcome) -> None:
        self._set_running(False)
        self.status.setText(describe_outcome(outcome, self.received, self.presses))
        if self.settings.stop_after is not None:
            QTimer.singleShot(_AUTO_CLOSE_MS, self.close)

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.stop_button.setText("Stop")

    def wait_for_last_job(self, timeout: float) -> Outcome | None:
        """After the event loop: the last job's outcome, waiting (at most ``timeout``
        s) for a job that was cancelled by the window's close."""
        if self.qjob is None:
            return None
        job = self.qjob.job
        job.cancel()  # no-op if it ended; the window is gone, nobody else will
        try:
            return job.wait(timeout)
        except TimeoutError:  # short of a bug, SIGKILL came at the grace already
            job.cancel(grace=0.0)
            return job.wait(10.0)

    # -- the window -------------------------------------------------------------

    def save_screenshot(self, path: str) -> None:
        """Save the window as a PNG at ``path``: on a window system, the screen's pixels
        where the window is (what the display really shows); offscreen, Qt's rendering of
        the widget. Sets ``screenshot_source``, or ``screenshot_error`` (and says why on
        stderr) if nothing could be saved."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        pixmap = None
        screen = self.screen()
        if QGuiApplication.platformName() != "offscreen" and screen is not None:
            pixmap = screen.grabWindow(self.winId())
            self.screenshot_source = "the display"
        if pixmap is None or pixmap.isNull():
            pixmap = self.grab()
            self.screenshot_source = "Qt's rendering of the window"
        if not pixmap.save(path, "PNG"):
            print(f"could not save the screenshot to {path}", file=sys.stderr)
            self.screenshot_source = None
            self.screenshot_error = True


    def close_by(self, reason: str) -> None:
        """Close the window (which cancels a running job); ``reason`` is reported."""
        if self.qjob is not None and not self.qjob.ended():
            self.presses.press(reason, time.monotonic())
        self.close()

    def closeEvent(self, event: QCloseEvent) -> None:
        """Save the screenshot if asked, cancel a running job (never waits), close."""
        self._closing = True
        if self.screenshot is not None:
            self.save_screenshot(self.screenshot)
        if self.qjob is not None and not self.qjob.ended():
            self.presses.press("closing the window", time.monotonic())
            self.qjob.cancel()
        event.accept()


def describe_outcome(outcome: Outcome, received: Received, presses: StopPresses) -> str:
    """The status line for an ended job: the outcome, and for a cancelled one who pressed
    Stop and how it stopped (worded as in the report)."""
    items = received.items
    if isinstance(outcome, Completed):
        value = outcome.value if isinstance(outcome.value, dict) else {}
        return (f"completed · {items} steps · final loss {value.get('final_loss', math.nan):.4f}"
                f" · accuracy {value.get('final_accuracy', math.nan):.1%} · "
                f"{outcome.duration:.2f} s")
    if isinstance(outcome, CancelledOutcome):
        latency = ("?" if outcome.stop_latency is None
                   else f"{outcome.stop_latency * 1000:.0f} ms")
        by = f" by {presses.by}" if presses.by else ""
        return (f"cancelled{by}: {describe_stop(outcome, presses)} · stop latency {latency} · "
                f"{items} steps received · child {describe_exit(outcome.exit_code)}")
    if isinstance(outcome, (Failed, Crashed)):
        return f"{outcome.kind}: {first_paragraph(outcome.error)}"
    return outcome.kind
