"""The benchmark suite (``bench/``, not part of the package) runs and reports what it promises.

Each test runs the suite or one benchmark as a user does (``python -m bench ...``, in a
subprocess from the repository root) with tiny settings, and checks the JSON document: the
run's facts (date, machine, Python, git commit) and, in every table, that every row names
its reference (``ref``, a row of the same table) and has at least one ratio to it, unless
it says why it was skipped. The figures themselves are not checked: they are timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from workstream import __main__ as cli

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ["throughput", "large_arrays", "latency", "cancel_check", "cancel_latency",
              "startup", "progress", "pool"]

pytest.importorskip("numpy")  # large_arrays and cancel_check's worker rows import it


def run_bench(
    tmp_path: Path, *args: str, timeout: float = 50, env: dict[str, str] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Run ``python -m <args> --json FILE`` from the repository root; stdout and the JSON."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", *args, "--json", str(out)], cwd=ROOT, capture_output=True,
        text=True, timeout=timeout, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return proc.stdout, doc


def check_report(doc: dict[str, Any], script: str) -> None:
    """One benchmark's report: its facts, and a reference and a ratio in every row."""
    assert doc["script"] == script
    machine = doc["machine"]
    for key in ("date", "python", "cpu_model", "nproc", "git", "seconds"):
        assert machine.get(key) is not None, key
    assert doc["tables"], "no table"
    for table in doc["tables"]:
        first = table["columns"][0]
        names = {row[first] for row in table["rows"]}
        ratio_cols = [c for c in table["columns"] if c.startswith("x_")]
        assert ratio_cols, f"table {table['title']!r} has no ratio column"
        for row in table["rows"]:
            assert row.get("ref") in names, (table["title"], row)
            if row.get("skipped"):
                continue
            assert any(row.get(c) is not None for c in ratio_cols), (table["title"], row)


def test_list_names_every_benchmark() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--list"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()] == BENCHMARKS


def test_only_rejects_an_unknown_name() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--only", "latency,nosuch"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "nosuch" in proc.stderr and "throughput" in proc.stderr


def test_suite_json_has_the_run_facts_and_every_row_a_reference(tmp_path: Path) -> None:
    stdout, doc = run_bench(tmp_path, "bench", "--quick", "--only", "cancel_check")
    assert doc["suite"] == "workstream bench" and doc["schema"] == 1 and doc["quick"] is True
    for key in ("date", "python", "git", "cpu_model", "nproc", "seconds"):
        assert doc["machine"].get(key) is not None, key
    assert doc["date"] == doc["machine"]["date"]
    assert list(doc["benchmarks"]) == ["cancel_check"]
    check_report(doc["benchmarks"]["cancel_check"], "cancel_check")
    rows = {r["row"]: r for r in doc["benchmarks"]["cancel_check"]["tables"][0]["rows"]}
    assert rows["in a worker: check_cancelled() per iteration"]["ns_iter"] > 0
    assert "## cancel_check" in stdout and "ns/iter" in stdout
    # A closing summary for users; no internal verdicts.
    assert "## summary" in stdout and "the cancellation check per yield" in stdout
    assert "NOT met" not in stdout and "target" not in stdout
    assert doc["summary"] and set(doc["summary"][0]) == {
        "what", "workstream", "reference (same run)", "ratio"}


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("large_arrays", ["--sizes", "65536,1048576", "--total-mib", "2", "--min-items", "2"]),
        ("throughput", ["--n", "3000", "--repeats", "1", "--kinds", "dict"]),
        ("latency", ["--n", "10", "--repeats", "1"]),
    ],
)
def test_streaming_benchmarks_report_ratios(
    tmp_path: Path, script: str, args: list[str]
) -> None:
    stdout, doc = run_bench(tmp_path, f"bench.{script}", *args)
    check_report(doc, script)
    assert "FAILED" not in stdout


