"""Child target functions for the progress and extra-grace tests (importable, so every
start method finds them). Handshakes are gates (FIFOs) and items, never sleeps."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import workstream
from workers_stream import wait_for_release


def report_between_gates(gate1: str, gate2: str) -> str:
    """No report until ``gate1`` opens; then one report (5 of 10, with fields) until
    ``gate2`` opens; then 10 of 10."""
    wait_for_release(gate1)
    workstream.progress(5, 10, phase="train", loss=0.5, best=None, ok=True)
    wait_for_release(gate2)
    workstream.progress(10, 10, phase="done")
    return "ok"


def flood(n: int) -> int:
    """``n`` reports as fast as possible; the last one must reach the parent."""
    progress = workstream.progress
    for i in range(n):
        progress(i + 1, n)
    return n


def steady(n: int, step: float) -> Iterator[int]:
    """Report ``n`` steps ``step`` seconds apart (simulated work), yielding each."""
    for i in range(n):
        time.sleep(step)  # ok: sleep (simulated work between reports)
        workstream.progress(i + 1, n, step=i)
        yield i


def report_once(done: int) -> str:
    workstream.progress(done)
    return "reported"


def numpy_progress() -> str:
    import numpy as np

    workstream.progress(np.int64(3), np.float64(4.0))
    return "ok"


def stop_deadline_after_cancel() -> Iterator[object]:
    """Yield stop_requested() (None), wait for the cancel flag, return the deadline."""
    try:
        yield workstream.stop_requested()
        while not workstream.cancelled():
            time.sleep(0.001)  # ok: sleep (polls the cancel flag, ended by the test's cancel)
    except workstream.Cancelled:  # the cancel came at the yield
        pass
    return workstream.stop_requested()


def ask_grace(*requests: float) -> list[float]:
    """Ask for each of ``requests`` in turn; return what each was granted."""
    return [workstream.request_grace(s) for s in requests]


def checkpoint_on_stop(path: str, need: float, save_takes: float) -> None:
    """Work until SIGTERM raises Cancelled (no cancellation point in the loop: the file
    ``path + ".running"`` says it got there); then, in the ``finally`` block, ask for
    ``need`` more seconds and "save a checkpoint" (``path``) taking ``save_takes``
    seconds, with what was granted and the deadlines seen."""
    before = workstream.stop_requested()
    try:
        with open(path + ".running", "w"):
            pass
        while True:
            time.sleep(0.01)  # ok: sleep (simulated work, ended by SIGTERM's Cancelled)
    finally:
        seen = workstream.stop_requested()
        granted = workstream.request_grace(need)
        after = workstream.stop_requested()
        time.sleep(save_takes)  # ok: sleep (simulated saving of a checkpoint)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{granted} {seen} {after} {before}")
        os.replace(tmp, path)
