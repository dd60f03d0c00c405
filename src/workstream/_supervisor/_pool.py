"""The inside of a ``workstream.Pool``: its queue, its slots, their recycling, its closing.

A pool is ``max_workers`` slots, each a ``WorkerSupervisor`` (one warm process, one job
at a time, replacements, reaping: the Worker's policy, not copied) with this
:class:`PoolCore` as its *feeder*. The core holds the queue: a heap of
``(-priority, seq)`` entries, so a higher priority comes first and equals come in the
order they were queued (``seq`` is taken under the pool's lock, so "first" is the order
in which ``start()`` calls got the lock, whatever thread they came from).

A job is handed to a slot only when the slot asks: a slot with a warm, idle process
calls :meth:`PoolCore.pull` (from its own thread) and gets the best entry, which is then
*dequeued* (QUEUED -> STARTING, its wake pipe becomes the slot's). A slot that finds the
queue empty is put on the idle list; queueing a job wakes one idle slot through its wake
pipe. Since a slot asks again before each sleep, a lost wake-up costs nothing.

Never more than ``max_workers`` processes: a slot boots a replacement only after the
process it lost was reaped (``WorkerSupervisor`` does both on its one thread).

Cancelling a queued job ends it at once, on the cancelling thread
(:meth:`PoolCore._end_queued`, the JobCore's ``on_queued_cancel`` hook): it leaves the
queue, ends ``cancelled`` (rung ``before-start``) and never touches a slot. A cancel
that lands just after a slot dequeued the job goes to that slot, which ends it
before-start too (``attach_control`` refuses a cancelled job).

Lock order: a slot's lock, then the pool's, then a job's (``JobCore.lock``); the pool
never takes a slot's lock while holding its own (it wakes slots after releasing it).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .._core._rules import Facts, decide
from .._errors import PoolFull, WorkstreamError
from .._options import Options
from . import _group, _registry
from ._process import RETIRE_WAIT, WorkerProcess
from ._worker import Submission, WorkerSupervisor

RETIRED_MAX_JOBS = "max_jobs_per_worker"
RETIRED_MAX_MEMORY = "max_worker_memory"

_REENTRY_WAIT = 0.05  # s; as JobCore's: a cancel from a signal handler must not deadlock


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a :class:`workstream.Pool` (``pool.stats()``); immutable."""

    max_workers: int
    """The most worker processes alive at once."""
    workers: int
    """Worker processes alive now (idle, busy or running their initializer)."""
    idle_workers: int
    """Warm processes waiting for a job."""
    running: int
    """Jobs taken by a worker process and not yet ended."""
    queued: int
    """Jobs waiting in the queue."""
    submitted: int
    """Jobs queued since the pool was created."""
    finished: int
    """Jobs ended (any outcome) since the pool was created."""
    processes_started: int
    """Worker processes started, replacements included."""
    retired_max_jobs: int
    """Processes retired after a job because of ``max_jobs_per_worker``."""
    retired_max_memory: int
    """Processes retired after a job because of ``max_worker_memory``."""
    lost: int
    """Processes a job cost (it needed SIGTERM/SIGKILL, or crashed) or that died idle."""
    closed: bool
    """``close()`` was called."""

    @property
    def retired(self) -> dict[str, int]:
        """Processes that ended, by reason: ``max_jobs_per_worker``,
        ``max_worker_memory``, ``lost``."""
        return {
            RETIRED_MAX_JOBS: self.retired_max_jobs,
            RETIRED_MAX_MEMORY: self.retired_max_memory,
            "lost": self.lost,
        }


@dataclass(order=True)
class _Entry:
    """One queued job: ordered by ``(-priority, seq)``."""

    key: tuple[int, int]
    sub: Submission = field(compare=False)
    removed: bool = field(default=False, compare=False)  # cancelled while queued
    popped: bool = field(default=False, compare=False)  # taken off the heap by a slot


