"""Job.add_listener: the hook event-loop integrations build on."""

from __future__ import annotations

import threading

import pytest

import workers
import workstream


def test_listener_is_called_for_items_and_once_done() -> None:
    calls: list[str] = []
    done = threading.Event()
    job = workstream.start(workers.count, 5)

    def listener() -> None:
        calls.append(threading.current_thread().name)
        if job.done():
            done.set()

    job.add_listener(listener)
    assert done.wait(30)
    assert job.drain() == [0, 1, 2, 3, 4]
    assert calls


def test_listener_added_after_the_end_is_called_at_once() -> None:
    job = workstream.start(workers.count, 2)
    job.wait(30)
    calls: list[int] = []
    job.add_listener(lambda: calls.append(1))
    assert calls == [1]


def test_removed_listener_is_not_called_again() -> None:
    gate = threading.Event()
    job = workstream.start(workers.count, 3)
    calls: list[int] = []
    remove = job.add_listener(lambda: calls.append(1))
    remove()
    remove()  # idempotent
    job.add_listener(gate.set)
    job.wait(30)
    assert gate.wait(30)  # listeners are told just after "finished" is set
    assert calls == []


def test_a_raising_listener_is_dropped_and_the_job_still_ends() -> None:
    def boom() -> None:
        raise ValueError("listener bug")

    job = workstream.start(workers.count, 3)
    job.add_listener(boom)
    outcome = job.wait(30)
    assert outcome.kind == "completed"


def test_add_listener_rejects_non_callables() -> None:
    job = workstream.start(workers.count, 1)
    with pytest.raises(TypeError, match="callable"):
        job.add_listener(42)  # type: ignore[arg-type]
    job.wait(30)
