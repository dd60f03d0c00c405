"""workstream.tk: TkJob delivers items and outcomes in the Tk thread, never blocks the
Tk loop, and stops the child on Stop and when its widget is destroyed.

Runs against a private Xvfb display started by a fixture (skipped, with the reason, where
Xvfb is not installed; .ci/run installs it).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import workers
import workers_lifecycle as wl
import workers_progress as wp
import workstream
from conftest import wait_until
from gui_support import jobs_unregistered, xvfb_display  # noqa: F401 (autouse fixture)
from workstream import CancelledOutcome, Completed, Crashed, Failed, Progress
from workstream._supervisor import _registry

tkinter = pytest.importorskip("tkinter", reason="tkinter is not available in this Python")
from workstream.tk import TkJob  # noqa: E402

BOUND = 30.0  # seconds: every wait on the Tk loop is bounded; a hang fails


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """A private Xvfb display for the module."""
    with xvfb_display() as name:
        yield name


@pytest.fixture(scope="module")
def root(display: str) -> Iterator[Any]:
    """One Tk root on the module's display (created before the leak check's first
    snapshot: its X connection stays open until the module is done)."""
    tk_root = tkinter.Tk(screenName=display)
    _KEEP.append(tk_root)
    tk_root.withdraw()
    tk_root.update()
    try:
        yield tk_root
    finally:
        tk_root.destroy()


# A Tk interpreter must be freed by the thread that made it ("Tcl_AsyncDelete: async
# handler deleted by the wrong thread" aborts the process otherwise). Left to the garbage
# collector, a root caught in a reference cycle can be freed later on a job's runner
# thread; kept here, it is freed at interpreter exit, on the main thread.
_KEEP: list[Any] = []


def run_until(root: Any, predicate: Callable[[], bool], timeout: float = BOUND) -> None:
    """Run the real Tk main loop until ``predicate()`` is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    timed_out = []

    def check() -> None:
        if predicate():
            root.quit()
        elif time.monotonic() > deadline:
            timed_out.append(True)
            root.quit()
        else:
            root.after(2, check)

    root.after(0, check)
    root.mainloop()
    if timed_out:
        pytest.fail(f"the Tk loop did not reach the expected state within {timeout} s")


