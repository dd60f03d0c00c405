"""The child's end of the data channel: per-item pickling, adaptive batching, flushing.

Runs only in the child. Every item is pickled at the ``yield`` / ``emit()`` that produced
it, so an unpicklable item raises right there. Pickled items wait in a deque; they are
written to the pipe as one ITEMS frame

* at once, when nothing was written during the last ``batch_window`` seconds (a lone
  item never waits for a batch to fill), or when ``max_batch_bytes`` are pending;
* otherwise by the flusher thread, at most ``batch_window`` after the previous write.

So under a flood, items go out in batches of about ``batch_window`` worth; a hard crash
(SIGKILL, segfault) can lose at most the items of the last ``batch_window`` (plus one
switch interval if the main thread holds the GIL in a C call). ``batch_window=0`` writes
every item through before the ``yield`` returns: nothing is ever lost, at a throughput
cost measured in ``bench/throughput.py``.

Writes are serialised by one lock and each frame is written whole, so frames never
interleave. ``write_all`` blocks while the pipe is full: that is the backpressure.
"""

from __future__ import annotations

import collections
import pickle
import sys
import threading
import time
from typing import Any

from .._transport import _fds, _framing
from .._transport._fds import write_all

_dumps = pickle.dumps
_modules = sys.modules
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_READER_IDLE = _fds.READER_IDLE


def dumps_with_fallback(obj: object) -> bytes:
    """Pickle ``obj``; fall back to cloudpickle (lambdas, local classes, ``__main__``).

    Raises the *standard* pickle error if cloudpickle cannot do it either, so the user
    sees e.g. ``TypeError: cannot pickle '_thread.lock' object``.
    """
    try:
        return _dumps(obj, _PROTOCOL)
    except Exception as first:
        import cloudpickle

        try:
            data: bytes = cloudpickle.dumps(obj, _PROTOCOL)
        except Exception:
            raise first from None
        return data


class Sender:
    """Batches pickled items and writes frames to the data pipe ``fd``.

    Thread-safe: ``send_item`` may be called from any thread of the child (``emit`` from
    a helper thread); frames keep the order in which items were appended.
    """

    def __init__(
        self, fd: int, batch_window: float, max_batch_bytes: int, control: Any = None,
        arrays: Any = None,
    ) -> None:
        self._fd = fd
        # An _arrays.ArrayPickler (large buffers through shared memory), or None.
        self._arrays = arrays
        # The control block (or a stand-in): byte READER_IDLE is 1 while the parent waits.
        self._control = control if control is not None else bytearray(_fds.CONTROL_BLOCK_SIZE)
        self._window = batch_window
        self._max_bytes = max_batch_bytes
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_bytes = 0
        self._write_lock = threading.Lock()
        self._last_write = 0.0
        self._wake = threading.Event()
        self._armed = False  # True iff the flusher was woken and has not yet flushed
        self._closed = False
        self.items_sent = 0
        self._flusher: threading.Thread | None = None

    def start_flusher(self) -> None:
        """Start the background flusher (only needed when ``batch_window > 0``)."""
        if self._window > 0 and self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flush_loop, name="workstream-flusher", daemon=True
            )
            self._flusher.start()

    def send_item(self, item: Any) -> None:
        """Pickle ``item`` and queue it; write now if the channel was idle.

        Raises the pickling error (nothing is queued) or ``OSError`` if the parent is gone.
        """
        if self._arrays is None:
            try:
                data = _dumps(item, _PROTOCOL)
            except Exception:
                data = dumps_with_fallback(item)
        else:  # _arrays.ArrayPickler.dumps, inlined: one Python call less per item
            arrays = self._arrays
            try:
                if _modules.get("torch") is not None:
                    raise LookupError  # tensors need the dispatch table
                data = _dumps(item, _PROTOCOL, buffer_callback=arrays.check_small)
            except Exception:
                data = arrays.dumps_placing(item)
        pending = self._pending
        n = len(pending)
        # A batch is open (the flusher is armed): just queue. The reader-idle byte is
        # read every 8th item of a batch, the clock every 64th (the flusher owns the
        # deadline); the size bound is checked always.
        if n & 7 or (n and n & 63 and not self._control[_READER_IDLE]):
            pending.append(data)
            size = self._pending_bytes + len(data)
            self._pending_bytes = size
            if size >= self._max_bytes:
                with self._write_lock:
                    self._flush_locked()
            elif not self._armed:  # the flusher took the batch just before our append
                self._armed = True
                self._wake.set()
            return
        control = self._control
        reader_idle = control[_READER_IDLE]
        if reader_idle:
            # The parent waits for data: give it everything now. One write per wait:
            # clear the flag (the parent sets it again before it next blocks), so a
            # flood is still batched while the parent is busy.
            control[_READER_IDLE] = 0
        window = self._window
        urgent = (
            reader_idle or window == 0 or time.monotonic() - self._last_write >= window
        )
        if not pending and urgent:
            # The channel was idle: this item goes out alone, before its yield returns.
            with self._write_lock:
                if pending:  # another thread queued items meanwhile: keep the order
                    pending.append(data)
                    self._flush_locked()
                else:
                    write_all(self._fd, _framing.encode_one_item(data))
                    self.items_sent += 1
                    if window:
                        self._last_write = time.monotonic()
            return
        pending.append(data)
        self._pending_bytes += len(data)
        if (
            urgent
            or self._pending_bytes >= self._max_bytes
            or len(pending) >= _framing.MAX_ITEMS_PER_FRAME
        ):
            with self._write_lock:
                self._flush_locked()
        elif not self._armed:
            self._armed = True
            self._wake.set()

    def flush(self) -> None:
        """Write every pending item now (blocks while the pipe is full)."""
        with self._write_lock:
            self._flush_locked()

    def send_final(self, kind: _framing.Kind, body: bytes, *, last: bool = True) -> None:
        """Flush pending items, then write the job's final frame.

        ``last=True`` (a one-job worker): nothing may be sent after it; the flusher ends.
        ``last=False`` (a warm worker): the next job's items follow on the same channel.
        """
        with self._write_lock:
            self._flush_locked()
            if last:
                self._closed = True
            write_all(self._fd, _framing.encode(kind, body))
        if last:
            self._wake.set()

    def send_ready(self) -> None:
        with self._write_lock:
            write_all(self._fd, _framing.encode(_framing.Kind.READY))

    def _flush_locked(self) -> None:
        pending = self._pending
        n = len(pending)
        if not n:
            return
        payloads = [pending.popleft() for _ in range(n)]
        self._pending_bytes = 0
        step = _framing.MAX_ITEMS_PER_FRAME
        for start in range(0, n, step):
            write_all(self._fd, _framing.encode_items(payloads[start : start + step]))
        self.items_sent += n
        self._last_write = time.monotonic()

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait()
            if self._closed:
                return
            self._wake.clear()
            delay = self._last_write + self._window - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._armed = False
            try:
                with self._write_lock:
                    if self._closed:
                        return
                    self._flush_locked()
            except OSError:
                return  # the parent is gone; the main thread finds out on its next write
