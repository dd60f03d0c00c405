"""Misuse of the API. The README's table "What a mistake gets you" is parsed and every row
run: the exact exception type and its message are checked against a real call, so the
table cannot drift. Nothing is left running and nothing leaks."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import math
import os
import pathlib
import pickle
import re
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import workers
import workers_badinput as wb
import workers_pool as wp
import workers_stream as ws
import workstream
from conftest import wait_until
from workstream import JobState


async def _coroutine_fn() -> int:
    return 1


async def _async_gen_fn() -> Any:
    yield 1


README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
_ROW = re.compile(r"^\| `(?P<code>[^`]+)`(?P<note>[^|]*)\| (?P<exc>`\w+`|none) \| (?P<msg>.+) \|$")


@dataclass(frozen=True)
class Row:
    """One row of the README's misuse table."""

    code: str
    where: str  # parent / worker / on_item / forked
    exc: str | None  # exception type name; None: the call returns normally
    message: str  # fragments ("..." between them), or the repr of the return value


def readme_rows() -> list[Row]:
    """Parse the table under "## What a mistake gets you" in README.md."""
    text = README.read_text()
    section = text[text.index("## What a mistake gets you") :]
    section = section[: section.index("\n## ", 1)]
    rows = []
    for line in section.splitlines():
        match = _ROW.match(line)
        if match is None:
            continue
        note = match["note"]
        where = "parent"
        if "(in a worker)" in note:
            where = "worker"
        elif "(in async def)" in note:
            where = "loop"
        elif "kill PID" in note:
            where = "outside"
        elif "script" in note:
            where = "script"
        elif "(in on_item)" in note:
            where = "on_item"
        elif "(in on_progress)" in note:
            where = "on_progress"
        elif "forked" in note:
            where = "forked"
        exc = None if match["exc"] == "none" else match["exc"].strip("`")
        message = match["msg"].strip()
        message = message.removeprefix("returns ").strip("`")
        rows.append(Row(match["code"], where, exc, message))
    return rows


ROWS = readme_rows()


def test_the_readme_table_was_parsed() -> None:
    """Every table line became a row (a malformed line would silently drop a check)."""
    text = README.read_text()
    section = text[text.index("## What a mistake gets you") :]
    section = section[: section.index("\n## ", 1)]
    lines = [ln for ln in section.splitlines() if ln.startswith("| `")]
    assert len(ROWS) == len(lines) >= 45
    assert {r.where for r in ROWS} == {
        "parent", "worker", "on_item", "forked", "loop", "outside", "script", "on_progress"
    }


def _names(code: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_]\w*", code))


@contextlib.contextmanager
def _namespace(code: str, tmp_path: Any) -> Iterator[dict[str, Any]]:
    """The names a row's code may use; jobs are started only when the code uses them."""
    ns: dict[str, Any] = {
        "start": workstream.start, "workstream": workstream, "fn": wb.fn,
        "async_fn": wb.async_fn, "threading": threading, "pickle": pickle, "copy": copy,
        "functools": functools, "float": float, "list": list, "iter": iter,
        "greet": wb.greet, "ExitOnPickle": wb.ExitOnPickle,
        "InterruptOnPickle": wb.InterruptOnPickle,
    }
    used = _names(code)
    jobs: list[workstream.Job[Any, Any]] = []
    workers_open: list[workstream.Worker] = []
    pools_open: list[workstream.Pool] = []
    gate = None
    try:
        if "job" in used:
            gate = ws.make_gate(str(tmp_path))
            ns["job"] = workstream.start(ws.yield_then_block, gate, name="fn")
            jobs.append(ns["job"])
            assert next(iter(ns["job"])) == "first"
        if "full_job" in used:
            ns["full_job"] = workstream.start(wb.flood, max_buffered_items=10, name="flood")
            jobs.append(ns["full_job"])
        if "cb_job" in used:
            ns["cb_job"] = workstream.start(wb.fn, 1, on_item=lambda item: None)
            jobs.append(ns["cb_job"])
        if "closed_worker" in used:
            ns["closed_worker"] = workstream.Worker(prestart=False)
            ns["closed_worker"].close()
        if "busy_worker" in used:
            busy = workstream.Worker(name="worker")
            workers_open.append(busy)
            gate = ws.make_gate(str(tmp_path))
            ns["busy_worker"] = busy
            busy_job = busy.start(ws.yield_then_block, gate, name="fn")
            assert next(iter(busy_job)) == "first"
            jobs.append(busy_job)
            ns["job"] = busy_job  # released like a plain job below
        if "pool" in used:
            ns["pool"] = workstream.Pool(1)
            pools_open.append(ns["pool"])
        if "closed_pool" in used:
            ns["closed_pool"] = workstream.Pool(1)
            ns["closed_pool"].close()
        if "full_pool" in used:
            full = workstream.Pool(1, max_queued=1)
            pools_open.append(full)
            gate = ws.make_gate(str(tmp_path))
            blocker = full.start(ws.yield_then_block, gate, name="fn")
            assert next(iter(blocker)) == "first"
            full.start(wb.fn, 1)  # waits in the queue: the queue is full
            ns["full_pool"] = full
        if "timed_out" in used:
            ns["timed_out"] = workstream.start(
                wp.mark_then_sleep, str(tmp_path / "timed_out"), 60, timeout=0.1
            )
            jobs.append(ns["timed_out"])
            ns["timed_out"].wait(timeout=20)
        if "ended" in used:
            ns["ended"] = workstream.start(wb.fn, 1, 2)
            jobs.append(ns["ended"])
            assert list(ns["ended"]) == [1, 2]
            assert ns["ended"].result(timeout=20) == 2
        yield ns
    finally:
        for job in jobs:
            if job is ns.get("job") and job.state is JobState.RUNNING and gate is not None:
                ws.release(gate, wait_until)
            if job is ns.get("full_job"):
                job.cancel(discard=True)
            job.wait(timeout=20)
        for worker in workers_open:
            worker.close()
        for pool in pools_open:
            pool.close(grace=0)


def _raised_in_parent(row: Row, tmp_path: Any) -> BaseException | object:
    with _namespace(row.code, tmp_path) as ns:
        threads = threading.active_count()
        job = ns.get("job")
        try:
            result: object = eval(row.code, ns)
        except BaseException as exc:
            result = exc
        if row.code.startswith("start("):
            assert threading.active_count() == threads, "a refused start() left a thread"
        if job is not None and isinstance(result, BaseException):
            assert job.state is JobState.RUNNING and not job.cancel_requested, (
                "a refused call changed the job"
            )
        return result


def _raised_on_a_loop(row: Row, tmp_path: Any) -> BaseException | object:
    """Run the row's code inside a coroutine of a running asyncio loop."""
    with _namespace(row.code, tmp_path) as ns:

        async def main() -> object:
            return eval(row.code, ns)

        try:
            return asyncio.run(main())
        except BaseException as exc:
            return exc


def _raised_after_outside_sigterm(row: Row, tmp_path: Any) -> BaseException | object:
    """Send SIGTERM to the job's worker as another program would, then run the code."""
    with _namespace(row.code, tmp_path) as ns:
        job = ns["job"]
        os.kill(job.pid, signal.SIGTERM)
        job.wait(timeout=20)
        assert job.cancel_requested is False
        try:
            return eval(row.code, ns)
        except BaseException as exc:
            return exc


_SCRIPT = """\
import json
import workstream
from workstream import start


def fn(*args):
    yield from args
    return len(args)


class Model:
    @classmethod
    def load(cls):
        raise ValueError("no weights")


def run():
    try:
        result = {code}
    except BaseException as exc:
        print(json.dumps([type(exc).__name__, str(exc)]))
    else:
        print(json.dumps(["none", repr(result)]))


{call}
"""


def _raised_in_script(row: Row, tmp_path: Any) -> BaseException | object:
    """Run the code in a script (with or without the __main__ guard, as the row says)."""
    guarded = "without" not in row_note(row)
    call = 'if __name__ == "__main__":\n    run()' if guarded else "run()"
    script = tmp_path / "main_script.py"
    script.write_text(_SCRIPT.format(code=row.code, call=call))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=50,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    name, message = json.loads(proc.stdout.splitlines()[-1])
    return _Seen(name, message)


def row_note(row: Row) -> str:
    """The note after the row's code in the README (what the parser did not keep)."""
    for line in README.read_text().splitlines():
        match = _ROW.match(line)
        if match is not None and match["code"] == row.code:
            return match["note"]
    raise LookupError(row.code)


def _raised_in_worker(row: Row) -> BaseException | object:
    job = workstream.start(wb.run_code, row.code)
    outcome = job.wait(timeout=30)
    assert type(outcome) is workstream.Failed, outcome
    err = outcome.error
    assert type(err) is workstream.WorkerError
    assert err.remote_traceback.rstrip().splitlines()[-1].startswith(err.type_name)
    return _Seen(err.type_name, err.message)


def _raised_in_on_item(row: Row) -> BaseException | object:
    box: dict[str, Any] = {}
    ready = threading.Event()

    def on_item(item: object) -> None:
        assert ready.wait(10)
        try:
            box["result"] = eval(row.code, {"job": box["job"]})
        except BaseException as exc:
            box["result"] = exc

    job = workstream.start(wb.fn, 1, on_item=on_item)
    box["job"] = job
    ready.set()
    assert type(job.wait(timeout=30)) is workstream.Completed
    return box["result"]


def _raised_in_on_progress(row: Row) -> BaseException | object:
    import workers_progress as wp

    box: dict[str, Any] = {}
    ready = threading.Event()

    def on_progress(progress: object) -> None:
        assert ready.wait(10)
        if "result" in box:
            return
        try:
            box["result"] = eval(row.code, {"job": box["job"]})
        except BaseException as exc:
            box["result"] = exc

    job = workstream.start(wp.report_once, 1, on_progress=on_progress)
    box["job"] = job
    ready.set()
    assert type(job.wait(timeout=30)) is workstream.Completed
    return box["result"]


def _raised_in_fork(row: Row, tmp_path: Any) -> BaseException | object:
    with _namespace(row.code, tmp_path) as ns:
        r, w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the forked copy
            try:
                try:
                    eval(row.code, ns)
                    report = "none\0"
                except BaseException as exc:
                    report = f"{type(exc).__name__}\0{exc}"
                os.write(w, report.encode())
            finally:
                os._exit(0)
        os.close(w)
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert ns["job"].state is JobState.RUNNING and not ns["job"].cancel_requested
        name, message = data.decode().split("\0", 1)
        return _Seen(name, message)


@dataclass(frozen=True)
class _Seen:
    """An exception seen in another process: its type name and message."""

    type_name: str
    message: str


def _fragments_in_order(message: str, text: str) -> bool:
    pos = 0
    for part in text.split(" ... "):
        found = message.find(part, pos)
        if found < 0:
            return False
        pos = found + len(part)
    return True


@pytest.mark.timeout(60)
@pytest.mark.parametrize("row", [pytest.param(r, id=f"{r.code} [{r.where}]") for r in ROWS])
def test_readme_misuse_row(row: Row, tmp_path: Any) -> None:
    """The README row's code, run where the row says, raises exactly the exception type
    it names with the message it quotes (or returns the value it shows)."""
    if row.where == "worker":
        got = _raised_in_worker(row)
    elif row.where == "on_item":
        got = _raised_in_on_item(row)
    elif row.where == "on_progress":
        got = _raised_in_on_progress(row)
    elif row.where == "forked":
        got = _raised_in_fork(row, tmp_path)
    elif row.where == "loop":
        got = _raised_on_a_loop(row, tmp_path)
    elif row.where == "outside":
        got = _raised_after_outside_sigterm(row, tmp_path)
    elif row.where == "script":
        got = _raised_in_script(row, tmp_path)
    else:
        got = _raised_in_parent(row, tmp_path)
    if row.exc is None:
        assert not isinstance(got, (BaseException, _Seen)), f"{row.code} raised {got!r}"
        assert got == eval(row.message), f"{row.code} returned {got!r}"
        return
    if isinstance(got, _Seen):
        name, message = got.type_name, got.message
    else:
        assert isinstance(got, BaseException), f"{row.code} returned {got!r}, did not raise"
        name, message = type(got).__name__, str(got)
    assert name == row.exc, f"{row.code}: {name}: {message}"
    assert _fragments_in_order(message, row.message), f"{row.code}: {message!r}"


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("fn", "options", "exc_type", "fragment"),
    [
        pytest.param(_async_gen_fn, {}, TypeError, "is async", id="async-generator"),
        pytest.param(functools.partial(_coroutine_fn), {}, TypeError, "is async",
                     id="partial-of-async"),
        pytest.param(workers.count, {"grace": math.inf}, ValueError, "not inf", id="grace-inf"),
        pytest.param(workers.count, {"max_buffered_items": True}, TypeError, "not bool",
                     id="max-items-bool"),
        pytest.param(workers.count, {"term_after": "1"}, TypeError,
                     "term_after must be a number of seconds, not str", id="term-after-str"),
    ],
)
def test_more_start_variants(fn: Any, options: dict[str, Any], exc_type: type,
                             fragment: str) -> None:
    """Variants of README rows: the same exception for the same mistake in another form."""
    with pytest.raises(exc_type) as info:
        workstream.start(fn, 3, **options)
    assert type(info.value) is exc_type
    assert fragment in str(info.value)


@pytest.mark.timeout(10)
def test_unpicklable_argument_error_names_the_cause() -> None:
    """The pickling error of start() names the function and chains the original error."""
    with pytest.raises(TypeError) as info:
        workstream.start(workers.return_value, threading.Lock())
    assert str(info.value).startswith(
        "workstream.start(): return_value or its arguments cannot be pickled"
    )
    assert "cannot pickle '_thread.lock' object" in str(info.value)
    assert type(info.value.__cause__) is TypeError


@contextlib.contextmanager
def _running_job(tmp_path: Any) -> Iterator[workstream.Job]:
    """A job whose child is running and blocked until the block ends; then it completes."""
    gate = ws.make_gate(str(tmp_path))
    job = workstream.start(ws.yield_then_block, gate)
    try:
        assert next(iter(job)) == "first"
        yield job
    finally:
        if job.state is JobState.RUNNING:
            ws.release(gate, wait_until)
        else:
            job.cancel(grace=0)
        job.wait(timeout=20)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", ["wait", "result"])
def test_wait_timeout_leaves_the_job_running(tmp_path: Any, method: str) -> None:
    """wait()/result() with a short timeout on a running job raise TimeoutError and the
    job keeps running to its normal end."""
    with _running_job(tmp_path) as job:
        with pytest.raises(TimeoutError) as info:
            getattr(job, method)(timeout=0.01)
        assert str(info.value) == (
            f"job 'yield_then_block' (pid {job.pid}) is still running after 0.01 s"
        )
        assert job.state is JobState.RUNNING
        assert job.done() is False
        assert job.cancel_requested is False
    assert job.result(timeout=1) == "released"


@pytest.mark.timeout(10)
def test_emit_outside_a_worker() -> None:
    """emit() outside a worker raises NotInWorkerError, which is also a RuntimeError."""
    with pytest.raises(workstream.NotInWorkerError) as info:
        workstream.emit(1)
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, workstream.WorkstreamError)
    assert "must be called inside a function run by workstream.start()" in str(info.value)


@pytest.mark.timeout(10)
def test_cancellation_helpers_outside_a_worker() -> None:
    """Outside a worker cancelled() is False, check_cancelled() does nothing, in_worker()
    is False."""
    assert workstream.cancelled() is False
    assert workstream.check_cancelled() is None
    assert workstream.in_worker() is False


@pytest.mark.timeout(30)
def test_start_inside_a_worker_fails_the_job() -> None:
    """start() called inside a worker raises there: the job fails with a WorkerError
    saying so."""
    job = workstream.start(ws.start_inside_worker)
    outcome = job.wait(timeout=20)
    assert type(outcome) is workstream.Failed
    err = outcome.error
    assert type(err) is workstream.WorkerError
    assert err.type_name == "RuntimeError"
    assert "cannot be called inside a workstream worker" in err.message
    assert "cannot be called inside a workstream worker" in err.remote_traceback
    assert type(err.__cause__) is RuntimeError


@pytest.mark.timeout(30)
def test_cancel_after_the_end_returns_false() -> None:
    """cancel() on a finished job returns False and changes nothing."""
    job = workstream.start(workers.count, 2)
    assert job.result(timeout=20) == 2
    assert job.cancel() is False
    assert job.cancel(grace=0) is False
    assert job.cancel_requested is False
    assert type(job.outcome) is workstream.Completed


def test_unknown_worker_option_says_worker_takes_no_function() -> None:
    """Regression: ``Worker(epochs=3)`` said "keyword arguments to fn", but Worker() takes
    no fn; the message now says where the function and its keyword arguments go."""
    with pytest.raises(TypeError) as info:
        workstream.Worker(epochs=3)  # type: ignore[call-arg]
    message = str(info.value)
    assert message.startswith("workstream.Worker() got unknown option(s) 'epochs'; ")
    assert message.endswith("Worker() takes no function: pass one to worker.start(fn, "
                            "*args), with keyword arguments as functools.partial(fn, "
                            "name=value)")
    with pytest.raises(TypeError, match=r"To pass keyword arguments to fn, use functools"):
        workstream.start(workers.count, 2, epochs=3)  # type: ignore[call-arg]