class Recorder:
    """Callbacks for a TkJob that record what arrives, in order, and on which thread."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.events: list[tuple[str, Any]] = []
        self.threads: set[int] = set()

    def callbacks(self, *, per_item: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {name: self._recorder(name) for name in (
            "on_state", "on_completed", "on_cancelled", "on_failed", "on_done")}
        if per_item:
            out["on_item"] = self._item
        return out

    def _item(self, x: Any) -> None:
        self.threads.add(threading.get_ident())
        self.items.append(x)

    def _recorder(self, name: str) -> Callable[[Any], None]:
        def record(value: Any) -> None:
            self.threads.add(threading.get_ident())
            self.events.append((name, value))
            if name != "on_state":
                self.events.append(("items-so-far", len(self.items)))
        return record

    def names(self) -> list[str]:
        return [n for n, _ in self.events if n != "items-so-far"]

    def states(self) -> list[str]:
        return [v for n, v in self.events if n == "on_state"]

    def done(self) -> bool:
        return any(n == "on_done" for n, _ in self.events)


def test_items_arrive_in_order_in_the_tk_thread(root: Any) -> None:
    """Every item once, in order, on the Tk thread; the final state once; on_completed
    and on_done, each once, after the last item."""
    rec = Recorder()
    tkjob = TkJob.start(workers.count, 2000, widget=root, **rec.callbacks())
    run_until(root, rec.done)
    assert rec.items == list(range(2000))
    assert rec.threads == {threading.get_ident()}
    # The final state is reported as soon as the bridge sees it, possibly before items
    # still being delivered; on_completed and on_done come after the last item.
    assert rec.names()[-2:] == ["on_completed", "on_done"]
    assert rec.states()[-1] == "completed" and rec.states().count("completed") == 1
    assert ("on_completed", 2000) in rec.events
    assert [v for n, v in rec.events if n == "items-so-far"] == [2000, 2000]
    assert tkjob.ended() and isinstance(tkjob.outcome, Completed)


def test_on_items_gets_consecutive_lists(root: Any) -> None:
    lists: list[list[int]] = []
    done: list[object] = []
    TkJob.start(workers.count, 5000, widget=root, on_items=lists.append, on_done=done.append)
    run_until(root, lambda: bool(done))
    assert [x for chunk in lists for x in chunk] == list(range(5000))


def test_stop_button_cancels_without_blocking(root: Any) -> None:
    """A Stop button whose command is ``cancel``: invoking it returns at once, on_state
    says "cancelling", and the job ends cancelled at a yield with contiguous items."""
    rec = Recorder()
    tkjob = TkJob.start(workers.forever, widget=root, **rec.callbacks())
    stop = tkinter.Button(root, text="Stop", command=tkjob.cancel)
    try:
        run_until(root, lambda: len(rec.items) >= 100)
        t0 = time.monotonic()
        stop.invoke()
        assert time.monotonic() - t0 < 1.0
        assert rec.states()[-1] == "cancelling"
        run_until(root, rec.done)
    finally:
        stop.destroy()
    outcome = tkjob.outcome
    assert isinstance(outcome, CancelledOutcome) and outcome.rung == "cooperative", outcome
    assert rec.items[-1] == "finally"
    wl.assert_contiguous(rec.items[:-1])
    assert rec.states()[-2:] == ["cancelling", "cancelled"]


def test_a_slow_on_items_callback_sees_the_end_right_after_the_job(root: Any) -> None:
    """Regression test for issue 9 §1: a 5 ms ``on_items`` callback gets everything pending
    in one list per call, so after a cancel at 1 s into a flood ``on_done`` comes within
    300 ms of the job's end, with every item in order."""
    lists: list[list[Any]] = []
    done_at: list[float] = []

    def on_items(chunk: list[Any]) -> None:
        end = time.perf_counter() + 0.005  # work, not a sleep: a plot redrawing
        while time.perf_counter() < end:
            pass
        lists.append(chunk)

    tkjob = TkJob.start(workers.forever, widget=root, on_items=on_items,
                        on_done=lambda _: done_at.append(time.perf_counter()))
    ended: list[float] = []

    def waiter() -> None:
        tkjob.job.wait(timeout=60)
        ended.append(time.perf_counter())

    threading.Thread(target=waiter, daemon=True).start()
    root.after(1000, tkjob.cancel)
    run_until(root, lambda: bool(done_at))
    wait_until(lambda: bool(ended), 10, "the waiter thread to see the end")
    items = [x for chunk in lists for x in chunk]
    assert items[-1] == "finally"
    assert wl.assert_contiguous(items[:-1]) > 1000  # a flood, not a trickle
    lag = done_at[0] - ended[0]
    assert lag < 0.3, f"on_done came {lag:.2f} s after the job ended"
    assert len(lists) < len(items) / 10  # lists, not one item per call


