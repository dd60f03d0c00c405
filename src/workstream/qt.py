"""Qt integration: :class:`QtJob` delivers a job's items and outcome as Qt signals.

::

    qjob = QtJob.start(train, 100, parent=window)   # returns at once
    qjob.item.connect(window.show_item)             # each item, in the GUI thread
    qjob.finished.connect(window.show_outcome)      # once, after the last item
    stop_button.clicked.connect(qjob.cancel)        # never blocks

How it works (and why the GUI never stalls):

* The job calls the bridge's listener on a workstream thread whenever items were queued
  and once it is finished. The listener only emits a private ``wake`` signal, through a
  queued connection into the bridge's thread, and only if no wake is already pending: a
  flood of 100,000 items/s posts one event per GUI turn, not one per item.
* In the GUI thread the bridge drains the job (non-blocking). ``items`` gets everything
  drained in one list per turn, whatever its slots cost, so a plot never lags the worker
  by more than a turn and one slot call. ``item`` gets the items one by one in time-boxed
  slices (``slice_ms``, 8 ms by default), chunk sizes following the measured cost per
  item of its slots; what is left waits for a zero-delay timer, so timers, input and
  painting run between two slices.
* Backpressure: the bridge drains the job again only once ``item`` had what it drained,
  so an ``item`` slot slower than the worker fills the job's bounded buffer
  (``max_buffered_items``) and the pipe, and the worker waits at its ``yield``. The
  worker then runs at the slot's pace, and after a Stop the items in flight (up to the
  buffer and the pipe's worth) are still delivered before ``finished``. Avoid it by
  connecting ``items`` (with ``max_rate=60`` for a plot: one list per frame) or by
  ``latest_only=True`` (progress displays).
* ``latest_only=True`` delivers only the newest item, at most ``max_rate`` times per
  second (60 by default), and keeps draining meanwhile so the child never waits on the
  display; ``max_rate`` alone delivers every item, in at most ``max_rate`` batches per
  second (one ``items`` list per frame, for plots).

Uses PySide6 (or PyQt6, see :mod:`workstream._qt_compat`); imports only workstream's
public API and Qt. Create and use a ``QtJob`` in the thread that runs its Qt event loop.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import CancelledOutcome, Completed, Crashed, Failed, Job
from . import start as _start
from ._pacing import DEFAULT_SLICE_MS, BridgeFacts, Deliver, Pacer, check_options
from ._qt_compat import load as _load

_binding = _load()
QT_BINDING: str = _binding.name
"""The binding in use: ``"PySide6"`` or ``"PyQt6"``."""

if TYPE_CHECKING:
    from PySide6.QtCore import QMetaMethod, QObject, Qt, QTimer, Signal, Slot
else:
    QMetaMethod = _binding.QtCore.QMetaMethod
    QObject = _binding.QtCore.QObject
    Qt = _binding.QtCore.Qt
    QTimer = _binding.QtCore.QTimer
    Signal = _binding.Signal
    Slot = _binding.Slot

STATE_POLL_MS = 50
"""How often the bridge looks at ``job.state`` for ``state_changed`` (starting -> running)."""

_LIVE: dict[int, QtJob] = {}  # bridges not yet ended (GUI thread only)


class QtJob(QObject, BridgeFacts):
    """A QObject that streams a :class:`workstream.Job` into the Qt event loop.

    Every signal is emitted in the bridge's thread (the GUI thread), never on a
    workstream thread. Order: ``items`` and ``item`` for every item (or, with
    ``latest_only``, the newest ones; a list reaches ``items`` no later than its items
    reach ``item``), then one of ``completed`` / ``cancelled`` / ``failed``, then
    ``finished`` — exactly once, after the last item. ``state_changed`` reports each
    new state within about one frame of the change, even while items are still being
    delivered: the final state (the worker is gone) may come before the last items.

    Signals:
        item(object): one item. Delivered in time slices; a slot slower than the worker
            slows the worker (backpressure, see the module docstring).
        items(object): a list of consecutive items: everything received since the last
            list, one emit per turn (at most ``max_rate`` per second) whatever the slot
            costs; connect this instead of ``item`` when a slot handles many items at
            once (a plot).
        state_changed(str): the job's new state (``workstream.JobState`` values:
            starting, running, cancelling, completed, cancelled, failed, crashed).
        completed(object): the function's return value.
        cancelled(object): the :class:`~workstream.CancelledOutcome` (rung, stop latency).
        failed(object): the :class:`~workstream.Failed` or :class:`~workstream.Crashed`
            outcome (``outcome.error`` is the exception, ``str()`` it for a message).
        finished(object): the outcome, whatever it is.
        progress(object): the job's newest :class:`~workstream.Progress` (what the worker
            reported with ``workstream.progress()``), at most once per pump turn or state
            poll (50 ms), only when a new report came; the last one before ``finished``.
        output(object): a tuple of :class:`~workstream.OutputEvent` s, the worker's new
            lines and log records (start the job with ``output="capture"`` or
            ``"logging"``): one emit per turn whatever the flood, all of them before
            ``finished``; a turn more than 1,000 events behind misses the oldest.

    One bridge per job: it takes the job's items (as an iterating thread would). A bridge
    keeps itself alive until ``finished``, so it need not be stored; give it a ``parent``
    to tie its life (and the job's) to a window.

    Window close: call :meth:`cancel` in the window's ``closeEvent`` (or give the bridge
    the window as ``parent``: when the parent is destroyed the job is cancelled). The
    call never blocks; the child is gone within its grace, and at interpreter exit
    workstream cancels and reaps whatever still runs.
    """

    item = Signal(object)
    items = Signal(object)
    state_changed = Signal(str)
    completed = Signal(object)
    cancelled = Signal(object)
    failed = Signal(object)
    finished = Signal(object)
    progress = Signal(object)
    output = Signal(object)
    _wake = Signal()

    def __init__(
        self,
        job: Job[Any, Any],
        parent: QObject | None = None,
        *,
        latest_only: bool = False,
        max_rate: float | None = None,
        slice_ms: float = DEFAULT_SLICE_MS,
        cancel_on_destroy: bool = True,
    ) -> None:
        """Bridge ``job`` (already started) into this thread's event loop.

        ``latest_only``: deliver only the newest item per delivery (progress bars).
        ``max_rate``: at most this many deliveries per second (default: unlimited, or 60
        with ``latest_only``). ``slice_ms``: most milliseconds of GUI time one delivery
        slice takes. ``cancel_on_destroy``: cancel the job when ``parent`` is destroyed.
        Raises ``TypeError`` / ``ValueError`` for bad arguments. Never blocks.
        """
        if not isinstance(job, Job):
            raise TypeError(f"QtJob needs a workstream.Job, not {type(job).__name__}")
        pacer = Pacer(job, latest_only=latest_only, max_rate=max_rate, slice_ms=slice_ms)
        super().__init__(parent)
        self._job = job
        self._pacer = pacer
        self._state: str | None = None
        self._progress: object = None  # the last Progress emitted
        self._ended = False
        self._output_count = 0  # output events already emitted (job.output_since)
        self._item_method = _signal_method(self, "item")
        self._items_method = _signal_method(self, "items")

        self._pump_timer = QTimer(self)
        self._pump_timer.setSingleShot(True)
        self._pump_timer.timeout.connect(self._pump)
        self._state_timer = QTimer(self)
        self._state_timer.setInterval(STATE_POLL_MS)
        self._state_timer.timeout.connect(self._poll)
        self._wake.connect(self._on_wake, Qt.ConnectionType.QueuedConnection)
        if parent is not None and cancel_on_destroy:
            parent.destroyed.connect(_Canceller(job))
        self._link = _WakeLink(self)
        self.destroyed.connect(self._link.disarm)
        # Kept alive until it ended (or its C++ object died with its parent), so a bridge
        # the caller did not keep still reports, and is never freed on a workstream thread.
        _LIVE[id(self)] = self
        self.destroyed.connect(_Forget(id(self)))
        self._remove_listener: Callable[[], None] = job.add_listener(self._link)
        self._state_timer.start()
        self._pump_timer.start(0)  # report the first state, or items already queued

    @classmethod
    def start(
        cls,
        fn: Callable[..., Any],
        *args: Any,
        parent: QObject | None = None,
        latest_only: bool = False,
        max_rate: float | None = None,
        slice_ms: float = DEFAULT_SLICE_MS,
        cancel_on_destroy: bool = True,
        **options: Any,
    ) -> QtJob:
        """Start ``fn(*args)`` with :func:`workstream.start` (``options`` are its options)
        and return its bridge. Never blocks; bad arguments raise before anything starts.

        Connect the signals right after this call: nothing is emitted before control
        returns to the event loop.
        """
        check_options(latest_only, max_rate, slice_ms)
        job = _start(fn, *args, **options)
        try:
            return cls(job, parent, latest_only=latest_only, max_rate=max_rate,
                       slice_ms=slice_ms, cancel_on_destroy=cancel_on_destroy)
        except BaseException:
            job.cancel(grace=0)
            raise

    # -- facts ----------------------------------------------------------------------------

    def ended(self) -> bool:
        """True once ``finished`` was emitted."""
        return self._ended

    # -- control --------------------------------------------------------------------------

    @Slot()
    def cancel(self) -> bool:
        """Ask the job to stop (cooperatively, then SIGTERM, then SIGKILL at its grace).

        Never blocks; connect a Stop button's ``clicked`` to it. Returns False if the job
        had already ended. ``state_changed("cancelling")`` follows at once.
        """
        requested = self._job.cancel()
        self._check_state()
        return requested

    @Slot()
    def kill(self) -> bool:
        """Kill the job now (``job.cancel(grace=0)``); for a second press of Stop."""
        requested = self._job.cancel(grace=0.0)
        self._check_state()
        return requested

    # -- the pump (GUI thread) ------------------------------------------------------------

    def _on_wake(self) -> None:
        self._link.taken()
        # Pump from the timer, never straight from the posted event: Qt may dispatch posted
        # events and timers in one turn, and two slices back to back would double the stall.
        if not self._pump_timer.isActive():
            self._pump_timer.start(0)

    def _poll(self) -> None:
        """Slow timer: report state changes (and progress) the listener does not announce."""
        self._check_state()
        self._check_progress()
        if self._job.done() and not self._pump_timer.isActive():
            self._pump()

    def _pump(self) -> None:
        """Drain the job and deliver for at most one slice; re-arm if work is left."""
        if self._ended:
            return
        self._check_state()  # first: a slow slot must not hold back a new state
        if not self._link.armed:  # a state_changed slot destroyed this bridge
            return
        self._check_progress()
        if not self._link.armed:  # a progress slot destroyed this bridge
            return
        lists: Deliver | None = (
            self._emit_items if self.isSignalConnected(self._items_method) else None)
        each: Deliver | None = (
            self._emit_each if self.isSignalConnected(self._item_method) else None)
        delay = self._pacer.turn(lists, each)
        if not self._link.armed:  # a slot destroyed this bridge (with its parent)
            return
        self._emit_output()
        if not self._link.armed:
            return
        self._check_state()
        if delay is None:
            self._end()
        elif delay < math.inf and not self._pump_timer.isActive():
            self._pump_timer.start(math.ceil(delay * 1000))

    def _emit_items(self, items: list[Any]) -> None:
        if self._link.armed:
            self.items.emit(items)

    def _emit_each(self, chunk: list[Any]) -> None:
        link = self._link
        emit = self.item.emit
        for x in chunk:
            if not link.armed:  # a slot destroyed this bridge: emit no more
                return
            emit(x)

    def _check_state(self) -> None:
        state = self._job.state.value
        if state != self._state:
            self._state = state
            self.state_changed.emit(state)

    def _check_progress(self) -> None:
        progress = self._job.progress
        if progress is not None and progress is not self._progress:
            self._progress = progress
            self.progress.emit(progress)

    def _emit_output(self) -> None:
        """Emit the output events that arrived since the last turn, as one tuple."""
        events, self._output_count = self._job.output_since(self._output_count)
        if events:
            self.output.emit(events)

    def _end(self) -> None:
        self._check_progress()  # the last report, before the outcome's signals
        self._ended = True
        self._pump_timer.stop()
        self._state_timer.stop()
        self._link.disarm()
        self._remove_listener()
        _LIVE.pop(id(self), None)
        self._check_state()
        outcome = self._job.outcome
        assert outcome is not None
        self._emit_output()  # the last lines (all in by now: read before the outcome)
        if isinstance(outcome, Completed):
            self.completed.emit(outcome.value)
        elif isinstance(outcome, CancelledOutcome):
            self.cancelled.emit(outcome)
        elif isinstance(outcome, (Failed, Crashed)):
            self.failed.emit(outcome)
        self.finished.emit(outcome)


class _WakeLink:
    """The job's listener for one QtJob: posts at most one pending wake, from any thread.

    Holds the bridge weakly. Emitting and disarming share a lock, so once :meth:`disarm`
    returned (the bridge ended or its C++ object is being destroyed) no emit can start
    on it; the lock is held only for the emit, which merely posts an event.
    """

    def __init__(self, bridge: QtJob) -> None:
        self._bridge = weakref.ref(bridge)
        self._lock = threading.Lock()
        self._pending = False  # True from a wake's emit until the GUI thread took it
        self._armed = True

    def __call__(self) -> None:  # a workstream thread: schedule only, touch no widget
        with self._lock:
            bridge = self._bridge() if self._armed and not self._pending else None
            if bridge is None:
                return
            self._pending = True
            with contextlib.suppress(RuntimeError):  # the C++ object is already gone
                bridge._wake.emit()

    def taken(self) -> None:
        """GUI thread: the pending wake was handled; the next listener call posts again."""
        with self._lock:
            self._pending = False

    def disarm(self, *_: object) -> None:
        """No wake is posted after this returns."""
        with self._lock:
            self._armed = False

    @property
    def armed(self) -> bool:
        """False once the bridge ended or began to be destroyed."""
        return self._armed


class _Forget:
    """Drops a bridge from ``_LIVE`` (its ``destroyed``); holds no reference to it."""

    def __init__(self, key: int) -> None:
        self._key = key

    def __call__(self, *_: object) -> None:
        _LIVE.pop(self._key, None)


class _Canceller:
    """Cancels a job when called (the parent's ``destroyed``); holds no Qt object."""

    def __init__(self, job: Job[Any, Any]) -> None:
        self._job = job

    def __call__(self, *_: object) -> None:
        self._job.cancel()


def _signal_method(obj: QObject, name: str) -> QMetaMethod:
    meta = obj.metaObject()
    for i in range(meta.methodCount()):
        method = meta.method(i)
        if method.methodType() == QMetaMethod.MethodType.Signal and bytes(
            method.name().data()
        ) == name.encode():
            return method
    raise AssertionError(f"signal {name!r} not found on {type(obj).__name__}")
