"""One job's intake: bytes from the child's data pipe -> frames -> items, delivered.

Runs on the job's runner thread (parent side), which owns the data pipe. An
:class:`Intake` decodes what the runner reads into frames (``_transport._framing``),
checks that they keep the protocol (READY first and once, then items, then one final
report), unpickles the items (buffers in shared memory through the job's
``ArrayChannel``) and hands them to the ``JobCore``: one batch, one lock and one wake-up
per chunk read. It keeps what the channel told: READY, the final report and when it
came, a malformed channel, an item that cannot be unpickled here; the runner turns them
into facts for the outcome rules.

Items the pipe did not carry whole when the child died are in its item log
(``_transport._itemlog``): :meth:`Intake.recover` delivers them after the drain, each
exactly once (the intake counts the sequence numbers the pipe delivered).

Channel errors: a malformed channel (a torn or forged frame, a frame out of order) asks
for a cancel with no grace, so the child is killed at once; an item that cannot be
unpickled in the parent asks for one with the job's grace. Nothing that arrives after
either is delivered (it is counted as discarded); the valid items before it are.
"""

from __future__ import annotations

import os
import pickle
import time

from .._core._rules import Final, FinalKind
from .._errors import DeliveryError
from .._options import Options
from .._transport import _framing, _itemlog, _shm
from ._arrays import ArrayChannel
from ._jobcore import JobCore

_READ_CHUNK = 1 << 20
_FINAL_KINDS = {
    _framing.Kind.RESULT: FinalKind.RESULT,
    _framing.Kind.ERROR: FinalKind.ERROR,
    _framing.Kind.CANCELLED: FinalKind.CANCELLED,
}

_loads = pickle.loads


