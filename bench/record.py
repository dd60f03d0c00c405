"""Record one ``python -m bench --json`` run as the project's published figures.

    python -m bench --json results.json
    python -m bench.record results.json

Writes the run's facts and its summary table (one line per headline figure) into
``bench/recorded-run.json``, the "Latest recorded run" section of ``bench/README.md`` and
the figures block of ``README.md`` (each between its markers): every figure the READMEs
cite comes from that one run, and ``tests/test_bench.py`` checks that they still agree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/record.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import _common as bc

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "bench" / "recorded-run.json"
BENCH_README = ROOT / "bench" / "README.md"
README = ROOT / "README.md"
BENCH_MARKERS = ("<!-- recorded-run:begin (python -m bench.record writes this part) -->",
                 "<!-- recorded-run:end -->")
README_MARKERS = ("<!-- bench-figures:begin (python -m bench.record writes this part) -->",
                  "<!-- bench-figures:end -->")


def extract(doc: dict[str, Any]) -> dict[str, Any]:
    """What is published of a suite document: its facts and its summary lines."""
    if doc.get("suite") != "workstream bench":
        raise SystemExit("not a document of `python -m bench --json` (no 'suite' key)")
    m = doc["machine"]
    failed = [name for name, b in doc["benchmarks"].items() if "failed" in b]
    return {
        "command": doc["command"],
        "date": doc["date"],
        "quick": doc["quick"],
        "machine": (f"{m['nproc']} CPUs ({m['cpu_model']}), {m['kernel']}, Python "
                    f"{m['python']}, numpy {m['numpy']}"),
        "git": m["git"],
        "seconds": m["seconds"],
        "load": [m["loadavg_start"], m["loadavg_end"]],
        "failed": failed,
        "summary": [list(line) for line in bc.summary_lines(doc["benchmarks"])],
    }


def facts_line(rec: dict[str, Any]) -> str:
    quick = " (`--quick`: short runs, the noisiest figures)" if rec["quick"] else ""
    failed = f"; FAILED: {', '.join(rec['failed'])}" if rec["failed"] else ""
    return (f"`{rec['command']}`{quick}, {rec['date']}, {rec['seconds']} s: "
            f"{rec['machine']}, workstream at git `{rec['git']}`, load average "
            f"{rec['load'][0]} -> {rec['load'][1]}{failed}.")


RATIO_NOTE = ("ratio = workstream / the reference measured in the same run: for a rate "
              "above 1 is better, for a time (us, ms, ns) below 1 is better.")


def bench_block(rec: dict[str, Any]) -> str:
    return "\n".join([
        "## Latest recorded run", "",
        facts_line(rec), RATIO_NOTE, "",
        bc.markdown_summary([tuple(line) for line in rec["summary"]]),
    ])


def readme_block(rec: dict[str, Any]) -> str:
    run = "one `--quick` run (short: its figures are the noisiest)" if rec["quick"] else "one run"
    return "\n".join([
        f"From {run}, {rec['date']} (`{rec['command']}`; machine, commit and "
        "every table: [bench/README.md](bench/README.md#latest-recorded-run)); " + RATIO_NOTE,
        "",
        bc.markdown_summary([tuple(line) for line in rec["summary"]]),
    ])


def block(text: str, markers: tuple[str, str]) -> str:
    """The text between ``markers`` in ``text`` (without the markers' lines)."""
    begin, end = markers
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"expected the markers {begin!r} and {end!r} once each")
    return text.split(begin, 1)[1].split(end, 1)[0].strip("\n")


def replace_block(text: str, markers: tuple[str, str], body: str) -> str:
    begin, end = markers
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def write(rec: dict[str, Any]) -> None:
    """Write the record and both READMEs' blocks."""
    RECORD.write_text(json.dumps(rec, indent=1) + "\n", encoding="utf-8")
    for path, markers, body in ((BENCH_README, BENCH_MARKERS, bench_block(rec)),
                                (README, README_MARKERS, readme_block(rec))):
        text = path.read_text(encoding="utf-8")
        block(text, markers)  # raises if the markers are missing
        path.write_text(replace_block(text, markers, body), encoding="utf-8")
        bc.log(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.record", description=__doc__)
    parser.add_argument("results", help="the JSON document of `python -m bench --json`")
    args = parser.parse_args(argv)
    with open(args.results, encoding="utf-8") as f:
        doc = json.load(f)
    write(extract(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
