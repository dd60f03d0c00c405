"""The ``workstream`` command (also ``python -m workstream``): ``demo`` and ``bench``.

``workstream demo [OPTIONS]`` runs the demo (:mod:`workstream.demo`, not part of the
library). ``workstream bench [ARGS]`` runs the benchmark suite of a source checkout
(``python -m bench ARGS``; see :func:`run_bench`). This module only dispatches: it is the
console script's entry point (``workstream.__main__:main``) as well as ``-m``'s, and
imports nothing of the library but the demo's command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from workstream.demo import cli as demo_cli

EXIT_USAGE = 2
"""Exit status of a usage error (argparse exits with it by itself on a bad option)."""
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C outside the demo's live view."""

BENCH_HELP = ("run the benchmark suite of a source checkout (python -m bench; "
              "'workstream bench --help' for its options)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit
    status: the sub-command's (see :mod:`workstream.demo.cli` and :func:`run_bench`), 2 for
    a usage error, 130 for Ctrl-C while the command line is read (a plain "interrupted",
    no traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # every argument after it belongs to the suite
        return run_bench(argv[1:])
    try:  # the parser's defaults import numpy: Ctrl-C may come meanwhile
        parser, demo = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.command != "demo":
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return demo_cli.run(args, demo)


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The argument parser of ``workstream``, and that of its ``demo`` sub-command."""
    parser = argparse.ArgumentParser(
        prog="workstream",
        description="Run heavy work in a child process, stream its results, stop it cleanly.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("bench", add_help=False, help=BENCH_HELP)  # handled by main() itself
    demo = sub.add_parser("demo", help=demo_cli.HELP, description=demo_cli.DESCRIPTION)
    demo_cli.add_arguments(demo)
    return parser, demo


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


if __name__ == "__main__":  # not when multiprocessing re-imports the main module
    sys.exit(main())
