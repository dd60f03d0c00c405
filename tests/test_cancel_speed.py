"""The cancel path's final report is cheap to build (issue 11 goal 5), and still says
where the job was: the cancel traceback is built without the ``traceback`` module, with
the same text less the column markers."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

import workers_lifecycle as wl
import workstream
from test_cancel import cancelled_outcome, started
from workstream._child import _report


def _looping() -> Iterator[int]:
    i = 0
    while True:
        yield i  # the cancel lands here
        i += 1


def _cancelled_at_a_yield() -> BaseException:
    gen = _looping()
    next(gen)
    try:
        gen.throw(workstream.Cancelled("the job was cancelled (cooperative)"))
    except workstream.Cancelled as exc:
        return exc
    raise AssertionError("not raised")


def _without_column_markers(text: str) -> str:
    return "".join(
        line for line in text.splitlines(keepends=True)
        if line.strip() and set(line.strip()) - set("^~")
    )


def test_the_cancel_traceback_is_the_full_one_without_column_markers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exc = _cancelled_at_a_yield()
    full = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

    def refuse(*args: object, **kwargs: object) -> list[str]:
        raise AssertionError("the cancel path used traceback.format_exception")

    monkeypatch.setattr(traceback, "format_exception", refuse)
    got = _report._cancel_traceback(exc)
    assert got == _without_column_markers(full)
    assert "    yield i  # the cancel lands here\n" in got
    assert got.endswith("workstream.Cancelled: the job was cancelled (cooperative)\n")


def test_a_chained_cancel_gets_the_full_traceback() -> None:
    try:
        try:
            raise KeyError("first")
        except KeyError:
            raise workstream.Cancelled("the job was cancelled (cooperative)")
    except workstream.Cancelled as exc:
        chained = exc
    got = _report._cancel_traceback(chained)
    assert "KeyError: 'first'" in got and "During handling" in got


def test_an_unreadable_source_file_leaves_the_line_out() -> None:
    assert _report._source_line("/nonexistent/file.py", 3) == ""
    assert _report._source_line(__file__, None) == ""
    assert _report._source_line(__file__, 10**6) == ""
    assert _report._source_line(__file__, 1).startswith('"""The cancel path')


@pytest.mark.timeout(30)
def test_a_cooperative_cancel_reports_the_user_frame_and_its_line(tmp_path: Path) -> None:
    marker = tmp_path / "ready"
    job = workstream.start(wl.mark_then_check_cancelled, str(marker))
    started(job, marker)
    job.cancel()
    outcome = cancelled_outcome(job)
    tb = outcome.remote_traceback
    assert tb.startswith("Traceback (most recent call last):\n")
    assert f'File "{wl.__file__}"' in tb and "in mark_then_check_cancelled" in tb
    assert "workstream.check_cancelled()" in tb
    assert tb.endswith("workstream.Cancelled: the job was cancelled (cooperative)\n")


def test_the_source_of_fn_is_read_at_the_start_not_at_the_cancel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After prefetch_source(fn) (done as the job starts), the cancel report reads the
    lines of fn's file without a system call."""
    monkeypatch.setattr(_report, "_SOURCES", {})
    _report.prefetch_source(_looping)

    def refuse(*args: object, **kwargs: object) -> int:
        raise AssertionError("read the file again")

    monkeypatch.setattr(_report.os, "open", refuse)
    got = _report._cancel_traceback(_cancelled_at_a_yield())
    assert "    yield i  # the cancel lands here\n" in got
