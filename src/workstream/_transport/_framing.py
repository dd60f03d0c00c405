"""The wire format of the data channel (child -> parent), encoding and decoding.

Pure: no I/O, no pickling, no threads. The decoder is fed whatever bytes arrived and
returns complete, validated frames; it never allocates ahead of the bytes it was given,
so a hostile length prefix cannot make the parent reserve gigabytes.

Frame layout (little-endian)::

    offset size field
    0      2    magic  b"WS"
    2      1    kind   READY | ITEMS | RESULT | ERROR | CANCELLED
    3      1    flags  (reserved, 0)
    4      4    count  number of items (ITEMS), else 0
    8      8    body_len
    16     ...  body

ITEMS body: ``count`` u64 lengths, then the ``count`` pickles back to back (the child's
sender writes a half of its item log as it lies in shared memory: ``_transport._itemlog``).
Every other kind carries one pickle (or nothing, for READY). Exactly one of RESULT /
ERROR / CANCELLED ends a stream; nothing may follow it.
"""

from __future__ import annotations

import enum
import struct
import sys

MAGIC = b"WS"
HEADER = struct.Struct("<2sBBIQ")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME_BYTES = 8 << 30
MAX_ITEMS_PER_FRAME = 1 << 16
_LITTLE = sys.byteorder == "little"


class Kind(enum.IntEnum):
    READY = 1
    ITEMS = 2
    RESULT = 3
    ERROR = 4
    CANCELLED = 5


JOB_HEADER = struct.Struct("<Q")
"""Parent -> child jobs pipe of a warm worker: each job is this length, then a pickle."""

FINAL_KINDS = frozenset({Kind.RESULT, Kind.ERROR, Kind.CANCELLED})
_KIND_OF = {int(k): k for k in Kind}
_ITEMS = int(Kind.ITEMS)


class FrameError(ValueError):
    """The bytes are not a valid frame stream; the message says where and why.

    ``frames`` holds the valid frames that came before the fault in the same ``feed``.
    """

    frames: list[Frame]

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.frames = []


