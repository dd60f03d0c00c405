"""The worker's side of progress: ``workstream.progress()`` and its slot.

Runs only in the child. A call validates its arguments and keeps them (one tuple): it
never writes, reads no clock and never blocks. The first call after a write wakes the
publisher thread (started on first need, SIGTERM blocked), which writes the newest
values into the control block's progress slot (``_fds.write_progress``) at once, or
``PUBLISH_INTERVAL`` after its previous write if that is later. So the newest call is
always written within an interval, and a flood costs one attribute store per call (plus
one ``Event.set()`` per interval). The end of a job writes what is pending
(:meth:`ProgressSlot.end_job`) before the final frame.
"""

from __future__ import annotations

import math
import numbers
import signal
import threading
import time
from typing import Any

from .._core._progress import FIELD_TYPES, PUBLISH_INTERVAL, encode_report
from .._transport import _fds

_monotonic = time.monotonic
_Values = tuple[Any, Any, dict[str, Any]]
# Room for the fields: the slot less the largest rest of a report (done, total, times).
_FIELDS_BUDGET = _fds.PROGRESS_MAX - 128
_BIG = 1 << 53


class ProgressSlot:
    """One worker process's progress publisher (reset for each job of a warm worker)."""

    def __init__(self, ctl: Any) -> None:
        self.ctl = ctl
        self.started_at = _monotonic()
        self.values: _Values | None = None  # the newest call's (done, total, fields)
        self.written: _Values | None = None  # what is in the slot
        self.next_at = 0.0  # earliest time of the publisher's next write
        self.closed = False  # the job ended: write nothing more
        self._lock = threading.Lock()
        self.scheduled = False  # the publisher will write at next_at
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def begin_job(self) -> None:
        """A new job (the parent cleared the slot): forget the previous one's values."""
        with self._lock:
            self.started_at = _monotonic()
            self.values = self.written = None
            self.next_at = 0.0
            self.closed = False

    def end_job(self) -> None:
        """Write the newest values (if not written yet), then nothing more until the next
        job: called before the job's final frame, so the parent's last read sees them."""
        with self._lock:
            self._write_locked()
            self.closed = True

    def schedule(self) -> None:
        """Have the publisher write the newest values (at ``next_at`` at the earliest);
        the caller checks :attr:`scheduled` first, so this runs once per write."""
        self.scheduled = True
        if self._thread is None:
            self._start_thread()
        self._wake.set()

    def _write_locked(self) -> None:
        values = self.values
        if values is None or values is self.written or self.closed:
            return
        now = _monotonic()
        done, total, fields = values
        report = encode_report(done, total, fields, now, self.started_at)
        if len(report) > _fds.PROGRESS_MAX:  # huge ints: their float is short
            total = None if total is None else float(total)
            report = encode_report(float(done), total, fields, now, self.started_at)
        _fds.write_progress(self.ctl, report)
        self.written = values
        self.next_at = now + PUBLISH_INTERVAL

    def _start_thread(self) -> None:
        # Helper threads must not take SIGTERM (it is meant for the main thread).
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            thread = threading.Thread(
                target=self._run, name="workstream-progress", daemon=True
            )
            thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self._thread = thread

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            delay = self.next_at - _monotonic()
            if delay > 0:
                time.sleep(delay)  # the interval's end; nothing waits on this thread
            # Cleared before the values are read: a call after this point schedules again.
            self.scheduled = False
            with self._lock:
                self._write_locked()


def check_number(name: str, value: object) -> float:
    """``value`` if it is a finite real number >= 0 (an int or a float, or anything with
    ``__index__`` / ``__float__`` such as numpy scalars, converted), else raise."""
    if value is None:
        raise TypeError(f"workstream.progress(): {name} must be a number, not None")
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(
            f"workstream.progress(): {name} must be a number, not {type(value).__name__}"
        )
    if not isinstance(value, (int, float)):
        try:
            value = value.__index__() if hasattr(value, "__index__") else float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise TypeError(
                f"workstream.progress(): {name} must be a number, not {type(value).__name__}"
            ) from None
    assert isinstance(value, (int, float))
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"workstream.progress(): {name} must be a finite number >= 0, not {value!r}"
        )
    return value


def check_fields(fields: dict[str, Any]) -> None:
    """Raise TypeError unless every field's value is a str, int, float, bool or None (other
    real numbers, such as numpy scalars, are converted in ``fields``), and ValueError if
    they would not fit the slot (``_fds.PROGRESS_MAX`` bytes in all)."""
    chars = 0  # characters of keys and strings (huge ints count as long strings)
    for key, value in fields.items():
        kind = type(value)
        if kind is float or value is None or kind is bool:
            chars += len(key)
        elif kind is str:
            chars += len(key) + len(value)
        elif kind is int:
            chars += len(key) if -_BIG < value < _BIG else _FIELDS_BUDGET
        elif isinstance(value, float):  # a subclass: numpy.float64
            chars += len(key)
        elif isinstance(value, FIELD_TYPES):  # other subclasses (an IntEnum, a str's)
            chars += _FIELDS_BUDGET  # the exact check below
        elif isinstance(value, numbers.Integral):  # numpy.int64, ...: as a Python int
            fields[key] = int(value)
            chars += _FIELDS_BUDGET
        elif isinstance(value, numbers.Real):  # numpy.float32, ...: as a Python float
            fields[key] = float(value)
            chars += len(key)
        else:
            raise TypeError(
                f"workstream.progress(): field {key}={value!r} must be a str, int, float, "
                f"bool or None, not {type(value).__name__} (fields travel as JSON)"
            )
    # JSON escapes a character in at most 6 bytes; a field's quotes, colon and comma,
    # and a float or an int below 2**53, take at most 32 more.
    if 6 * chars + 32 * len(fields) > _FIELDS_BUDGET:
        size = len(encode_report(0, None, fields, 0.0, 0.0))
        if size > _FIELDS_BUDGET:
            raise ValueError(
                f"workstream.progress(): the fields take {size} bytes as JSON; at most "
                f"{_FIELDS_BUDGET} fit (progress is for a few short values)"
            )
