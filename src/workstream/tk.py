"""Tkinter integration: :class:`TkJob` delivers a job's items and outcome to callbacks
that run in the Tk thread.

::

    tkjob = TkJob.start(train, 100, widget=root, on_item=show, on_done=show_outcome)
    stop = tk.Button(root, text="Stop", command=tkjob.cancel)   # never blocks

How it works: Tk must only be called from its own thread, and a workstream thread must
never wait for it, so the bridge polls. While the job runs, an ``after()`` timer (every
``poll_ms``, 10 ms by default) drains the job — non-blocking. ``on_items`` gets everything
drained in one list per poll, whatever it costs; ``on_item`` gets the items one by one in
time-boxed slices (``slice_ms``, 8 ms by default); what is left is delivered by the next
``after()``, so Tk redraws and handles input in between. An ``on_item`` slower than the
worker slows the worker (the job's bounded buffer fills: backpressure) and after a Stop
the items in flight are still delivered before ``on_done``; use ``on_items`` or
``latest_only`` to avoid it. ``latest_only`` and ``max_rate`` work as in
:mod:`workstream.qt` (see :class:`workstream._pacing.Pacer`). Polling stops by itself
once the outcome was delivered.

A callback that raises is reported as Tk reports any callback error
(``report_callback_exception``) and delivery goes on. When ``widget`` is destroyed (the
window closed) the job is cancelled (``cancel_on_destroy``) and polling stops; the child
is gone within its grace, and at interpreter exit workstream cancels and reaps whatever
still runs. The widget's Tcl interpreter is kept until exit (see :func:`_keep_interpreter`).
Create and use a ``TkJob`` in the Tk thread. Imports only workstream's public API and
tkinter.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tkinter
from collections.abc import Callable, Mapping
from typing import Any

from . import CancelledOutcome, Completed, Crashed, Failed, Job
from . import start as _start
from ._pacing import DEFAULT_SLICE_MS, BridgeFacts, Pacer, check_options

DEFAULT_POLL_MS = 10
"""How often a running job is polled when no items are waiting (milliseconds)."""

Callback = Callable[[Any], object]


class TkJob(BridgeFacts):
    """Streams a :class:`workstream.Job` into the Tk event loop through callbacks.

    All callbacks run in the Tk thread. Order: ``on_items`` (everything received since
    its last call, in one list) and ``on_item`` (each item, in time slices; a list
    reaches ``on_items`` no later than its items reach ``on_item``) for every item — or,
    with ``latest_only``, the newest — then one of ``on_completed(value)`` /
    ``on_cancelled(outcome)`` / ``on_failed(outcome)`` (a ``Failed`` or ``Crashed``),
    then ``on_done(outcome)``, exactly once, after the last item. ``on_state(str)`` gets
    every state seen (starting, running, cancelling, the final one) within a poll of the
    change, even while items are still being delivered: the final state may come before
    the last items. ``on_progress(progress)`` gets the job's newest
    :class:`~workstream.Progress` (``workstream.progress()`` in the worker) at most once
    per turn, only when a new report came; the last one before ``on_done``.

    ``on_output(events)`` gets the worker's new lines and log records (a tuple of
    :class:`~workstream.OutputEvent`) at most once per poll, all of them before
    ``on_done``; :meth:`start` with ``on_output`` captures the output (``output=
    "capture"`` unless given). A poll more than 1,000 events behind misses the oldest.
    """

    def __init__(
        self,
        job: Job[Any, Any],
        widget: tkinter.Misc,
        *,
        on_item: Callback | None = None,
        on_items: Callback | None = None,
        on_state: Callback | None = None,
        on_completed: Callback | None = None,
        on_cancelled: Callback | None = None,
        on_failed: Callback | None = None,
        on_done: Callback | None = None,
        on_progress: Callback | None = None,
        latest_only: bool = False,
        max_rate: float | None = None,
        slice_ms: float = DEFAULT_SLICE_MS,
        poll_ms: int = DEFAULT_POLL_MS,
        cancel_on_destroy: bool = True,
        on_output: Callback | None = None,
    ) -> None:
        """Bridge ``job`` (already started) into the Tk loop of ``widget``.

        Call from the Tk thread. Raises ``TypeError`` / ``ValueError`` for bad arguments.
        Never blocks; the first poll runs once control returns to the Tk loop.
        """
        if not isinstance(job, Job):
            raise TypeError(f"TkJob needs a workstream.Job, not {type(job).__name__}")
        _check_widget(widget)
        callbacks = {"on_item": on_item, "on_items": on_items, "on_state": on_state,
                     "on_completed": on_completed, "on_cancelled": on_cancelled,
                     "on_failed": on_failed, "on_done": on_done, "on_progress": on_progress,
                     "on_output": on_output}
        _check_callbacks(callbacks)
        _check_poll(poll_ms)
        self._pacer = Pacer(job, latest_only=latest_only, max_rate=max_rate, slice_ms=slice_ms)
        _keep_interpreter(widget.tk)
        self._job = job
        self._widget = widget
        self._on_item = on_item
        self._on_items = on_items
        self._on_state = on_state
        self._on_completed = on_completed
        self._on_cancelled = on_cancelled
        self._on_failed = on_failed
        self._on_done = on_done
        self._on_progress = on_progress
        self._progress: object = None  # the last Progress passed to on_progress
        self._on_output = on_output
        self._output_count = 0  # output events already delivered (job.output_since)
        self._poll_ms = poll_ms
        self._cancel_on_destroy = cancel_on_destroy
        self._state: str | None = None
        self._ended = False
        self._detached = False
        self._after_id: str | None = None
        # A hidden child frame carries the timer and hears the widget's destruction (Tk
        # destroys children first); the user's own <Destroy> bindings are left alone.
        self._anchor: tkinter.Frame | None = tkinter.Frame(widget)
        self._anchor.bind("<Destroy>", self._on_destroy)
        self._schedule(0)

    @classmethod
    def start(
        cls,
        fn: Callable[..., Any],
        *args: Any,
        widget: tkinter.Misc,
        on_item: Callback | None = None,
        on_items: Callback | None = None,
        on_state: Callback | None = None,
        on_completed: Callback | None = None,
        on_cancelled: Callback | None = None,
        on_failed: Callback | None = None,
        on_done: Callback | None = None,
        on_progress: Callback | None = None,
        latest_only: bool = False,
        max_rate: float | None = None,
        slice_ms: float = DEFAULT_SLICE_MS,
        poll_ms: int = DEFAULT_POLL_MS,
        cancel_on_destroy: bool = True,
        on_output: Callback | None = None,
        **options: Any,
    ) -> TkJob:
        """Start ``fn(*args)`` with :func:`workstream.start` (``options`` are its options)
        and return its bridge. Never blocks; bad arguments raise before anything starts."""
        check_options(latest_only, max_rate, slice_ms)
        _check_widget(widget)
        _check_callbacks({"on_item": on_item, "on_items": on_items, "on_state": on_state,
                          "on_completed": on_completed, "on_cancelled": on_cancelled,
                          "on_failed": on_failed, "on_done": on_done,
                          "on_progress": on_progress, "on_output": on_output})
        _check_poll(poll_ms)
        if on_output is not None:
            options.setdefault("output", "capture")
        job = _start(fn, *args, **options)
        try:
            return cls(job, widget, on_item=on_item, on_items=on_items, on_state=on_state,
                       on_completed=on_completed, on_cancelled=on_cancelled,
                       on_failed=on_failed, on_done=on_done, on_progress=on_progress,
                       latest_only=latest_only,
                       max_rate=max_rate, slice_ms=slice_ms, poll_ms=poll_ms,
                       cancel_on_destroy=cancel_on_destroy, on_output=on_output)
        except BaseException:
            job.cancel(grace=0)
            raise

    # -- facts ----------------------------------------------------------------------------

    def ended(self) -> bool:
        """True once ``on_done`` was called (or would have been, without one)."""
        return self._ended

    # -- control --------------------------------------------------------------------------

    def cancel(self) -> bool:
        """Ask the job to stop (cooperatively, then SIGTERM, then SIGKILL at its grace).

        Never blocks; use it as a Stop button's ``command``. Returns False if the job had
        already ended. ``on_state("cancelling")`` follows at once.
        """
        requested = self._job.cancel()
        self._check_state()
        return requested

    def kill(self) -> bool:
        """Kill the job now (``job.cancel(grace=0)``); for a second press of Stop."""
        requested = self._job.cancel(grace=0.0)
        self._check_state()
        return requested

    def detach(self) -> None:
        """Stop polling and calling back (the job keeps running; you own it now)."""
        self._detached = True
        self._release()

    # -- the poll (Tk thread) -------------------------------------------------------------

    def _schedule(self, ms: int) -> None:
        if self._anchor is not None:
            self._after_id = self._anchor.after(ms, self._tick)

    def _release(self) -> None:
        """Cancel the timer and destroy the anchor frame (idempotent)."""
        anchor, self._anchor = self._anchor, None
        if anchor is None:
            return
        with contextlib.suppress(tkinter.TclError):  # the interpreter may be gone already
            if self._after_id is not None:
                anchor.after_cancel(self._after_id)
            anchor.destroy()
        self._after_id = None

    def _tick(self) -> None:
        self._after_id = None
        if self._ended or self._detached:
            return
        try:
            self._check_state()  # first: a slow callback must not hold back a new state
            if self._detached:  # on_state destroyed the widget (or detached)
                return
            self._check_progress()
            if self._detached:  # on_progress destroyed the widget (or detached)
                return
            delay = self._pacer.turn(
                self._deliver_list if self._on_items is not None else None,
                self._deliver_each if self._on_item is not None else None)
            self._deliver_output()
            self._check_state()
        except BaseException:
            self._schedule(self._poll_ms)  # a bug must not stop the stream for good
            raise
        if self._detached:  # a callback destroyed the widget: no more callbacks
            return
        if delay is None:
            self._end()
        elif delay == math.inf:
            self._schedule(self._poll_ms)
        else:
            self._schedule(math.ceil(delay * 1000))

    def _deliver_output(self) -> None:
        """Hand ``on_output`` the events that arrived since the last poll, as one tuple."""
        if self._on_output is None or self._detached:
            return
        events, self._output_count = self._job.output_since(self._output_count)
        if events:
            self._call(self._on_output, events)

    def _deliver_list(self, items: list[Any]) -> None:
        if not self._detached:
            self._call(self._on_items, items)

    def _deliver_each(self, chunk: list[Any]) -> None:
        on_item = self._on_item
        if on_item is not None:
            for x in chunk:
                if self._detached:  # a callback destroyed the widget: deliver no more
                    return
                try:
                    on_item(x)
                except Exception:
                    self._report()

    def _call(self, fn: Callback | None, arg: Any) -> None:
        if fn is None:
            return
        try:
            fn(arg)
        except Exception:
            self._report()

    def _report(self) -> None:
        """Report the exception being handled as Tk reports callback errors."""
        exc_type, exc, tb = sys.exc_info()
        try:
            self._widget.nametowidget(".").report_callback_exception(exc_type, exc, tb)
        except Exception:  # no root any more: print it like an unhandled exception
            sys.excepthook(exc_type, exc, tb)  # type: ignore[arg-type]

    def _check_state(self) -> None:
        state = self._job.state.value
        if state != self._state:
            self._state = state
            self._call(self._on_state, state)

    def _check_progress(self) -> None:
        if self._on_progress is None:
            return
        progress = self._job.progress
        if progress is not None and progress is not self._progress:
            self._progress = progress
            self._call(self._on_progress, progress)

    def _end(self) -> None:
        self._ended = True
        self._release()
        self._check_state()
        self._check_progress()  # the last report, before the outcome's callbacks
        outcome = self._job.outcome
        assert outcome is not None
        self._deliver_output()  # the last lines (all in by now: read before the outcome)
        if isinstance(outcome, Completed):
            self._call(self._on_completed, outcome.value)
        elif isinstance(outcome, CancelledOutcome):
            self._call(self._on_cancelled, outcome)
        elif isinstance(outcome, (Failed, Crashed)):
            self._call(self._on_failed, outcome)
        self._call(self._on_done, outcome)

    def _on_destroy(self, event: tkinter.Event[Any]) -> None:
        """The anchor is being destroyed: by :meth:`_release`, or with the widget."""
        if self._anchor is None or self._ended or self._detached:
            return
        self._detached = True
        with contextlib.suppress(tkinter.TclError):
            if self._after_id is not None:
                self._anchor.after_cancel(self._after_id)
        self._after_id = None
        self._anchor = None
        if self._cancel_on_destroy:
            self._job.cancel()


_INTERPRETERS: list[Any] = []  # Tcl interpreters of bridged widgets, freed at exit


def _keep_interpreter(tkapp: Any) -> None:
    """Keep ``tkapp`` referenced until interpreter exit (Tk thread only).

    A Tcl interpreter freed on another thread aborts the process ("Tcl_AsyncDelete: async
    handler deleted by the wrong thread", CPython gh-83274). Tk widget trees are reference
    cycles, so a closed window's root is freed by the garbage collector — on whichever
    thread allocates at that moment, often a job's runner thread while the job is still
    being cancelled. Kept here, the interpreter is freed at exit, on the main thread.
    """
    if not any(kept is tkapp for kept in _INTERPRETERS):
        _INTERPRETERS.append(tkapp)


def _check_widget(widget: object) -> None:
    if not isinstance(widget, tkinter.Misc):
        raise TypeError(f"TkJob needs a Tk widget (for after()), not {type(widget).__name__}")


def _check_callbacks(callbacks: Mapping[str, object]) -> None:
    for name, fn in callbacks.items():
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable or None, not {type(fn).__name__}")


def _check_poll(poll_ms: object) -> None:
    if isinstance(poll_ms, bool) or not isinstance(poll_ms, int):
        raise TypeError(f"poll_ms must be an int number of milliseconds, not "
                        f"{type(poll_ms).__name__}")
    if poll_ms < 1:
        raise ValueError(f"poll_ms must be at least 1, not {poll_ms}")
