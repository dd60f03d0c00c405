"""output=: the worker's prints, fd writes, subprocesses and logging reach the parent.

Every test synchronises on the job's end (``wait()``) or on an item it yields; none sleeps.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import psutil
import pytest

import workers_output as wo
import workstream
from workstream import OutputEvent

METHODS = ["fork", "spawn", "forkserver"]


def texts(job: workstream.Job, stream: str | None = None) -> list[str]:
    return [e.text for e in job.output if stream is None or e.stream == stream]


@pytest.mark.parametrize("method", METHODS)
def test_every_kind_of_output_is_captured(method: str) -> None:
    """print, sys.stderr, fd 1/2, a subprocess, C's printf and logging records all arrive,
    each with its stream, as whole lines without the newline."""
    job = workstream.start(wo.all_kinds, output="capture", start_method=method)
    assert job.result() == 7
    out = job.output
    assert isinstance(out, tuple)
    assert all(isinstance(e, OutputEvent) for e in out)
    assert {"py out", "fd out", "sub out", "c printf"} <= set(texts(job, "stdout"))
    assert {"py err", "fd err"} <= set(texts(job, "stderr"))
    logs = [e for e in out if e.stream == "log"]
    assert [(e.logger, e.level, e.levelname, e.text) for e in logs] == [
        ("worker.log", logging.DEBUG, "DEBUG", "debug record"),
        ("worker.log", logging.ERROR, "ERROR", "error record"),
    ]
    assert all(e.pid == job.pid for e in out)
    assert all(e.time > 0 for e in out)


def test_inherit_is_the_default_and_captures_nothing() -> None:
    """Without output=, the worker writes to our own stdout: job.output stays empty."""
    job = workstream.start(wo.say, "to the terminal")
    assert job.result() == "to the terminal"
    assert job.output == ()
    assert job.output_dropped == 0


def test_python_level_output_keeps_its_order_across_streams() -> None:
    """print to stdout, to stderr and logging travel one tagged channel: one order."""
    n = 200
    job = workstream.start(wo.tagged_order, n, output="capture")
    job.wait()
    expected = []
    for i in range(n):
        expected += [("stdout", f"out {i}"), ("stderr", f"err {i}"), ("log", f"log {i}")]
    assert [(e.stream, e.text) for e in job.output][-len(expected):] == expected[-1000:]


@pytest.mark.parametrize("fd", [1, 2])
def test_raw_fd_writes_keep_their_order(fd: int) -> None:
    """os.write to fd 1 or 2 arrives line by line, in order."""
    job = workstream.start(wo.raw_lines, fd, 500, output="capture")
    job.wait()
    stream = "stdout" if fd == 1 else "stderr"
    assert texts(job, stream) == [f"raw {i}" for i in range(500)]


def test_lines_are_never_interleaved_mid_line() -> None:
    """Four threads print 5 kB lines at once: every line arrives whole."""
    job = workstream.start(wo.threads_printing, 4, 100, 5000, output="capture")
    job.wait()
    lines = texts(job, "stdout")
    assert len(lines) == 400
    assert all(len(line) == 5000 and len(set(line)) == 1 for line in lines)


def test_a_partial_last_line_is_delivered() -> None:
    job = workstream.start(wo.partial_last_line, output="capture")
    job.wait()
    assert texts(job, "stdout") == ["no newline at the end"]


def test_on_output_gets_every_event_before_wait_returns() -> None:
    """on_output runs on a workstream thread, for each event, all before wait() returns;
    it implies output="capture"."""
    seen: list[OutputEvent] = []
    threads: set[str] = set()

    def on_output(ev: OutputEvent) -> None:
        threads.add(threading.current_thread().name)
        seen.append(ev)

    job = workstream.start(wo.raw_lines, 1, 300, on_output=on_output)
    job.wait()
    assert [e.text for e in seen] == [f"raw {i}" for i in range(300)]
    assert threading.current_thread().name not in threads
    assert list(job.output) == seen


def test_on_output_that_raises_cancels_the_job_and_wait_raises() -> None:
    """A failing on_output is a callback error, as for on_item."""

    def boom(ev: OutputEvent) -> None:
        raise ValueError("bad callback")

    job = workstream.start(wo.print_until_cancelled, on_output=boom)
    with pytest.raises(workstream.CallbackError):
        job.wait(timeout=30)


def test_wait_inside_on_output_raises() -> None:
    errors: list[BaseException] = []
    holder: list[workstream.Job] = []
    ready = threading.Event()

    def on_output(ev: OutputEvent) -> None:
        ready.wait(10)
        try:
            holder[0].wait()
        except RuntimeError as exc:
            errors.append(exc)

    job = workstream.start(wo.say, "x", on_output=on_output)
    holder.append(job)
    ready.set()
    job.wait()
    assert len(errors) == 1 and "on_output" in str(errors[0])


def test_output_since_returns_only_new_events() -> None:
    job = workstream.start(wo.raw_lines, 1, 10, output="capture")
    job.wait()
    events, count = job.output_since(0)
    assert [e.text for e in events] == [f"raw {i}" for i in range(10)] and count == 10
    events, count = job.output_since(7)
    assert [e.text for e in events] == ["raw 7", "raw 8", "raw 9"] and count == 10
    assert job.output_since(10) == ((), 10)


def test_logging_mode_reemits_into_the_parents_logging() -> None:
    """output="logging": lines and records reach workstream.job.<name>, with their level,
    the worker's logger name and pid."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("workstream.job.all_kinds")
    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        job = workstream.start(wo.all_kinds, output="logging", name="all_kinds")
        assert job.result() == 7
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    by_text = {r.getMessage(): r for r in records}
    assert by_text["error record"].levelno == logging.ERROR
    assert by_text["error record"].worker_logger == "worker.log"  # type: ignore[attr-defined]
    assert by_text["debug record"].levelno == logging.DEBUG
    assert by_text["py out"].levelno == logging.INFO
    assert by_text["py err"].levelno == logging.WARNING
    assert all(r.worker_pid == job.pid for r in records)  # type: ignore[attr-defined]
    assert all(r.name == "workstream.job.all_kinds" for r in records)
    assert len(job.output) == len(records)


