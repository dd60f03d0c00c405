"""The fault matrix: phase x fault x start method, each cell mapped to its exact outcome.

Every cell starts a real worker (``workers_faults.cell``) that reaches ``phase``, creates
a marker file, then commits ``fault``; the test asserts the outcome kind, the exit code
or signal name (or the cancel rung), the error type, the items delivered before the
fault (exactly, in order) and that the outcome came within a bound. A bound that fires
dumps every thread's stack, lists the live children, kills them and fails.

The full cross product runs under ``-m slow``; the fast set runs each (phase, fault)
once, the start method rotating along the table (a diagonal). Notes on phases:

* inside a shared-memory write (``shm-write``): the fault is committed inside the child's
  ``BlockPool.put``, after the bytes went into the block and before its descriptor was
  returned: the array is never delivered (no torn array), the items before it are;
* pickling ``fn``/``args`` in the parent: no process exists yet, see
  ``test_parent_side_pickling_faults`` below;
* ``startup`` and ``handshake`` faults are injected by patching the runtime in the
  parent, which only a ``fork`` child inherits: fork only;
* the parent killed at start-up or mid-fork: ``test_lifetime.py`` (every start method).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import workers
import workers_faults as wf
import workers_lifecycle as wl
import workstream
from conftest import bounded_wait, wait_until
from workstream import CancelledOutcome, Completed, Crashed, Failed
from workstream._child import _runtime, _sender

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
METHODS = ("forkserver", "spawn", "fork")
BOUND = 30.0  # seconds from the trigger (start or cancel) to the outcome, at most
STUCK_GRACE = 1.0  # the grace of cells whose child ignores the cancel

# -- the table -----------------------------------------------------------------------------

TERMINAL = ["exception", "sys-exit", "os-exit", "sigsegv", "sigkill", "unpicklable-exception",
            "exception-bad-str"]
STUCK = ["sigterm-ignored-spin", "stuck-in-c"]

PHASE_FAULTS: dict[str, list[str]] = {
    "startup": ["exception", "sys-exit", "os-exit", "sigsegv", "sigkill", "stuck-in-c"],
    "handshake": ["exception", "sys-exit", "os-exit", "sigsegv", "sigkill", "stuck-in-c"],
    "child-import": [*TERMINAL, *STUCK, "subprocess", "parent-killed"],
    "child-unpickle": [*TERMINAL, *STUCK, "subprocess", "parent-killed"],
    "mid-stream": [*TERMINAL, *STUCK, "sigterm-handler-replaced-spin", "unpicklable-item",
                   "big-item", "subprocess", "parent-killed"],
    "channel-full": ["os-exit", "sigsegv", "sigkill", "stuck-in-c", "subprocess",
                     "parent-killed"],
    "shm-write": ["exception", "sys-exit", "os-exit", "sigsegv", "sigkill", "stuck-in-c",
                  "parent-killed"],
    "pickle-final": [*TERMINAL, *STUCK, "unpicklable-item", "subprocess", "parent-killed"],
    "parent-unpickle-item": ["exception", "sys-exit"],
    "parent-unpickle-final": ["exception", "sys-exit"],
    "after-final": ["exception", "sys-exit", "os-exit", "sigsegv", "sigkill", "stuck-in-c",
                    "parent-killed"],
    "cancel-cooperative": [*TERMINAL, *STUCK, "sigterm-handler-replaced-spin", "subprocess",
                           "subprocess-stuck", "parent-killed"],
    "cancel-sigterm": [*TERMINAL, *STUCK, "sigterm-handler-replaced-spin", "subprocess",
                       "subprocess-stuck", "parent-killed"],
    "cancel-sigkill": ["stuck-in-c", "sigterm-ignored-spin", "subprocess-stuck",
                       "parent-killed"],
}
FORK_ONLY = {"startup", "handshake"}
WORKER_ERROR_TYPE = {
    "exception": "ValueError",
    "sys-exit": "SystemExit",
    "unpicklable-exception": "workers_faults.UnpicklableError",
    "unpicklable-item": "TypeError",
    "exception-bad-str": "workers_faults.BadStrError",
}
CRASH_EXIT = {
    "os-exit": wf.EXIT_CODE,
    "subprocess": wf.EXIT_CODE,
    "sigsegv": -signal.SIGSEGV,
    "sigkill": -signal.SIGKILL,
}


@dataclass(frozen=True)
class Expect:
    """What one cell must end with."""

    kind: str  # completed / failed / cancelled / crashed
    exit_code: int | None
    error: type | None = None  # the outcome's error type (failed / crashed)
    type_name: str | None = None  # WorkerError.type_name
    cause: type | None = None  # DeliveryError.__cause__ type
    rung: str | None = None
    value: object = None
    items: list[object] = field(default_factory=list)
    cancel: dict[str, float] | None = None  # how the test cancels, once the child is there


def expected(phase: str, fault: str) -> Expect:
    """The exact outcome of one cell."""
    items: list[object] = [] if phase in (
        "startup", "handshake", "child-import", "child-unpickle", "channel-full"
    ) else list(range(wf.ITEMS_BEFORE))
    cancel: dict[str, float] | None = None
    if phase == "cancel-cooperative":
        cancel = {"grace": 10.0}
    elif phase == "cancel-sigterm":
        cancel = {"grace": 10.0, "term_after": 0.0}
    if phase == "after-final":
        # The final frame arrived: completed, whatever the exit that followed. An
        # exception or sys.exit() in a flush after it cannot change the exit status; a
        # child stuck after its final frame is killed by the runner after the grace.
        code = {"exception": 0, "sys-exit": 0}.get(fault)
        if code is None:
            code = CRASH_EXIT.get(fault, -signal.SIGKILL)
        return Expect("completed", code, value="done", items=items)
    if fault in (*STUCK, "sigterm-handler-replaced-spin", "subprocess-stuck") or (
        phase == "cancel-sigkill"
    ):
        cancel = {**(cancel or {}), "grace": STUCK_GRACE}
        return Expect("cancelled", -signal.SIGKILL, rung="sigkill", items=items, cancel=cancel)
    if phase in ("parent-unpickle-item", "parent-unpickle-final"):
        cause = ValueError if fault == "exception" else SystemExit
        return Expect("failed", 0, error=workstream.DeliveryError, cause=cause, items=items)
    if fault == "big-item":
        return Expect("completed", 0, value="done", items=[*items, b"x" * wf.BIG])
    if phase in FORK_ONLY and fault in ("exception", "sys-exit"):
        # Outside _run: multiprocessing's bootstrap turns it into the exit status.
        code = 1 if fault == "exception" else wf.SYS_EXIT_CODE
        return Expect("crashed", code, error=workstream.WorkerCrashed, items=items, cancel=cancel)
    if fault in WORKER_ERROR_TYPE:
        return Expect("failed", 0, error=workstream.WorkerError,
                      type_name=WORKER_ERROR_TYPE[fault], items=items, cancel=cancel)
    return Expect("crashed", CRASH_EXIT[fault], error=workstream.WorkerCrashed, items=items,
                  cancel=cancel)


def _cells() -> list[Any]:
    params = []
    index = 0
    for phase, faults in PHASE_FAULTS.items():
        for fault in faults:
            methods = ("fork",) if phase in FORK_ONLY else METHODS
            diagonal = methods[index % len(methods)]
            index += 1
            for method in methods:
                marks = []
                if method == "fork":
                    marks.append(pytest.mark.filterwarnings("ignore::DeprecationWarning"))
                if method != diagonal:
                    marks.append(pytest.mark.slow)
                params.append(
                    pytest.param(phase, fault, method, marks=marks, id=f"{phase}-{fault}-{method}")
                )
    return params


CELLS = _cells()

# -- running a cell ------------------------------------------------------------------------


def cell_args(phase: str, fault: str, marker: str) -> tuple[object, ...]:
    """The arguments of ``workers_faults.cell`` for one cell."""
    extra: tuple[object, ...] = ()
    if phase == "child-unpickle":
        extra = (wf.FaultOnUnpickle(fault, marker),)
    elif phase == "child-import":
        extra = (wf.FaultOnImport(fault, marker),)
    return (phase, fault, marker, *extra)


def cell_options(phase: str) -> dict[str, Any]:
    # batch_window=0: every item is written before its yield returns, so the items
    # delivered before a hard crash are exact.
    options: dict[str, Any] = {"batch_window": 0}
    if phase == "channel-full":
        options.update(max_buffered_items=2, pipe_bytes=4096)
    return options


def _grandchild_of(marker: Path, fault: str) -> int | None:
    if fault not in ("subprocess", "subprocess-stuck"):
        return None
    wait_until(marker.exists, 20, "the child to report its subprocess")
    text = marker.read_text().split()
    return int(text[-1])


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("phase", "fault", "method"), CELLS)
def test_cell(
    phase: str, fault: str, method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One cell: the outcome is exactly the expected one, within the bound, and the
    child and its descendants are gone (the leak fixture checks fds, threads, pids)."""
    if fault == "parent-killed":
        run_parent_killed(phase, method, tmp_path)
        return
    exp = expected(phase, fault)
    marker = tmp_path / "marker"
    what = f"{phase} x {fault} x {method}"
    if phase == "startup":
        monkeypatch.setattr(
            _runtime, "set_parent_death_signal", wf.startup_fault(fault, str(marker))
        )
    elif phase == "handshake":
        original = _sender.Sender.send_ready
        monkeypatch.setattr(
            _sender.Sender, "send_ready", wf.handshake_fault(original, fault, str(marker))
        )
    t0 = time.monotonic()
    job = workstream.start(
        wf.cell, *cell_args(phase, fault, str(marker)), start_method=method,
        grace=STUCK_GRACE if phase == "after-final" else 2.0, **cell_options(phase),
    )
    if exp.cancel is not None:
        armed = tmp_path / "marker.armed" if phase.startswith("cancel-") else marker
        wait_until(armed.exists, 20, f"{what}: the child to reach the phase")
        t0 = time.monotonic()
        assert job.cancel(**exp.cancel) is True
    grandchild = _grandchild_of(marker, fault)
    outcome = bounded_wait(job, BOUND, what)
    elapsed = time.monotonic() - t0
    items = list(job)
    if phase == "channel-full":
        written = int((tmp_path / "marker.count").read_text())
        assert written >= 1, what
        if exp.cancel is not None:
            # During a cancel the runner reads regardless of the bound: the write the
            # child was blocked in completes (and its helper then holds the GIL).
            written += 1
        exp_items: list[object] = [(i, b"x" * wf.PAD) for i in range(written)]
    else:
        exp_items = exp.items
    check_outcome(what, outcome, exp, items, exp_items)
    assert elapsed < BOUND, f"{what}: the outcome took {elapsed:.1f} s"
    if exp.rung == "sigkill":
        assert outcome.stop_latency is not None
        assert outcome.stop_latency < STUCK_GRACE + 10, what
    if grandchild is not None:
        wait_until(lambda: not wl.pid_alive(grandchild), 5, f"{what}: the subprocess to die")
    assert job.pid is None or not wl.pid_alive(job.pid), what


