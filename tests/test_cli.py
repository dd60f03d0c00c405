"""The terminal demo, run as a user runs it: ``python -m workstream demo ...``.

Each end-to-end test starts the demo as a subprocess with small settings and reads its
report (a rich table; stdout is a pipe here, so rich prints it without colours). Ctrl-C
is a real SIGINT sent once the demo printed the line that says the moment has come.
"""

from __future__ import annotations

import enum
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import workstream

pytest.importorskip("numpy")
pytest.importorskip("rich")

from workstream import CancelledOutcome
from workstream.__main__ import main
from workstream.demo import model
from workstream.demo import report as demo_report
from workstream.demo.terminal import StopButton, consume

DEMO = [sys.executable, "-m", "workstream", "demo"]
ENV = {**os.environ, "COLUMNS": "200", "PYTHONIOENCODING": "utf-8", "NO_COLOR": "1"}


def run_demo(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the demo to its end; return the finished process and its wall time."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [*DEMO, *args], capture_output=True, text=True, env=ENV, timeout=50,
        encoding="utf-8", errors="replace",
    )
    return proc, time.monotonic() - t0


def report(stdout: str) -> dict[str, str]:
    """The report table's rows as {label: value}."""
    rows: dict[str, str] = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.replace("|", "│").split("│")]
        if len(cells) == 4 and cells[1]:
            rows[cells[1]] = cells[2]
    return rows


