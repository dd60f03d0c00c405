"""workstream.progress() in the worker; job.progress, on_progress in the parent.

Progress is pulled (``job.progress`` reads shared memory), so tests that wait for a
report poll it with ``wait_until`` (bounded); every other handshake is a gate.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import pytest

import workers_progress as wp
import workers_stream as ws
import workstream
from conftest import wait_until
from workstream import Completed, Progress


@pytest.mark.timeout(30)
def test_job_progress_is_the_newest_report(tmp_path: Path) -> None:
    gate1 = ws.make_gate(str(tmp_path), "g1")
    gate2 = ws.make_gate(str(tmp_path), "g2")
    job = workstream.start(wp.report_between_gates, gate1, gate2)
    wait_until(lambda: job.state == "running", 20, "the job to run")
    assert job.progress is None  # nothing reported yet
    ws.release(gate1, wait_until)
    wait_until(lambda: job.progress is not None, 20, "the first report")
    p = job.progress
    assert isinstance(p, Progress)
    assert (p.done, p.total, p.fraction) == (5, 10, 0.5)
    assert dict(p.fields) == {"phase": "train", "loss": 0.5, "best": None, "ok": True}
    assert p.elapsed > 0
    # one report read: the rate is the average since the job's start
    assert p.rate is not None and math.isclose(p.rate, 5 / p.elapsed)
    assert p.eta is not None and math.isclose(p.eta, 5 / p.rate)
    assert job.progress is p  # no new report: the same snapshot
    ws.release(gate2, wait_until)
    assert job.result(timeout=20) == "ok"
    last = job.progress  # kept after the end (the control block is closed)
    assert last is not None and (last.done, last.total, last.eta) == (10, 10, 0.0)
    assert dict(last.fields) == {"phase": "done"}
    assert last.rate is not None and last.rate > 0


@pytest.mark.timeout(30)
def test_a_flood_of_reports_ends_with_the_last_one() -> None:
    """100,000 calls: the parent sees the last one however the interval fell."""
    job = workstream.start(wp.flood, 100_000)
    assert job.result(timeout=20) == 100_000
    p = job.progress
    assert p is not None and (p.done, p.total) == (100_000, 100_000)


@pytest.mark.timeout(30)
def test_progress_is_not_an_item() -> None:
    job = workstream.start(wp.steady, 3, 0.0)
    assert list(job) == [0, 1, 2]
    outcome = job.wait(timeout=20)
    assert isinstance(outcome, Completed) and outcome.items_delivered == 3
    p = job.progress
    assert p is not None and (p.done, dict(p.fields)) == (3, {"step": 2})


@pytest.mark.timeout(30)
def test_numpy_scalars_are_numbers() -> None:
    pytest.importorskip("numpy")
    job = workstream.start(wp.numpy_progress)
    assert job.result(timeout=20) == "ok"
    p = job.progress
    assert p is not None and (p.done, p.total) == (3, 4.0)
    assert type(p.done) is int


@pytest.mark.timeout(30)
def test_on_progress_gets_reports_in_order_then_on_done() -> None:
    """Paced (only the newest each tick), in order, the last one included, all before
    on_done, all on one listener thread."""
    calls: list[Any] = []
    threads: set[str] = set()

    def on_progress(p: Progress) -> None:
        threads.add(threading.current_thread().name)
        calls.append(p)

    job = workstream.start(
        wp.steady, 20, 0.01, on_progress=on_progress, on_done=lambda o: calls.append(o),
        on_item=lambda item: None,
    )
    outcome = job.wait(timeout=20)
    assert isinstance(outcome, Completed)
    assert calls[-1] is outcome
    reports = calls[:-1]
    assert reports and all(isinstance(p, Progress) for p in reports)
    dones = [p.done for p in reports]
    assert dones == sorted(dones) and len(set(dones)) == len(dones)
    assert dones[-1] == 20
    assert len(threads) == 1 and threading.current_thread().name not in threads
    assert reports[-1].rate is not None and reports[-1].rate > 0


@pytest.mark.timeout(30)
def test_on_progress_alone_and_its_error_cancels_the_job() -> None:
    def broken(p: Progress) -> None:
        raise ValueError("bad progress callback")

    job = workstream.start(wp.steady, 10_000, 0.001, on_progress=broken)
    with pytest.raises(workstream.CallbackError) as info:
        job.wait(timeout=20)
    assert isinstance(info.value.__cause__, ValueError)
    assert job.outcome is not None and job.outcome.kind == "cancelled"


@pytest.mark.timeout(30)
def test_a_warm_worker_starts_each_job_without_progress() -> None:
    with workstream.Worker() as worker:
        first = worker.start(wp.report_once, 7)
        assert first.result(timeout=20) == "reported"
        p = first.progress
        assert p is not None and p.done == 7
        second = worker.start(wp.ask_grace)
        assert second.result(timeout=20) == []
        assert second.progress is None  # the slot was cleared for the new job
        third = worker.start(wp.report_once, 2)  # a rate of its own job only
        assert third.result(timeout=20) == "reported"
        p3 = third.progress
        assert p3 is not None and p3.done == 2
        assert p3.rate is not None and math.isclose(p3.rate, 2 / p3.elapsed)
        assert first.progress is p  # an ended job keeps its last report


@pytest.mark.timeout(30)
def test_rate_and_eta_of_a_steady_worker() -> None:
    job = workstream.start(wp.steady, 30, 0.02)
    for _ in job:
        pass
    p = job.progress
    assert p is not None and p.rate is not None
    # 50 per second at most (each step sleeps 20 ms); a busy machine only slows it
    assert 1 < p.rate <= 55
    assert p.eta == 0.0
    assert math.isclose(p.fraction or 0, 1.0)


@pytest.mark.timeout(10)
def test_progress_outside_a_worker() -> None:
    with pytest.raises(workstream.NotInWorkerError, match=r"workstream\.progress\(\)"):
        workstream.progress(1)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("code", "exc", "text"), [
    ("workstream.progress('3')", "TypeError", "done must be a number, not str"),
    ("workstream.progress(True)", "TypeError", "done must be a number, not bool"),
    ("workstream.progress(-1)", "ValueError", "done must be a finite number >= 0, not -1"),
    ("workstream.progress(1, float('inf'))", "ValueError", "total must be a finite number"),
    ("workstream.progress(1, [2])", "TypeError", "total must be a number, not list"),
    ("workstream.progress(1, loss=object())", "TypeError", "must be a str, int, float, bool"),
    ("workstream.progress(1, note='x' * 5000)", "ValueError", "bytes as JSON; at most"),
])
def test_bad_progress_calls_raise_in_the_worker(code: str, exc: str, text: str) -> None:
    import workers_badinput as wb

    outcome = workstream.start(wb.run_code, code).wait(timeout=20)
    assert isinstance(outcome, workstream.Failed), outcome
    err = outcome.error
    assert isinstance(err, workstream.WorkerError)
    assert err.type_name == exc and text in err.message, err.message


@pytest.mark.timeout(60)
def test_the_progress_bench_reports_its_rows(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "progress.json"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "bench.progress", "--quick", "--n", "20000", "--json", str(out)],
        cwd=root, capture_output=True, text=True, timeout=50,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["row"]: r for r in json.loads(out.read_text())["tables"][0]["rows"]}
    plain = rows["in a worker: progress(i, n) per iteration"]
    assert plain["ns_iter"] > 0 and plain["ref"] == "in a worker: empty for loop"
    assert rows["in the parent: job.progress, nothing new"]["ns_iter"] > 0
    assert "workstream.progress(i, n) costs" in proc.stdout


@pytest.mark.timeout(30)
def test_the_demo_model_reports_each_step() -> None:
    pytest.importorskip("numpy")
    from workstream.demo import model

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    items = list(model.train(5, report=lambda *a, **k: calls.append((a, k))))
    assert len(items) == 5 and [a for a, _ in calls] == [(i, 5) for i in range(1, 6)]
    assert set(calls[-1][1]) == {"loss", "accuracy"}


@pytest.mark.timeout(60)
def test_the_terminal_demo_shows_rate_and_eta(tmp_path: Path) -> None:
    """Not a terminal: the plain lines carry steps/s and ETA from job.progress."""
    pytest.importorskip("numpy")
    pytest.importorskip("rich")
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "workstream", "demo", "--steps", "300"], cwd=tmp_path,
        capture_output=True, text=True, timeout=50,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = [line for line in proc.stdout.splitlines() if line.startswith("step 300/300")]
    assert last and "steps/s" in last[0] and "ETA 0.0 s" in last[0], proc.stdout


@pytest.mark.timeout(60)
def test_waiting_for_the_job_inside_on_progress_raises() -> None:
    """on_progress runs before on_done and "finished": a wait() there could never return."""
    errors: list[BaseException] = []
    started = threading.Event()

    def on_progress(p: Progress) -> None:
        assert started.wait(20)
        try:
            box[0].wait(timeout=30)
        except RuntimeError as exc:
            errors.append(exc)
            raise

    box: list[workstream.Job[Any, Any]] = []
    gate_job = workstream.start(wp.steady, 10_000, 0.001, on_progress=on_progress)
    box.append(gate_job)
    started.set()
    with pytest.raises(workstream.CallbackError):
        gate_job.wait(timeout=20)
    assert errors and "inside on_progress" in str(errors[0])
    assert gate_job.outcome is not None and gate_job.outcome.kind == "cancelled"


@pytest.mark.timeout(60)
def test_many_readers_during_a_flood_see_done_only_grow() -> None:
    job = workstream.start(wp.flood, 300_000)
    seen: list[list[float]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def read(out: list[float]) -> None:
        try:
            while not job.done():
                p = job.progress
                if p is not None:
                    out.append(p.done)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(s,)) for s in seen]
    for t in threads:
        t.start()
    assert job.result(timeout=30) == 300_000
    for t in threads:
        t.join(10)
    assert not errors
    for s in seen:
        assert s == sorted(s)
    last = job.progress
    assert last is not None and last.done == 300_000