def test_a_slow_on_item_slows_the_worker_and_still_sees_the_end_at_once(root: Any) -> None:
    """A 1 ms ``on_item``, slower than the worker: the job's bounded buffer slows the
    worker (backpressure, no backlog growing in the Tk thread); after a cancel
    ``on_state("cancelled")`` comes within a poll or so of the job's end while the items
    in flight are still being delivered, and ``on_done`` follows the last item."""
    got: list[Any] = []
    marks: dict[str, tuple[float, int]] = {}

    def on_item(x: Any) -> None:
        end = time.perf_counter() + 0.001  # work, not a sleep
        while time.perf_counter() < end:
            pass
        got.append(x)

    def mark(name: str) -> Callable[[Any], None]:
        return lambda value: marks.setdefault(
            value if name == "state" else name, (time.perf_counter(), len(got)))

    tkjob = TkJob.start(workers.flood_dicts, 10**9, widget=root, on_item=on_item,
                        on_state=mark("state"), on_done=mark("done"),
                        max_buffered_items=100, pipe_bytes=4096)
    ended: list[float] = []

    def waiter() -> None:
        tkjob.job.wait(timeout=60)
        ended.append(time.perf_counter())

    threading.Thread(target=waiter, daemon=True).start()
    run_until(root, lambda: len(got) >= 300)
    at_cancel = len(got)
    tkjob.cancel()
    run_until(root, lambda: "done" in marks)
    wait_until(lambda: bool(ended), 10, "the waiter thread to see the end")
    assert [x["step"] for x in got] == list(range(len(got)))
    assert len(got) - at_cancel < 5000, (at_cancel, len(got))
    state_at, delivered_then = marks["cancelled"]
    assert state_at - ended[0] < 0.1
    assert delivered_then < len(got), "no backlog left at the end: the test proves nothing"
    assert marks["done"][1] == len(got)


@pytest.mark.parametrize(
    ("fn", "args", "kind", "text"),
    [
        pytest.param(workers.raise_after, (3,), Failed, "boom after 3", id="raises"),
        pytest.param(workers.crash_with, ("kill", 3), Crashed, "SIGKILL", id="sigkill"),
    ],
)
def test_a_failed_or_crashed_child_is_shown_as_an_error(
    root: Any, fn: Any, args: tuple[Any, ...], kind: type, text: str
) -> None:
    label = tkinter.Label(root, text="running")
    rec = Recorder()
    callbacks = rec.callbacks()
    record_failed = callbacks["on_failed"]

    def on_failed(outcome: Any) -> None:
        record_failed(outcome)
        label.configure(text=f"error: {outcome.error}")

    callbacks["on_failed"] = on_failed
    try:
        TkJob.start(fn, *args, widget=root, batch_window=0, **callbacks)
        run_until(root, rec.done)
        assert rec.items == [0, 1, 2]
        assert rec.names()[-2:] == ["on_failed", "on_done"]
        assert isinstance(rec.events[-2][1], kind)
        assert text in label.cget("text")
    finally:
        label.destroy()


def test_destroying_the_widget_cancels_the_job(root: Any) -> None:
    """Closing (destroying) the window mid-run cancels the job and stops the callbacks."""
    win = tkinter.Toplevel(root)
    got: list[object] = []
    tkjob = TkJob.start(workers.forever, widget=win, on_item=got.append)
    run_until(root, lambda: len(got) >= 50)
    t0 = time.monotonic()
    win.destroy()
    assert time.monotonic() - t0 < 1.0
    assert tkjob.job.cancel_requested
    seen = len(got)
    outcome = tkjob.job.wait(timeout=15)
    root.update()
    assert isinstance(outcome, CancelledOutcome), outcome
    assert len(got) == seen, "a callback ran after the widget was destroyed"


