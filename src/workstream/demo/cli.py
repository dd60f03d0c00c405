"""``workstream demo``: check the optional dependencies, then run the terminal or the
Qt demo (imported only now, so a missing dependency gives a clear message, not a
traceback).

Exit status: 0 after completion or a clean stop, 1 if the job failed or crashed (or left
a process behind), 2 for a usage error or missing dependencies, 130 for Ctrl-C before
the job started (a plain "interrupted", no traceback). A Ctrl-C once the job has ended
changes nothing: the report is printed and the status is its own.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .report import EXIT_INTERRUPTED, EXIT_USAGE
from .settings import GUI_INSTALL_HINT, INSTALL_HINT, DemoSettings, add_arguments

DEMO_DEPENDENCIES = ("numpy", "rich")
HELP = "train a small numpy network in a worker process; Ctrl-C stops it"
DESCRIPTION = (
    "Train a small neural network (numpy) in a worker process, stream one item per "
    "step, and stop it on Ctrl-C (twice: kill at once) or after --stop-after. "
    f"Needs numpy and rich: {INSTALL_HINT}"
)

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "missing_demo_dependencies", "run"]


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the demo with ``args`` (parsed by a parser set up with :func:`add_arguments`);
    return the exit status. ``parser`` reports usage errors (it exits with status 2)."""
    if args.gui:
        return _run_gui(args)
    if args.screenshot is not None:
        parser.error("--screenshot needs --gui")
    try:  # Ctrl-C while importing, or outside the live view (a started job is stopped)
        missing = missing_demo_dependencies()
        if missing:
            print(f"workstream demo needs numpy and rich; missing: {', '.join(missing)}.\n"
                  f"Install them with:  {INSTALL_HINT}", file=sys.stderr)
            return EXIT_USAGE
        settings = DemoSettings.from_args(args)
        if settings.jobs > 1:
            from .jobs import run_jobs_demo

            return run_jobs_demo(settings)
        from .terminal import run_demo

        return run_demo(settings)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run_gui(args: argparse.Namespace) -> int:
    """``workstream demo --gui``: the Qt window; 2 if Qt or numpy is missing."""
    try:
        from .gui import run_gui_demo
    except ImportError as exc:
        print(f"workstream demo --gui needs numpy and PySide6: {exc}\n"
              f"Install them with:  {GUI_INSTALL_HINT}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # while importing Qt (a second or so)
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return run_gui_demo(DemoSettings.from_args(args), args.screenshot)


def missing_demo_dependencies() -> list[str]:
    """Return the names of the demo's optional dependencies that cannot be imported."""
    missing = []
    for name in DEMO_DEPENDENCIES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing
