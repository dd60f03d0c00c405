"""Crash reports that say where (issue 12 §2): a fatal signal in the worker gives the
Python stack of every thread (``outcome.fault_stack``, ``WorkerCrashed.fault_stack``)
and ``WorkerCrashed``'s message names the innermost frame of the user's own code.
"""

from __future__ import annotations

import pickle
import signal

import pytest

import workers_crash as wc
import workstream
from workstream import Crashed, Worker, WorkerCrashed
from workstream._core import _faults

METHODS = ("forkserver", "spawn", "fork")


def _where(tag: str, function: str) -> str:
    return f"{function}() at {wc.__file__}:{wc.line_of(tag)}"


@pytest.mark.parametrize("method", METHODS)
def test_segfault_names_the_users_line_and_carries_every_stack(method: str) -> None:
    job = workstream.start(wc.segfault_with_threads, start_method=method)
    outcome = job.wait(timeout=30)
    assert isinstance(outcome, Crashed), outcome
    assert outcome.exit_code == -signal.SIGSEGV
    err = outcome.error
    assert err.where == _where("segv", "_step_segv")
    assert f"died without reporting (SIGSEGV (-11)) in {err.where}" in str(err)
    stack = outcome.fault_stack
    assert stack is not None and stack == err.fault_stack
    assert "Segmentation fault" in stack
    assert "in _park" in stack  # the other thread's stack is there too
    assert f'File "{wc.__file__}", line {wc.line_of("segv")} in _step_segv' in stack
    with pytest.raises(WorkerCrashed, match=r"in _step_segv\(\) at .*workers_crash\.py:\d+"):
        job.result()


def test_items_before_the_crash_still_arrive() -> None:
    job = workstream.start(wc.segfault_after_items, 3, batch_window=0)
    assert list(job) == [0, 1, 2]
    outcome = job.wait(timeout=30)
    assert isinstance(outcome, Crashed) and outcome.error.where == _where("segv", "_step_segv")


def test_abort_names_the_users_line() -> None:
    outcome = workstream.start(wc.abort).wait(timeout=30)
    assert isinstance(outcome, Crashed) and outcome.signal_name == "SIGABRT", outcome
    assert outcome.error.where == _where("abort", "abort")
    assert outcome.fault_stack is not None and "Aborted" in outcome.fault_stack


def test_a_crash_inside_numpy_names_the_line_that_called_it() -> None:
    pytest.importorskip("numpy")
    outcome = workstream.start(wc.crash_inside_numpy).wait(timeout=30)
    assert isinstance(outcome, Crashed) and outcome.signal_name == "SIGSEGV", outcome
    assert outcome.error.where == _where("numpy", "crash_inside_numpy")
    assert outcome.fault_stack is not None and "numpy" in outcome.fault_stack


@pytest.mark.parametrize("sig", [signal.SIGFPE, signal.SIGBUS, signal.SIGILL],
                         ids=lambda s: signal.Signals(s).name)
def test_other_fatal_signals_carry_the_stack(sig: int) -> None:
    outcome = workstream.start(wc.raise_signal, sig).wait(timeout=30)
    assert isinstance(outcome, Crashed) and outcome.exit_code == -sig, outcome
    assert outcome.error.where == _where("raise", "raise_signal")
    assert outcome.fault_stack is not None


def test_sigkill_has_no_stack() -> None:
    outcome = workstream.start(wc.kill_self).wait(timeout=30)
    assert isinstance(outcome, Crashed) and outcome.exit_code == -signal.SIGKILL
    assert outcome.fault_stack is None and outcome.error.where is None
    assert " in " not in str(outcome.error).split(";")[0]


def test_a_clean_job_has_no_stack() -> None:
    job = workstream.start(wc.small_job, 5)
    assert job.result(timeout=30) == 5


def test_warm_worker_reports_each_jobs_crash() -> None:
    """A job that turned faulthandler off does not cost the next job its report; the
    crashed process is replaced and the next crash is reported again."""
    with Worker() as worker:
        worker.start(wc.disable_faulthandler).result(timeout=30)
        outcome = worker.start(wc.segfault_after_items, 0).wait(timeout=30)
        assert isinstance(outcome, Crashed) and outcome.kept_warm is False, outcome
        assert outcome.error.where == _where("segv", "_step_segv")
        assert outcome.fault_stack is not None
        outcome = worker.start(wc.abort).wait(timeout=30)
        assert isinstance(outcome, Crashed) and outcome.error.where == _where("abort", "abort")
        assert "_step_segv" not in (outcome.fault_stack or "")  # the new process's own


def test_worker_crashed_pickles_with_its_report() -> None:
    err = WorkerCrashed(7, -11, fault_stack="stack", where="f() at x.py:1")
    back = pickle.loads(pickle.dumps(err))
    assert (back.fault_stack, back.where, str(back)) == ("stack", "f() at x.py:1", str(err))
    assert "died without reporting (SIGSEGV (-11)) in f() at x.py:1" in str(err)


def test_crash_errors_pickle_with_their_stderr_tail() -> None:
    """The stderr tail is set on the error after it is made: a pickled copy (a job's
    error sent on to another process) keeps it, for the memory limit's error too."""
    err = WorkerCrashed(7, -9)
    err.stderr_tail = ("last words",)
    assert pickle.loads(pickle.dumps(err)).stderr_tail == ("last words",)
    over = workstream.MemoryLimitExceeded(7, -9, limit=1 << 20, peak=2 << 20)
    over.stderr_tail = ("allocating",)
    back = pickle.loads(pickle.dumps(over))
    assert (back.stderr_tail, back.limit, back.peak) == (("allocating",), 1 << 20, 2 << 20)
    assert pickle.loads(pickle.dumps(WorkerCrashed(7, -9))).stderr_tail == ()


# -- the report's parsing (pure) -----------------------------------------------------------

REPORT = """\
Fatal Python error: Segmentation fault

Thread 0x00007f1 (most recent call first):
  File "/home/me/proj/loader.py", line 9 in load
  File "/usr/lib/python3.11/threading.py", line 982 in run

Current thread 0x00007f2 (most recent call first):
  File "{lib}/ctypes/__init__.py", line 519 in string_at
  File "/home/me/venv/lib/python3.11/site-packages/torch/nn.py", line 3 in forward
  File "/home/me/proj/train.py", line 42 in step
  File "/home/me/proj/train.py", line 50 in fn
  File "<string>", line 1 in <module>

Extension modules: numpy.core._multiarray_umath (total: 1)
"""


def test_innermost_user_frame_skips_stdlib_site_packages_and_other_threads() -> None:
    import sysconfig

    report = REPORT.format(lib=sysconfig.get_paths()["stdlib"])
    frame = _faults.innermost_user_frame(report)
    assert frame is not None and str(frame) == "step() at /home/me/proj/train.py:42"


def test_no_user_frame_names_nothing() -> None:
    report = "Current thread 0x1 (most recent call first):\n  <no Python frame>\n"
    assert _faults.innermost_user_frame(report) is None
    assert _faults.innermost_user_frame("garbage") is None
    workstream_file = _faults.__file__
    only_ours = (
        f'Current thread 0x1 (most recent call first):\n  File "{workstream_file}", line 1 in f\n'
    )
    assert _faults.innermost_user_frame(only_ours) is None


def test_a_function_sent_by_value_without_a_file_is_the_users() -> None:
    report = (
        "Current thread 0x1 (most recent call first):\n"
        '  File "<frozen importlib._bootstrap>", line 1 in _load\n'
        '  File "<dynamic-code>", line 5 in f\n'
        '  File "<string>", line 1 in <module>\n'
    )
    frame = _faults.innermost_user_frame(report)
    assert frame is not None and str(frame) == "f() at <dynamic-code>:5"