class Frame:
    """One decoded frame (a slotted class: built once per frame on the hot path)."""

    __slots__ = ("body", "count", "kind")

    def __init__(self, kind: Kind, count: int, body: bytes | memoryview) -> None:
        self.kind = kind
        self.count = count
        self.body = body

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (self.kind, self.count, bytes(self.body)) == (
            other.kind, other.count, bytes(other.body)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Frame({self.kind.name}, count={self.count}, body={len(self.body)} bytes)"

    def item_payloads(self) -> list[memoryview]:
        """Split an ITEMS body into one memoryview per pickled item (validated on decode)."""
        view = memoryview(self.body)
        n = self.count
        if n == 1:
            return [view[8:]]
        lengths = struct.unpack_from(f"<{n}Q", view, 0)
        pos = 8 * n
        out = []
        for length in lengths:
            end = pos + length
            out.append(view[pos:end])
            pos = end
        return out


def encode(kind: Kind, body: bytes = b"") -> bytes:
    """Return one frame carrying a single payload (not for ITEMS)."""
    return HEADER.pack(MAGIC, kind, 0, 0, len(body)) + body


_ONE_LENGTH = struct.Struct("<Q")


def encode_one_item(payload: bytes) -> bytes:
    """Return an ITEMS frame carrying one pickle (the write-through fast path)."""
    size = len(payload)
    return b"".join(
        (HEADER.pack(MAGIC, Kind.ITEMS, 0, 1, 8 + size), _ONE_LENGTH.pack(size), payload)
    )


def encode_items(payloads: list[bytes]) -> bytes:
    """Return one ITEMS frame carrying ``payloads`` (each one complete pickle)."""
    n = len(payloads)
    lengths = struct.pack(f"<{n}Q", *map(len, payloads))
    body_len = len(lengths) + sum(map(len, payloads))
    return b"".join([HEADER.pack(MAGIC, Kind.ITEMS, 0, n, body_len), lengths, *payloads])


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns the frames completed so far.

    Frame bodies are zero-copy views of the bytes fed (which must not be mutated
    afterwards). After a :class:`FrameError` the decoder is broken and every later
    ``feed`` raises again. ``pending`` is the number of buffered bytes of an incomplete
    frame; at end of stream a non-zero ``pending`` means the writer died mid-frame (a torn
    frame, dropped).
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._need = HEADER_SIZE  # bytes the buffered partial frame needs to be complete
        self._max = max_frame_bytes
        self._error: FrameError | None = None
        self._ended = False
        self.frames_decoded = 0

    @property
    def pending(self) -> int:
        return len(self._buf)

    @property
    def ended(self) -> bool:
        """True once a final frame (RESULT / ERROR / CANCELLED) was decoded."""
        return self._ended

    def feed(self, data: bytes) -> list[Frame]:
        if self._error is not None:
            raise self._error
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return []
            data = bytes(self._buf)
            self._buf = bytearray()
        view = memoryview(data)
        size = len(data)
        frames: list[Frame] = []
        pos = 0
        try:
            unpack_header = HEADER.unpack_from
            unpack_one = _ONE_LENGTH.unpack_from
            while size - pos >= HEADER_SIZE:
                magic, kind, flags, count, body_len = unpack_header(data, pos)
                # Fast path: a well-formed ITEMS frame; anything else gets the full check.
                if not (
                    kind == _ITEMS and magic == MAGIC and not flags and not self._ended
                    and 0 < count <= MAX_ITEMS_PER_FRAME and 8 * count <= body_len <= self._max
                ):
                    self._check_header(magic, kind, flags, count, body_len)
                end = pos + HEADER_SIZE + body_len
                if end > size:
                    self._need = end - pos
                    break
                body = view[pos + HEADER_SIZE : end]
                if kind == _ITEMS:
                    frame = Frame(Kind.ITEMS, count, body)
                    if count != 1 or unpack_one(body)[0] + 8 != body_len or body_len == 8:
                        self._check_items(frame)
                else:
                    frame = Frame(_KIND_OF[kind], count, body)
                pos = end
                frames.append(frame)
                self.frames_decoded += 1
                if frame.kind in FINAL_KINDS:
                    self._ended = True
            else:
                self._need = HEADER_SIZE
        except FrameError as exc:
            exc.frames = frames
            self._error = exc
            raise
        if pos < size:
            if self._ended:
                err = FrameError(f"frame #{self.frames_decoded + 1}: bytes after the final frame")
                err.frames = frames
                self._error = err
                raise err
            self._buf = bytearray(view[pos:])
        return frames

    def _check_header(self, magic: bytes, kind: int, flags: int, count: int, size: int) -> None:
        where = f"frame #{self.frames_decoded + 1}"
        if self._ended:
            raise FrameError(f"{where}: bytes after the final frame")
        if magic != MAGIC:
            raise FrameError(f"{where}: bad magic {magic!r} (expected {MAGIC!r})")
        if kind not in Kind._value2member_map_:
            raise FrameError(f"{where}: unknown frame kind {kind}")
        if flags != 0:
            raise FrameError(f"{where}: unknown flags 0x{flags:02x}")
        if size > self._max:
            raise FrameError(f"{where}: body of {size} bytes exceeds the limit of {self._max}")
        if kind == Kind.ITEMS:
            if not 0 < count <= MAX_ITEMS_PER_FRAME:
                raise FrameError(f"{where}: ITEMS frame with count {count}")
            if 8 * count > size:
                raise FrameError(f"{where}: {count} items cannot fit in {size} bytes")
        elif count != 0:
            raise FrameError(f"{where}: count {count} on a {Kind(kind).name} frame")

    def _check_items(self, frame: Frame) -> None:
        n = frame.count
        if n == 1:
            (length,) = _ONE_LENGTH.unpack_from(frame.body, 0)
            if length == 0 or length + 8 != len(frame.body):
                raise FrameError(
                    f"frame #{self.frames_decoded + 1}: item length does not match the body"
                )
            return
        lengths: memoryview | tuple[int, ...]
        if _LITTLE:  # a view, not a tuple: no allocation ahead of the bytes fed
            lengths = memoryview(frame.body)[: 8 * n].cast("Q")
        else:
            lengths = struct.unpack_from(f"<{n}Q", frame.body, 0)
        if 8 * n + sum(lengths) != len(frame.body):
            raise FrameError(
                f"frame #{self.frames_decoded + 1}: item lengths do not add up to the body"
            )
        if 0 in lengths:
            raise FrameError(f"frame #{self.frames_decoded + 1}: empty item payload")
