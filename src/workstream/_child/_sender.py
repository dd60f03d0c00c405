"""The child's end of the data channel: per-item pickling, the item log, batching, flushing.

Runs only in the child. Every item is pickled at the ``yield`` / ``emit()`` that produced
it, so an unpicklable item raises right there, and appended to the item log in shared
memory (``_transport._itemlog``) before the ``yield`` returns: if the child dies on the
next line (SIGKILL, segfault, ``os._exit``, the OOM killer), the parent recovers it from
the log. Nothing whose ``yield`` returned is lost, whatever ``batch_window`` says. The
log's active half is written to the pipe as one ITEMS frame

* at once, when nothing was written during the last ``batch_window`` seconds or the
  parent waits for data (a lone item never waits for a batch to fill), or when
  ``max_batch_bytes`` are pending or the half is full;
* otherwise by the flusher thread, at most ``batch_window`` after the previous write.

So under a flood, items go out in batches of about ``batch_window`` worth, and
``batch_window`` bounds only how long an item may wait (latency), not what a crash loses.
An item too large for a half of the log is written alone, before its ``yield`` returns.

Two locks: ``_log_lock`` guards the log (held only to append or to seal a half, never
during I/O), ``_write_lock`` the pipe (one frame at a time, written whole). An append
never waits for a write unless both halves are full. ``write`` blocks while the pipe is
full: that is the backpressure.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .._transport import _fds, _framing
from .._transport._fds import write_all, writev_all

_dumps = pickle.dumps
_modules = sys.modules
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_READER_IDLE = _fds.READER_IDLE
_SMALL_FRAME = 16 << 10  # bytes of pickles below which a frame is joined, then written


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
    """Logs pickled items and writes frames to the data pipe ``fd``.

    Thread-safe: ``send_item`` may be called from any thread of the child (``emit`` from
    a helper thread); frames keep the order in which items were logged. ``control`` is the
    control block (its first page the control bytes, then the item log); None: a
    private stand-in (tests).

    The log's state (which half is active, its base, count and write position) lives in
    the closures that :meth:`_build` makes, guarded by ``_log_lock``: a closure's cells
    cost less per item than attributes.
    """

    send_item: Callable[[Any], None]
    """Pickle ``item`` and log it; write the batch now if the channel was idle.

    Raises the pickling error (nothing is logged) or ``OSError`` if the parent is gone.
    Once it returns, the item reaches the parent even if the process dies."""

    def __init__(
        self, fd: int, batch_window: float, max_batch_bytes: int, control: Any = None,
        arrays: Any = None,
    ) -> None:
        self._fd = fd
        # An _arrays.ArrayPickler (large buffers through shared memory), or None.
        self._arrays = arrays
        # Byte READER_IDLE is 1 while the parent waits; the item log follows the page.
        self._control = control if control is not None else bytearray(_fds.CONTROL_BLOCK_SIZE)
        self._window = batch_window
        self._max_bytes = max_batch_bytes
        self._log_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._last_write = 0.0
        self._wake = threading.Event()
        self._armed = False  # True iff the flusher was woken and has not yet flushed
        self._closed = False
        self.items_sent = 0  # items written whole to the pipe
        self._flusher: threading.Thread | None = None
        self.send_item, self._append, self._seal, self._flush_locked = self._build()

    def start_flusher(self) -> None:
        """Start the background flusher (only needed when ``batch_window > 0``)."""
        if self._window > 0 and self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flush_loop, name="workstream-flusher", daemon=True
            )
            self._flusher.start()

    def _build(self) -> tuple[
        Callable[[Any], None], Callable[[bytes], bool],
        Callable[[bool], tuple[int, int, int, int, int]], Callable[..., None],
    ]:
        """Make ``send_item``, ``append`` (log a pickle; False if the active half has no
        room), ``seal`` and ``flush_locked``, sharing the log's state.

        ``flush_locked(alone=None)`` (``_write_lock`` held) seals the active half and
        writes it as one ITEMS frame; then ``alone``, an item too large for the log,
        which takes the next sequence number. A sealed half stays valid in the log until
        its write is complete (it is reused only by a later seal, under the same lock).
        """
        block = self._control
        view = memoryview(block)
        n_max = _fds.ITEM_LOG_MAX_ITEMS
        bases = [view[off : off + 8].cast("Q") for off in _fds.ITEM_LOG_BASE]
        index_bytes = [view[off : off + 8 * n_max] for off in _fds.ITEM_LOG_INDEX]
        indexes = [v.cast("Q") for v in index_bytes]
        zeros = memoryview(bytes(8 * n_max))
        used = [0, 0]  # each half's record count when it was last sealed
        max_items = min(n_max, _framing.MAX_ITEMS_PER_FRAME)
        acquire, release = self._log_lock.acquire, self._log_lock.release
        arrays = self._arrays
        window = self._window
        max_bytes = self._max_bytes
        write_lock = self._write_lock

        def flush() -> None:
            with write_lock:
                flush_locked()
        send_unlogged = self._send_unlogged
        wake = self._wake
        # The active half: its number, first record's sequence number, record count,
        # payload area (start, end), where the next pickle goes, its index; and how many
        # of its records were written to the pipe alone (``write_lone``), up to where.
        half = 0
        base = 0
        count = 0
        start = pos = _fds.ITEM_LOG_PAYLOAD[0]
        end = start + _fds.ITEM_LOG_PAYLOAD_BYTES
        index = indexes[0]
        sent = 0
        sent_pos = start

        def send_item(item: Any) -> None:
            nonlocal count, pos, base
            if arrays is None:
                try:
                    data = _dumps(item, _PROTOCOL)
                except Exception:
                    data = dumps_with_fallback(item)
            else:  # _arrays.ArrayPickler.dumps, inlined: one Python call less per item
                try:
                    if _modules.get("torch") is not None:
                        raise LookupError  # tensors need the dispatch table
                    data = _dumps(item, _PROTOCOL, buffer_callback=arrays.check_small)
                except Exception:
                    data = arrays.dumps_placing(item)
            size = len(data)
            if not count and (
                block[_READER_IDLE] or not window
                or time.monotonic() - self._last_write >= window
            ):
                with write_lock:
                    acquire()
                    if not count:
                        # Nothing waits in the log: the item skips it and is written
                        # before its yield returns (as durable as the log), with the
                        # next sequence number.
                        base += 1
                        bases[half][0] = base
                        release()
                        if block[_READER_IDLE]:
                            block[_READER_IDLE] = 0  # one write per parent wait
                        write_all(fd, _framing.encode_one_item(data))
                        self.items_sent += 1
                        self._last_write = time.monotonic()
                        return
                    release()
            acquire()  # (cheaper than ``with``, per item)
            try:
                k = count
                p = pos
                e = p + size
                if e > end or k >= max_items:
                    k = -1
                else:
                    block[p:e] = data
                    # One aligned 8-byte store publishes the record (see _itemlog).
                    index[k] = size
                    count = k + 1
                    pos = e
                    seq = base + k
                    k -= sent  # from here on: the records waiting before this one
                    pending = e - sent_pos
            finally:
                release()
            if k < 0:
                send_unlogged(data)
                return
            # A batch is open (the flusher is armed): just log. The reader-idle byte is
            # read every 64th item of a batch, the clock every 256th (the flusher owns
            # the deadline); the size bound is checked always.
            if k & 63 or (k and k & 255 and not block[_READER_IDLE]):
                if pending >= max_bytes:
                    flush()
                elif not self._armed:  # the flusher took the batch just before our append
                    self._armed = True
                    wake.set()
                return
            reader_idle = block[_READER_IDLE]
            if reader_idle:
                # The parent waits for data: give it everything now. One write per wait:
                # clear the flag (the parent sets it again before it next blocks), so a
                # flood is still batched while the parent is busy.
                block[_READER_IDLE] = 0
            if (
                reader_idle or window == 0 or pending >= max_bytes
                or time.monotonic() - self._last_write >= window
            ):
                if k:
                    flush()
                else:
                    write_lone(data, seq)
            elif not self._armed:
                self._armed = True
                wake.set()

        def append(data: bytes) -> bool:
            nonlocal count, pos
            with self._log_lock:
                k = count
                e = pos + len(data)
                if e > end or k >= max_items:
                    return False
                block[pos:e] = data
                index[k] = len(data)
                count = k + 1
                pos = e
                return True

        def write_lone(data: bytes, seq: int) -> None:
            """Write the record ``seq``, just logged with nothing waiting before it, as a
            one-item frame from ``data``: no seal, no copy out of the log. If a flush
            took it meanwhile, flush what waits instead."""
            nonlocal sent, sent_pos
            with write_lock:
                with self._log_lock:
                    mine = base + sent == seq and count > sent
                if not mine:
                    flush_locked()
                    return
                write_all(fd, _framing.encode_one_item(data))
                self.items_sent += 1
                with self._log_lock:  # (no seal can come between: it needs write_lock)
                    sent += 1
                    sent_pos += len(data)
                self._last_write = time.monotonic()

        def seal(alone: bool) -> tuple[int, int, int, int, int]:
            """Make the other half active if this one holds records (then ``alone``, an
            item about to be written alone, takes the next sequence number); return the
            records not yet written: count, half, first record, payload start and end."""
            nonlocal half, base, count, start, pos, end, index, sent, sent_pos
            with self._log_lock:
                sealed = (count - sent, half, sent, sent_pos, pos)
                if count:  # (also when all were written alone: the half may be full)
                    # The other half (written whole, or never used) becomes the active
                    # one: first its stale entries are zeroed (a walk of the half stops
                    # at the first zero), then its base is set.
                    used[half] = count
                    half = 1 - half
                    index_bytes[half][: 8 * used[half]] = zeros[: 8 * used[half]]
                    base += count
                    bases[half][0] = base
                    count = 0
                    start = pos = sent_pos = _fds.ITEM_LOG_PAYLOAD[half]
                    end = start + _fds.ITEM_LOG_PAYLOAD_BYTES
                    index = indexes[half]
                    sent = 0
                if alone:  # the item written alone takes the next sequence number
                    base += 1
                    bases[half][0] = base
                return sealed

        payloads = [view[off : off + _fds.ITEM_LOG_PAYLOAD_BYTES] for off in _fds.ITEM_LOG_PAYLOAD]
        fd = self._fd
        header = _framing.HEADER.pack
        magic, items_kind = _framing.MAGIC, _framing.Kind.ITEMS

        def flush_locked(alone: bytes | None = None) -> None:
            n, h, first, s0, p = seal(alone is not None)
            if n:
                size = p - s0
                s0 -= _fds.ITEM_LOG_PAYLOAD[h]
                parts: list[bytes | memoryview] = [
                    header(magic, items_kind, 0, n, 8 * n + size),
                    index_bytes[h][8 * first : 8 * (first + n)], payloads[h][s0 : s0 + size],
                ]
                if size < _SMALL_FRAME:  # one copy is cheaper than a gather
                    data = b"".join(parts)
                    written = os.write(fd, data)
                    if written < len(data):
                        write_all(fd, memoryview(data)[written:])
                else:
                    writev_all(fd, parts)
                self.items_sent += n
            if alone is not None:
                write_all(fd, _framing.encode_one_item(alone))
                self.items_sent += 1
            if n or alone is not None:
                self._last_write = time.monotonic()

        return send_item, append, seal, flush_locked

    def _send_unlogged(self, data: bytes) -> None:
        """The active half has no room for ``data``: flush, then log it or, if it is
        larger than a half, write it alone (before the ``yield`` returns)."""
        if len(data) > _fds.ITEM_LOG_PAYLOAD_BYTES:
            with self._write_lock:
                self._flush_locked(alone=data)
            return
        while True:
            self.flush()
            if self._append(data):
                break
            # Other threads filled the fresh half meanwhile: flush again.
        if self._window == 0 or self._control[_READER_IDLE]:
            self.flush()  # write-through, or the parent waits: as send_item would
        elif not self._armed:
            self._armed = True
            self._wake.set()

    def flush(self) -> None:
        """Write every logged item now (blocks while the pipe is full)."""
        with self._write_lock:
            self._flush_locked()

    def send_final(self, kind: _framing.Kind, body: bytes, *, last: bool = True) -> None:
        """Flush logged items, then write the job's final frame.

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
