"""The demo's options: the ``workstream demo`` arguments and :class:`DemoSettings`.

Imports only workstream's public API and the standard library (numpy is looked for
lazily, for the default number of steps), so the ``workstream`` command can build its
parser without the demo's optional dependencies.
"""

from __future__ import annotations

import argparse
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass

from workstream import DEFAULT_GRACE, Options

INSTALL_HINT = "pip install 'workstream[demo]'"
"""How to install the terminal demo's dependencies (numpy, rich, psutil)."""
GUI_INSTALL_HINT = "pip install 'workstream[demo,qt]'"
"""How to install the GUI demo's dependencies (the above and PySide6)."""


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
    jobs: int = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoSettings:
        """Settings from arguments parsed by a parser set up with :func:`add_arguments`."""
        return cls(steps=args.steps, stop_after=args.stop_after, stuck=args.stuck, grace=args.grace,
                   start_method=args.start_method, seed=args.seed, fail_at=args.fail_at,
                   jobs=getattr(args, "jobs", 1))

    @property
    def resolved_start_method(self) -> str:
        """The start method the worker uses: the chosen one, else workstream's default."""
        return self.start_method or Options().resolved_start_method


def add_arguments(demo: argparse.ArgumentParser) -> None:
    """Add the ``workstream demo`` options to ``demo`` (a sub-command's parser)."""
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
                                         f"(default: {Options().resolved_start_method})")
    demo.add_argument("--seed", type=int, default=0, help="seed of data and weights")
    demo.add_argument("--fail-at", type=_non_negative_int, default=None, metavar="STEP",
                      help="make the worker raise at STEP (to see how a failure is reported)")
    demo.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                      help="train N models at once (seeds --seed, --seed + 1, ...) on a "
                           "workstream.Pool, one live line each; Ctrl-C stops them all")
    demo.add_argument("--gui", action="store_true",
                      help="show the demo in a Qt window (needs PySide6: "
                           f"{GUI_INSTALL_HINT}); with --stop-after the window "
                           "closes by itself once the job has ended")
    demo.add_argument("--screenshot", default=None, metavar="PATH",
                      help="with --gui: save the window as a PNG just before it closes")


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


def _default_steps() -> int:
    """The worker's default number of steps (1 if numpy is missing: the demo won't run)."""
    try:
        from .model import DEFAULT_STEPS
    except ImportError:  # numpy missing: the demo says so when it runs
        return 1
    return DEFAULT_STEPS
