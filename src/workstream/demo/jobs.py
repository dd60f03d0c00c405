"""``workstream demo --jobs N``: N trainings at once on a :class:`workstream.Pool`.

Each job trains :func:`workstream.demo.model.train` with its own seed (``--seed``,
``--seed + 1``, ...) and has one live line (a rich progress bar; a plain line per job
every tenth of its run when stdout is not a terminal). Ctrl-C (or ``--stop-after``)
stops them all (``pool.cancel_all()``: each with its own ladder); a second Ctrl-C kills
what still runs at once. Then one report line per job. Imports only workstream's
public API (and rich), like the single-job terminal demo.
"""

from __future__ import annotations

import functools
import signal
import threading
import time
from typing import Any, cast

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from workstream import CancelledOutcome, Completed, Job, Outcome, Pool

from . import model
from .model import StepItem
from .report import EXIT_FAILED, EXIT_OK
from .settings import DemoSettings


def run_jobs_demo(settings: DemoSettings) -> int:
    """Run ``settings.jobs`` trainings at once; return 0 if each completed or was
    stopped, 1 if one failed or crashed. Never leaves a worker running: the pool is
    closed (every process reaped) before the report."""
    console = Console(highlight=False)
    n = settings.jobs
    console.print(
        f"[bold]workstream demo --jobs {n}[/]: {n} trainings of {settings.steps} steps at "
        f"once on a workstream.Pool of {n} warm workers (seeds {settings.seed}.."
        f"{settings.seed + n - 1}). Ctrl-C stops them all (again: kill at once)."
    )
    plain = not console.is_terminal
    every = max(1, settings.steps // 10)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("acc {task.fields[acc]}"),
        console=console, disable=plain,
    )
    news = threading.Event()
    presses: list[float] = []
    with Pool(n, grace=settings.grace, start_method=settings.start_method,
              name="workstream-demo") as pool:
        jobs: list[Job[Any, Any]] = []
        tasks: list[TaskID] = []
        try:
            for i in range(n):
                fn = functools.partial(
                    model.train, settings.steps, seed=settings.seed + i,
                    stuck=settings.stuck, fail_at=settings.fail_at,
                )
                job = pool.start(fn, name=f"train-{i}")
                job.add_listener(news.set)
                jobs.append(job)
                tasks.append(progress.add_task(f"seed {settings.seed + i}",
                                               total=settings.steps, loss="-", acc="-"))
            console.print(f"{n} jobs queued.")
        except KeyboardInterrupt:  # Stop before every job was queued: stop those that were
            _stop(pool, presses, console)
        timer = None
        if settings.stop_after is not None:
            timer = threading.Timer(settings.stop_after, lambda: _stop(pool, presses, console))
            timer.daemon = True
        last: list[StepItem | None] = [None] * n
        with progress:
            while not all(j.done() for j in jobs):
                try:
                    news.wait(0.2)  # the listener wakes it: this only bounds a missed wake
                    news.clear()
                    for i, job in enumerate(jobs):
                        for raw in job.drain():
                            item = cast("StepItem", raw)
                            if timer is not None and not timer.is_alive() and not presses:
                                timer.start()
                            last[i] = item
                            done = item["step"] + 1
                            progress.update(tasks[i], completed=done,
                                            loss=f"{item['loss']:.4f}",
                                            acc=f"{item['accuracy']:.1%}")
                            if plain and (done % every == 0 or done == settings.steps):
                                console.print(f"seed {settings.seed + i}: step {done}/"
                                              f"{settings.steps}  loss {item['loss']:.4f}")
                except KeyboardInterrupt:
                    _stop(pool, presses, console)
        if timer is not None:
            timer.cancel()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the report is printed, whatever comes
        outcomes = [job.wait() for job in jobs]
    _print_report(console, settings, outcomes, last)
    bad = any(o.kind in ("failed", "crashed") for o in outcomes)
    return EXIT_FAILED if bad else EXIT_OK


def _stop(pool: Pool, presses: list[float], console: Console) -> None:
    """Stop every job: the first press with each job's ladder, a later one at once."""
    presses.append(time.monotonic())
    if len(presses) == 1:
        n = pool.cancel_all()
        console.print(f"Stop: cancelling {n} running jobs (each at its next yield; SIGTERM, "
                      "then SIGKILL at the end of the grace). Ctrl-C again: kill now.")
    else:
        pool.cancel_all(grace=0)
        console.print("Stop again: killing what still runs.")


def _print_report(
    console: Console, settings: DemoSettings, outcomes: list[Outcome],
    last: list[StepItem | None],
) -> None:
    table = Table(title=f"workstream demo --jobs {settings.jobs}: report", title_justify="left")
    for header in ("seed", "outcome", "steps", "loss", "accuracy", "pid", "seconds"):
        table.add_column(header)
    for i, outcome in enumerate(outcomes):
        item = last[i]
        what: str = outcome.kind
        if isinstance(outcome, CancelledOutcome):
            what = f"cancelled ({outcome.rung})"
        elif not isinstance(outcome, Completed):
            what = f"{outcome.kind}: {str(outcome.error).splitlines()[0]}"
        table.add_row(
            str(settings.seed + i), what,
            "-" if item is None else str(item["step"] + 1),
            "-" if item is None else f"{item['loss']:.4f}",
            "-" if item is None else f"{item['accuracy']:.1%}",
            str(outcome.pid), f"{outcome.duration:.2f}",
        )
    console.print(table)