def check_outcome(
    what: str, outcome: workstream.Outcome, exp: Expect, items: list[object],
    exp_items: list[object],
) -> None:
    assert outcome.kind == exp.kind, f"{what}: {outcome!r}"
    assert outcome.exit_code == exp.exit_code, f"{what}: {outcome!r}"
    assert items == exp_items, f"{what}: items {items[:6]!r}..."
    assert outcome.items_delivered == len(exp_items), f"{what}: {outcome!r}"
    if isinstance(outcome, Completed):
        assert outcome.value == exp.value, what
    elif isinstance(outcome, CancelledOutcome):
        assert outcome.rung == exp.rung, f"{what}: {outcome!r}"
    elif isinstance(outcome, Failed):
        assert type(outcome.error) is exp.error, f"{what}: {outcome.error!r}"
        if exp.type_name is not None:
            assert isinstance(outcome.error, workstream.WorkerError)
            assert outcome.error.type_name == exp.type_name, f"{what}: {outcome.error}"
            assert outcome.error.remote_traceback, what
        if exp.cause is not None:
            assert type(outcome.error.__cause__) is exp.cause, what
    else:
        assert isinstance(outcome, Crashed)
        assert type(outcome.error) is exp.error, f"{what}: {outcome.error!r}"
        code = exp.exit_code
        name = signal.Signals(-code).name if code is not None and code < 0 else None
        assert outcome.signal_name == name, f"{what}: {outcome!r}"
        assert outcome.error.exit_code == code, what
        expected_text = f"({name} ({code}))" if name else f"(exit code {code})"
        assert expected_text in str(outcome.error), f"{what}: {outcome.error}"