class PoolCore:
    """The queue and the slots of one Pool; see the module docstring. Thread-safe."""

    def __init__(
        self, options: Options, name: str, init_payload: bytes, max_workers: int, *,
        max_jobs_per_worker: int | None, max_worker_memory: int | None,
        max_queued: int | None,
    ) -> None:
        self.lock = threading.Lock()
        self._changed = threading.Condition(self.lock)  # room in the queue, a job ended
        self._options = options
        self._name = name
        self.max_workers = max_workers
        self._max_jobs = max_jobs_per_worker
        self._max_memory = max_worker_memory
        self._max_queued = max_queued
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._queued = 0  # entries neither removed nor popped
        self._live: set[Submission] = set()  # queued or running, not yet ended
        self._idle: list[WorkerSupervisor] = []  # slots that found the queue empty
        self._jobs_on: dict[int, int] = {}  # pid of a warm process -> jobs it ran
        self._closing = False
        self._drain = False  # close(cancel_pending=False): slots keep pulling
        self.submitted = 0
        self.finished = 0
        self.retired = {RETIRED_MAX_JOBS: 0, RETIRED_MAX_MEMORY: 0}
        self.slots: list[WorkerSupervisor] = []
        try:
            for i in range(max_workers):
                self.slots.append(WorkerSupervisor(
                    options, f"{name}-{i}", init_payload, True, feeder=self
                ))
        except BaseException:
            for slot in self.slots:
                slot.close(wait=False)
            raise
        _registry.add(self)  # until close(): queued jobs end at interpreter exit

    # -- queueing (user threads) --------------------------------------------------------

    @property
    def wake_fds(self) -> tuple[int, int]:
        """A queued job has no wake pipe until a slot takes it."""
        return (-1, -1)

    def init_error(self) -> WorkstreamError | None:
        """The initializer's failure, once a slot saw one."""
        for slot in self.slots:
            if slot.init_error is not None:
                return slot.init_error
        return None

    def enqueue(self, sub: Submission, priority: int, block: bool = False) -> None:
        """Queue ``sub``; raise RuntimeError if closed, the initializer's error once
        known, :class:`PoolFull` if ``max_queued`` jobs wait (or, with ``block``, wait
        for room; RuntimeError if the pool closes meanwhile)."""
        error = self.init_error()
        if error is not None:
            raise error.with_traceback(None)
        with self.lock:
            while True:
                if self._closing:
                    raise RuntimeError(
                        f"workstream.Pool {self._name!r} is closed; create a new Pool"
                    )
                if self._max_queued is None or self._queued < self._max_queued:
                    break
                if not block:
                    raise PoolFull(
                        f"workstream.Pool {self._name!r} already has max_queued="
                        f"{self._max_queued} jobs waiting; nothing was queued (try again "
                        "once a job has started, or raise max_queued)"
                    )
                self._changed.wait()
            entry = _Entry((-priority, next(self._seq)), sub)
            heapq.heappush(self._heap, entry)
            self._queued += 1
            self.submitted += 1
            self._live.add(sub)
            on_end = sub.on_end
            sub.on_end = lambda: self._ended(sub, on_end)
            sub.core.on_queued_cancel = lambda: self._end_queued(entry)
            slot = self._idle.pop() if self._idle else None
        if slot is not None:
            slot.wake()

    def _ended(self, sub: Submission, then: Callable[[], None]) -> None:
        """A job's outcome was published (by a slot, or by :meth:`_end_queued`)."""
        with self.lock:
            if sub in self._live:
                self._live.discard(sub)
                self.finished += 1
            self._changed.notify_all()
        then()

    def _end_queued(self, entry: _Entry) -> None:
        """A queued job was cancelled (its JobCore recorded it): end it before-start,
        now, on this thread. On the main thread, if the pool's lock cannot be had at
        once (a signal handler that interrupted a holder of it), a short-lived thread
        does it instead."""
        on_main = threading.current_thread() is threading.main_thread()
        if not self.lock.acquire(timeout=_REENTRY_WAIT if on_main else -1):
            threading.Thread(
                target=self._end_queued, args=(entry,), name="workstream-pool-cancel",
                daemon=True,
            ).start()
            return
        try:
            if not entry.popped and not entry.removed:
                entry.removed = True
                self._queued -= 1
                self._changed.notify_all()
        finally:
            self.lock.release()
        sub = entry.sub
        req = sub.core.cancel
        sub.core.finish(decide(Facts(
            started_at=sub.started_at, now=time.monotonic(), launched=False,
            cancel_requested_at=None if req is None else req.requested_at,
        )))
        sub.on_end()

    # -- the slots' side (each on its own thread) ----------------------------------------

    def pull(self, slot: WorkerSupervisor) -> Submission | None:
        """The best queued job for ``slot``, dequeued to its wake pipe; None: the slot is
        now on the idle list (or the pool is closing and takes no more jobs)."""
        with self.lock:
            if self._closing and not self._drain:
                return None
            while self._heap:
                entry = heapq.heappop(self._heap)
                if entry.removed:
                    continue
                entry.popped = True
                self._queued -= 1
                self._changed.notify_all()
                if entry.sub.core.dequeue(slot.wake_fds):
                    if slot in self._idle:
                        self._idle.remove(slot)
                    return entry.sub
                # else: cancelled just now; its canceller ends it (_end_queued)
            if slot not in self._idle:
                self._idle.append(slot)
            return None

    def retire_reason(self, slot: WorkerSupervisor, process: WorkerProcess) -> str | None:
        """After a job that left ``process`` warm: retire it if it ran
        ``max_jobs_per_worker`` jobs, or its process group's resident memory is above
        ``max_worker_memory``."""
        pid = process.child.pid
        if pid is None:
            return None
        reason = None
        with self.lock:
            n = self._jobs_on.get(pid, 0) + 1
            self._jobs_on[pid] = n
            if self._max_jobs is not None and n >= self._max_jobs:
                reason = RETIRED_MAX_JOBS
        if (
            reason is None and self._max_memory is not None
            and group_resident_bytes(pid) > self._max_memory
        ):
            reason = RETIRED_MAX_MEMORY
        if reason is not None:
            with self.lock:
                self.retired[reason] += 1
                self._jobs_on.pop(pid, None)
        return reason

    # -- stats, cancel_all, close -------------------------------------------------------

    def stats(self) -> PoolStats:
        started = sum(s.processes_started for s in self.slots)
        workers = sum(1 for s in self.slots if s.pid is not None)
        with self.lock:
            idle = sum(1 for s in self._idle if s.pid is not None)
            retired = dict(self.retired)
            queued = self._queued
            running = len(self._live) - queued
            submitted, finished, closing = self.submitted, self.finished, self._closing
        return PoolStats(
            max_workers=self.max_workers, workers=workers, idle_workers=idle,
            running=running, queued=queued, submitted=submitted, finished=finished,
            processes_started=started, retired_max_jobs=retired[RETIRED_MAX_JOBS],
            retired_max_memory=retired[RETIRED_MAX_MEMORY],
            lost=sum(s.processes_lost for s in self.slots), closed=closing,
        )

    def live(self) -> list[Submission]:
        with self.lock:
            return list(self._live)

    def cancel_all(self, grace: float | None = None) -> int:
        """Cancel every queued job (ended at once) and running job (with its grace, at
        most ``grace``); return how many were cancelled."""
        n = 0
        for sub in self.live():
            g = sub.options.grace if grace is None else min(grace, sub.options.grace)
            if sub.core.request_cancel(g, sub.options.term_delay(g), False):
                n += 1
        return n

    def close(
        self, *, wait: bool = True, grace: float | None = None, cancel_pending: bool = True,
    ) -> None:
        """Refuse new jobs; end the queued ones before-start and cancel the running ones
        (``cancel_pending``; else let them all run to their end first); close every slot.
        With ``wait`` (not on a slot's thread) block until every process was reaped."""
        with self.lock:
            first = not self._closing
            self._closing = True
            if first:
                self._drain = not cancel_pending
            draining = self._drain and not cancel_pending
            if not draining:
                self._drain = False
            idle = list(self._idle)
            self._changed.notify_all()
        if draining:
            for slot in idle:  # they pull what is left
                slot.wake()
            with self.lock:
                while self._live:
                    self._changed.wait()
        else:
            self.cancel_all(grace)
        for slot in self.slots:
            slot.close(wait=False, grace=grace)
        # Every job has ended or is in a slot's hands now; the slots (registered on
        # their own) finish the rest, at exit too.
        _registry.remove(self)
        if wait and threading.current_thread() not in {s.thread for s in self.slots}:
            for slot in self.slots:
                slot.close(wait=True, grace=grace)

    def close_when_collected(self) -> None:
        """The Pool facade was garbage-collected: close without waiting (see
        ``_registry.close_when_collected``)."""
        _registry.close_when_collected(self.lock, self.close, "workstream-pool-gc")

    # the registry's interface (interpreter exit)
    def cancel(self, grace: float | None = None) -> bool:
        self.close(wait=False, grace=grace)
        return True

    def _wait_quietly(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            slot.thread.join(max(0.0, deadline - time.monotonic()))

    def _grace(self) -> float:
        return self._options.grace + RETIRE_WAIT


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def group_resident_bytes(pid: int) -> int:
    """Resident memory (bytes) of process ``pid`` and the live members of its process
    group (``/proc/<pid>/statm``); 0 where ``/proc`` cannot tell."""
    pids = _group.live_members(pid) or []
    if pid not in pids:
        pids.append(pid)
    total = 0
    for member in pids:
        with contextlib.suppress(OSError, ValueError, IndexError), open(
            f"/proc/{member}/statm", "rb"
        ) as f:
            total += int(f.read().split()[1]) * _PAGE
    return total