def test_large_arrays_warms_every_row_up_and_compares_with_a_copy_into_shared_memory(
    tmp_path: Path,
) -> None:
    """Every row runs once untimed first (a --quick run's first row used to pay numpy's
    import in the parent: 0.2x mp.Queue at 64 KiB instead of 4x); the ratios are to a
    copy into shared-memory blocks; the summary has the shared_empty lines."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.large_arrays", "--sizes", "65536,1048576",
         "--total-mib", "2", "--min-items", "2", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=50,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warm-up: every row once at every size, untimed" in proc.stderr
    doc = json.loads(out.read_text(encoding="utf-8"))
    rows = {r["row"]: r for r in doc["tables"][0]["rows"]}
    ref = "numpy.copyto into shared-memory blocks (reference)"
    assert all(r["ref"] == ref for r in rows.values())
    assert rows[ref]["x_copyto_1048576"] == 1.0
    assert "workstream, shared_empty (zero copy)" in rows
    whats = [h["what"] for h in doc["headlines"]]
    assert "1 MiB arrays, one copy (default)" in whats
    assert whats.count("1 MiB arrays through shared_empty (zero copy)") == 2


def test_a_missing_optional_reference_is_a_skipped_row(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "faster_fifo.py").write_text('raise ImportError("hidden by the test")\n')
    env = {**os.environ, "PYTHONPATH": str(fake)}
    stdout, doc = run_bench(tmp_path, "bench.throughput", "--n", "2000", "--repeats", "1",
                            "--kinds", "int", env=env)
    check_report(doc, "throughput")
    rows = {r["row"]: r for r in doc["tables"][0]["rows"]}
    assert "hidden by the test" in rows["faster-fifo put / get_many"]["skipped"]
    assert "skipped: faster_fifo not importable" in stdout


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cancel_and_startup_benchmarks_report_ratios(tmp_path: Path) -> None:
    _, doc = run_bench(tmp_path, "bench.cancel_latency", "--quick", "--trials", "1",
                       "--slow-trials", "1", timeout=100)
    check_report(doc, "cancel_latency")
    rows = doc["tables"][0]["rows"]
    assert all(r["not_reaped"] == 0 for r in rows if not r.get("skipped"))
    _, doc = run_bench(tmp_path, "bench.startup", "--quick", "--trials", "2", timeout=100)
    check_report(doc, "startup")
    worker_rows = [r for r in doc["tables"][0]["rows"] if "Worker" in r["row"]]
    assert worker_rows, "no warm-worker row"


def test_workstream_bench_runs_the_suite_of_this_checkout(
    capfd: pytest.CaptureFixture[str],
) -> None:
    assert cli.find_bench_root(cwd="/") == str(ROOT)  # the checkout this package is in
    assert cli.main(["bench", "--list"]) == 0
    assert capfd.readouterr().out.split()[0] == "throughput"


def test_workstream_bench_outside_a_checkout_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(cli, "find_bench_root", lambda cwd=None: None)
    assert cli.main(["bench", "--quick"]) == cli.EXIT_USAGE
    assert "python -m bench" in capsys.readouterr().err
    assert os.path.isdir(ROOT / "bench")


@pytest.mark.timeout(120)
def test_pool_benchmark_reports_ratios(tmp_path: Path) -> None:
    _, doc = run_bench(tmp_path, "bench.pool", "--tasks", "200", "--trials", "3",
                       "--repeats", "1", timeout=100)
    check_report(doc, "pool")
    rows = {r["row"]: r for r in doc["tables"][0]["rows"]}
    assert rows["Pool.map"]["per_s"] > 0
    assert "ref: ProcessPoolExecutor.map chunksize=1" in rows


# -- the recorded run: the READMEs cite exactly its figures ---------------------------------


def _record_module() -> Any:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import bench.record

    return bench.record


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_the_readmes_cite_exactly_the_latest_recorded_run() -> None:
    """bench/README.md's "Latest recorded run" and README.md's figures block are what
    ``python -m bench.record`` writes from bench/recorded-run.json, and the README's
    Benchmarks section quotes no figure outside that block."""
    rec_mod = _record_module()
    rec = json.loads(rec_mod.RECORD.read_text(encoding="utf-8"))
    assert rec["summary"], "the recorded run has no summary line"
    bench_text = rec_mod.BENCH_README.read_text(encoding="utf-8")
    readme_text = rec_mod.README.read_text(encoding="utf-8")
    bench_block = rec_mod.block(bench_text, rec_mod.BENCH_MARKERS)
    readme_block = rec_mod.block(readme_text, rec_mod.README_MARKERS)
    assert bench_block == rec_mod.bench_block(rec)
    assert readme_block == rec_mod.readme_block(rec)
    assert _table_lines(readme_block) == _table_lines(bench_block)
    assert len(_table_lines(bench_block)) == 2 + len(rec["summary"])
    section = readme_text[readme_text.index("\n## Benchmarks"):]
    section = section[: section.index("\n## ", 1)]
    outside = section.replace(readme_block, "")
    for unit in ("GB/s", "items/s", " us", " ms", " ns", "M/s"):
        assert unit not in outside, f"a figure ({unit}) outside the recorded block"


def test_record_writes_the_run_into_both_readmes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tool on a suite document: the record, both blocks, the rest untouched."""
    rec_mod = _record_module()
    bench_md, readme_md = tmp_path / "bench.md", tmp_path / "readme.md"
    bench_md.write_text(f"head\n{rec_mod.BENCH_MARKERS[0]}\nold\n{rec_mod.BENCH_MARKERS[1]}\n"
                        "tail\n", encoding="utf-8")
    readme_md.write_text(f"top\n{rec_mod.README_MARKERS[0]}\n{rec_mod.README_MARKERS[1]}\n"
                         "end\n", encoding="utf-8")
    monkeypatch.setattr(rec_mod, "BENCH_README", bench_md)
    monkeypatch.setattr(rec_mod, "README", readme_md)
    monkeypatch.setattr(rec_mod, "RECORD", tmp_path / "rec.json")
    machine = {"nproc": 2, "cpu_model": "CPU", "kernel": "Linux", "python": "3.11",
               "numpy": "2", "git": "abc1234", "seconds": 9.5, "loadavg_start": [0.1],
               "loadavg_end": [0.2]}
    headline = {"what": "small dicts", "ours": 1.5e6, "unit": "items/s",
                "reference": "multiprocessing.Queue", "ref_value": 1.5e5, "ratio": 10.0}
    doc = {"suite": "workstream bench", "command": "python -m bench --json r.json",
           "date": "2026-12-07T21:00:00+00:00", "quick": False, "machine": machine,
           "benchmarks": {"throughput": {"headlines": [headline]}, "latency": {"failed": "x"}}}
    (tmp_path / "r.json").write_text(json.dumps(doc), encoding="utf-8")
    assert rec_mod.main([str(tmp_path / "r.json")]) == 0
    bench_text, readme_text = bench_md.read_text(), readme_md.read_text()
    assert bench_text.startswith("head\n") and bench_text.endswith("tail\n")
    assert readme_text.startswith("top\n") and readme_text.endswith("end\n")
    line = "| small dicts | 1.50M items/s | multiprocessing.Queue: 150k items/s | 10.0x |"
    assert line in bench_text and line in readme_text and "old" not in bench_text
    assert "FAILED: latency" in bench_text and "2026-12-07T21:00:00+00:00" in readme_text
    assert json.loads((tmp_path / "rec.json").read_text())["git"] == "abc1234"
