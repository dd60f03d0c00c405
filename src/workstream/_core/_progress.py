"""Progress as pure code: a worker's report, and rate and ETA estimated from reports.

The child writes a report (:func:`encode_report`) into the control block's progress
slot at most every ``PUBLISH_INTERVAL`` seconds; the parent reads the newest one when
someone asks (:func:`decode_report`), feeds it to a :class:`RateEstimator` and hands out
an immutable :class:`Progress`. Only the newest report matters: nothing is queued.

No I/O, no clock, no threads: every time is an argument (``time.monotonic()`` seconds as
the child measured them; CLOCK_MONOTONIC is one clock for every process of a machine).
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

PUBLISH_INTERVAL = 0.02
"""Seconds between two reports the child writes (at most); a call in between only keeps
its values, written by the end of the interval."""

RATE_WINDOW = 10.0
"""Seconds of reports the rate is averaged over (the newest report against the oldest
one that is no older than this, or the one just before the window)."""

_MAX_SAMPLES = 64

FIELD_TYPES = (str, int, float, bool, type(None))
"""The types a progress field's value may have (they travel as JSON)."""


@dataclass(frozen=True)
class Report:
    """One progress report as the worker wrote it."""

    done: float
    total: float | None
    at: float
    """When the worker made the report (its ``time.monotonic()``)."""
    started_at: float
    """When the worker began the job (its ``time.monotonic()``)."""
    fields: Mapping[str, object]


@dataclass(frozen=True)
class Progress:
    """The newest progress a worker reported, with rate and ETA (``job.progress``).

    Immutable; a new report gives a new object (so ``is not`` tells a change).
    """

    done: float
    """Work done so far, as the worker said (``workstream.progress(done, ...)``)."""
    total: float | None
    """All the work, as the worker said; None if it did not say."""
    rate: float | None
    """Units of ``done`` per second over the last ``RATE_WINDOW`` (10 s) of the reports
    the parent read; until it read two, the average since the job's start (``done /
    elapsed``); None if that is not known either (no time elapsed)."""
    eta: float | None
    """Seconds until ``done`` reaches ``total`` at ``rate`` (as of the report); 0.0 once
    reached; None without a total or a positive rate."""
    elapsed: float
    """Seconds from the job's start in the worker to this report."""
    fields: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    """The report's keyword fields (``loss=0.3``); a read-only mapping."""

    def __post_init__(self) -> None:
        if not isinstance(self.fields, MappingProxyType):
            object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))

    def __reduce__(self) -> tuple[object, ...]:
        # A mappingproxy does not pickle: travel as a dict, read-only again on arrival.
        return (_rebuild_progress, (self.done, self.total, self.rate, self.eta,
                                    self.elapsed, dict(self.fields)))

    @property
    def fraction(self) -> float | None:
        """``done / total`` (not clamped); None without a positive total."""
        if self.total is None or self.total <= 0:
            return None
        return self.done / self.total


def _rebuild_progress(
    done: float, total: float | None, rate: float | None, eta: float | None, elapsed: float,
    fields: dict[str, object],
) -> Progress:
    return Progress(done, total, rate, eta, elapsed, fields)


def encode_report(
    done: float, total: float | None, fields: Mapping[str, object], at: float, started_at: float
) -> bytes:
    """The bytes of one report (compact JSON: plain values only, nothing executable)."""
    body: dict[str, object] = {"d": done, "t": total, "a": at, "s": started_at}
    if fields:
        body["f"] = dict(fields)
    return json.dumps(body, separators=(",", ":")).encode()


def _number(value: object, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number: {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"not finite: {value!r}")
    return value


def decode_report(data: bytes) -> Report | None:
    """The report in ``data``; None if it is not one (never raises: the bytes come from
    the worker's side of shared memory)."""
    try:
        body = json.loads(data)
        if not isinstance(body, dict):
            return None
        done = _number(body["d"])
        assert done is not None
        at = _number(body["a"])
        started = _number(body["s"])
        assert at is not None and started is not None
        fields = body.get("f", {})
        if not isinstance(fields, dict):
            return None
        return Report(done, _number(body.get("t"), optional=True), at, started,
                      MappingProxyType(fields))
    except (ValueError, KeyError, TypeError, AssertionError, RecursionError):
        return None


class RateEstimator:
    """The rate of ``done`` over the reports of the last ``window`` seconds.

    The rate is the slope between the newest report and the oldest one kept: every
    report no older than ``window`` before the newest, plus the newest one before that
    (so a slow worker, reporting less often than the window, still has a rate). ``done``
    going down (the worker restarted its count) starts afresh. Reports the reader missed
    do not matter: only their times and counts are used.
    """

    def __init__(self, window: float = RATE_WINDOW, max_samples: int = _MAX_SAMPLES) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def observe(self, at: float, done: float) -> None:
        """Add the report of ``done`` made at ``at``."""
        samples = self._samples
        if samples:
            last_at, last_done = samples[-1]
            if done < last_done or at < last_at:
                samples.clear()
            elif at == last_at:
                samples.pop()
        samples.append((at, done))
        start = at - self.window
        while len(samples) > 2 and samples[1][0] <= start:
            samples.popleft()

    def rate(self) -> float | None:
        """Units per second; None with fewer than two reports at different times."""
        if len(self._samples) < 2:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return None
        return (d1 - d0) / (t1 - t0)


def eta(done: float, total: float | None, rate: float | None) -> float | None:
    """Seconds until ``done`` reaches ``total`` at ``rate``; see :attr:`Progress.eta`."""
    if total is None:
        return None
    if done >= total:
        return 0.0
    if rate is None or rate <= 0:
        return None
    return (total - done) / rate


def snapshot(report: Report, estimator: RateEstimator) -> Progress:
    """The :class:`Progress` for ``report`` (already observed by ``estimator``)."""
    elapsed = max(0.0, report.at - report.started_at)
    rate = estimator.rate()
    if rate is None and elapsed > 0:
        rate = report.done / elapsed
    return Progress(
        done=report.done, total=report.total, rate=rate,
        eta=eta(report.done, report.total, rate), elapsed=elapsed, fields=report.fields,
    )
