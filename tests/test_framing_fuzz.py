"""The frame decoder under attack: hypothesis-driven fuzzing (pure, no processes).

``test_framing.py`` has the unit tests and the first properties (any split of a valid
stream, arbitrary junk after READY). Here the input is hostile in the ways a broken or
malicious writer could produce: valid streams with bytes flipped, inserted or deleted;
two streams interleaved (two writers without a lock); truncated streams; headers that
declare enormous bodies or item counts. In every case the decoder must

* return frames, buffer, or raise :class:`FrameError` — never any other exception;
* stay broken after a :class:`FrameError` (every later ``feed`` raises it again);
* never hold more than the bytes it was given (a hostile length prefix cannot make it
  allocate ahead), and take time linear in them (no hang);
* decode every valid frame before the damage exactly as encoded.

``fuzz/fuzz_framing.py`` runs the same oracle under atheris (coverage-guided; optional).
"""

from __future__ import annotations

import struct
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workstream._transport._framing import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_ITEMS_PER_FRAME,
    Frame,
    FrameDecoder,
    FrameError,
    Kind,
    encode,
    encode_items,
)

pytestmark = pytest.mark.no_leak_check  # pure: no processes, threads or fds

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

payload_st = st.binary(min_size=1, max_size=64)
batches_st = st.lists(st.lists(payload_st, min_size=1, max_size=5), max_size=8)
final_st = st.sampled_from([Kind.RESULT, Kind.ERROR, Kind.CANCELLED])


def valid_frames(batches: list[list[bytes]], final: Kind) -> list[bytes]:
    return [encode(Kind.READY), *(encode_items(b) for b in batches), encode(final, b"fin")]


def feed_checked(data: bytes, chunk_sizes: list[int]) -> tuple[list[Frame], FrameError | None]:
    """Feed ``data`` in chunks; check the decoder's invariants at every step."""
    decoder = FrameDecoder()
    frames: list[Frame] = []
    fed = 0
    pos = 0
    sizes = iter(chunk_sizes or [len(data) or 1])
    error: FrameError | None = None
    while pos < len(data):
        size = next(sizes, 0) or len(data)
        piece = data[pos : pos + size]
        pos += len(piece)
        try:
            frames.extend(decoder.feed(piece))
        except FrameError as exc:
            frames.extend(exc.frames)
            error = exc
            break
        fed += len(piece)
        assert decoder.pending <= fed
    if error is not None:
        for later in (b"", encode(Kind.READY), data[:HEADER_SIZE]):
            with pytest.raises(FrameError) as again:
                decoder.feed(later)
            assert again.value is error
    assert decoder.frames_decoded == len(frames)
    return frames, error


def as_tuples(frames: list[Frame]) -> list[tuple[Kind, int, bytes]]:
    return [(f.kind, f.count, bytes(f.body)) for f in frames]


def decode_whole(frames: list[bytes]) -> list[tuple[Kind, int, bytes]]:
    return as_tuples(FrameDecoder().feed(b"".join(frames)))


@FUZZ
@given(batches=batches_st, final=final_st, data=st.data())
def test_mutated_stream(batches: list[list[bytes]], final: Kind, data: st.DataObject) -> None:
    """Flip, insert or delete bytes of a valid stream: only FrameError, and every frame
    that ends before the first damaged byte decodes exactly as encoded."""
    frames = valid_frames(batches, final)
    stream = bytearray(b"".join(frames))
    damage = len(stream)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "overwrite-u64"]))
        at = data.draw(st.integers(0, max(0, len(stream) - 1)))
        damage = min(damage, at)
        if op == "flip" and stream:
            stream[at] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            stream[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and stream:
            del stream[at : at + data.draw(st.integers(1, 16))]
        else:  # a hostile length or count anywhere
            value = data.draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**62, 2**64 - 1]))
            stream[at : at + 8] = struct.pack("<Q", value)
    chunks = data.draw(st.lists(st.integers(1, 64), max_size=30))
    got, _error = feed_checked(bytes(stream), chunks)
    intact = []
    end = 0
    for frame in frames:
        end += len(frame)
        if end > damage:
            break
        intact.append(frame)
    assert as_tuples(got[: len(intact)]) == decode_whole(intact)


@FUZZ
@given(a=batches_st, b=batches_st, data=st.data())
def test_interleaved_writers(a: list[list[bytes]], b: list[list[bytes]],
                             data: st.DataObject) -> None:
    """Two writers' bytes interleaved at arbitrary points (what a missing write lock
    would produce): only FrameError or frames, never a crash or a hang."""
    x = b"".join(encode_items(batch) for batch in a)
    y = b"".join(encode_items(batch) for batch in b)
    out = bytearray(encode(Kind.READY))
    i = j = 0
    while i < len(x) or j < len(y):
        take = data.draw(st.integers(1, 40))
        if data.draw(st.booleans()) and i < len(x):
            out += x[i : i + take]
            i += take
        elif j < len(y):
            out += y[j : j + take]
            j += take
        else:
            out += x[i : i + take]
            i += take
    chunks = data.draw(st.lists(st.integers(1, 64), max_size=30))
    frames, error = feed_checked(bytes(out), chunks)
    if error is None:  # interleaving only at frame boundaries is still a valid stream
        assert all(f.kind in (Kind.READY, Kind.ITEMS) for f in frames)
        for f in frames:
            if f.kind is Kind.ITEMS:
                assert sum(len(p) for p in f.item_payloads()) + 8 * f.count == len(f.body)