class Intake:
    """Reads one job's data channel: decodes, checks and delivers what the child wrote.

    Used by one runner thread only; what it delivers goes through ``core`` (its lock).
    """

    def __init__(self, core: JobCore, options: Options) -> None:
        self.core = core
        self._options = options
        self.decoder = _framing.FrameDecoder()
        self.pid: int | None = None  # the process writing the channel (set at its launch)
        self.arrays: ArrayChannel | None = None  # large buffers in shared memory, if any
        # What the channel told (facts for _core._rules.decide):
        self.ready_seen = False  # True once the child's READY frame was decoded
        self.final: Final | None = None  # the final report, once it arrived
        self.final_at: float | None = None  # when it arrived
        self.channel_error: str | None = None  # why the channel is not our protocol
        self.delivery_error: DeliveryError | None = None  # an item not unpicklable here
        # The sequence number of the next item the child logs (_itemlog): items before
        # it came through the pipe (delivered or discarded).
        self.next_seq = 0
        self.recovered = 0  # items delivered from the item log after the child died

    def attach(self, pid: int | None, arrays: ArrayChannel | None) -> None:
        """Read the channel of process ``pid`` (its READY frame marks the job running),
        with ``arrays`` its shared-memory channel (None: everything comes in the pipe)."""
        self.pid = pid
        self.arrays = arrays

    def read_available(self, fd: int) -> bool:
        """Read one chunk and process it; return False at end of file."""
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return True
        if not chunk:
            return False
        self.feed(chunk)
        return True

    def drain(self, fd: int) -> None:
        """The child has exited: everything it wrote is in the pipe. Read it all."""
        os.set_blocking(fd, False)
        while True:
            try:
                chunk = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                return
            if not chunk:
                return
            self.feed(chunk)

    def feed(self, chunk: bytes) -> None:
        """Decode ``chunk`` and deliver its items (nothing more once the channel broke)."""
        if self.channel_error is not None:
            return
        try:
            frames = self.decoder.feed(chunk)
        except _framing.FrameError as exc:
            frames = exc.frames  # the valid frames before the fault are still delivered
            self._channel_broken(str(exc))
        core = self.core
        batch: list[object] = []
        nbytes = 0
        for index, frame in enumerate(frames):
            kind = frame.kind
            if (kind is _framing.Kind.READY) == self.ready_seen:
                # READY comes first and once: anything else is not our child's protocol.
                what = "a second READY frame" if self.ready_seen else f"{kind.name} before READY"
                self._channel_broken(f"frame #{self._frame_number(frames, index)}: {what}")
                break
            if kind is _framing.Kind.ITEMS:
                self.next_seq += frame.count
                if core.discarding() or self.delivery_error is not None:
                    core.count_discarded(frame.count)
                    if self.arrays is not None:
                        self.arrays.release_unread(frame.item_payloads())
                elif self._decode_items(frame.item_payloads(), batch):
                    nbytes += len(frame.body)
            elif kind is _framing.Kind.READY:
                assert self.pid is not None
                self.ready_seen = True
                core.mark_running(self.pid)
            else:
                self.final = Final(_FINAL_KINDS[kind], frame.body)
                self.final_at = time.monotonic()
        if self.arrays is not None:  # shared-memory bytes count for backpressure too
            nbytes += self.arrays.take_new_bytes()
        if batch:  # one hand-over (one lock, one wake-up) per chunk read, not per frame
            core.deliver(batch, nbytes)
        if self.delivery_error is not None and core.cancel is None:
            self._request_internal_cancel(grace=self._options.grace)

    def _channel_broken(self, detail: str) -> None:
        """Record a malformed channel (once) and kill the child at once."""
        if self.channel_error is None:
            detail = f"malformed data channel: {detail}"
            self.channel_error = detail
            self._request_internal_cancel(grace=0.0)

    def _frame_number(self, frames: list[_framing.Frame], index: int) -> int:
        """The 1-based position in the whole stream of ``frames[index]``."""
        return self.decoder.frames_decoded - len(frames) + index + 1

    def recover(self, block: object) -> None:
        """The child died without its final report: deliver, from its item log in
        ``block`` (the control block), every item whose ``yield`` returned and that the
        pipe did not carry whole. Not after a malformed channel or an undeliverable item
        (nothing after those is delivered), nor after the final report (it came after a
        flush of everything)."""
        if self.final is not None or self.channel_error is not None or block is None:
            return
        payloads = _itemlog.recover(block, self.next_seq)
        if not payloads:
            return
        self.next_seq += len(payloads)
        core = self.core
        if core.discarding() or self.delivery_error is not None:
            core.count_discarded(len(payloads))
            if self.arrays is not None:
                self.arrays.release_unread([memoryview(p) for p in payloads])
            return
        batch: list[object] = []
        self._decode_items([memoryview(p) for p in payloads], batch)
        self.recovered += len(batch)
        nbytes = sum(map(len, payloads))
        if self.arrays is not None:
            nbytes += self.arrays.take_new_bytes()
        if batch:
            core.deliver(batch, nbytes)

    def _decode_items(self, payloads: list[memoryview], out: list[object]) -> bool:
        """Unpickle ``payloads`` onto ``out``; on failure record a DeliveryError.

        The fast path unpickles plain payloads in one C loop; a payload with buffers in
        shared memory (first byte 0x00, never a pickle's) makes it fail over to
        :meth:`ArrayChannel.loads` for that item and resume after it.
        """
        # BaseException: a reconstructor may call sys.exit(); on the runner thread that
        # must end the job as an undeliverable item, not as an internal error.
        base = len(out)
        rest = iter(payloads)
        while True:
            try:
                out.extend(map(_loads, rest))  # appends item by item: survives a failure
                return True
            except BaseException as exc:
                index = len(out) - base  # the payload that failed
                error: BaseException = exc
            payload = payloads[index]
            if self.arrays is not None and _shm.is_out_of_band(payload):
                try:
                    out.append(self.arrays.loads(payload))
                    # Else the frame -> error -> traceback -> frame cycle would keep
                    # ``out`` (the batch) and its shared-memory arrays until a gc pass.
                    del error
                    continue
                except BaseException as exc:
                    error = exc
            break
        if self.arrays is not None:
            self.arrays.release_unread(payloads[index + 1 :])
        err = DeliveryError(
            f"item #{self.core.items_received + len(out) + 1} could not be unpickled in the "
            f"parent ({type(error).__name__}: {error}); the job was cancelled"
        )
        err.__cause__ = error
        self.delivery_error = err
        self.core.count_discarded(len(payloads) - index)
        return False

    def _request_internal_cancel(self, grace: float) -> None:
        # Not discard=True: the good items already queued stay deliverable; the intake
        # itself stops decoding anything that arrives after the error.
        self.core.request_cancel(grace, self._options.term_delay(grace), discard=False)
