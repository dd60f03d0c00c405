"""The internal side of a :class:`~workstream.Job`: its stream cursor, who reads it, and
waiting for its end. Shared by the ``Job`` facade (``_api``), asyncio support (``_aio``,
through the interface it names there, ``AioJob``) and the job's callback thread.

The facade validates what the user passed and delegates here; nothing in here is public.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from ._core import _stream
from ._core._stream import ItemCursor
from ._errors import CallbackError, Cancelled, JobTimeout
from ._options import Options
from ._outcomes import CancelledOutcome, Completed, Crashed, Failed, Outcome
from ._supervisor._jobcore import JobCore


class JobView(ItemCursor):
    """One job's stream and waiting, for the facade, ``_aio`` and the callback thread.

    It is the job's item cursor (``for item in job`` iterates it: one Python call per
    item), which takes its next batch from ``core``. The stream has one consumer at a
    time (iteration, ``drain()``, ``async for`` or the callback thread): the cursor is
    theirs, without a lock. Everything else is thread-safe (``core``'s lock guards what
    is shared with the runner).
    """

    EMPTY: ClassVar[object] = _stream.EMPTY
    """What :meth:`next_buffered` / :meth:`next_nowait` give when no item is at hand."""
    END: ClassVar[object] = _stream.END
    """What :meth:`take` / :meth:`next_nowait` give once the stream ended."""

    def __init__(
        self, core: JobCore, options: Options, name: str, started_at: float
    ) -> None:
        super().__init__()
        self.core = core
        self.options = options
        self.name = name
        self.started_at = started_at
        self.owner_pid = os.getpid()  # a forked copy of the job must not act
        # The callback thread (on_item / on_done), if any: set by the Job before it starts.
        self.callback_thread: threading.Thread | None = None
        # The on_progress listener, if any: started by the callback thread.
        self.progress_thread: threading.Thread | None = None
        self.in_on_item = False  # True while the callback thread runs on_item
        self.aio_busy = False  # True while a task is inside AsyncItems.__anext__ (_aio.py)
        # Who reads the stream: the thread that took the last batch (iteration, drain(),
        # async for, the callback thread) and when; a public listener may read it too.
        # Lets wait()/result() tell a slow reader from nobody at all (nobody_reads_locked).
        self.reader: threading.Thread | None = None
        self.last_take = 0.0
        self.has_listener = False

    def __repr__(self) -> str:
        return f"<items of workstream.Job {self.name!r}>"

    # -- the stream (one consumer at a time) ----------------------------------------------

    next_buffered = ItemCursor.next
    """The next item of the batch at hand, or :attr:`EMPTY` (then :meth:`take`)."""

    def _refill(self) -> object:
        """``for item in job`` used up the batch at hand: wait for the next one."""
        self.check_owner()  # only when a new batch is needed: nothing per item
        self.check_may_block("next(job)", "async for item in job")
        return self.take(block=True)

    def check_owner(self) -> None:
        """Raise RuntimeError in a forked copy of the process that started the job.

        Its runner thread does not exist there (``wait()`` would block forever) and its
        control block is shared with the real one (``cancel()`` would cancel the job of
        the parent).
        """
        if os.getpid() != self.owner_pid:
            raise RuntimeError(
                f"job {self.name!r} belongs to process {self.owner_pid}; this process "
                f"({os.getpid()}) is a forked copy of it: a workstream.Job can be used only "
                "in the process that started it"
            )

    def take(self, block: bool) -> object:
        """Take the next batch (waiting for one if ``block``) and return its first item:
        :attr:`END` once the stream ended, :attr:`EMPTY` if nothing came (not ``block``).
        Drops the rest of the batch at hand first after a ``cancel(discard=True)``."""
        if self.discarded:
            self.core.count_taken_but_discarded(self.drop_discarded())
        self.reader = threading.current_thread()
        batch = self.core.take_batch(block)
        self.last_take = time.monotonic()
        return self.load(batch)

    def next_nowait(self) -> object:
        """The next item without blocking, :attr:`EMPTY` or :attr:`END`."""
        item = self.next()
        if item is _stream.EMPTY:
            item = self.take(block=False)
        return item

    def drain(self) -> list[Any]:
        """Every item received so far, without blocking (the cursor's rest first)."""
        if self.discarded:
            self.core.count_taken_but_discarded(self.drop_discarded())
        out = self.take_rest()
        self.reader = threading.current_thread()
        self.last_take = time.monotonic()
        while True:
            batch = self.core.take_batch(block=False)
            if not batch:
                return out
            out.extend(batch)
            batch.clear()  # as the cursor: the stream keeps nothing it handed out

    # -- facts --------------------------------------------------------------------------

    def done(self) -> bool:
        """The outcome is known and ``on_done`` has run (``Job.done()``)."""
        return self.core.finished.is_set()

    def ended(self) -> bool:
        """The outcome is known (``on_done`` may still be running)."""
        return self.core.terminal.is_set()

    def reading_paused(self) -> bool:
        """The runner stopped reading for a full buffer (a hint, read without the lock)."""
        return self.core.reader_paused

    def listen(self, fn: Callable[[], object]) -> Callable[[], None]:
        """Call ``fn`` on news (see ``Job.add_listener``); return its remover."""
        core = self.core
        with core.lock:
            core.listeners.append(fn)

        def remove() -> None:
            with core.lock:
                if fn in core.listeners:
                    core.listeners.remove(fn)

        if core.finished.is_set():
            fn()
        return remove

    def request_cancel(
        self, grace: float | None = None, term_after: float | None = None,
        discard: bool = False,
    ) -> bool:
        """``Job.cancel()`` with validated arguments (None: the job's defaults)."""
        g = self.options.grace if grace is None else grace
        t = self.options.term_delay(g) if term_after is None else min(term_after, g)
        if discard:
            self.discard()
        return self.core.request_cancel(g, t, discard)

    # -- the callback thread ---------------------------------------------------------------

    def run_callbacks(self, unregister: Callable[[], None]) -> None:
        """The callback thread: feed ``on_item`` (forgetting each item once passed), then
        ``on_done``; a callback that raises cancels the job (``discard=True``) and is
        kept for ``wait()`` to raise. ``unregister`` takes the job out of the registry
        once it ended; "finished" is published last, whatever happened."""
        core = self.core
        on_item, on_done = self.options.on_item, self.options.on_done
        self.reader = threading.current_thread()
        progress_thread = None
        try:
            if self.options.on_progress is not None:
                progress_thread = self.progress_thread = threading.Thread(
                    target=self._run_on_progress, name=f"workstream-progress:{self.name}",
                    daemon=True,
                )
                progress_thread.start()
            if on_item is not None:
                while True:
                    batch = core.take_batch()
                    if batch is None:
                        break
                    if core.callback_error is not None:
                        continue
                    for i, item in enumerate(batch):
                        batch[i] = None
                        self.in_on_item = True
                        try:
                            on_item(item)
                        except BaseException as exc:
                            self._callback_failed(exc)
                            break
                        finally:
                            self.in_on_item = False
                            del item
            core.terminal.wait()
            if progress_thread is not None:
                progress_thread.join()  # its last report comes before on_done
            if on_done is not None:
                try:
                    on_done(core.outcome)
                except BaseException as exc:
                    self._callback_failed(exc)
        finally:
            if core.terminal.is_set():  # (the runner removes it too, maybe later)
                unregister()
            core.set_finished()

    def _run_on_progress(self) -> None:
        """The progress listener: call ``on_progress`` with each new report the runner's
        tick found (only the newest), until the job ended (its last report included)."""
        core = self.core
        on_progress = self.options.on_progress
        assert on_progress is not None
        last = None
        while True:
            core.progress_event.wait()
            core.progress_event.clear()
            ended = core.terminal.is_set()
            progress = core.read_progress()
            if progress is not None and progress is not last and core.callback_error is None:
                last = progress
                try:
                    on_progress(progress)
                except BaseException as exc:
                    self._callback_failed(exc)
            if ended:
                return

    def _callback_failed(self, exc: BaseException) -> None:
        with self.core.lock:
            if self.core.callback_error is None:
                self.core.callback_error = exc
        self.request_cancel(discard=True)

    # -- waiting ------------------------------------------------------------------------

    def check_may_block(self, call: str, instead: str) -> None:
        """Raise RuntimeError if ``call`` would block a running asyncio loop here (not in a
        notebook kernel's cell, where blocking is expected) on a job not done yet."""
        if must_not_block() and not self.done():
            raise RuntimeError(
                f"{call} would block the event loop until job {self.name!r} ends; "
                f"use '{instead}'"
            )

    def wait_blocking(self, timeout: float | None) -> Outcome:
        """Block until done (as ``Job.wait()``) and return the outcome."""
        core = self.core
        if threading.current_thread() is self.progress_thread:
            # on_progress runs before on_done and "finished": they wait for it.
            raise RuntimeError(
                f"job.wait()/result() called inside on_progress of job {self.name!r}: the "
                "job cannot finish while its own callback waits for it; use on_done"
            )
        if threading.current_thread() is self.callback_thread:
            # Called from on_item/on_done: waiting for on_done to finish would deadlock,
            # and so would waiting inside on_item for a job that needs it to consume.
            # Inside on_item it raises even when the job happens to have ended already,
            # so that the answer does not depend on timing.
            if self.in_on_item or not core.terminal.is_set():
                raise RuntimeError(
                    f"job.wait()/result() called inside on_item of job {self.name!r}: the "
                    "job cannot end while its own callback waits for it; use on_done"
                )
            event = core.terminal
        else:
            event = core.finished
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wait_unless_unread(deadline)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not event.wait(remaining):
            raise self.timeout_error(timeout)
        return self.outcome_now()

    def _wait_unless_unread(self, deadline: float | None) -> None:
        """Wait until the job is terminal (or ``deadline``: then return, the caller
        raises); without a deadline, raise RuntimeError at once if the job is stuck on a
        full buffer nobody reads (it would wait for ever unless the worker died).

        The runner notifies ``core.cond`` when it stops reading for a full buffer and
        when the job ends, so this never polls.
        """
        core = self.core
        me = threading.current_thread()
        with core.cond:
            while not core.terminal.is_set():
                if deadline is None:
                    if self.nobody_reads_locked(me):
                        raise self.unread_error()
                    core.cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    core.cond.wait(remaining)

    def raise_if_unread(self) -> None:
        """For a coroutine about to wait without a timeout: raise the RuntimeError of
        :meth:`unread_error` if nobody (no thread, no callback, no listener) reads."""
        with self.core.lock:
            if self.nobody_reads_locked(None):
                raise self.unread_error()

    def nobody_reads_locked(self, waiter: threading.Thread | None) -> bool:
        """True if the worker is blocked on a full buffer that no other thread reads:
        the runner stopped reading (not for a cancel), no ``on_item`` or listener reads
        it, and the last reader is ``waiter`` itself, or none, or a thread that ended.
        ``waiter=None`` (a coroutine): only no reader, or an ended one, counts."""
        core = self.core
        if not core.reader_paused or core.cancel is not None or core.terminal.is_set():
            return False
        if self.callback_thread is not None or self.has_listener:
            return False
        reader = self.reader
        return reader is None or reader is waiter or not reader.is_alive()

    def _buffer_facts(self) -> str:
        core = self.core
        opts = self.options
        return (
            f"{core.buffered_items} items ({core.buffered_bytes} bytes) wait unread in its "
            f"buffer (max_buffered_items={opts.max_buffered_items}, "
            f"max_buffered_bytes={opts.max_buffered_bytes})"
        )

    def unread_error(self) -> RuntimeError:
        return RuntimeError(
            f"job {self.name!r} cannot end: its worker is blocked because "
            f"{self._buffer_facts()} and nothing reads them while this thread waits. "
            "Read the items ('for item in job', job.drain()) before or instead of "
            "waiting, or start the job with on_item=..., or with max_buffered_items=None "
            "and max_buffered_bytes=None to keep them all, or cancel it; the job is "
            "still running"
        )

    def timeout_error(self, timeout: float | None) -> TimeoutError:
        core = self.core
        text = (
            f"job {self.name!r} (pid {core.pid}) is still {core.state.value} after "
            f"{timeout} s"
        )
        with core.lock:
            if core.reader_paused and core.cancel is None and not core.terminal.is_set():
                idle = time.monotonic() - (self.last_take or self.started_at)
                text += (
                    f": its worker is blocked on a full buffer nobody reads: "
                    f"{self._buffer_facts()}, and none was taken for {idle:.1f} s"
                )
        return TimeoutError(text)

    def outcome_now(self) -> Outcome:
        """The outcome of an ended job; raises CallbackError if a callback raised."""
        err = self.core.callback_error
        if err is not None:
            raise CallbackError(
                f"a callback of job {self.name!r} raised {type(err).__name__}: {err}; "
                "the job was cancelled"
            ) from err
        outcome = self.core.outcome
        assert outcome is not None
        return outcome

    def value_of(self, outcome: Outcome) -> Any:
        """What ``Job.result()`` gives for ``outcome``: the value, or the raise."""
        if isinstance(outcome, Completed):
            return outcome.value
        if isinstance(outcome, CancelledOutcome):
            if outcome.timed_out:
                raise JobTimeout(
                    f"job {self.name!r} timed out after {self.options.timeout} s of running "
                    f"and was cancelled ({outcome.rung})"
                )
            raise Cancelled(f"job {self.name!r} was cancelled ({outcome.rung})")
        if isinstance(outcome, (Failed, Crashed)):
            raise outcome.error
        raise AssertionError(f"unknown outcome {outcome!r}")


def must_not_block() -> bool:
    """True if a blocking call here would freeze an asyncio event loop: this thread runs
    one, and it is not the main thread of a Jupyter/IPython kernel (which runs each cell
    on its loop, where blocking a cell is what users expect, as ``time.sleep`` does)."""
    return on_event_loop() and not in_kernel_cell()


def in_kernel_cell() -> bool:
    """True on the main thread of an IPython kernel (Jupyter); never imports IPython."""
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython too old or too new for this: assume a plain loop
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def on_event_loop() -> bool:
    """True if this thread runs an asyncio event loop (none can run if asyncio was
    never imported, so this does not import it)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