@FUZZ
@given(batches=batches_st, final=final_st, data=st.data())
def test_truncated_stream(batches: list[list[bytes]], final: Kind, data: st.DataObject) -> None:
    """A stream cut anywhere (the writer died) decodes to exactly its complete frames;
    ``pending`` counts the torn tail and no error is raised."""
    frames = valid_frames(batches, final)
    stream = b"".join(frames)
    cut = data.draw(st.integers(0, len(stream)))
    decoder = FrameDecoder()
    chunks = data.draw(st.lists(st.integers(1, 64), max_size=30))
    got: list[Frame] = []
    pos = 0
    for size in [*chunks, len(stream)]:
        if pos >= cut:
            break
        got.extend(decoder.feed(stream[pos : min(cut, pos + size)]))
        pos = min(cut, pos + size)
    complete, end = [], 0
    for frame in frames:
        if end + len(frame) > cut:
            break
        end += len(frame)
        complete.append(frame)
    assert as_tuples(got) == decode_whole(complete)
    assert decoder.pending == cut - end


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(list(Kind)),
    count=st.integers(0, 2**32 - 1),
    body_len=st.integers(0, 2**64 - 1),
    fed=st.integers(0, 256 << 10),
)
def test_hostile_header_never_allocates_ahead(kind: Kind, count: int, body_len: int,
                                              fed: int) -> None:
    """Any header (huge body length, huge item count) followed by some bytes: the decoder
    raises FrameError or buffers; its memory stays within a small multiple of the bytes
    given, and it answers at once."""
    header = HEADER.pack(MAGIC, kind, 0, count, body_len)
    decoder = FrameDecoder()
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        try:
            decoder.feed(header)
            for _ in range(4):
                decoder.feed(b"\x01" * (fed // 4))
        except FrameError:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - t0 < 5
    assert peak < 4 * (HEADER_SIZE + fed) + (64 << 10), (peak, fed)
    assert decoder.pending <= HEADER_SIZE + fed
    if body_len > DEFAULT_MAX_FRAME_BYTES:
        assert decoder.pending == 0  # refused from the header alone


@settings(max_examples=200, deadline=None)
@given(count=st.integers(2, 64), lengths=st.lists(st.integers(0, 2**64 - 1), min_size=64,
                                                  max_size=64),
       tail=st.binary(max_size=64))
def test_hostile_item_lengths(count: int, lengths: list[int], tail: bytes) -> None:
    """An ITEMS frame whose length table lies (sums that overflow, zero lengths, lengths
    past the body) raises FrameError at decode time: item_payloads() is never handed a
    table that does not add up."""
    table = struct.pack(f"<{count}Q", *lengths[:count])
    body = table + tail
    frame = HEADER.pack(MAGIC, Kind.ITEMS, 0, count, len(body)) + body
    ok = sum(lengths[:count]) == len(tail) and 0 not in lengths[:count]
    try:
        (decoded,) = FrameDecoder().feed(frame)
    except FrameError:
        assert not ok
        return
    assert ok
    assert b"".join(bytes(p) for p in decoded.item_payloads()) == tail


@pytest.mark.timeout(30)
def test_large_garbage_is_refused_fast() -> None:
    """64 MiB of random bytes in 1 MiB reads: refused at the first header, in well under
    a second of decoder time (no quadratic re-scan)."""
    import random

    rng = random.Random(7)
    chunk = rng.randbytes(1 << 20)
    decoder = FrameDecoder()
    t0 = time.monotonic()
    with pytest.raises(FrameError):
        for _ in range(64):
            decoder.feed(chunk)
    assert time.monotonic() - t0 < 2


@pytest.mark.timeout(60)
def test_big_declared_frame_fed_in_small_reads_is_linear() -> None:
    """A 64 MiB frame arriving in 64 KiB reads costs time linear in its size: the decoder
    does not copy its whole buffer at every read."""
    body = b"r" * (64 << 20)
    data = encode(Kind.RESULT, body)
    decoder = FrameDecoder()
    t0 = time.monotonic()
    frames: list[Frame] = []
    step = 64 << 10
    for pos in range(0, len(data), step):
        frames.extend(decoder.feed(data[pos : pos + step]))
    elapsed = time.monotonic() - t0
    assert len(frames) == 1 and len(frames[0].body) == len(body)
    assert elapsed < 10, elapsed


def test_limits_are_what_the_docs_say() -> None:
    """The constants the design doc quotes."""
    assert DEFAULT_MAX_FRAME_BYTES == 8 << 30
    assert MAX_ITEMS_PER_FRAME == 1 << 16