@pytest.mark.parametrize("method", METHODS)
def test_the_stderr_tail_survives_sigkill(method: str) -> None:
    """A worker killed by SIGKILL: its last stderr lines (Python and fd 2) are in the
    Crashed outcome and its WorkerCrashed error."""
    job = workstream.start(
        wo.die_after_stderr, "sigkill", output="capture", start_method=method
    )
    outcome = job.wait()
    assert isinstance(outcome, workstream.Crashed)
    assert outcome.exit_code == -signal.SIGKILL
    tail = outcome.stderr_tail
    assert len(tail) == 20
    assert set(tail) >= {"last words from fd 2", "err line 29"}
    assert outcome.error.stderr_tail == tail


@pytest.mark.parametrize("method", METHODS)
def test_abort_outcome_carries_the_stderr_tail(method: str) -> None:
    job = workstream.start(wo.die_after_stderr, "abort", output="capture", start_method=method)
    outcome = job.wait()
    assert isinstance(outcome, workstream.Crashed)
    assert outcome.signal_name == "SIGABRT"
    assert "last words from fd 2" in outcome.stderr_tail


def test_inherit_crash_has_an_empty_tail() -> None:
    job = workstream.start(wo.die_after_stderr, "sigkill")
    outcome = job.wait()
    assert isinstance(outcome, workstream.Crashed)
    assert outcome.stderr_tail == () and outcome.error.stderr_tail == ()


def test_output_during_cancel_reaches_the_parent() -> None:
    """What the worker prints while it unwinds from a cancel is delivered."""
    job = workstream.start(wo.print_until_cancelled, output="capture")
    assert next(iter(job)) == "ready"
    job.cancel()
    outcome = job.wait()
    assert isinstance(outcome, workstream.CancelledOutcome)
    assert "in finally" in texts(job, "stdout")
    assert "stderr in finally" in texts(job, "stderr")
    assert "before the marker" in texts(job, "stdout")


def test_a_slow_on_output_drops_and_reports_the_drops() -> None:
    """on_output slower than the worker: events beyond the bound are dropped, counted,
    and reported as an event; the worker is never blocked by it."""
    gate = threading.Event()
    seen: list[OutputEvent] = []

    def slow(ev: OutputEvent) -> None:
        gate.wait(30)  # holds the output thread until the flood is over
        seen.append(ev)

    n = 30_000
    job = workstream.start(wo.flood_print, n, on_output=slow)
    assert job._core.terminal.wait(30)  # the worker finished while on_output was stuck
    gate.set()
    assert job.result() == n
    assert job.output_dropped > 0
    drops = [e for e in seen if e.logger == "workstream"]
    assert drops and "dropped" in drops[0].text
    assert len(seen) - len(drops) + job.output_dropped == n
    assert len(job.output) == 1000
    assert job.output[-1].text == f"line {n - 1}"


def _rss_watch(stop: threading.Event, peak: list[int]) -> None:
    proc = psutil.Process()
    while not stop.wait(0.005):  # sampling, not synchronisation
        peak[0] = max(peak[0], proc.memory_info().rss)


