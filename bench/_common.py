"""Shared helpers of the benchmark scripts: arguments, clocks, statistics, tables, JSON.

Stdlib only and cheap to import: forkserver and spawn children import the running
script as their main module (and with it this file), and ``bench/startup.py`` must not
pull numpy into a process that is supposed to import it cold.

Conventions of every script:

* ``--quick``: a short run (the whole script well under a minute);
* ``--json PATH``: also write the results as JSON (the table is printed either way);
* ``--stat best|median``: how repeated runs are combined (best-of-N by default: on a
  shared 2-core machine one slow repeat drags a median, a best-of-N hardly moves);
* ``--repeats N``, ``--start-method M``: override the defaults;
* every script has ``build_parser()``, ``run(args) -> Report`` (measure, print nothing
  to stdout) and ``main(argv)``; ``python -m bench`` runs them all (``bench/__main__.py``).

Every table row carries ``ref``: the name of the row of the same table its ratios are
taken against (its own name for a reference row). A row that could not run (an optional
package missing) has ``skipped`` (why) and no figures.

Every script measures its references in the same run, interleaved with the rows under
test, and prints ratios to them: the ratios are the figures to compare between runs.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

perf = time.perf_counter
"""The clock of every measurement (CLOCK_MONOTONIC on Linux, shared by all processes)."""

START_METHODS = ("forkserver", "spawn", "fork")


def log(message: str) -> None:
    """Progress goes to stderr, so stdout carries only the tables."""
    print(message, file=sys.stderr, flush=True)


# -- arguments ----------------------------------------------------------------------------


def make_parser(description: str, *, start_method: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="short run (the whole script well under a minute)"
    )
    parser.add_argument(
        "--json", metavar="PATH", default=None, help="also write the results as JSON to PATH"
    )
    parser.add_argument(
        "--stat", choices=("best", "median"), default="best",
        help="combine repeated runs by best-of-N (default) or by their median",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, metavar="N", help="runs per row (see --help text)"
    )
    if start_method:
        parser.add_argument(
            "--start-method", choices=START_METHODS, default="forkserver",
            help="multiprocessing start method of every row (default: forkserver, "
                 "workstream's default on Linux)",
        )
    return parser


def pick(args: argparse.Namespace, name: str, default: int, quick: int) -> int:
    """``args.<name>`` if given on the command line, else the (quick) default."""
    value = getattr(args, name, None)
    if value is not None:
        if value < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
        return int(value)
    return quick if args.quick else default


# -- statistics ---------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in 0..100; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[k]


def combine(values: Sequence[float], stat: str, *, higher_is_better: bool) -> float:
    """Combine repeats: best-of-N (max of a rate, min of a time) or the median."""
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return math.nan
    if stat == "median":
        return median(clean)
    return max(clean) if higher_is_better else min(clean)


def ratio(a: float, b: float) -> float:
    if b == 0 or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


# -- tables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str | None = None  # format spec for numbers; None = str()


def _cell(value: Any, fmt: str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if fmt is None or isinstance(value, str):
        return str(value)
    return format(value, fmt)


def format_table(columns: Sequence[Column], rows: Iterable[dict[str, Any]]) -> str:
    """A plain text table: the first column left-aligned, the others right-aligned."""
    rows = list(rows)
    cells = [[_cell(row.get(c.key), c.fmt) for c in columns] for row in rows]
    widths = [len(c.header) for c in columns]
    for line in cells:
        widths = [max(w, len(s)) for w, s in zip(widths, line, strict=True)]
    for row, line in zip(rows, cells, strict=True):
        if row.get("skipped"):  # the reason instead of empty figures
            line[1:] = [f"skipped: {row['skipped']}"]

    def fmt_line(parts: Sequence[str]) -> str:
        out = [parts[0].ljust(widths[0])]
        out += [p.rjust(w) for p, w in zip(parts[1:], widths[1:], strict=True)]
        return "  ".join(out).rstrip()

    lines = [fmt_line([c.header for c in columns]), fmt_line(["-" * w for w in widths])]
    lines += [
        fmt_line(line) if len(line) == len(columns) else f"{line[0].ljust(widths[0])}  {line[1]}"
        for line in cells
    ]
    return "\n".join(lines)


# -- machine facts ------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def missing(module: str) -> str | None:
    """Why the optional ``module`` cannot be used (not installed, or its import fails),
    or None if it imports."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"{module} not importable ({exc}); pip install -e '.[bench]'"
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_state() -> str | None:
    """``<short hash>`` of the checkout, ``+dirty`` if src/ has uncommitted changes."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "src"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    """Facts about this run; reads package versions without importing the packages."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": f"{platform.system()} {platform.release()}",
        "workstream": _version("workstream"),
        "git": _git_state(),
        "numpy": _version("numpy"),
        "cloudpickle": _version("cloudpickle"),
        "faster_fifo": _version("faster-fifo"),
        "pebble": _version("pebble"),
        "loadavg_start": load,
        "clock": time.get_clock_info("perf_counter").implementation,
    }


def command_line() -> str:
    """The command as typed (``sys.orig_argv``), with the interpreter path relative to
    the current directory where it lies below it."""
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    if argv and os.path.isabs(argv[0]):
        rel = os.path.relpath(argv[0])
        if not rel.startswith(".."):
            argv[0] = rel
    return " ".join(argv)


