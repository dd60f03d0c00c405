"""Warm workers: one process, many jobs; what a cancel or a crash costs; closing.

Every test closes its Worker (the autouse leak check counts child processes, fds and
threads), and orders events with marker files or items, never with sleeps.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import workers_lifecycle as wl
import workers_worker as ww
import workstream
from conftest import wait_until
from workstream import CancelledOutcome, Completed, Crashed, Failed, Worker, WorkerError

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

METHODS = [
    pytest.param("forkserver", id="forkserver"),
    pytest.param("spawn", id="spawn"),
    pytest.param("fork", id="fork", marks=pytest.mark.filterwarnings("ignore::DeprecationWarning")),
]


def wait_for_marker(marker: Path) -> None:
    wait_until(marker.exists, 20, f"the child to create {marker.name}")


# -- warm across jobs --------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_initializer_runs_once_and_its_state_reaches_every_job(method: str) -> None:
    """Five jobs run in one process: the initializer ran once there, its return value is
    worker_state() in each job, a global it set persists, and each outcome is kept warm."""
    with Worker(ww.init_counter, ("T",), start_method=method) as worker:
        pid = worker.wait_ready(timeout=30)
        for _ in range(5):
            job = worker.start(ww.report_state)
            state, calls, tag, job_pid = job.result(timeout=15)
            assert state == {"tag": "T", "pid": pid}
            assert (calls, tag, job_pid) == (1, "T", pid)
            assert job.pid == pid
            assert job.outcome is not None and job.outcome.kept_warm is True
            assert job.outcome.exit_code is None
        assert worker.pid == pid and worker.restarts == 0
    assert wl.pid_gone(pid)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_back_to_back_jobs_deliver_everything_in_order(method: str) -> None:
    """Three jobs in a row each deliver exactly their own items, all of them, in order."""
    with Worker(start_method=method) as worker:
        for tag in ("a", "b", "c"):
            job = worker.start(ww.tagged_numbers, tag, 5000)
            items = list(job)
            assert all(t == tag for t, _ in items), {t for t, _ in items}
            assert wl.assert_contiguous([i for _, i in items]) == 5000
            assert isinstance(job.wait(timeout=15), Completed)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("discard", [False, True], ids=["keep-items", "discard"])
@pytest.mark.parametrize("method", METHODS)
def test_cooperative_cancel_mid_flood_keeps_the_process_and_no_item_crosses(
    method: str, discard: bool, tmp_path: Path
) -> None:
    """A flood cancelled cooperatively ends 'cancelled' on the same, still warm process;
    the next job gets only its own items (none of the flood's), and starts with its
    cancel flag clear."""
    with Worker(start_method=method) as worker:
        pid = worker.wait_ready(timeout=30)
        marker = tmp_path / "flooding"
        job = worker.start(ww.tagged_flood, "a", str(marker))
        it = iter(job)
        first = next(it)
        wait_for_marker(marker)
        assert job.cancel(discard=discard) is True
        rest = list(it)
        outcome = job.wait(timeout=15)
        assert isinstance(outcome, CancelledOutcome) and outcome.rung == "cooperative", outcome
        assert outcome.kept_warm is True and outcome.pid == pid
        kept = [first, *rest]
        assert all(t == "a" for t, _ in kept)
        wl.assert_contiguous([i for _, i in kept])
        if discard:
            assert outcome.items_discarded > 0
        assert worker.start(ww.cancel_flag_at_start).result(timeout=15) is False
        job2 = worker.start(ww.tagged_numbers, "b", 300)
        items = list(job2)
        assert items == [("b", i) for i in range(300)]
        assert job2.result(timeout=15) == pid
        assert worker.restarts == 0


@pytest.mark.timeout(30)
def test_failed_job_keeps_the_process() -> None:
    """A job that raises ends 'failed' (remote traceback) and the process stays warm."""
    with Worker() as worker:
        pid = worker.wait_ready(timeout=30)
        job = worker.start(ww.raise_value_error, "boom")
        outcome = job.wait(timeout=15)
        assert isinstance(outcome, Failed) and outcome.kept_warm is True
        assert isinstance(outcome.error, WorkerError) and "boom" in str(outcome.error)
        assert worker.start(ww.pid).result(timeout=15) == pid


@pytest.mark.timeout(30)
def test_a_late_cancel_of_a_finished_job_does_not_reach_the_next() -> None:
    """cancel() on a job that already ended returns False and the next job runs uncancelled."""
    with Worker() as worker:
        job = worker.start(ww.pid)
        job.wait(timeout=30)
        assert job.cancel() is False
        assert worker.start(ww.cancel_flag_at_start).result(timeout=15) is False


# -- what costs the process --------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_job_stuck_in_c_escalates_to_sigkill_and_is_replaced(method: str, tmp_path: Path) -> None:
    """A job stuck in a C call with SIGTERM blocked ends 'cancelled' by SIGKILL; the next
    job runs in a new process (initializer run again there), and the Worker says so."""
    with Worker(ww.init_counter, ("T",), start_method=method) as worker:
        pid = worker.wait_ready(timeout=30)
        marker = tmp_path / "stuck"
        job = worker.start(ww.mark_then_sleep_in_c, str(marker))
        wait_for_marker(marker)
        assert job.cancel(grace=0.5) is True
        outcome = job.wait(timeout=15)
        assert isinstance(outcome, CancelledOutcome) and outcome.rung == "sigkill", outcome
        assert outcome.kept_warm is False and outcome.exit_code == -signal.SIGKILL
        assert wl.pid_gone(pid)
        state, calls, _tag, new_pid = worker.start(ww.report_state).result(timeout=30)
        assert new_pid != pid and calls == 1 and state == {"tag": "T", "pid": new_pid}
        assert worker.restarts == 1 and worker.pid == new_pid


@pytest.mark.timeout(60)
def test_sigterm_rung_costs_the_process(tmp_path: Path) -> None:
    """A job interrupted by the SIGTERM rung ends 'cancelled' (sigterm) and the process is
    replaced: SIGTERM may have landed anywhere in user code."""
    with Worker() as worker:
        pid = worker.wait_ready(timeout=30)
        marker = tmp_path / "sleeping"
        job = worker.start(ww.mark_then_sleep, str(marker))
        wait_for_marker(marker)
        assert job.cancel(grace=10, term_after=0) is True
        outcome = job.wait(timeout=15)
        assert isinstance(outcome, CancelledOutcome) and outcome.rung == "sigterm", outcome
        assert outcome.kept_warm is False
        assert worker.start(ww.pid).result(timeout=30) not in (pid, None)
        assert worker.restarts == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("fn", "args", "exit_code"),
    [
        pytest.param(ww.exit_hard, (7,), 7, id="os._exit"),
        pytest.param(ww.segfault, (), -signal.SIGSEGV, id="sigsegv"),
    ],
)
def test_crashing_job_is_reported_and_replaced(fn: object, args: tuple, exit_code: int) -> None:
    """A job whose process dies ends 'crashed' with the exit status; the next job runs in
    a fresh process (prestart=False: started by that next job)."""
    with Worker(prestart=False) as worker:
        job = worker.start(fn, *args)  # type: ignore[arg-type]
        outcome = job.wait(timeout=30)
        assert isinstance(outcome, Crashed), outcome
        assert outcome.exit_code == exit_code and outcome.kept_warm is False
        assert worker.pid is None
        new_pid = worker.start(ww.pid).result(timeout=30)
        assert new_pid != outcome.pid and worker.restarts == 1


@pytest.mark.timeout(60)
def test_process_killed_while_idle_is_replaced() -> None:
    """A warm process killed from outside between jobs is reaped and replaced; the next
    job runs normally."""
    with Worker(ww.init_counter, ("T",)) as worker:
        pid = worker.wait_ready(timeout=30)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: worker.pid not in (pid, None), 30, "the replacement process")
        assert worker.start(ww.report_state).result(timeout=30)[1:3] == (1, "T")
        assert worker.restarts == 1


# -- the initializer ---------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("prestart", [True, False], ids=["prestart", "lazy"])
def test_initializer_failure_is_raised_with_the_remote_traceback(prestart: bool) -> None:
    """An initializer that raises makes every job fail with a WorkerError carrying the
    remote traceback: a job already waiting ends 'failed', later start() calls raise."""
    with Worker(ww.init_fails, ("no model",), prestart=prestart) as worker:
        job = worker.start(ww.pid)
        outcome = job.wait(timeout=30)
        if isinstance(outcome, Failed):  # the job was queued before the failure was known
            assert "no model" in str(outcome.error)
        with pytest.raises(WorkerError) as info:
            worker.wait_ready(timeout=30)
        assert "ValueError" in info.value.remote_traceback
        assert "init_fails" in info.value.remote_traceback
        with pytest.raises(WorkerError, match="no model"):
            worker.start(ww.pid)


@pytest.mark.timeout(60)
def test_initializer_crash_is_raised() -> None:
    """An initializer that kills its process makes wait_ready() raise WorkerCrashed."""
    with Worker(ww.init_crashes) as worker, pytest.raises(workstream.WorkerCrashed):
        worker.wait_ready(timeout=30)


@pytest.mark.timeout(60)
def test_cancel_while_waiting_for_the_initializer(tmp_path: Path) -> None:
    """A job cancelled while the initializer still runs ends 'before-start' at once; the
    initializer goes on and the next job runs on the same process."""
    gate = tmp_path / "gate"
    with Worker(ww.init_wait_for_file, (str(gate),)) as worker:
        job = worker.start(ww.pid)
        assert job.cancel() is True
        outcome = job.wait(timeout=15)
        assert isinstance(outcome, CancelledOutcome) and outcome.rung == "before-start"
        assert outcome.pid is None
        gate.touch()
        pid = worker.wait_ready(timeout=30)
        assert worker.start(ww.pid).result(timeout=15) == pid


# -- misuse ------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_start_while_busy_and_after_close_raise(tmp_path: Path) -> None:
    """start() while a job runs raises RuntimeError (one job at a time); after close()
    it raises RuntimeError too; close() is idempotent."""
    worker = Worker()
    try:
        marker = tmp_path / "running"
        job = worker.start(ww.flag_after_cancel, str(marker))
        with pytest.raises(RuntimeError, match="one job at a time"):
            worker.start(ww.pid)
        job.cancel()
        list(job)
        job.wait(timeout=15)
        assert worker.start(ww.pid).result(timeout=15) == worker.pid
    finally:
        worker.close()
    worker.close()
    assert worker.closed
    with pytest.raises(RuntimeError, match="closed"):
        worker.start(ww.pid)


@pytest.mark.timeout(30)
def test_bad_arguments_raise_at_the_call_site() -> None:
    """Process options given per job, unknown options, a non-callable fn or initializer,
    and non-tuple initargs raise TypeError naming the problem."""
    with pytest.raises(TypeError, match="callable"):
        Worker(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="initargs"):
        Worker(ww.init_counter, "T")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown option"):
        Worker(colour="red")
    with Worker(prestart=False) as worker:
        with pytest.raises(TypeError, match=r"pass them to workstream\.Worker"):
            worker.start(ww.pid, start_method="spawn")
        with pytest.raises(TypeError, match="unknown option"):
            worker.start(ww.pid, colour="red")
        with pytest.raises(TypeError, match="callable"):
            worker.start(3)  # type: ignore[arg-type]


# -- closing -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_close_while_a_job_runs(method: str, tmp_path: Path) -> None:
    """close() cancels the running job cooperatively (its finally block runs and its
    items arrive), then stops and reaps the process before returning."""
    worker = Worker(start_method=method)
    marker = tmp_path / "running"
    job = worker.start(ww.flag_after_cancel, str(marker))
    wait_for_marker(marker)
    pid = job.pid
    assert pid is not None
    worker.close()
    assert wl.pid_gone(pid)
    outcome = job.wait(timeout=15)
    assert isinstance(outcome, CancelledOutcome) and outcome.rung == "cooperative", outcome
    assert list(job)[-1:] == [("finally", pid)]


@pytest.mark.timeout(60)
def test_close_of_a_stuck_job_is_bounded_by_its_grace(tmp_path: Path) -> None:
    """close() with a job stuck in C returns once the job's grace ran out (SIGKILL)."""
    worker = Worker()
    marker = tmp_path / "stuck"
    job = worker.start(ww.mark_then_sleep_in_c, str(marker), grace=0.3)
    wait_for_marker(marker)
    worker.close()
    outcome = job.wait(timeout=5)
    assert isinstance(outcome, CancelledOutcome) and outcome.rung == "sigkill", outcome


DRIVER = """
import gc, os, sys, threading, time
sys.path.insert(0, {tests_dir!r})
import workstream
import workers_worker as ww


def main():
    mode, method = sys.argv[1:3]
    worker = workstream.Worker(ww.init_counter, ("T",), start_method=method)
    pid = worker.wait_ready(30)
    if mode == "gc":
        del worker
        gc.collect()
        deadline = time.monotonic() + 20
        while os.path.exists(f"/proc/{{pid}}") and time.monotonic() < deadline:
            time.sleep(0.01)  # ok: sleep (bounded poll of an external fact)
        print(pid, "gone" if not os.path.exists(f"/proc/{{pid}}") else "alive", flush=True)
    elif mode == "exit":
        job = worker.start(ww.flag_after_cancel, sys.argv[3])
        while not os.path.exists(sys.argv[3]):
            time.sleep(0.005)  # ok: sleep (bounded by the test's timeout)
        print(pid, flush=True)
    else:  # "killed": idle until SIGKILLed
        print(pid, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
"""


def run_driver(tmp_path: Path, mode: str, method: str) -> subprocess.Popen[str]:
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(tests_dir=TESTS_DIR)))
    return subprocess.Popen(
        [sys.executable, str(script), mode, method, str(tmp_path / "marker")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def read_line(proc: subprocess.Popen[str], timeout: float) -> list[str]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        _, err = proc.communicate(10)
        pytest.fail(f"the driver printed nothing; stderr:\n{err}")
    return line.split()


@pytest.mark.timeout(60)
def test_forgotten_worker_is_closed_when_collected(tmp_path: Path) -> None:
    """A Worker the program drops is closed when garbage-collected: its process is gone."""
    proc = run_driver(tmp_path, "gc", "forkserver")
    try:
        pid, state = read_line(proc, 40)
        assert state == "gone", f"worker process {pid} still alive after gc"
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_interpreter_exit_closes_a_busy_worker(method: str, tmp_path: Path) -> None:
    """A program that returns from main with a job running on its Worker exits cleanly
    and leaves no worker process behind (the job is cancelled cooperatively at exit)."""
    proc = run_driver(tmp_path, "exit", method)
    try:
        (pid,) = read_line(proc, 40)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        wait_until(lambda: not wl.pid_alive(int(pid)), 10, "the worker process to die")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_parent_sigkill_kills_an_idle_worker(method: str, tmp_path: Path) -> None:
    """When the application is SIGKILLed while its Worker idles between jobs, the worker
    process dies too (PR_SET_PDEATHSIG, lifeline, guard)."""
    proc = run_driver(tmp_path, "killed", method)
    pid = 0
    try:
        (pid_s,) = read_line(proc, 40)
        pid = int(pid_s)
        assert wl.pid_alive(pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        wait_until(lambda: not wl.pid_alive(pid), 5, "the idle worker to die with its parent")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if pid and wl.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(30)
def test_on_done_can_start_the_next_job() -> None:
    """A job's on_done callback may start the next job on the same Worker (the previous
    one is finished by then), which runs on the same process."""
    done = threading.Event()
    box: dict[str, object] = {}
    with Worker() as worker:
        pid = worker.wait_ready(timeout=30)

        def on_done(outcome: object) -> None:
            box["next"] = worker.start(ww.pid)
            done.set()

        worker.start(ww.pid, on_done=on_done).wait(timeout=15)
        assert done.wait(15)
        nxt = box["next"]
        assert isinstance(nxt, workstream.Job)
        assert nxt.result(timeout=15) == pid


@pytest.mark.timeout(30)
def test_close_with_grace_zero_kills_at_once(tmp_path: Path) -> None:
    """close(grace=0) does not wait for the running job's own (long) grace."""
    worker = Worker()
    marker = tmp_path / "stuck"
    job = worker.start(ww.mark_then_sleep_in_c, str(marker), grace=60)
    wait_for_marker(marker)
    worker.close(grace=0)
    outcome = job.wait(timeout=5)
    assert isinstance(outcome, CancelledOutcome) and outcome.rung == "sigkill", outcome


def _readme_worker_block() -> str:
    text = (Path(TESTS_DIR).parent / "README.md").read_text()
    section = text[text.index("## Warm workers") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```", start)]


@pytest.mark.timeout(60)
def test_readme_worker_example_runs(tmp_path: Path) -> None:
    """The README's Worker example, run as a user would, prints each job's items and
    that the process stayed warm."""
    script = tmp_path / "example.py"
    script.write_text(_readme_worker_block())
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=50)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[1.0, 0.5] True", "[2.0, 1.0] True"]
    assert done.stderr == ""


@pytest.mark.timeout(60)
def test_each_job_starts_with_the_sigterm_rung_working(tmp_path: Path) -> None:
    """A job that left SIGTERM ignored and blocked does not weaken the next job's cancel:
    the next job is still interrupted by the SIGTERM rung."""
    with Worker() as worker:
        pid = worker.wait_ready(timeout=30)
        assert worker.start(ww.ignore_sigterm_and_return).result(timeout=15) == "done"
        marker = tmp_path / "sleeping"
        job = worker.start(ww.mark_then_sleep, str(marker))
        wait_for_marker(marker)
        assert job.pid == pid
        job.cancel(grace=20, term_after=0)
        outcome = job.wait(timeout=15)
        assert isinstance(outcome, CancelledOutcome) and outcome.rung == "sigterm", outcome


@pytest.mark.timeout(60)
def test_a_job_that_leaves_an_emitting_thread_costs_the_process() -> None:
    """Bytes written while no job runs (a thread a job left behind) make the Worker
    replace the process; the next job gets only its own items."""
    with Worker() as worker:
        pid = worker.wait_ready(timeout=30)
        job = worker.start(ww.leave_an_emitting_thread)
        assert job.result(timeout=15) == "returned"
        wait_until(lambda: worker.restarts == 1, 20, "the process to be replaced")
        assert wl.pid_gone(pid)
        job2 = worker.start(ww.tagged_numbers, "b", 50)
        assert list(job2) == [("b", i) for i in range(50)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_close_right_after_construction(method: str) -> None:
    """A Worker closed while its process is still starting leaves nothing behind."""
    Worker(ww.init_counter, ("T",), start_method=method).close()


@pytest.mark.timeout(60)
def test_close_while_the_initializer_runs(tmp_path: Path) -> None:
    """close() interrupts an initializer that never returns (its grace applies) and a
    job waiting for it ends 'before-start'."""
    worker = Worker(ww.init_wait_for_file, (str(tmp_path / "never"),), grace=0.5)
    job = worker.start(ww.pid)
    worker.close()
    outcome = job.wait(timeout=5)
    assert isinstance(outcome, CancelledOutcome) and outcome.rung == "before-start", outcome
    with pytest.raises(RuntimeError, match="closed"):
        worker.wait_ready(timeout=5)


@pytest.mark.timeout(120)
def test_many_cancel_cycles_never_mix_streams() -> None:
    """Forty jobs on one process, each cancelled cooperatively after a different number
    of items (some with discard=True): every job delivers a contiguous run of its own
    items only, every cancel keeps the process, and the worker never restarts."""
    with Worker() as worker:
        pid = worker.wait_ready(timeout=30)
        for tag in range(40):
            job = worker.start(ww.tagged_stream, tag)
            it = iter(job)
            taken = [next(it) for _ in range(1 + (tag * 37) % 200)]
            job.cancel(discard=tag % 3 == 0)
            items = taken + list(it)
            outcome = job.wait(timeout=15)
            assert isinstance(outcome, CancelledOutcome) and outcome.rung == "cooperative"
            assert outcome.kept_warm is True and outcome.pid == pid, outcome
            assert {t for t, _ in items} == {tag}
            wl.assert_contiguous([i for _, i in items])
        assert worker.restarts == 0 and worker.pid == pid


@pytest.mark.timeout(120)
def test_gpu_check_skips_cleanly_without_cuda() -> None:
    """bench/gpu_check.py exits 0 with a clear message where torch or CUDA is missing
    (torch is in the 3.11 test extra as a CPU build, so both reasons occur in CI)."""
    import importlib.util

    has_torch = importlib.util.find_spec("torch") is not None
    if has_torch:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is here: the check itself would run")
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check"], cwd=Path(TESTS_DIR).parent,
        capture_output=True, text=True, timeout=100,
    )
    assert done.returncode == 0, done.stderr
    reason = "torch.cuda.is_available() is False" if has_torch else "torch is not installed"
    assert done.stdout.strip() == f"no CUDA device: skipped ({reason})"
