"""The framework-free core of the GUI bridges (:mod:`workstream.qt`, :mod:`workstream.tk`).

:class:`Pacer` runs in the GUI thread only: each :meth:`Pacer.turn` takes items from the
job (never blocks), hands them to the two kinds of consumer a bridge has, and says when
the next turn is due. The bridges turn that into a Qt timer or a Tk ``after()``.

Two kinds of consumer, paced differently:

* a *list* consumer (Qt's ``items`` signal, Tk's ``on_items``) gets everything taken from
  the job in one list, one call per turn, whatever the call costs: its view never lags
  the worker by more than a turn and one call;
* a *per-item* consumer (``item``, ``on_item``) gets the items one by one in time-boxed
  slices, sized from its measured cost per item. The pacer takes new items from the job
  only once this consumer has had the ones it took, so a per-item consumer slower than
  the worker fills the job's bounded buffer and the worker waits at its ``yield``
  (backpressure) instead of a backlog growing in the GUI.

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
"""Largest chunk handed to a per-item consumer at once: bounds the overrun of a slice when
another thread (the job's runner) takes the GIL in the middle of a chunk."""
_FIRST_COST = 1e-3  # s per item assumed before anything was measured: small first chunks

Deliver = Callable[[list[Any]], None]
"""A consumer as the pacer sees it: called with a non-empty list of consecutive items."""


class Pacer:
    """Takes a job's items and delivers them in paced turns (GUI thread only).

    Without options every item is delivered: to a list consumer in one list per turn, to
    a per-item consumer in time-boxed slices. ``max_rate``: turns that deliver start at
    most that many times per second (every item is still delivered, in fewer, larger
    lists). ``latest_only``: only the newest item is delivered per turn (at most
    ``max_rate`` or 60 per second), to both kinds of consumer; the job is drained
    meanwhile all the same, so the child never waits on the display.

    One pacer (one bridge) per job: it takes the items, like an iterating thread would.
    ``clock`` (seconds, monotonic) is injectable for tests. Raises ``ValueError`` for a
    job started with ``on_item=``.
    """

    def __init__(
        self, job: Job[Any, Any], *, latest_only: bool, max_rate: float | None,
        slice_ms: float, clock: Callable[[], float] = time.perf_counter,
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
        self._clock = clock
        self._latest_only = latest_only
        self._taken: list[Any] = []  # taken from the job, not yet offered to any consumer
        self._backlog: list[Any] = []  # the per-item consumer's: self._backlog[self._pos:]
        self._pos = 0
        self._latest: list[Any] = []  # latest_only: [newest undelivered item] or []
        self._last_delivery = -math.inf
        self._cost = _FIRST_COST  # s per item of the per-item consumer (never of a list one)
        self.skipped = 0
        """With ``latest_only``: items dropped because a newer one came."""
        if latest_only:
            self._absorb(first)
        else:
            self._taken = first

    def turn(self, lists: Deliver | None, each: Deliver | None) -> float | None:
        """Take items from the job and deliver them; return when to call again.

        ``lists``: the list consumer, called at most once per turn with everything taken
        this turn (None: nobody listens for lists). ``each``: the per-item consumer's
        delivery, called with chunks of at most :data:`PER_ITEM_CHUNK` items until the
        slice is spent (None: nobody listens for items; a backlog left for it is dropped).
        Items reach ``lists`` no later than ``each``, in the same order. With neither,
        items are taken and dropped. A consumer that raises propagates out of the turn
        (the items it was handed count as delivered).

        Returns None once the job is done and every item was delivered (the bridge then
        reports the outcome); 0.0 if items are waiting (as soon as the loop is free);
        a positive number of seconds to wait for the next turn (rate limit); or
        ``math.inf`` when there is nothing to do until new items arrive.
        """
        now = self._clock()
        wait = self._last_delivery + self._interval - now
        done = self._job.done()  # before the drain: no item can follow it then
        if wait > 0:
            if self._latest_only:
                self._absorb(self._job.drain())
            return wait
        if self._latest_only:
            return self._turn_latest(now, done, lists, each)
        if each is None:  # the per-item consumer went away: nobody wants its backlog
            self._backlog, self._pos = [], 0
        took = False
        if self._pos >= len(self._backlog):  # else leave them queued: backpressure
            fresh = self._taken + self._job.drain()
            self._taken = []
            took = True
            if fresh:
                self._last_delivery = now
                if each is not None:  # (a copy if the list consumer gets ``fresh``)
                    self._backlog = fresh if lists is None else list(fresh)
                    self._pos = 0
                if lists is not None:
                    lists(fresh)
        if each is not None and self._pos < len(self._backlog):
            self._last_delivery = now
            self._deliver_each(now + self._slice, each)
        if self._pos < len(self._backlog) or not took:
            return self._interval  # the backlog, or the job's buffer, still holds items
        return None if done else math.inf

    def _turn_latest(
        self, now: float, done: bool, lists: Deliver | None, each: Deliver | None
    ) -> float | None:
        self._absorb(self._job.drain())
        if self._latest:
            self._last_delivery = now
            newest, self._latest = self._latest, []
            if lists is not None:
                lists(newest)
            if each is not None:
                each(newest)
        return None if done else math.inf

    def _absorb(self, fresh: list[Any]) -> None:
        if fresh:
            self.skipped += len(fresh) - 1 + len(self._latest)
            self._latest = [fresh[-1]]

    def _deliver_each(self, deadline: float, each: Deliver) -> None:
        """Hand the backlog to ``each`` in chunks until ``deadline`` (at least nothing once
        it passed); chunk sizes follow the measured cost per item."""
        backlog = self._backlog
        while self._pos < len(backlog):
            start = self._clock()
            left = deadline - start
            if left <= 0:
                return
            n = max(1, min(len(backlog) - self._pos, PER_ITEM_CHUNK, int(left / self._cost)))
            chunk = backlog[self._pos : self._pos + n]
            # Kept by the consumer alone: a shared-memory array is freed once it drops it.
            backlog[self._pos : self._pos + n] = [None] * n
            self._pos += n
            each(chunk)
            per_item = max((self._clock() - start) / n, 1e-8)
            # Rise at once (a slow consumer must not overrun the next slice), fall gently.
            self._cost = per_item if per_item > self._cost else (self._cost + per_item) / 2
        self._backlog, self._pos = [], 0


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
