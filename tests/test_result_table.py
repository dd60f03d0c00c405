"""issue 9 §4: the README's table of what ``job.result()`` gives for each outcome is
true: each row's exception is what a real job with that outcome raises, and the column
"caught by except Exception?" matches the exception's base class."""

from __future__ import annotations

import pathlib

import pytest

import workers
import workers_badinput as wb
import workstream

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _table() -> dict[str, tuple[str, str]]:
    """{kind: (what result() does, caught?)} from the README table."""
    text = README.read_text()
    start = text.index("| outcome (`job.outcome.kind`) | `job.result()` |")
    rows: dict[str, tuple[str, str]] = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        kind, does, caught = (cell.strip() for cell in line.strip("|").split("|"))
        rows[kind] = (does, caught)
    return rows


def _job(kind: str) -> workstream.Job:  # type: ignore[type-arg]
    if kind == "completed":
        return workstream.start(wb.fn, 1, 2)
    if kind == "cancelled":
        job = workstream.start(wb.flood)
        next(iter(job))
        job.cancel(discard=True)
        return job
    if kind == "failed":
        return workstream.start(workers.raise_after, 0)
    return workstream.start(workers.crash_with, "os_exit", 0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["completed", "cancelled", "failed", "crashed"])
def test_result_raises_what_the_table_says(kind: str) -> None:
    """Each outcome's result() behaves as its README row says."""
    does, caught = _table()[kind]
    job = _job(kind)
    assert job.wait(timeout=20).kind == kind
    try:
        value = job.result()
    except BaseException as exc:  # Cancelled is a BaseException
        name = type(exc).__name__
        assert f"raises `workstream.{name}`" in does or f"raises `{name}`" in does, does
        assert caught.startswith("yes" if isinstance(exc, Exception) else "**no**"), caught
    else:
        assert kind == "completed" and value == 2
        assert does == "returns `fn`'s return value"
