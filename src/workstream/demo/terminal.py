"""``workstream demo`` in a terminal: a live progress bar, Stop on Ctrl-C, then the report.

Trains :func:`workstream.demo.model.train` in a worker process, shows each step with a
rich progress bar (a plain line every tenth of the run when stdout is not a terminal),
lets the user press Stop (Ctrl-C, or ``--stop-after``), and prints the report of
:mod:`workstream.demo.report`. Imported only once numpy and rich were found
(:mod:`workstream.demo.cli` checks); imports only workstream's public API.
"""

from __future__ import annotations

import functools
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, cast

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from workstream import Failed, Job, Options, Outcome, start
from workstream import Progress as WorkerProgress
from workstream import progress as report_progress

from . import model
from .model import StepItem
from .report import (
    EXIT_USAGE,
    Leftovers,
    Received,
    StopPresses,
    describe_kill_press,
    exit_status,
    leftover_processes,
    report_rows,
)
from .settings import DemoSettings

_ENTER_CALL_DELAY = 0.3  # s; see LiveView.show


def run_demo(settings: DemoSettings) -> int:
    """Run the demo to its end and print the report; return the exit status.

    Never leaves the worker running: the stream ends only when the child is gone (Ctrl-C
    just presses Stop), the job is waited for before the report, and any other exception
    leaving the live view (a closed stdout) cancels the job and waits for it. Once the job
    has ended, Ctrl-C no longer raises (see :class:`LateInterrupts`): the report is always
    printed, and the process exits with the report's status; after the report SIGINT is
    ignored for the rest of the process (this is the command's body: it only exits then).
    """
    console = Console(highlight=False)
    _print_intro(console, settings)
    view = LiveView(console, settings.steps)
    try:
        job = _start_job(settings)
    except (TypeError, ValueError) as exc:
        console.print(f"[red]could not start the worker:[/] {escape(str(exc))}", markup=True)
        return EXIT_USAGE
    stop = StopButton(job, view.stop_pressed, settings.stop_after, settings.grace)
    late = LateInterrupts()
    with job, view:  # the job's __exit__: on an unexpected exception, cancel and wait
        try:
            received = consume(job, view, stop)
            outcome = wait_for(job, stop)
            late.install()  # from here on, Ctrl-C cannot lose the report
        finally:
            stop.close()
    second = describe_kill_press(outcome, stop.presses)
    if second is not None:
        view.announce(second)
    left = leftover_processes(outcome.pid)
    if late.count:
        again = "Ctrl-C" if stop.presses.at is None else "Ctrl-C again"
        view.announce(f"{again}: the worker has already stopped.")
    print_report(console, outcome, received, stop.presses, left)
    late.ignore_from_now_on()
    return exit_status(outcome, left)


def _start_job(settings: DemoSettings) -> Job[Any, Any]:
    fn = functools.partial(
        model.train, settings.steps, seed=settings.seed, stuck=settings.stuck,
        fail_at=settings.fail_at, report=report_progress,
    )
    return start(fn, grace=settings.grace, start_method=settings.start_method,
                 name="workstream-demo")


def _print_intro(console: Console, settings: DemoSettings) -> None:
    console.print(
        f"[bold]workstream demo[/]: training a 2-{model.HIDDEN}-1 tanh MLP (numpy) on two "
        f"spirals ({model.POINTS} points) for {settings.steps} steps in a worker process "
        f"(start method {settings.resolved_start_method}, grace {settings.grace:g} s)."
    )
    hint = "Press Ctrl-C to stop it (a second Ctrl-C kills it at once if it still runs)."
    if settings.stuck:
        hint += (f" --stuck: after step {model.STUCK_AT_STEP} the worker enters a long C call"
                 f" (about {model.STUCK_SECONDS:g} s).")
    if settings.stop_after is not None:
        hint += f" Stop is pressed by itself {settings.stop_after:g} s after the first step."
    console.print(hint)


def consume(job: Job[Any, Any], view: LiveView, stop: StopButton) -> Received:
    """Iterate the job to the end of its stream, showing each item.

    Ctrl-C (KeyboardInterrupt) presses Stop and iteration goes on: the stream always
    ends once the child is gone. Arms ``stop``'s timer when the first item arrives, and
    says the worker's pid with the first item that arrives once the pid is known.
    """
    received = Received()
    pid_shown = False
    while True:
        try:
            for raw in job:
                item = cast("StepItem", raw)
                if received.items == 0:
                    stop.arm()
                if not pid_shown and job.pid is not None:
                    view.announce(f"worker pid {job.pid} is training.")
                    pid_shown = True
                received.add([item])
                view.show(item, job.cancel_requested, job.progress)
            return received
        except KeyboardInterrupt:
            _handle_interrupt(stop)


