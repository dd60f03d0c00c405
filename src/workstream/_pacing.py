"""The framework-free core of the GUI bridges (:mod:`workstream.qt`, :mod:`workstream.tk`).

:class:`Pacer` runs in the GUI thread only: each :meth:`Pacer.turn` drains the job (never
blocks) and hands items to a ``deliver`` function for at most one time slice, then says
when the next turn is due. The bridges turn that into a Qt timer or a Tk ``after()``.
Imports only workstream's public API; knows nothing of Qt or Tk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from . import Job, Outcome

DEFAULT_SLICE_MS = 8.0
"""Most milliseconds one delivery slice may keep the GUI thread (half a 60 Hz frame)."""
DEFAULT_LATEST_RATE = 60.0
"""Deliveries per second with ``latest_only=True`` and no ``max_rate``."""
PER_ITEM_CHUNK = 256
"""Largest chunk when a slot / callback runs per item: bounds the overrun of a slice when
another thread (the job's runner) takes the GIL in the middle of a chunk."""
LIST_CHUNK = 65_536
"""Largest chunk when only a list consumer is connected: one list per slice."""
_FIRST_COST = 1e-3  # s per item assumed before anything was measured: small first chunks


class Pacer:
    """Drains a job and delivers its items in time-boxed slices (GUI thread only).

    Without options every item is delivered, as fast as slices allow. ``max_rate``:
    slices start at most that many times per second (every item is still delivered, in
    fewer, larger lists). ``latest_only``: only the newest item is delivered per slice
    (at most ``max_rate`` or 60 per second); the job is drained meanwhile all the same,
    so the child never waits on the display.

    One pacer (one bridge) per job: it takes the items, like an iterating thread would.
    Raises ``ValueError`` for a job started with ``on_item=``.
    """

    def __init__(
        self, job: Job[Any, Any], *, latest_only: bool, max_rate: float | None,
        slice_ms: float,
    ) -> None:
        self._interval, self._slice = check_options(latest_only, max_rate, slice_ms)
        try:
            first = job.drain()
        except RuntimeError as exc:  # started with on_item=: its items go to that callback
            raise ValueError(
                f"job {job.name!r} delivers its items to its on_item callback; start it "
                "without on_item= to bridge it to a GUI"
            ) from exc
        self._job = job
        self._latest_only = latest_only
        self._buf: list[Any] = []  # drained, not yet delivered: self._buf[self._pos:]
        self._pos = 0
        self._latest: list[Any] = []  # latest_only: [newest undelivered item] or []
        self._last_slice = -math.inf
        self._cost = _FIRST_COST
        self.skipped = 0
        """With ``latest_only``: items dropped because a newer one came."""
        if latest_only:
            self._absorb(first)
        else:
            self._buf = first

    def turn(self, deliver: Callable[[list[Any]], None], chunk_cap: int) -> float | None:
        """Drain and deliver for at most one slice; return when to call again.

        Returns None once the job is done and every item was delivered (the bridge then
        reports the outcome); 0.0 if items are waiting (as soon as the loop is free);
        a positive number of seconds to wait for the next slice (rate limit); or
        ``math.inf`` when there is nothing to do until new items arrive. ``deliver`` gets
        non-empty lists of consecutive items, of at most ``chunk_cap`` items.
        """
        now = time.perf_counter()
        wait = self._last_slice + self._interval - now
        done = self._job.done()  # before the drain: no item can follow it then
        if wait > 0:
            if self._latest_only:
                self._absorb(self._job.drain())
            return wait
        fresh = self._job.drain()
        if self._latest_only:
            self._absorb(fresh)
            if self._latest:
                self._last_slice = now
                deliver([self._latest.pop()])
        else:
            if fresh:
                self._buf = self._buf[self._pos :] + fresh if self._pos < len(self._buf) else fresh
                self._pos = 0
            if self._pos < len(self._buf):
                self._last_slice = now
                self._deliver(now + self._slice, deliver, chunk_cap)
        if self._pos < len(self._buf):
            return self._interval
        if done and not self._latest:
            return None
        return math.inf

    def _absorb(self, fresh: list[Any]) -> None:
        if fresh:
            self.skipped += len(fresh) - 1 + len(self._latest)
            self._latest = [fresh[-1]]

    def _deliver(
        self, deadline: float, deliver: Callable[[list[Any]], None], chunk_cap: int
    ) -> None:
        buf = self._buf
        while self._pos < len(buf):
            now = time.perf_counter()
            left = deadline - now
            if left <= 0:
                return
            n = max(1, min(len(buf) - self._pos, chunk_cap, int(left / self._cost)))
            chunk = buf[self._pos : self._pos + n]
            self._pos += n
            deliver(chunk)
            per_item = max((time.perf_counter() - now) / n, 1e-8)
            # Rise at once (a slow consumer must not overrun the next slice), fall gently.
            self._cost = per_item if per_item > self._cost else (self._cost + per_item) / 2
        self._buf = []
        self._pos = 0


def check_options(latest_only: object, max_rate: object, slice_ms: object) -> tuple[float, float]:
    """Validate the bridge options; return (seconds between slices, slice seconds).

    Raises ``TypeError`` / ``ValueError`` saying which option is wrong.
    """
    if not isinstance(latest_only, bool):
        raise TypeError(f"latest_only must be a bool, not {type(latest_only).__name__}")
    if max_rate is not None:
        if isinstance(max_rate, bool) or not isinstance(max_rate, (int, float)):
            raise TypeError("max_rate must be a number of deliveries per second or None, "
                            f"not {type(max_rate).__name__}")
        if not (0 < max_rate < math.inf):
            raise ValueError(f"max_rate must be a finite number > 0, not {max_rate!r}")
    if isinstance(slice_ms, bool) or not isinstance(slice_ms, (int, float)):
        raise TypeError(f"slice_ms must be a number of milliseconds, not "
                        f"{type(slice_ms).__name__}")
    if not (0 < slice_ms < math.inf):
        raise ValueError(f"slice_ms must be a finite number > 0, not {slice_ms!r}")
    rate = max_rate if max_rate is not None else (DEFAULT_LATEST_RATE if latest_only else None)
    return (1.0 / rate if rate else 0.0), slice_ms / 1000.0


class BridgeFacts:
    """What the GUI bridges (``QtJob``, ``TkJob``) report alike: their job, its outcome,
    and what ``latest_only`` skipped. Read-only; safe from any thread."""

    _job: Job[Any, Any]
    _pacer: Pacer

    @property
    def job(self) -> Job[Any, Any]:
        """The bridged job."""
        return self._job

    @property
    def outcome(self) -> Outcome | None:
        """The job's outcome; None while it runs."""
        return self._job.outcome

    @property
    def items_skipped(self) -> int:
        """With ``latest_only``: how many items were dropped for a newer one."""
        return self._pacer.skipped