@pytest.mark.parametrize("total", [
    10 << 20, pytest.param(100 << 20, marks=pytest.mark.slow),
])
def test_a_flood_is_bounded_in_the_parent(total: int) -> None:
    """A flood through fd 1: the job ends, the parent's memory does not follow it."""
    base = psutil.Process().memory_info().rss
    peak = [base]
    stop = threading.Event()
    watcher = threading.Thread(target=_rss_watch, args=(stop, peak))
    watcher.start()
    try:
        job = workstream.start(wo.flood_fd, total, output="capture")
        assert job.result(timeout=50) >= total
    finally:
        stop.set()
        watcher.join()
    assert len(job.output) == 1000
    assert job.output[-1].text == "flood done"
    assert peak[0] - base < 64 << 20


@pytest.mark.parametrize("method", METHODS)
def test_worker_output_goes_to_the_current_job(method: str) -> None:
    """A warm Worker's output fds belong to the process; each job gets its own lines."""
    seen: list[str] = []
    with workstream.Worker(output="capture", start_method=method) as worker:
        a = worker.start(wo.say, "first")
        a.wait()
        b = worker.start(wo.say, "second", on_output=lambda ev: seen.append(ev.text))
        b.wait()
    assert texts(a) == ["first"]
    assert texts(b) == ["second"]
    assert seen == ["second"]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"output": "bogus"}, ValueError, "is not a mode"),
    ({"output": 3}, TypeError, "output must be one of"),
    ({"on_output": 5}, TypeError, "on_output must be callable"),
])
def test_bad_output_options_raise_at_the_call_site(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        workstream.start(wo.say, "x", **kwargs)


def test_worker_start_on_output_needs_captured_output() -> None:
    with workstream.Worker() as worker, pytest.raises(ValueError, match="output='capture'"):
        worker.start(wo.say, "x", on_output=print)


def test_no_descriptor_of_the_output_pipes_is_left_open() -> None:
    before = set(os.listdir("/proc/self/fd"))
    job = workstream.start(wo.say, "x", output="capture")
    job.wait()
    assert set(os.listdir("/proc/self/fd")) <= before


def test_async_for_over_output_events() -> None:
    """job.output_events(): every event, in order, without blocking the loop; ends with
    the job."""
    import asyncio

    async def main() -> list[str]:
        job = workstream.start(wo.raw_lines, 1, 300, output="capture")
        got = [ev.text async for ev in job.output_events()]
        assert job.done()
        return got

    assert asyncio.run(main()) == [f"raw {i}" for i in range(300)]


def test_result_raises_worker_crashed_with_the_tail() -> None:
    job = workstream.start(wo.die_after_stderr, "sigkill", output="capture")
    with pytest.raises(workstream.WorkerCrashed) as info:
        job.result()
    assert "last words from fd 2" in info.value.stderr_tail


def test_decide_puts_the_stderr_tail_on_every_crash_and_only_there() -> None:
    """The core rule, without processes: a crash (plain, or a broken channel) carries the
    tail on the outcome and its error; other outcomes have no such field."""
    from workstream._core._rules import Facts, Final, FinalKind, decide

    tail = ("line 1", "line 2")
    crashed = decide(Facts(started_at=0.0, now=1.0, pid=5, exit_code=-9, stderr_tail=tail))
    assert isinstance(crashed, workstream.Crashed)
    assert crashed.stderr_tail == tail and crashed.error.stderr_tail == tail
    broken = decide(Facts(started_at=0.0, now=1.0, pid=5, exit_code=-9,
                          channel_error="bad magic", stderr_tail=tail))
    assert isinstance(broken, workstream.Crashed)
    assert isinstance(broken.error, workstream.ChannelBroken)
    assert broken.stderr_tail == tail and broken.error.stderr_tail == tail
    import pickle

    done = decide(Facts(started_at=0.0, now=1.0, pid=5, exit_code=0, stderr_tail=tail,
                        final=Final(FinalKind.RESULT, pickle.dumps(3))))
    assert isinstance(done, workstream.Completed) and not hasattr(done, "stderr_tail")
    no_tail = decide(Facts(started_at=0.0, now=1.0, pid=5, exit_code=-9))
    assert isinstance(no_tail, workstream.Crashed) and no_tail.stderr_tail == ()


def test_basic_config_in_the_worker_sets_the_level_and_sends_each_record_once() -> None:
    """logging.basicConfig(level=INFO) in the worker works (root has our handler, which
    would make it a no-op) and the record arrives once, as a log event."""
    job = workstream.start(wo.basic_config_then_log, output="capture")
    job.wait()
    assert [(e.stream, e.text) for e in job.output] == [("log", "info after basicConfig")]