def check_clean(proc: subprocess.CompletedProcess[str], outcome: str) -> dict[str, str]:
    """Assert exit 0, the given outcome and no process left; return the report."""
    rows = report(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert rows.get("outcome") == outcome, proc.stdout
    assert rows["processes left"].startswith("0 "), proc.stdout
    return rows


def latency_ms(rows: dict[str, str]) -> float:
    return float(rows["stop latency"].split(" ms")[0])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_completed_run(method: str) -> None:
    proc, _ = run_demo("--steps", "40", "--start-method", method)
    rows = check_clean(proc, "completed")
    assert rows["items received"] == "40"
    assert rows["steps"] == "40"
    assert float(rows["final loss"]) < 0.7
    assert rows["child"].endswith("exit code 0")


@pytest.mark.timeout(60)
def test_stop_after_stops_cooperatively() -> None:
    proc, _ = run_demo("--stop-after", "0.5")
    rows = check_clean(proc, "cancelled")
    assert rows["how it stopped"] == f"stopped at a yield {rows['stop latency'].split()[0]} ms "\
        "after Stop", proc.stdout
    assert "asking the worker to stop at its next yield; SIGTERM after 1 s, SIGKILL after 2 s"\
        in proc.stdout
    assert rows["stopped by"] == "--stop-after 0.5 s"
    assert 0 < int(rows["items received"]) < model.DEFAULT_STEPS
    assert latency_ms(rows) < 1000  # a yield comes every few ms


@pytest.mark.timeout(60)
def test_stuck_worker_is_killed_within_the_grace() -> None:
    proc, wall = run_demo("--stuck", "--grace", "1", "--stop-after", "0.5")
    rows = check_clean(proc, "cancelled")
    assert "The worker is now in a long C call" in proc.stdout
    how = rows["how it stopped"]
    assert how.startswith("did not stop within 0.5 s, so it was sent SIGTERM"), proc.stdout
    if how.endswith("killed (SIGKILL)"):  # the usual case: SIGTERM cannot stop a C call
        assert "at the end of the 1 s grace" in how
        assert "SIGKILL (-9)" in rows["child"]
    else:
        assert "and stopped " in how, proc.stdout
    assert 400 <= latency_ms(rows) < 2500, proc.stdout  # SIGTERM at 0.5 s, SIGKILL at 1 s
    assert wall < 10


@pytest.mark.timeout(60)
def test_failure_exits_nonzero_with_the_remote_traceback() -> None:
    proc, _ = run_demo("--fail-at", "3")
    rows = report(proc.stdout)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert rows["outcome"] == "failed"
    assert "InjectedFailure" in rows["error"]
    assert "Traceback (most recent call last)" in proc.stdout
    assert "demo/model.py" in proc.stdout  # the remote traceback points at the worker's code
    assert rows["processes left"].startswith("0 ")


def _lines_until(stream: Iterator[str], marker: str, seen: list[str]) -> None:
    """Read lines (appending them to ``seen``) until one contains ``marker``."""
    for line in stream:
        seen.append(line)
        if marker in line:
            return
    raise AssertionError(f"the demo ended without printing {marker!r}:\n{''.join(seen)}")


def _interrupted_run(args: list[str], presses: list[str]) -> tuple[int, str]:
    """Run the demo; send SIGINT each time a line with the next marker appears."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # inherited: Python keeps it
        pytest.skip("SIGINT is ignored in this process (and so in the demo): no Ctrl-C")
    seen: list[str] = []
    with subprocess.Popen(
        [*DEMO, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=ENV, encoding="utf-8", errors="replace",
    ) as proc:  # closes the pipe and reaps the demo on the way out
        try:
            assert proc.stdout is not None
            for marker in presses:
                _lines_until(proc.stdout, marker, seen)
                proc.send_signal(signal.SIGINT)
            rest, _ = proc.communicate(timeout=40)
        finally:
            if proc.poll() is None:
                proc.kill()
    return proc.returncode, "".join(seen) + rest


@pytest.mark.timeout(60)
def test_ctrl_c_stops_the_job_and_still_reports() -> None:
    code, out = _interrupted_run(["--steps", "100000"], ["is training"])
    rows = report(out)
    assert code == 0, out
    assert rows["outcome"] == "cancelled"
    assert rows["stopped by"] == "Ctrl-C"
    assert rows["processes left"].startswith("0 ")


@pytest.mark.timeout(60)
def test_second_ctrl_c_kills_a_stuck_worker_at_once() -> None:
    code, out = _interrupted_run(
        ["--stuck", "--grace", "30"], ["now in a long C call", "asking the worker to stop"]
    )
    rows = report(out)
    assert code == 0, out
    assert rows["outcome"] == "cancelled"
    assert rows["stopped by"] == "Ctrl-C twice"
    assert rows["how it stopped"].startswith("killed (SIGKILL) at the second Ctrl-C, "), out
    assert rows["how it stopped"].endswith(" after Stop, before SIGTERM was due"), out
    assert "Ctrl-C again: skipping the rest of the grace period." in out
    assert "The second Ctrl-C killed the worker (SIGKILL)." in out
    assert latency_ms(rows) < 10_000  # far less than the 30 s grace
    assert rows["processes left"].startswith("0 ")


@pytest.mark.timeout(60)
def test_training_steps_reduce_the_loss() -> None:
    """The worker's generator, called in-process: the loss falls, the summary is right."""
    gen = model.train(80, seed=3)
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as stop:
            summary = stop.value
            break
    assert [i["step"] for i in items] == list(range(80))
    assert items[-1]["loss"] < 0.9 * items[0]["loss"]
    assert summary["steps"] == 80
    assert summary["final_loss"] == items[-1]["loss"]


@pytest.mark.timeout(60)
def test_stuck_mode_announces_the_long_call_in_process() -> None:
    items = list(model.train(3, stuck=True, stuck_seconds=0.05))
    assert [("stuck" in i) for i in items] == [False, False, True]
    assert "np.einsum" in items[-1]["stuck"]


@pytest.mark.timeout(60)
def test_one_step_follows_the_gradient() -> None:
    """A small plain gradient step along the hand-written gradients lowers the loss."""
    x, y = model.make_spirals(200, noise=0.05, seed=1)
    mlp = model.MLP.init(16, seed=2)
    loss, _, grads = model.loss_and_grads(mlp, x, y)
    for p, g in zip(mlp.params(), grads, strict=True):
        p -= 0.1 * g
    assert model.loss_and_grads(mlp, x, y)[0] < loss


@pytest.mark.timeout(60)
def test_missing_dependency_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)  # makes `import rich` fail
    assert main(["demo", "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'workstream[demo]'" in err
    assert "rich" in err


@pytest.mark.timeout(60)
def test_leftover_check_ignores_helpers_and_sees_a_live_child() -> None:
    # The session fixture started the guard, the fork server and the resource tracker.
    assert demo_report.leftover_processes(None).count == 0
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        left = demo_report.leftover_processes(child.pid)
        assert left.count == 1, left
        assert f"worker {child.pid}" in left.detail
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)
    assert not demo_report.pid_exists(child.pid)


@pytest.mark.timeout(60)
def test_exit_status_rendering() -> None:
    """The demo words exit statuses as the library does (one wording, public)."""
    assert demo_report.describe_exit is workstream.describe_exit
    assert workstream.describe_exit(0) == "exit code 0"
    assert workstream.describe_exit(-signal.SIGKILL) == "SIGKILL (-9)"
    assert workstream.describe_exit(None) == "unknown exit status"


# -- the demo's words, with stand-ins for the job (no process, no timing) ----------------


class FakeJob:
    """Just enough of a Job for StopButton and consume: items, a pid known late, cancel."""

    def __init__(self, items: list[dict[str, float]], pid_from: int) -> None:
        self._items = items
        self._pid_from = pid_from
        self.yielded = 0
        self.ended = False
        self.cancels: list[float | None] = []
        self.cancel_requested = False
        self.progress = None  # no workstream.progress() report

    @property
    def pid(self) -> int | None:
        return 4242 if self.yielded > self._pid_from else None

    def __iter__(self) -> Iterator[dict[str, float]]:
        for item in self._items:
            self.yielded += 1
            yield item

    def cancel(self, grace: float | None = None) -> bool:
        self.cancels.append(grace)
        self.cancel_requested = True
        return not self.ended


class FakeView:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def announce(self, text: str, markup: bool = False) -> None:
        self.lines.append(text)

    def show(self, item: object, stopping: bool, progress: object = None) -> None:
        pass


def _steps(n: int) -> list[dict[str, float]]:
    return [{"step": i, "loss": 1.0, "accuracy": 0.5} for i in range(n)]


def _cancelled(rung: str, latency: float | None) -> CancelledOutcome:
    return CancelledOutcome(pid=4242, items_delivered=3, exit_code=0, duration=1.0,
                            rung=rung, stop_latency=latency)  # type: ignore[arg-type]


def _pressed(grace: float = 2.0, *, second_after: float | None = None) -> StopButton:
    """A StopButton pressed once (at a fixed time), and again ``second_after`` s later."""
    stop = StopButton(FakeJob([], 0), FakeView().announce, None, grace)  # type: ignore[arg-type]
    stop.interrupt()
    assert stop.presses.at is not None
    stop.presses.at = 1000.0
    if second_after is not None:
        stop.interrupt()
        stop.presses.kill_at = 1000.0 + second_after
    return stop


def test_the_pid_is_said_once_it_is_known_never_as_none() -> None:
    """Regression (issue 9): the demo printed "worker pid None" just after start."""
    job, view = FakeJob(_steps(5), pid_from=2), FakeView()
    stop = StopButton(job, view.announce, None, 2.0)  # type: ignore[arg-type]
    received = consume(job, view, stop)  # type: ignore[arg-type]
    assert received.items == 5
    assert received.last == _steps(5)[-1]
    assert view.lines == ["worker pid 4242 is training."]


@pytest.mark.parametrize(
    ("rung", "latency", "second_after", "words"),
    [
        ("cooperative", 0.012, None, "stopped at a yield 12 ms after Stop"),
        ("sigterm", 1.04, None,
         "did not stop within 1 s, so it was sent SIGTERM, and stopped 40 ms later"),
        ("sigkill", 2.003, None,
         "did not stop within 1 s, so it was sent SIGTERM; still running at the end of the "
         "2 s grace, so it was killed (SIGKILL)"),
        ("sigkill", 0.31, 0.3,
         "killed (SIGKILL) at the second Ctrl-C, 300 ms after Stop, before SIGTERM was due"),
        ("sigkill", 1.51, 1.5,
         "did not stop within 1 s, so it was sent SIGTERM; still running at the second "
         "Ctrl-C, so it was killed (SIGKILL)"),
        ("before-start", None, None, "stopped before the worker process had started"),
    ],
    ids=["yield", "sigterm", "sigkill-grace", "sigkill-ctrl-c", "sigterm-then-ctrl-c",
         "before-start"],
)
def test_report_says_how_it_stopped_in_plain_words(
    rung: str, latency: float | None, second_after: float | None, words: str
) -> None:
    """The report's "how it stopped" row: no jargon, and the SIGTERM attempt when made."""
    stop = _pressed(second_after=second_after)
    assert demo_report.describe_stop(_cancelled(rung, latency), stop.presses) == words


def test_second_ctrl_c_after_the_worker_stopped_does_not_claim_a_kill() -> None:
    """Regression (issue 9): "killing the worker now", then a report saying cooperative."""
    view = FakeView()
    job = FakeJob([], 0)
    stop = StopButton(job, view.announce, None, 2.0)  # type: ignore[arg-type]
    stop.interrupt()
    stop.interrupt()  # the job is still running as far as cancel() knows
    assert job.cancels == [None, 0.0]
    assert not any("kill" in line for line in view.lines[1:]), view.lines
    said = demo_report.describe_kill_press(_cancelled("cooperative", 0.01), stop.presses)
    assert said == ("The worker had already stopped at a yield when the second Ctrl-C came: "
                    "nothing was killed.")
    assert demo_report.describe_kill_press(_cancelled("sigkill", 0.01), stop.presses) == (
        "The second Ctrl-C killed the worker (SIGKILL).")


def test_second_ctrl_c_after_the_job_ended_says_so() -> None:
    view = FakeView()
    job = FakeJob([], 0)
    stop = StopButton(job, view.announce, None, 2.0)  # type: ignore[arg-type]
    stop.interrupt()
    job.ended = True
    stop.interrupt()
    assert view.lines[-1] == "Ctrl-C again: the worker has already stopped."
    assert stop.presses.kill_at is None
    assert demo_report.describe_kill_press(_cancelled("cooperative", 0.01), stop.presses) is None


class _EnumRung(str, enum.Enum):
    """A rung as a string-valued enum (how the library may give it)."""

    SIGTERM = "sigterm"


def test_one_report_for_both_front_ends() -> None:
    """The terminal and the window print the same rows, from one builder: for a cancelled
    job who stopped it, the latency with the grace, how it stopped (no jargon row with the
    bare rung), and the
    child's exit in the library's words."""
    presses = demo_report.StopPresses(grace=2.0, term_after=1.0, kill_label="Kill now")
    presses.press("the Stop button", 1000.0)
    received = demo_report.Received()
    received.add([{"step": 6, "loss": 0.5, "accuracy": 0.75}])
    outcome = _cancelled("cooperative", 0.012)
    left = demo_report.Leftovers(0, "worker pid checked")
    rows = dict(demo_report.report_rows(outcome, received, presses, left))
    assert rows == {
        "outcome": "cancelled",
        "items received": "1",
        "last loss": "0.5000 at step 6 (accuracy 75.0%)",
        "stopped by": "the Stop button",
        "stop latency": "12 ms (grace 2 s)",
        "how it stopped": "stopped at a yield 12 ms after Stop",
        "child": f"pid 4242, {workstream.describe_exit(0)}",
        "duration": "1.00 s",
        "processes left": "0 (worker pid checked)",
    }
    never = CancelledOutcome(pid=None, items_delivered=0, exit_code=None, duration=0.0,
                             rung="before-start")
    rows = dict(demo_report.report_rows(never, demo_report.Received(), presses, left))
    assert rows["child"] == "never started, unknown exit status"
    assert rows["how it stopped"] == "stopped before the worker process had started"


def test_rung_words_take_a_string_or_a_string_enum() -> None:
    """One wording table, whichever way the outcome spells its rung."""
    presses = demo_report.StopPresses(grace=2.0, term_after=1.0, kill_label="Kill now")
    presses.press("Ctrl-C", 1000.0)
    for rung in ("sigterm", _EnumRung.SIGTERM):
        outcome = _cancelled(rung, 1.04)  # type: ignore[arg-type]
        assert demo_report.describe_stop(outcome, presses) == (
            "did not stop within 1 s, so it was sent SIGTERM, and stopped 40 ms later")
        rows = dict(demo_report.report_rows(outcome, demo_report.Received(), presses,
                                            demo_report.Leftovers(0, "")))
        assert rows["how it stopped"].startswith("did not stop within 1 s")
    unpressed = demo_report.StopPresses(grace=2.0, term_after=1.0, kill_label="Kill now")
    assert demo_report.describe_stop(_cancelled(_EnumRung.SIGTERM, 1.0),  # type: ignore[arg-type]
                                     unpressed) == demo_report.RUNG_WORDS["sigterm"]


class _FakeProcess:
    def __init__(self, *cmdline: str) -> None:
        self._cmdline = list(cmdline)

    def cmdline(self) -> list[str]:
        return self._cmdline


@pytest.mark.parametrize(("cmdline", "helper"), [
    (("/usr/bin/python3", "-I", "-S", "-c", "import sys"), True),  # the guard, as source
    (("/usr/bin/python3", "-I", "-S", "-m", "workstream._supervisor._guard"), True),
    (("/usr/bin/python3", "-I", "-S", "/site/workstream/_supervisor/_guard_main.py"), True),
    (("/usr/bin/python3", "-c", "from multiprocessing.forkserver import main; main()"), True),
    (("/usr/bin/python3", "-c", "import sys; sys.stdin.read()"), False),
    (("/usr/bin/python3", "-m", "workstream", "demo"), False),
])
def test_the_guard_is_a_helper_however_it_is_run(cmdline: tuple[str, ...], helper: bool) -> None:
    """The left-over check skips workstream's guard whether it runs as ``-c`` source, a
    module or a file (its command line starts ``python -I -S``), and nothing else."""
    assert demo_report._is_helper(_FakeProcess(*cmdline)) is helper


_SELF_SIGINT = """
import os, signal, sys
from workstream.__main__ import main
from workstream.demo import terminal
where = sys.argv[1]
def ctrl_c_twice():
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)
if where != "exit":
    original = getattr(terminal, where)
    def patched(*args, **kwargs):
        if where == "leftover_processes":
            ctrl_c_twice()
        result = original(*args, **kwargs)
        if where == "print_report":
            ctrl_c_twice()
        return result
    setattr(terminal, where, patched)
status = main(["demo", "--steps", "5"])
if where == "exit":  # Python's own handler would be SIG_DFL again later in the exit
    ctrl_c_twice()
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    print("SIGINT at exit:", "ignored" if ignored else "handled by Python")
sys.exit(status)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["leftover_processes", "print_report", "exit"])
def test_ctrl_c_after_the_job_ended_keeps_the_report(where: str) -> None:
    """Regression: a Ctrl-C (sent by the demo to itself, so it lands exactly there) in the
    leftover scan, after the report or while the process exits lost the report or turned
    the exit status into 130 (killed by SIGINT)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        pytest.skip("SIGINT is ignored in this process (and so in the demo): no Ctrl-C")
    proc = subprocess.run([sys.executable, "-c", _SELF_SIGINT, where], capture_output=True,
                          text=True, env=ENV, timeout=50, encoding="utf-8", errors="replace")
    check_clean(proc, "completed")
    assert "interrupted" not in proc.stderr, proc.stderr
    if where == "leftover_processes":
        assert "Ctrl-C: the worker has already stopped." in proc.stdout
    if where == "exit":  # else a Ctrl-C late in the exit kills it: status 130 in a shell
        assert "SIGINT at exit: ignored" in proc.stdout


def test_ctrl_c_while_the_command_line_is_read_says_interrupted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: Ctrl-C while the parser's defaults import numpy printed a traceback."""
    from workstream.demo import settings

    def interrupted() -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(settings, "_default_steps", interrupted)
    assert main(["demo", "--steps", "5"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_ctrl_c_while_the_demo_imports_says_interrupted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while the demo looks for numpy and rich: "interrupted", 130, no traceback."""
    from workstream.demo import cli

    def interrupted() -> list[str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "missing_demo_dependencies", interrupted)
    assert main(["demo", "--steps", "5"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_cooperative_stop_before_the_first_item_says_so() -> None:
    """Regression: a very early Ctrl-C (no item sent) was reported as "stopped at a yield",
    but the item of the yield that sees a cancel is always sent first: a cooperative stop
    with none sent came before the function's first yield."""
    stop = _pressed()
    early = CancelledOutcome(pid=4242, items_delivered=0, exit_code=0, duration=0.1,
                             rung="cooperative", stop_latency=0.019)  # type: ignore[arg-type]
    assert demo_report.describe_stop(early, stop.presses) == (
        "stopped before its first item, 19 ms after Stop")


def test_ctrl_c_while_qt_is_imported_says_interrupted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while ``--gui`` imports Qt: "interrupted", 130, no traceback."""
    import builtins

    real_import = builtins.__import__

    def interrupted_gui(name: str, *args: object, **kwargs: object) -> object:
        if name == "gui" or name.endswith("demo.gui"):
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.delitem(sys.modules, "workstream.demo.gui", raising=False)
    monkeypatch.setattr(builtins, "__import__", interrupted_gui)
    assert main(["demo", "--gui", "--steps", "5"]) == 130
    assert capsys.readouterr().err == "interrupted\n"