def _flood_gap(root: Any, n: int) -> tuple[float, float]:
    """Deliver ``n`` items one by one while a 5 ms after() ticks; print and return the
    widest and the median gap between two ticks (s)."""
    ticks: list[float] = []
    done: list[object] = []
    got: list[int] = []

    def tick() -> None:
        ticks.append(time.perf_counter())
        if not done:
            root.after(5, tick)

    # Unbounded buffer: the child runs far ahead, so one drain can return most of the
    # stream; without time-boxed slices delivering it would stall the loop for good.
    def on_item(x: int) -> None:  # a consumer with some work to do: 10 us per item
        end = time.perf_counter() + 1e-5
        while time.perf_counter() < end:
            pass
        got.append(x)

    TkJob.start(workers.count, n, widget=root, on_item=on_item, on_done=done.append,
                max_buffered_items=None)
    root.after(5, tick)
    t0 = time.perf_counter()
    run_until(root, lambda: bool(done), timeout=60)
    elapsed = time.perf_counter() - t0
    root.update()  # the last tick's after() runs and stops
    assert got == list(range(n))
    assert len(ticks) > 10
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    print(f"\n[tk timer gap] {n} items in {elapsed:.2f} s ({n / elapsed:,.0f}/s), "
          f"{len(ticks)} ticks, max gap {max(gaps) * 1000:.1f} ms, "
          f"median {sorted(gaps)[len(gaps) // 2] * 1000:.1f} ms")
    return max(gaps), sorted(gaps)[len(gaps) // 2]


def test_event_loop_stays_responsive_while_the_child_floods(root: Any) -> None:
    """A 5 ms after() tick keeps firing while 60,000 items go one by one to a callback
    that works at least 10 us on each: the
    median gap stays near a slice, the widest far below a stall (generous bounds, up to
    three runs: on a loaded shared machine the OS alone can stall a process)."""
    runs = []
    for _ in range(3):
        runs.append(_flood_gap(root, 60_000))
        widest, median = runs[-1]
        if widest < 0.25 and median < 0.04:
            return
    pytest.fail(f"the Tk loop stalled in every run: (widest, median) gaps {runs} s")


def test_latest_only_delivers_the_newest_item(root: Any) -> None:
    n = 200_000
    got: list[int] = []
    done: list[object] = []
    tkjob = TkJob.start(workers.count, n, widget=root, on_item=got.append,
                        on_done=done.append, latest_only=True, max_rate=30)
    t0 = time.monotonic()
    run_until(root, lambda: bool(done), timeout=60)
    elapsed = time.monotonic() - t0
    assert got and got[-1] == n - 1
    assert got == sorted(got) and len(set(got)) == len(got)
    assert len(got) <= elapsed * 30 + 2, (len(got), elapsed)
    assert tkjob.items_skipped + len(got) == n


def test_a_raising_callback_is_reported_and_delivery_goes_on(root: Any) -> None:
    reported: list[BaseException] = []
    root.report_callback_exception = lambda et, e, tb: reported.append(e)
    got: list[int] = []
    done: list[object] = []

    def on_item(x: int) -> None:
        if x == 5:
            raise ValueError("bad slot")
        got.append(x)

    try:
        TkJob.start(workers.count, 10, widget=root, on_item=on_item, on_done=done.append)
        run_until(root, lambda: bool(done))
    finally:
        del root.report_callback_exception
    assert got == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert [str(e) for e in reported] == ["bad slot"]


def test_detach_stops_the_callbacks_but_not_the_job(root: Any) -> None:
    got: list[int] = []
    tkjob = TkJob.start(workers.forever, widget=root, on_item=got.append)
    run_until(root, lambda: len(got) >= 10)
    tkjob.detach()
    seen = len(got)
    root.update()
    assert len(got) == seen
    assert not tkjob.job.done()
    tkjob.job.cancel()
    assert isinstance(tkjob.job.wait(timeout=15), CancelledOutcome)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"latest_only": 1}, TypeError, "latest_only must be a bool"),
        ({"max_rate": -1}, ValueError, "max_rate must be a finite number > 0"),
        ({"poll_ms": 0}, ValueError, "poll_ms must be at least 1"),
        ({"poll_ms": 1.5}, TypeError, "poll_ms must be an int"),
        ({"on_item": 3}, TypeError, "on_item must be callable or None, not int"),
    ],
)
def test_bad_arguments_raise_before_anything_starts(
    root: Any, kwargs: dict[str, Any], exc: type, match: str
) -> None:
    with pytest.raises(exc, match=match):
        TkJob.start(workers.count, 3, widget=root, **kwargs)
    assert _registry.live_jobs() == []


def test_a_non_widget_is_refused() -> None:
    job = workstream.start(workers.count, 1)
    try:
        with pytest.raises(TypeError, match=r"TkJob needs a Tk widget \(for after\(\)\), not str"):
            TkJob(job, "root")  # type: ignore[arg-type]
    finally:
        job.wait(timeout=30)
    wait_until(lambda: not _registry.live_jobs(), 5, "the job to leave the registry")