def wait_for(job: Job[Any, Any], stop: StopButton) -> Outcome:
    """Wait until the job is reaped and return its outcome; Ctrl-C presses Stop."""
    while True:
        try:
            return job.wait()
        except KeyboardInterrupt:
            _handle_interrupt(stop)


def _handle_interrupt(stop: StopButton) -> None:
    """Press Stop for a Ctrl-C, and again for each Ctrl-C that arrives meanwhile."""
    pending = 1
    while pending:
        try:
            pending -= 1
            stop.interrupt()
        except KeyboardInterrupt:
            pending += 1


class LateInterrupts:
    """Counts the Ctrl-Cs that come after the job has ended, instead of raising.

    :meth:`install` replaces the SIGINT handler (only on the main thread, where Python
    runs signal handlers) for the rest of the process: the demo is only printing its
    report and exiting then, and a KeyboardInterrupt there (in the psutil scan, in the
    table) would lose the report. :meth:`ignore_from_now_on` then ignores SIGINT: at
    interpreter exit Python puts back the default action of a handler it set (not of
    SIG_IGN), so a Ctrl-C there would kill the process (exit status 130 in a shell).
    """

    def __init__(self) -> None:
        self.count = 0
        self._installed = False

    def install(self) -> None:
        """From now on, count SIGINTs (main thread only; elsewhere do nothing)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True

    def ignore_from_now_on(self) -> None:
        """Ignore SIGINT for the rest of the process (if :meth:`install` took it)."""
        if self._installed:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1


class StopButton:
    """Presses Stop on a job: after ``stop_after`` seconds, or on Ctrl-C.

    The first press is ``job.cancel()`` (at the next yield; SIGTERM after ``term_after``,
    SIGKILL after the grace); a second Ctrl-C is ``job.cancel(grace=0)`` (SIGKILL now,
    unless the worker has already stopped). Safe from any thread. ``presses`` records
    who pressed and when, for the report.
    """

    def __init__(
        self, job: Job[Any, Any], announce: Callable[[str], None], stop_after: float | None,
        grace: float,
    ) -> None:
        self._job = job
        self._announce = announce
        self._stop_after = stop_after
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._interrupts = 0
        self.presses = StopPresses(grace=grace, term_after=Options().term_delay(grace),
                                   kill_label="the second Ctrl-C")

    def arm(self) -> None:
        """Start the ``stop_after`` countdown; does nothing the second time or without it."""
        with self._lock:
            if self._stop_after is None or self._timer is not None:
                return
            self._timer = threading.Timer(self._stop_after, self._timer_fired)
            self._timer.daemon = True
            self._timer.start()

    def close(self) -> None:
        """Cancel a countdown still running."""
        with self._lock:
            timer = self._timer
        if timer is not None:
            timer.cancel()

    def interrupt(self) -> None:
        """Handle one Ctrl-C: the first asks the job to stop, a later one cuts the grace
        short (:func:`~workstream.demo.report.describe_kill_press` says afterwards whether
        that killed it)."""
        with self._lock:
            self._interrupts += 1
            kill = self._interrupts > 1
        if kill:
            if not self._press("Ctrl-C twice", "Ctrl-C again: skipping the rest of the grace "
                               "period.", kill=True):
                self._announce("Ctrl-C again: the worker has already stopped.")
        else:
            self._press("Ctrl-C", f"Ctrl-C: {self._ladder()} (Ctrl-C again: kill it now).")

    def _ladder(self) -> str:
        return (f"asking the worker to stop at its next yield; SIGTERM after "
                f"{self.presses.term_after:g} s, SIGKILL after {self.presses.grace:g} s if it "
                "still runs")

    def _timer_fired(self) -> None:
        self._press(f"--stop-after {self._stop_after:g} s",
                    f"Stop pressed by --stop-after {self._stop_after:g} s: {self._ladder()}.")

    def _press(self, by: str, message: str, *, kill: bool = False) -> bool:
        """Cancel the job (at once with ``kill``); announce ``message`` and return True
        unless it had ended."""
        now = time.monotonic()
        self.presses.press(by, now, kill=kill)
        if not self._job.cancel(0.0 if kill else None):
            return False
        if kill:
            self.presses.kill_reached(now)
        self._announce(message)
        return True


class LiveView:
    """Shows the stream as it arrives.

    On a terminal: a rich progress bar (step count, loss, accuracy, steps/s and ETA from
    the worker's ``workstream.progress()`` reports, elapsed). Elsewhere (a pipe, a
    file): a plain line every tenth of the run. Messages from
    :meth:`announce` appear above the bar; it is safe from any thread.
    """

    _RATE_WINDOW = 0.5

    def __init__(self, console: Console, total: int) -> None:
        self._console = console
        self._total = total
        self._plain = not console.is_terminal
        self._every = max(1, total // 10)
        self._progress: Progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("acc {task.fields[acc]}"),
            TextColumn("{task.fields[rate]} steps/s"),
            TextColumn("ETA {task.fields[eta]}"),
            TimeElapsedColumn(),
            console=console,
            disable=self._plain,
        )
        self._task: TaskID = self._progress.add_task(
            "training", total=total, loss="-", acc="-", rate="-", eta="-"
        )
        self._window_start = time.monotonic()
        self._window_items = 0

    def __enter__(self) -> LiveView:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def show(
        self, item: StepItem, stopping: bool, progress: WorkerProgress | None = None
    ) -> None:
        """Show one training step (rate and ETA from the worker's newest ``progress``
        report); describe the long C call when the item announces it."""
        done = item["step"] + 1
        loss, acc = f"{item['loss']:.4f}", f"{item['accuracy']:.1%}"
        fields: dict[str, Any] = {"loss": loss, "acc": acc}
        rate = self._rate() if progress is None else progress.rate
        if rate is not None:
            fields["rate"] = f"{rate:,.0f}"
        eta = None if progress is None else progress.eta
        if eta is not None:
            fields["eta"] = f"{eta:.1f} s"
        description = "stopping" if stopping else "training"
        self._progress.update(self._task, completed=done, description=description, **fields)
        if self._plain and (done % self._every == 0 or done == self._total):
            speed = "" if rate is None else f"  {rate:,.0f} steps/s"
            left = "" if eta is None else f"  ETA {eta:.1f} s"
            self._console.print(
                f"step {done}/{self._total}  loss {loss}  accuracy {acc}{speed}{left}"
            )
        stuck = item.get("stuck")
        if stuck is not None:
            # The worker checks for a cancel right after sending this item, then enters
            # the call: give it that moment, so that a Stop pressed on this announcement
            # really meets a worker inside the C call (no more items come meanwhile).
            time.sleep(_ENTER_CALL_DELAY)
            self._progress.update(
                self._task, description="stuck in a C call", rate="0", eta="-"
            )
            self.announce(
                f"[bold yellow]The worker is now in a long C call[/]: {escape(stuck)}. "
                "It cannot see Stop until the call returns, so Stop will end in SIGTERM "
                "or, at the end of the grace period, SIGKILL.",
                markup=True,
            )

    def _rate(self) -> float | None:
        """Items per second over the last window; None while the window is still open."""
        self._window_items += 1
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed < self._RATE_WINDOW:
            return None
        rate = self._window_items / elapsed
        self._window_start, self._window_items = now, 0
        return rate

    def announce(self, text: str, markup: bool = False) -> None:
        """Print a message (above the bar on a terminal)."""
        self._console.print(text, markup=markup)

    def stop_pressed(self, message: str) -> None:
        """Say that Stop was pressed: print ``message``, show "stopping" on the bar."""
        self._progress.update(self._task, description="stopping")
        self.announce(message)




def print_report(
    console: Console, outcome: Outcome, received: Received, presses: StopPresses,
    left: Leftovers,
) -> None:
    """Print the report (:func:`~workstream.demo.report.report_rows`) as a table, values
    literally, never as markup; then, for a job whose function raised, the remote
    traceback."""
    styles = {"completed": "green", "cancelled": "yellow", "failed": "red", "crashed": "red"}
    table = Table(title="workstream demo: report", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for label, value in report_rows(outcome, received, presses, left):
        style = styles[outcome.kind] if label == "outcome" else None
        table.add_row(label, escape(value), style=style)
    console.print(table)
    if isinstance(outcome, Failed) and outcome.remote_traceback:
        console.print("[red bold]The worker raised; its traceback:[/]", markup=True)
        console.print(outcome.remote_traceback.rstrip(), markup=False)