# -- the report ---------------------------------------------------------------------------


class Report:
    """Collects tables; prints them (stdout) and writes the JSON document (``--json``)."""

    def __init__(self, script: str, args: argparse.Namespace, params: dict[str, Any]) -> None:
        self.script = script
        self.args = args
        self.params = params
        self.machine = machine_info()
        self.started = perf()
        self.tables: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.headlines: list[dict[str, Any]] = []

    def add_table(
        self, title: str, columns: Sequence[Column], rows: list[dict[str, Any]],
    ) -> None:
        self.tables.append({"title": title, "columns": list(columns), "rows": rows})

    def note(self, text: str) -> None:
        self.notes.append(text)

    def headline(
        self, what: str, ours: float, unit: str, reference: str, ref_value: float,
    ) -> None:
        """Add one line to the suite's closing summary: ``what`` measured ``ours`` (in
        ``unit``) against ``reference``, which measured ``ref_value`` in the same run.

        One call per figure is all a benchmark needs to appear in the summary table, the
        recorded run and the README (``python -m bench.record``). The ratio is
        ``ours / ref_value`` whatever the unit (for a time, below 1 is faster).
        """
        self.headlines.append({
            "what": what, "ours": ours, "unit": unit, "reference": reference,
            "ref_value": ref_value, "ratio": ratio(ours, ref_value),
        })

    def complete(self) -> None:
        """Record the end of the run (load average, duration); later calls do nothing."""
        m = self.machine
        if "seconds" in m:
            return
        try:
            m["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            m["loadavg_end"] = None
        m["seconds"] = round(perf() - self.started, 1)

    def print(self, *, header: bool = True) -> None:
        """Print the tables and notes to stdout (with the machine facts if ``header``)."""
        self.complete()
        m = self.machine
        if header:
            print(f"# {self.script}  {m['date']}  ({m['seconds']} s)")
            print(
                f"# {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, "
                f"workstream {m['workstream']} (git {m['git']}), "
                f"load {m['loadavg_start']} -> {m['loadavg_end']}"
            )
            print(f"# command: {command_line()}")
        for table in self.tables:
            print()
            print(table["title"])
            print(format_table(table["columns"], table["rows"]))
        if self.notes:
            print()
            for text in self.notes:
                print(f"* {text}")
        sys.stdout.flush()

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of this run (NaN and inf as null)."""
        self.complete()
        doc = {
            "script": self.script,
            "command": command_line(),
            "machine": self.machine,
            "params": self.params,
            "tables": [
                {
                    "title": t["title"],
                    "columns": [c.key for c in t["columns"]],
                    "rows": t["rows"],
                }
                for t in self.tables
            ],
            "notes": self.notes,
            "headlines": self.headlines,
        }
        cleaned: dict[str, Any] = _clean(doc)
        return cleaned

    def finish(self) -> None:
        """Print the report; write the JSON document too if ``--json`` was given."""
        self.print()
        if getattr(self.args, "json", None):
            write_json(self.args.json, self.to_dict())


def write_json(path: str, doc: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_clean(doc), f, indent=1, default=str)
        f.write("\n")
    log(f"wrote {path}")


def _clean(obj: Any) -> Any:
    """NaN and inf become null (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


# -- the closing summary ------------------------------------------------------------------

SUMMARY_HEADER = ("what", "workstream", "reference (same run)", "ratio")


def figure(value: float | None, unit: str) -> str:
    """``value`` with three significant digits and its unit; a large count per second
    with k / M (``1.50M items/s``)."""
    if value is None or math.isnan(value):
        return "-"
    if unit.endswith("/s") and not unit.startswith(("GB", "MB")):
        for scale, prefix in ((1e6, "M"), (1e3, "k")):
            if abs(value) >= scale:
                return f"{_sig(value / scale)}{prefix} {unit}"
    return f"{_sig(value)} {unit}"


def _sig(x: float) -> str:
    if x == 0:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:.{digits}f}"


def summary_lines(benchmarks: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The summary table's lines (what, ours, reference, ratio) from the ``benchmarks``
    part of a suite document, in suite order; a failed benchmark has none."""
    lines = []
    for doc in benchmarks.values():
        for h in doc.get("headlines", ()):
            r = h.get("ratio")
            lines.append((
                h["what"], figure(h["ours"], h["unit"]),
                f"{h['reference']}: {figure(h['ref_value'], h['unit'])}",
                "-" if r is None or math.isnan(r) else f"{_sig(r)}x",
            ))
    return lines


def format_summary(lines: Sequence[tuple[str, ...]]) -> str:
    """The summary as a plain text table (stdout)."""
    widths = [max(len(line[i]) for line in (SUMMARY_HEADER, *lines)) for i in range(4)]
    out = []
    for line in (SUMMARY_HEADER, tuple("-" * w for w in widths), *lines):
        out.append("  ".join([line[0].ljust(widths[0])]
                             + [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)]
                             ).rstrip())
    return "\n".join(out)


def markdown_summary(lines: Sequence[tuple[str, ...]]) -> str:
    """The summary as a Markdown table (bench/README.md and README.md)."""
    out = ["| " + " | ".join(SUMMARY_HEADER) + " |", "|---|---|---|---|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines]
    return "\n".join(out)