_GC_ON_ANOTHER_THREAD = textwrap.dedent(
    """
    import gc, sys, threading, tkinter
    sys.path.insert(0, sys.argv[1])
    import workers
    from workstream.tk import TkJob

    def window():
        root = tkinter.Tk()
        got = []
        tkjob = TkJob.start(workers.forever, widget=root, on_item=got.append)
        def check():
            if len(got) >= 10:
                root.destroy()  # closed mid-run: the job is cancelled, not yet reaped
            else:
                root.after(5, check)
        root.after(5, check)
        root.mainloop()
        return tkjob.job

    if __name__ == "__main__":
        gc.disable()
        job = window()  # the widget tree is now cyclic garbage
        collector = threading.Thread(target=gc.collect)
        collector.start()  # frees it on this other thread, as a runner thread could
        collector.join()
        job.wait(timeout=20)
        print("no abort", job.outcome.kind, flush=True)
    """
)


@pytest.mark.timeout(60)
def test_a_closed_window_freed_on_another_thread_does_not_abort(display: str) -> None:
    """A Tk root closed mid-run and then garbage-collected on a non-Tk thread (a job's
    runner thread can be that thread) must not abort the process (CPython gh-83274):
    TkJob keeps the Tcl interpreter until exit."""
    proc = subprocess.run(
        [sys.executable, "-c", _GC_ON_ANOTHER_THREAD, os.path.dirname(__file__)],
        capture_output=True, text=True, timeout=50, env={**os.environ, "DISPLAY": display},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no abort cancelled" in proc.stdout


# -- PROGRESS: on_progress (issue 12 §4) ----------------------------------------------


@pytest.mark.timeout(60)
def test_on_progress_in_the_tk_thread_before_on_done(root: Any) -> None:
    events: list[tuple[str, Any]] = []
    threads: set[int] = set()

    def on_progress(p: Progress) -> None:
        threads.add(threading.get_ident())
        events.append(("progress", p))

    tkjob = TkJob.start(wp.steady, 20, 0.01, widget=root, on_progress=on_progress,
                        on_done=lambda o: events.append(("done", o)))
    run_until(root, lambda: bool(events) and events[-1][0] == "done")
    assert isinstance(events[-1][1], Completed) and tkjob.ended()
    dones = [p.done for name, p in events[:-1] if name == "progress"]
    assert dones and dones == sorted(dones) and len(set(dones)) == len(dones)
    assert dones[-1] == 20
    assert threads == {threading.get_ident()}


def test_on_progress_must_be_callable(root: Any) -> None:
    with pytest.raises(TypeError, match="on_progress"):
        TkJob.start(wp.steady, 1, 0.0, widget=root, on_progress=3)


# -- OUTPUT: on_output (kept in this module: a second module's own Xvfb, killed at its
# end while its Tcl interpreter is kept alive, would make a later Tk loop exit the test
# process on the X connection's I/O error) ----------------------------------------------


def test_on_output_gets_tuples_in_the_tk_thread_before_on_done(root: Any) -> None:
    """TkJob(on_output=...): the worker's lines reach the Tk thread as tuples, at most one
    call per poll, in order, all before on_done."""
    import workers_output as wo

    got: list[tuple[workstream.OutputEvent, ...]] = []
    order: list[str] = []
    threads: set[int] = set()

    def on_output(events: tuple[workstream.OutputEvent, ...]) -> None:
        threads.add(threading.get_ident())
        got.append(events)
        order.append("output")

    TkJob.start(wo.raw_lines, 1, 5000, widget=root, on_output=on_output,
                on_done=lambda _: order.append("done"))
    run_until(root, lambda: "done" in order)
    assert threads == {threading.get_ident()}
    lines = [e.text for chunk in got for e in chunk]
    assert lines[-1] == "raw 4999"
    numbers = [int(text.split()[1]) for text in lines]
    assert numbers == sorted(set(numbers))  # in order, none twice (a flood may skip some)
    assert len(got) < len(lines)
    assert order[-1] == "done" and order[-2] == "output"