# -- the parent killed -----------------------------------------------------------------------

DRIVER = """
import os, sys, threading, time
sys.path.insert(0, {tests_dir!r})
import workstream
import workers_faults as wf
from test_fault_matrix import cell_args, cell_options


def main():
    method, phase, marker = sys.argv[1:4]
    job = workstream.start(
        wf.cell, *cell_args(phase, "parent-killed", marker), start_method=method,
        grace=60, **cell_options(phase),
    )
    if phase.startswith("cancel-"):
        deadline = time.monotonic() + 30
        while not os.path.exists(marker + ".armed") and time.monotonic() < deadline:
            time.sleep(0.005)  # ok: sleep (bounded poll of an external fact)
        job.cancel(grace=60, term_after=0 if phase == "cancel-sigterm" else 30)
    threading.Event().wait()  # until SIGKILLed


if __name__ == "__main__":
    main()
"""


def run_parent_killed(phase: str, method: str, tmp_path: Path) -> None:
    """SIGKILL the application while its child is in ``phase`` (stuck in a C call that
    holds the GIL, with a subprocess of its own): both must be gone within 10 s."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(tests_dir=TESTS_DIR)))
    marker = tmp_path / "marker"
    with open(tmp_path / "driver.stderr", "w") as err:
        driver = subprocess.Popen(
            [sys.executable, str(script), method, phase, str(marker)],
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )
    pids: list[int] = []
    try:
        wait_until(marker.exists, 30, f"{phase}: the child to report its pids")
        pids = [int(x) for x in marker.read_text().split()]
        assert all(wl.pid_alive(p) for p in pids)
        driver.kill()
        assert driver.wait(10) == -signal.SIGKILL
        t0 = time.monotonic()
        wait_until(lambda: not any(wl.pid_alive(p) for p in pids), 10,
                   f"{phase} x {method}: child and subprocess {pids} to die with the parent")
        assert time.monotonic() - t0 < 10
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(10)
        for pid in pids:
            if wl.pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# -- the parent's own side -------------------------------------------------------------------


class _ReduceRaises:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[object, ...]:
        raise self.exc


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("arg", "raised", "cause"),
    [
        pytest.param(_ReduceRaises(ValueError("no")), TypeError, ValueError, id="exception"),
        pytest.param(threading.Lock(), TypeError, TypeError, id="unpicklable-lock"),
        pytest.param(_ReduceRaises(SystemExit(5)), TypeError, SystemExit, id="sys-exit"),
        pytest.param(_ReduceRaises(KeyboardInterrupt()), TypeError, KeyboardInterrupt,
                     id="keyboard-interrupt"),
    ],
)
def test_parent_side_pickling_faults(arg: object, raised: type, cause: type | None) -> None:
    """A fault while start() pickles fn/args raises at the call (TypeError naming the
    cause, even a SystemExit or KeyboardInterrupt: issue 9 §4) and starts nothing: no
    process, fd, thread or registered job is left (the leak fixture)."""
    with pytest.raises(raised) as info:
        workstream.start(workers.return_value, arg)
    assert type(info.value) is raised
    if cause is not None:
        assert type(info.value.__cause__) is cause
        assert "cannot be pickled" in str(info.value)


def test_table_is_complete() -> None:
    """Every phase and fault the issue lists is in the table."""
    assert "shm-write" in PHASE_FAULTS
    faults = {f for fs in PHASE_FAULTS.values() for f in fs}
    assert faults >= {
        "exception", "sys-exit", "os-exit", "sigsegv", "sigkill", "sigterm-ignored-spin",
        "stuck-in-c", "unpicklable-item", "unpicklable-exception", "big-item", "subprocess",
        "parent-killed", "sigterm-handler-replaced-spin",
    }
    fast = [p for p in CELLS if not any(m.name == "slow" for m in p.marks)]
    assert len(fast) == sum(len(f) for f in PHASE_FAULTS.values())
    print(f"fault matrix: {len(fast)} fast cells, {len(CELLS)} in all")


def test_expected_is_exhaustive() -> None:
    """expected() gives a definite answer for every cell (no KeyError)."""
    for phase, faults in PHASE_FAULTS.items():
        for fault in faults:
            if fault != "parent-killed":
                assert expected(phase, fault).kind in ("completed", "failed", "cancelled",
                                                       "crashed")

