"""The ``workstream`` command line; ``workstream demo`` is the terminal demo.

``workstream demo`` trains a small numpy network in a worker process (see
:mod:`workstream._demo`), shows each step live with a rich progress bar, lets the user
press Stop (Ctrl-C, or ``--stop-after``), and ends with a report: the outcome, the stop
latency and how the child was stopped, its exit status, and how many processes are left.

numpy and rich are optional (``pip install 'workstream[demo]'``): this module imports
them only once the demo runs, so a missing one gives a clear message, not a traceback.
Exit status: 0 after completion or a clean stop, 1 if the job failed or crashed (or left
a process behind), 2 for a usage error or missing dependencies.

``workstream bench [ARGS]`` runs the benchmark suite of a source checkout
(``python -m bench ARGS``; see :func:`run_bench`).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from . import (
    DEFAULT_GRACE,
    CancelledOutcome,
    Completed,
    Crashed,
    Failed,
    Job,
    Options,
    Outcome,
    start,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from ._demo import StepItem

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEMO_DEPENDENCIES = ("numpy", "rich")
INSTALL_HINT = "pip install 'workstream[demo]'"

HELPER_MARKERS = ("forkserver", "resource_tracker", "_supervisor/_guard_main.py")
"""Command-line fragments of workstream's and multiprocessing's own helper processes
(the fork server, the resource tracker, the guard): not left-overs of a job."""

_ENTER_CALL_DELAY = 0.3  # s; see LiveView.show



# -- the command line ----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit
    status: 0 ok, 1 the job failed or crashed, 2 usage error or missing dependencies, 130
    Ctrl-C outside the live view. argparse exits with status 2 by itself on a bad option."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # every argument after it belongs to the suite
        return run_bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "demo":
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.gui:
        return run_gui(args)
    if args.screenshot is not None:
        parser.error("--screenshot needs --gui")
    try:
        return run_demo(DemoSettings.from_args(args))
    except KeyboardInterrupt:  # outside the live view; a started job is stopped at exit
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``workstream`` and its ``demo`` sub-command."""
    parser = argparse.ArgumentParser(
        prog="workstream",
        description="Run heavy work in a child process, stream its results, stop it cleanly.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("bench", add_help=False, help=BENCH_HELP)  # handled by main() itself
    demo = sub.add_parser(
        "demo",
        help="train a small numpy network in a worker process; Ctrl-C stops it",
        description=(
            "Train a small neural network (numpy) in a worker process, stream one item per "
            "step, and stop it on Ctrl-C (twice: kill at once) or after --stop-after. "
            f"Needs numpy and rich: {INSTALL_HINT}"
        ),
    )
    demo.add_argument("--steps", type=_positive_int, default=_default_steps(), metavar="N",
                      help="training steps (default: %(default)s, about 4 s)")
    demo.add_argument("--stop-after", type=_seconds(allow_zero=True), default=None,
                      metavar="SECONDS",
                      help="press Stop by itself SECONDS after the first step arrives")
    demo.add_argument("--stuck", action="store_true",
                      help="after a few steps the worker enters a long C call that cannot "
                           "see a cooperative cancel; Stop then escalates to SIGTERM/SIGKILL")
    demo.add_argument("--grace", type=_seconds(allow_zero=False), default=DEFAULT_GRACE,
                      metavar="SECONDS",
                      help="seconds from Stop to SIGKILL (default: %(default)s)")
    demo.add_argument("--start-method", choices=multiprocessing.get_all_start_methods(),
                      default=None, help="how the worker process is started "
                                         f"(default: {_default_start_method()})")
    demo.add_argument("--seed", type=int, default=0, help="seed of data and weights")
    demo.add_argument("--fail-at", type=_non_negative_int, default=None, metavar="STEP",
                      help="make the worker raise at STEP (to see how a failure is reported)")
    demo.add_argument("--gui", action="store_true",
                      help="show the demo in a Qt window (needs PySide6: "
                           "pip install 'workstream[demo,qt]'); with --stop-after the window "
                           "closes by itself once the job has ended")
    demo.add_argument("--screenshot", default=None, metavar="PATH",
                      help="with --gui: save the window as a PNG just before it closes")
    return parser


def run_gui(args: argparse.Namespace) -> int:
    """``workstream demo --gui``: the Qt window (imported only now); 2 if Qt or numpy is
    missing."""
    try:
        from ._gui_demo import run_gui_demo
    except ImportError as exc:
        print(f"workstream demo --gui needs numpy and PySide6: {exc}\n"
              "Install them with:  pip install 'workstream[demo,qt]'", file=sys.stderr)
        return EXIT_USAGE
    return run_gui_demo(DemoSettings.from_args(args), args.screenshot)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def _seconds(*, allow_zero: bool) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, > 0 (or >= 0 with ``allow_zero``)."""

    def parse(text: str) -> float:
        value = float(text)
        if not (value >= 0 and value != float("inf")) or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, not {text}")
        return value

    parse.__name__ = "seconds"
    return parse


@dataclass(frozen=True)
class DemoSettings:
    """The demo's options, validated."""

    steps: int
    stop_after: float | None = None
    stuck: bool = False
    grace: float = DEFAULT_GRACE
    start_method: str | None = None
    seed: int = 0
    fail_at: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoSettings:
        """Settings from arguments parsed by :func:`build_parser`."""
        return cls(steps=args.steps, stop_after=args.stop_after, stuck=args.stuck, grace=args.grace,
                   start_method=args.start_method, seed=args.seed, fail_at=args.fail_at)


def _default_start_method() -> str:
    """The start method workstream uses when none is given."""
    return Options().resolved_start_method


def _default_steps() -> int:
    """The worker's default number of steps (1 if numpy is missing: the demo won't run)."""
    try:
        from ._demo import DEFAULT_STEPS
    except ImportError:  # numpy missing: run_demo says so
        return 1
    return DEFAULT_STEPS


# -- the benchmark suite -------------------------------------------------------------

BENCH_HELP = ("run the benchmark suite of a source checkout (python -m bench; "
              "'workstream bench --help' for its options)")


def find_bench_root(cwd: str | None = None) -> str | None:
    """The source checkout whose ``bench/`` suite to run, or None.

    First the checkout this package is imported from (an editable install: the suite then
    measures this very code), then ``cwd`` (default: the current directory) and its
    parents. A checkout has ``bench/__main__.py`` and ``src/workstream/``.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.path.dirname(os.path.dirname(here))]
    path = os.path.abspath(cwd if cwd is not None else os.getcwd())
    while True:
        candidates.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for root in candidates:
        if os.path.isfile(os.path.join(root, "bench", "__main__.py")) and os.path.isdir(
            os.path.join(root, "src", "workstream")
        ):
            return root
    return None


def run_bench(argv: Sequence[str]) -> int:
    """Run ``python -m bench ARGV`` from the source checkout (see :func:`find_bench_root`)
    in a child interpreter; return its exit status (2 if there is no checkout: the suite
    is not part of the installed package)."""
    import subprocess

    root = find_bench_root()
    if root is None:
        print(
            "workstream bench: the benchmark suite lives in the source repository (bench/), "
            "not in the installed package, and no checkout was found here or above the "
            "current directory. Clone the repository, install it (pip install -e "
            "'.[bench]') and run 'workstream bench' or 'python -m bench' from it.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        return subprocess.run([sys.executable, "-m", "bench", *argv], env=env).returncode
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


# -- the demo ------------------------------------------------------------------------


def missing_demo_dependencies() -> list[str]:
    """Return the names of the demo's optional dependencies that cannot be imported."""
    missing = []
    for name in DEMO_DEPENDENCIES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def run_demo(settings: DemoSettings) -> int:
    """Run the demo to its end and print the report; return the exit status.

    Never leaves the worker running: the stream ends only when the child is gone (Ctrl-C
    just presses Stop), the job is waited for before the report, and any other exception
    leaving the live view (a closed stdout) cancels the job and waits for it.
    """
    missing = missing_demo_dependencies()
    if missing:
        print(
            f"workstream demo needs numpy and rich; missing: {', '.join(missing)}.\n"
            f"Install them with:  {INSTALL_HINT}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from rich.console import Console

    console = Console(highlight=False)
    _print_intro(console, settings)
    view = LiveView(console, settings.steps)
    try:
        job = _start_job(settings)
    except (TypeError, ValueError) as exc:
        console.print(f"[red]could not start the worker:[/] {_escape(str(exc))}", markup=True)
        return EXIT_USAGE
    stop = StopButton(job, view.stop_pressed, settings.stop_after, settings.grace)
    with job, view:  # the job's __exit__: on an unexpected exception, cancel and wait
        try:
            tally = consume(job, view, stop)
            outcome = wait_for(job, stop)
        finally:
            stop.close()
    second = describe_second_press(outcome, stop)
    if second is not None:
        view.announce(second)
    left = leftover_processes(outcome.pid)
    print_report(console, report_rows(outcome, tally, stop, left, settings.grace), outcome)
    return exit_status(outcome, left)


def _escape(text: str) -> str:
    """``text`` with rich markup escaped, to print it literally in a markup string."""
    from rich.markup import escape

    return escape(text)


def _start_job(settings: DemoSettings) -> Job[Any, Any]:
    from . import _demo

    fn = functools.partial(
        _demo.train, settings.steps, seed=settings.seed, stuck=settings.stuck,
        fail_at=settings.fail_at,
    )
    return start(fn, grace=settings.grace, start_method=settings.start_method,
                 name="workstream-demo")


def _print_intro(console: Console, settings: DemoSettings) -> None:
    from . import _demo

    method = settings.start_method or _default_start_method()
    console.print(
        f"[bold]workstream demo[/]: training a 2-{_demo.HIDDEN}-1 tanh MLP (numpy) on two "
        f"spirals ({_demo.POINTS} points) for {settings.steps} steps in a worker process "
        f"(start method {method}, grace {settings.grace:g} s)."
    )
    hint = "Press Ctrl-C to stop it (a second Ctrl-C kills it at once if it still runs)."
    if settings.stuck:
        hint += (f" --stuck: after step {_demo.STUCK_AT_STEP} the worker enters a long C call"
                 f" (about {_demo.STUCK_SECONDS:g} s).")
    if settings.stop_after is not None:
        hint += f" Stop is pressed by itself {settings.stop_after:g} s after the first step."
    console.print(hint)


@dataclass
class Tally:
    """What the consumer saw of the stream."""

    items: int = 0
    last: StepItem | None = None


def consume(job: Job[Any, Any], view: LiveView, stop: StopButton) -> Tally:
    """Iterate the job to the end of its stream, showing each item.

    Ctrl-C (KeyboardInterrupt) presses Stop and iteration goes on: the stream always
    ends once the child is gone. Arms ``stop``'s timer when the first item arrives, and
    says the worker's pid with the first item that arrives once the pid is known.
    """
    tally = Tally()
    pid_shown = False
    while True:
        try:
            for raw in job:
                item = cast("StepItem", raw)
                if tally.items == 0:
                    stop.arm()
                if not pid_shown and job.pid is not None:
                    view.announce(f"worker pid {job.pid} is training.")
                    pid_shown = True
                tally.items += 1
                tally.last = item
                view.show(item, job.cancel_requested)
            return tally
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


class StopButton:
    """Presses Stop on a job: after ``stop_after`` seconds, or on Ctrl-C.

    The first press is ``job.cancel()`` (at the next yield; SIGTERM after ``term_after``,
    SIGKILL after the grace); a second Ctrl-C is ``job.cancel(grace=0)`` (SIGKILL now,
    unless the worker has already stopped). Safe from any thread. ``pressed_by`` says
    what pressed it first (None if nothing did); ``pressed_at`` when (``time.monotonic()``,
    None if never), and ``kill_pressed_at`` when a second Ctrl-C cut the grace short.
    """

    def __init__(
        self, job: Job[Any, Any], announce: Callable[[str], None], stop_after: float | None,
        grace: float,
    ) -> None:
        self._job = job
        self._announce = announce
        self._stop_after = stop_after
        self.grace = grace
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._interrupts = 0
        self.term_after = Options().term_delay(grace)
        """Seconds from the first press to SIGTERM (the job's default ``term_after``)."""
        self.pressed_by: str | None = None
        self.pressed_at: float | None = None
        self.kill_pressed_at: float | None = None

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
        short (:func:`describe_second_press` says afterwards whether that killed it)."""
        with self._lock:
            self._interrupts += 1
            kill = self._interrupts > 1
        if kill:
            if not self._press("Ctrl-C twice", "Ctrl-C again: skipping the rest of the grace "
                               "period.", grace=0.0):
                self._announce("Ctrl-C again: the worker has already stopped.")
        else:
            self._press("Ctrl-C", f"Ctrl-C: {self._ladder()} (Ctrl-C again: kill it now).")

    def _ladder(self) -> str:
        return (f"asking the worker to stop at its next yield; SIGTERM after "
                f"{self.term_after:g} s, SIGKILL after {self.grace:g} s if it still runs")

    def _timer_fired(self) -> None:
        self._press(f"--stop-after {self._stop_after:g} s",
                    f"Stop pressed by --stop-after {self._stop_after:g} s: {self._ladder()}.")

    def _press(self, by: str, message: str, grace: float | None = None) -> bool:
        """Cancel the job; announce ``message`` and return True unless it had ended."""
        now = time.monotonic()
        with self._lock:
            if self.pressed_by is None or grace == 0.0:
                self.pressed_by = by
            if self.pressed_at is None:
                self.pressed_at = now
        if not self._job.cancel(grace):
            return False
        if grace == 0.0:
            with self._lock:
                if self.kill_pressed_at is None:
                    self.kill_pressed_at = now
        self._announce(message)
        return True


# -- the live view -------------------------------------------------------------------


class LiveView:
    """Shows the stream as it arrives.

    On a terminal: a rich progress bar (step count, loss, accuracy, items/s, elapsed).
    Elsewhere (a pipe, a file): a plain line every tenth of the run. Messages from
    :meth:`announce` appear above the bar; it is safe from any thread.
    """

    _RATE_WINDOW = 0.5

    def __init__(self, console: Console, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

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
            TextColumn("{task.fields[rate]} items/s"),
            TimeElapsedColumn(),
            console=console,
            disable=self._plain,
        )
        self._task: TaskID = self._progress.add_task(
            "training", total=total, loss="-", acc="-", rate="-"
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

    def show(self, item: StepItem, stopping: bool) -> None:
        """Show one training step; describe the long C call when the item announces it."""
        done = item["step"] + 1
        loss, acc = f"{item['loss']:.4f}", f"{item['accuracy']:.1%}"
        fields: dict[str, Any] = {"loss": loss, "acc": acc}
        rate = self._rate()
        if rate is not None:
            fields["rate"] = f"{rate:,.0f}"
        description = "stopping" if stopping else "training"
        self._progress.update(self._task, completed=done, description=description, **fields)
        if self._plain and (done % self._every == 0 or done == self._total):
            self._console.print(f"step {done}/{self._total}  loss {loss}  accuracy {acc}")
        stuck = item.get("stuck")
        if stuck is not None:
            # The worker checks for a cancel right after sending this item, then enters
            # the call: give it that moment, so that a Stop pressed on this announcement
            # really meets a worker inside the C call (no more items come meanwhile).
            time.sleep(_ENTER_CALL_DELAY)
            self._progress.update(self._task, description="stuck in a C call", rate="0")
            self.announce(
                f"[bold yellow]The worker is now in a long C call[/]: {_escape(stuck)}. "
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


# -- the report ----------------------------------------------------------------------


@dataclass(frozen=True)
class Leftovers:
    """Processes the demo left behind: ``count`` of them, described in ``detail``."""

    count: int
    detail: str


def leftover_processes(pid: int | None) -> Leftovers:
    """Count the processes still alive after the job: the worker itself if its pid
    still exists, plus (with psutil) every live descendant of this process that is not
    one of the helpers in :data:`HELPER_MARKERS`. Their descendants do count: the fork
    server's children are workers."""
    found: list[str] = []
    if pid is not None and pid_exists(pid):
        found.append(f"worker {pid}")
    others = _unexpected_descendants()
    if others is None:
        how = "worker pid checked; install psutil to check all child processes"
    else:
        found += [p for p in others if not p.startswith(f"{pid} ")]
        how = "worker pid and all child processes checked"
    detail = ", ".join(found) if found else how
    return Leftovers(len(found), detail)


def pid_exists(pid: int) -> bool:
    """True if a process with this pid exists (``os.kill(pid, 0)`` does not say
    ProcessLookupError)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unexpected_descendants() -> list[str] | None:
    """Live descendants of this process other than the helpers ("pid cmdline" each);
    None if psutil is not installed."""
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return None
    me = psutil.Process()
    helpers = {p.pid for p in me.children(recursive=False) if _is_helper(p)}
    found = []
    for proc in me.children(recursive=True):
        if proc.pid in helpers:
            continue
        try:
            cmd = " ".join(proc.cmdline())[:60]
        except psutil.ZombieProcess:
            cmd = "(zombie)"
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            cmd = "(?)"
        found.append(f"{proc.pid} {cmd}")
    return found


def _is_helper(proc: Any) -> bool:
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:
        return False
    return any(marker in cmd for marker in HELPER_MARKERS)


def describe_exit(exit_code: int | None) -> str:
    """Render a child's exit status: ``exit code 0``, ``SIGKILL (-9)``, or ``unknown``."""
    if exit_code is None:
        return "exit status unknown"
    if exit_code >= 0:
        return f"exit code {exit_code}"
    try:
        name = signal.Signals(-exit_code).name
    except ValueError:
        name = f"signal {-exit_code}"
    return f"{name} ({exit_code})"


def report_rows(
    outcome: Outcome, tally: Tally, stop: StopButton, left: Leftovers, grace: float
) -> list[tuple[str, str]]:
    """The report as (label, value) rows, in display order."""
    rows = [("outcome", outcome.kind), ("items received", str(tally.items))]
    if isinstance(outcome, Completed):
        rows += _completed_rows(outcome.value)
    elif tally.last is not None:
        last = tally.last
        rows.append(("last loss", f"{last['loss']:.4f} at step {last['step']} "
                                  f"(accuracy {last['accuracy']:.1%})"))
    if isinstance(outcome, CancelledOutcome):
        rows.append(("stopped by", stop.pressed_by or "?"))
        if outcome.stop_latency is not None:
            rows.append(("stop latency", f"{outcome.stop_latency * 1000:.0f} ms "
                                         f"(grace {grace:g} s)"))
        rows.append(("how it stopped", describe_stop(outcome, stop)))
    if isinstance(outcome, (Failed, Crashed)):  # the first paragraph: not the traceback
        rows.append(("error", str(outcome.error).split("\n\n", 1)[0]))
    pid = "never started" if outcome.pid is None else f"pid {outcome.pid}"
    rows.append(("child", f"{pid}, {describe_exit(outcome.exit_code)}"))
    rows.append(("duration", f"{outcome.duration:.2f} s"))
    rows.append(("processes left", f"{left.count} ({left.detail})"))
    return rows


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def describe_stop(outcome: CancelledOutcome, stop: StopButton) -> str:
    """Say in plain words how a cancelled job ended, from its outcome and what the Stop
    button did and when (SIGTERM is sent ``stop.term_after`` s after the first press)."""
    latency = outcome.stop_latency
    term = stop.term_after
    if outcome.rung == "before-start":
        return "stopped before the worker process had started"
    if latency is None or stop.pressed_at is None:  # cancelled by workstream itself
        return {"cooperative": "stopped at a yield", "sigterm": "ended by SIGTERM",
                "sigkill": "killed (SIGKILL)"}[outcome.rung]
    kill_after = None
    if stop.kill_pressed_at is not None:
        kill_after = stop.kill_pressed_at - stop.pressed_at
    if outcome.rung == "cooperative":
        return f"stopped at a yield {_ms(latency)} after Stop"
    if outcome.rung == "sigterm":
        return (f"did not stop within {term:g} s, so it was sent SIGTERM, and stopped "
                f"{_ms(max(latency - term, 0.0))} later")
    if kill_after is not None and kill_after < term:
        return (f"killed (SIGKILL) at the second Ctrl-C, {_ms(kill_after)} after Stop, "
                "before SIGTERM was due")
    sent_term = f"did not stop within {term:g} s, so it was sent SIGTERM; "
    if kill_after is not None and kill_after < stop.grace:
        return sent_term + "still running at the second Ctrl-C, so it was killed (SIGKILL)"
    return sent_term + (f"still running at the end of the {stop.grace:g} s grace, so it "
                        "was killed (SIGKILL)")


def describe_second_press(outcome: Outcome, stop: StopButton) -> str | None:
    """After a second Ctrl-C that found the job still running: say whether it killed the
    worker or the worker had stopped by itself first; None if there was no such press."""
    if stop.kill_pressed_at is None or not isinstance(outcome, CancelledOutcome):
        return None
    if outcome.rung == "sigkill":
        return "The second Ctrl-C killed the worker (SIGKILL)."
    how = "at a yield" if outcome.rung == "cooperative" else "of SIGTERM"
    return (f"The worker had already stopped ({how}) when Ctrl-C was pressed again: "
            "nothing was killed.")


def _completed_rows(value: object) -> list[tuple[str, str]]:
    if not isinstance(value, dict):
        return [("result", repr(value))]
    return [
        ("steps", str(value.get("steps"))),
        ("final loss", f"{value.get('final_loss', float('nan')):.4f}"),
        ("final accuracy", f"{value.get('final_accuracy', float('nan')):.1%}"),
        ("worker time", f"{value.get('seconds', float('nan')):.2f} s"),
    ]


def print_report(console: Console, rows: list[tuple[str, str]], outcome: Outcome) -> None:
    """Print the rows as a table (values literally, never as markup); then, for a job
    whose function raised, the remote traceback."""
    from rich.table import Table

    styles = {"completed": "green", "cancelled": "yellow", "failed": "red", "crashed": "red"}
    table = Table(title="workstream demo: report", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for label, value in rows:
        style = styles[outcome.kind] if label == "outcome" else None
        table.add_row(label, _escape(value), style=style)
    console.print(table)
    if isinstance(outcome, Failed) and outcome.remote_traceback:
        console.print("[red bold]The worker raised; its traceback:[/]", markup=True)
        console.print(outcome.remote_traceback.rstrip(), markup=False)


def exit_status(outcome: Outcome, left: Leftovers) -> int:
    """0 after completion or a clean stop; 1 if the job failed or crashed or a process
    was left behind."""
    if isinstance(outcome, (Failed, Crashed)) or left.count:
        return EXIT_FAILED
    return EXIT_OK

