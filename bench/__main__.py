"""The benchmark suite: ``python -m bench`` (or ``workstream bench`` in a checkout).

Runs the benchmarks one after the other (never two at once: on a small machine they
would spoil each other), prints each one's tables of ratios to references measured in
the same run, and with ``--json PATH`` writes one document with every benchmark's rows,
the date, the machine, the Python version and the git commit.

    python -m bench                      # the full suite (~15 min on 2 cores)
    python -m bench --quick              # a short run (under a minute on 2 cores)
    python -m bench --only latency,cancel_check --json results.json
    python -m bench --list
    python -m bench.record results.json  # publish a --json run in the READMEs

The suite ends with a summary table: one line per headline figure (each benchmark adds
its own with ``Report.headline``). Each benchmark also runs alone, with more options:
``python -m bench.throughput --help``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/__main__.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import _common as bc

SCHEMA = 1
QUICK_NOTE = (
    "--quick: one short repeat per row, so every figure is noisier than a full run's. "
    "One-time costs are kept out all the same: large_arrays runs every row once untimed "
    "first, latency drops each run's first 20 samples, cancel_latency and startup give "
    "medians of several trials (startup's 'first' column is the cold start on purpose)"
)
BENCHMARKS: dict[str, str] = {
    "throughput": "small items/s (1,000,000 ints and dicts) vs mp.Queue, Pipe, faster-fifo, "
                  "a raw-pipe limit",
    "large_arrays": "GB/s for numpy arrays 64 KiB ... 64 MiB vs mp.Queue, Pipe, numpy.copyto",
    "latency": "one item child -> parent vs a bare multiprocessing.Pipe",
    "cancel_check": "ns per yield of the cancellation check on the hot path",
    "cancel_latency": "cancel() -> child reaped, vs terminate(), pebble, ProcessPoolExecutor",
    "startup": "start() -> first item: cold spawn / forkserver (numpy or not), warm Worker",
    "progress": "ns per workstream.progress() call in a flood, job.progress read",
    "pool": "Pool.map over tiny tasks vs ProcessPoolExecutor/pebble/loky; cancel; start",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="workstream's benchmark suite: each benchmark prints ratios to "
                    "references measured in the same run.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="a short run of every benchmark (the suite under a minute)")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="write every benchmark's results to PATH as one JSON document")
    parser.add_argument("--only", metavar="NAME[,NAME]", default=None,
                        help=f"run only these benchmarks (of: {', '.join(BENCHMARKS)})")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return parser


def selected(only: str | None) -> list[str]:
    """The benchmarks named by ``--only`` (all by default), in suite order."""
    if only is None:
        return list(BENCHMARKS)
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown or not names:
        raise SystemExit(f"--only: unknown benchmark(s) {unknown or [only]}; "
                         f"choose from {', '.join(BENCHMARKS)}")
    return [name for name in BENCHMARKS if name in names]


def run_one(name: str, quick: bool) -> bc.Report:
    """Run benchmark ``name`` with its defaults (or its ``--quick`` settings)."""
    module: Any = importlib.import_module(f"bench.{name}")
    args = module.build_parser().parse_args(["--quick"] if quick else [])
    report: bc.Report = module.run(args)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; 0 if every benchmark ran, 1 if one failed (the others still run)."""
    args = build_parser().parse_args(argv)
    if args.list:
        for name, what in BENCHMARKS.items():
            print(f"{name:16s} {what}")
        return 0
    names = selected(args.only)
    machine = bc.machine_info()
    started = bc.perf()
    print(f"# workstream benchmark suite{' (--quick)' if args.quick else ''}: "
          f"{', '.join(names)}")
    print(f"# {machine['date']}  {machine['nproc']} CPUs ({machine['cpu_model']}), "
          f"Python {machine['python']}, workstream {machine['workstream']} "
          f"(git {machine['git']}), load {machine['loadavg_start']}")
    print(f"# command: {bc.command_line()}")
    if args.quick:
        print(f"# {QUICK_NOTE}")
    sys.stdout.flush()
    results: dict[str, Any] = {}
    failed: list[str] = []
    for name in names:
        bc.log(f"== {name}")
        print(f"\n## {name}: {BENCHMARKS[name]}")
        sys.stdout.flush()
        try:
            report = run_one(name, args.quick)
        except Exception:
            bc.log(f"{name} FAILED:\n{traceback.format_exc()}")
            print(f"FAILED (see stderr): {traceback.format_exc().splitlines()[-1]}")
            results[name] = {"failed": traceback.format_exc()}
            failed.append(name)
            continue
        report.print(header=False)
        print(f"({report.machine['seconds']} s)")
        results[name] = report.to_dict()
    try:
        machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        machine["loadavg_end"] = None
    machine["seconds"] = round(bc.perf() - started, 1)
    summary = bc.summary_lines(results)
    if summary:
        print("\n## summary: one line per headline figure, ratio = workstream / reference")
        print(bc.format_summary(summary))
    print(f"\n# suite done in {machine['seconds']} s, load {machine['loadavg_end']}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if args.json:
        bc.write_json(args.json, {
            "suite": "workstream bench",
            "schema": SCHEMA,
            "date": machine["date"],
            "command": bc.command_line(),
            "quick": args.quick,
            "machine": machine,
            "benchmarks": results,
            "summary": [dict(zip(bc.SUMMARY_HEADER, line, strict=True)) for line in summary],
        })
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
