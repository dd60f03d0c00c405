"""The wire format (``workstream._transport._framing``): pure unit and property tests.

No processes: frames are encoded, cut, fed back and compared. Malformed input must raise
:class:`FrameError` (and the decoder then stays broken), and a hostile length prefix must
never make the decoder hold more than the bytes it was actually given.
"""

from __future__ import annotations

import itertools
import os
import pickle
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workstream._child._sender import Sender
from workstream._transport import _framing
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
    encode_one_item,
)

# Pure functions: no processes, threads or signals. Skipping the leak check keeps these
# tests independent of other processes that create /dev/shm entries meanwhile.
pytestmark = pytest.mark.no_leak_check


def _header(kind: int, count: int, body_len: int, magic: bytes = MAGIC, flags: int = 0) -> bytes:
    return HEADER.pack(magic, kind, flags, count, body_len)


def _simple(frames: list[Frame]) -> list[tuple[Kind, int, bytes]]:
    return [(f.kind, f.count, bytes(f.body)) for f in frames]


def _feed_all(decoder: FrameDecoder, pieces: list[bytes]) -> list[Frame]:
    out: list[Frame] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    return out


def _stream(item_batches: list[list[bytes]], final: Kind = Kind.RESULT) -> bytes:
    parts = [encode(Kind.READY)]
    parts += [encode_items(batch) for batch in item_batches]
    parts.append(encode(final, b"final-body"))
    return b"".join(parts)


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_header_layout() -> None:
    """The header is 16 bytes: magic, kind, flags, count (u32), body length (u64), LE."""
    assert HEADER_SIZE == 16
    expected = b"WS\x03\x00" + b"\x00" * 4 + struct.pack("<Q", 3) + b"abc"
    assert encode(Kind.RESULT, b"abc") == expected
    assert encode(Kind.READY) == b"WS\x01\x00" + b"\x00" * 12


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", [Kind.READY, Kind.RESULT, Kind.ERROR, Kind.CANCELLED])
def test_single_payload_round_trip(kind: Kind) -> None:
    """A single-payload frame decodes to its kind, count 0 and its body."""
    body = b"" if kind is Kind.READY else b"payload-\x00\xff"
    decoder = FrameDecoder()
    frames = decoder.feed(encode(kind, body))
    assert _simple(frames) == [(kind, 0, body)]
    assert decoder.pending == 0
    assert decoder.frames_decoded == 1
    assert decoder.ended is (kind is not Kind.READY)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "payloads",
    [[b"x"], [b"a", b"bc", b"def"], [bytes([i]) * (i + 1) for i in range(200)], [b"z" * 70_000]],
    ids=["one", "three", "two-hundred", "one-big"],
)
def test_items_round_trip(payloads: list[bytes]) -> None:
    """An ITEMS frame decodes to its count and splits back into the exact payloads."""
    decoder = FrameDecoder()
    (frame,) = decoder.feed(encode_items(payloads))
    assert frame.kind is Kind.ITEMS
    assert frame.count == len(payloads)
    assert [bytes(p) for p in frame.item_payloads()] == payloads
    assert decoder.ended is False


@pytest.mark.timeout(10)
def test_encode_one_item_matches_encode_items() -> None:
    """The one-item fast path produces exactly the bytes of the general encoder."""
    for payload in (b"a", b"\x80\x05K\x01.", b"q" * 10_000):
        assert encode_one_item(payload) == encode_items([payload])


@pytest.mark.timeout(30)
def test_largest_item_count_is_accepted() -> None:
    """An ITEMS frame with exactly MAX_ITEMS_PER_FRAME items decodes; one more is refused."""
    payloads = [b"p"] * MAX_ITEMS_PER_FRAME
    (frame,) = FrameDecoder().feed(encode_items(payloads))
    assert frame.count == MAX_ITEMS_PER_FRAME
    assert len(frame.item_payloads()) == MAX_ITEMS_PER_FRAME
    with pytest.raises(FrameError, match="ITEMS frame with count"):
        FrameDecoder().feed(encode_items([*payloads, b"q"]))


@pytest.mark.timeout(10)
def test_feed_byte_by_byte() -> None:
    """Feeding a stream one byte at a time gives the same frames as feeding it whole."""
    data = _stream([[b"a", b"bb"], [b"ccc"], [bytes(range(256))]])
    whole = _simple(FrameDecoder().feed(data))
    decoder = FrameDecoder()
    got = _feed_all(decoder, [data[i : i + 1] for i in range(len(data))])
    assert _simple(got) == whole
    assert [k for k, _, _ in whole] == [Kind.READY, Kind.ITEMS, Kind.ITEMS, Kind.ITEMS,
                                        Kind.RESULT]
    assert decoder.pending == 0
    assert decoder.ended is True


@pytest.mark.timeout(10)
def test_many_frames_in_one_chunk() -> None:
    """One chunk holding thousands of frames decodes to all of them, in order."""
    batches = [[f"item-{i}-{j}".encode() for j in range(i % 5 + 1)] for i in range(3000)]
    decoder = FrameDecoder()
    frames = decoder.feed(_stream(batches))
    assert len(frames) == 3002
    items = [bytes(p) for f in frames[1:-1] for p in f.item_payloads()]
    assert items == [p for batch in batches for p in batch]
    assert decoder.frames_decoded == 3002
    assert decoder.pending == 0


@pytest.mark.timeout(10)
def test_pending_counts_a_partial_frame() -> None:
    """pending is the number of buffered bytes of an incomplete frame (a torn tail)."""
    frame = encode_items([b"abcdef", b"gh"])
    decoder = FrameDecoder()
    assert decoder.feed(frame[:5]) == []
    assert decoder.pending == 5
    assert decoder.feed(frame[5:20]) == []
    assert decoder.pending == 20
    (done,) = decoder.feed(frame[20:] + frame[:3])
    assert [bytes(p) for p in done.item_payloads()] == [b"abcdef", b"gh"]
    assert decoder.pending == 3


@pytest.mark.timeout(10)
def test_bodies_are_views_of_the_fed_bytes() -> None:
    """Frame bodies equal the encoded bodies whatever buffer they are views of."""
    data = encode(Kind.READY) + encode(Kind.RESULT, b"result")
    decoder = FrameDecoder()
    first = decoder.feed(data[:20])
    second = decoder.feed(data[20:])
    assert _simple(first + second) == [(Kind.READY, 0, b""), (Kind.RESULT, 0, b"result")]


# -- properties -----------------------------------------------------------------------------

payload_st = st.binary(min_size=1, max_size=300)
batches_st = st.lists(st.lists(payload_st, min_size=1, max_size=8), max_size=12)
final_st = st.sampled_from([Kind.RESULT, Kind.ERROR, Kind.CANCELLED])


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None)
@given(batches=batches_st, final=final_st, data=st.data())
def test_any_split_decodes_to_the_same_frames(
    batches: list[list[bytes]], final: Kind, data: st.DataObject
) -> None:
    """However a valid stream is cut into chunks, the decoder yields the same frames."""
    stream = _stream(batches, final)
    cuts = sorted(
        data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=40))
    )
    bounds = [0, *cuts, len(stream)]
    pieces = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    decoder = FrameDecoder()
    got = _simple(_feed_all(decoder, pieces))
    expected = [(Kind.READY, 0, b"")]
    expected += [(Kind.ITEMS, len(b), b"".join([struct.pack(f"<{len(b)}Q", *map(len, b)), *b]))
                 for b in batches]
    expected.append((final, 0, b"final-body"))
    assert got == expected
    assert decoder.pending == 0
    assert decoder.ended is True
    items = [bytes(p) for f in _feed_all(FrameDecoder(), [stream])[1:-1] for p in f.item_payloads()]
    assert items == [p for b in batches for p in b]


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None)
@given(prefix=st.binary(max_size=64), junk=st.binary(min_size=1, max_size=200),
       chunk=st.integers(min_value=1, max_value=50))
def test_arbitrary_bytes_raise_only_frame_error(prefix: bytes, junk: bytes, chunk: int) -> None:
    """Whatever bytes arrive, the decoder returns frames, buffers, or raises FrameError,
    never another exception, and never holds more than it was given."""
    data = encode(Kind.READY) + prefix + junk
    decoder = FrameDecoder()
    fed = 0
    try:
        for i in range(0, len(data), chunk):
            piece = data[i : i + chunk]
            decoder.feed(piece)
            fed += len(piece)
            assert decoder.pending <= fed
    except FrameError:
        with pytest.raises(FrameError):
            decoder.feed(encode(Kind.READY))


# -- malformed input ------------------------------------------------------------------------

MALFORMED = [
    # (id, bytes, message fragment)
    ("bad-magic", _header(Kind.READY, 0, 0, magic=b"XX"), "bad magic b'XX'"),
    ("kind-zero", _header(0, 0, 0), "unknown frame kind 0"),
    ("kind-unknown", _header(9, 0, 0), "unknown frame kind 9"),
    ("flags", _header(Kind.READY, 0, 0, flags=1), "unknown flags 0x01"),
    ("items-count-zero", _header(Kind.ITEMS, 0, 8) + b"\x00" * 8, "ITEMS frame with count 0"),
    ("items-count-over-limit", _header(Kind.ITEMS, MAX_ITEMS_PER_FRAME + 1, 1 << 30),
     f"ITEMS frame with count {MAX_ITEMS_PER_FRAME + 1}"),
    ("items-count-u32-max", _header(Kind.ITEMS, 2**32 - 1, 1 << 30),
     f"ITEMS frame with count {2**32 - 1}"),
    ("items-lengths-do-not-fit", _header(Kind.ITEMS, 3, 16), "3 items cannot fit in 16 bytes"),
    ("count-on-result", _header(Kind.RESULT, 1, 0), "count 1 on a RESULT frame"),
    ("count-on-ready", _header(Kind.READY, 7, 0), "count 7 on a READY frame"),
    ("one-item-length-short", _header(Kind.ITEMS, 1, 8 + 6) + struct.pack("<Q", 5) + b"abcdef",
     "item length does not match the body"),
    ("one-item-length-long", _header(Kind.ITEMS, 1, 8 + 3) + struct.pack("<Q", 9) + b"abc",
     "item length does not match the body"),
    ("one-item-empty", _header(Kind.ITEMS, 1, 8) + struct.pack("<Q", 0),
     "item length does not match the body"),
    ("items-lengths-do-not-add-up",
     _header(Kind.ITEMS, 2, 16 + 7) + struct.pack("<2Q", 3, 3) + b"abcdefg",
     "item lengths do not add up to the body"),
    ("items-lengths-overflow",
     _header(Kind.ITEMS, 2, 16 + 2) + struct.pack("<2Q", 2**64 - 1, 3) + b"ab",
     "item lengths do not add up to the body"),
    ("items-empty-payload",
     _header(Kind.ITEMS, 2, 16 + 3) + struct.pack("<2Q", 0, 3) + b"abc",
     "empty item payload"),
    ("huge-length", _header(Kind.ITEMS, 1, 2**62), "exceeds the limit"),
    ("huge-result", _header(Kind.RESULT, 0, 2**64 - 1), "exceeds the limit"),
    ("frame-after-final", encode(Kind.RESULT, b"r") + encode(Kind.READY),
     "frame #2: bytes after the final frame"),
    ("result-after-error", encode(Kind.ERROR, b"e") + encode(Kind.RESULT, b"r"),
     "bytes after the final frame"),
    ("items-after-cancelled", encode(Kind.CANCELLED, b"c") + encode_items([b"x"]),
     "bytes after the final frame"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("data", "fragment"), [pytest.param(*row[1:], id=row[0]) for row in MALFORMED]
)
def test_malformed_input_raises_frame_error(data: bytes, fragment: str) -> None:
    """Malformed bytes raise FrameError naming the problem, at the feed that completes
    the bad header (or frame); the decoder then stays broken."""
    decoder = FrameDecoder()
    with pytest.raises(FrameError) as info:
        decoder.feed(data)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)
    for later in (encode(Kind.READY), b"", b"W"):
        with pytest.raises(FrameError) as again:
            decoder.feed(later)
        assert again.value is info.value


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("data", "fragment"), [pytest.param(*row[1:], id=row[0]) for row in MALFORMED]
)
def test_malformed_input_fed_byte_by_byte(data: bytes, fragment: str) -> None:
    """The same malformed bytes fed one at a time raise the same FrameError, no later
    than the byte that completes the bad part."""
    decoder = FrameDecoder()
    with pytest.raises(FrameError) as info:
        for i in range(len(data)):
            decoder.feed(data[i : i + 1])
    assert fragment in str(info.value)


@pytest.mark.timeout(10)
def test_error_carries_the_good_frames_of_the_same_chunk() -> None:
    """The valid frames before a bad one in the same feed come with the FrameError (so
    they can still be delivered), and the error names the bad frame's position."""
    decoder = FrameDecoder()
    data = encode(Kind.READY) + encode_items([b"ok"]) + _header(Kind.ITEMS, 0, 0)
    with pytest.raises(FrameError, match=r"frame #3: ITEMS frame with count 0") as info:
        decoder.feed(data)
    assert _simple(info.value.frames) == [
        (Kind.READY, 0, b""),
        (Kind.ITEMS, 1, struct.pack("<Q", 2) + b"ok"),
    ]
    assert decoder.frames_decoded == 2


@pytest.mark.timeout(10)
def test_error_in_a_later_feed_carries_no_earlier_frames() -> None:
    """A FrameError carries only the frames of the feed that failed, not those returned
    by earlier feeds."""
    decoder = FrameDecoder()
    assert len(decoder.feed(encode(Kind.READY) + encode_items([b"ok"]))) == 2
    with pytest.raises(FrameError) as info:
        decoder.feed(_header(Kind.ITEMS, 0, 0))
    assert info.value.frames == []


@pytest.mark.timeout(10)
def test_custom_frame_limit() -> None:
    """A body larger than max_frame_bytes is refused from its header alone."""
    decoder = FrameDecoder(max_frame_bytes=100)
    assert decoder.feed(encode(Kind.RESULT, b"r" * 100))[0].body == b"r" * 100
    decoder = FrameDecoder(max_frame_bytes=100)
    with pytest.raises(FrameError, match="body of 101 bytes exceeds the limit of 100"):
        decoder.feed(_header(Kind.RESULT, 0, 101))
    assert DEFAULT_MAX_FRAME_BYTES == 8 << 30


@pytest.mark.timeout(30)
def test_huge_declared_length_buffers_only_what_was_fed() -> None:
    """A frame that declares a 4 GiB body (under the limit) is buffered as it arrives: the
    decoder's memory stays proportional to the bytes fed, not to the declared length."""
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        assert decoder.feed(_header(Kind.RESULT, 0, 4 << 30)) == []
        chunk = b"\x00" * (64 << 10)
        for _ in range(64):  # 4 MiB in all
            assert decoder.feed(chunk) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoder.pending == HEADER_SIZE + (4 << 20)
    assert peak < 16 << 20


@pytest.mark.timeout(10)
def test_stray_frame_after_final_split_across_feeds() -> None:
    """A frame after the final one is refused even when it arrives in a later feed."""
    decoder = FrameDecoder()
    assert _simple(decoder.feed(encode(Kind.RESULT, b"r"))) == [(Kind.RESULT, 0, b"r")]
    assert decoder.ended is True
    with pytest.raises(FrameError, match="bytes after the final frame"):
        decoder.feed(encode(Kind.READY))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("together", [True, False], ids=["same-feed", "later-feed"])
def test_any_byte_after_the_final_frame_is_refused(together: bool) -> None:
    """Even a single byte after the final frame raises FrameError (nothing may follow it)."""
    decoder = FrameDecoder()
    final = encode(Kind.RESULT, b"r")
    with pytest.raises(FrameError, match="frame #2: bytes after the final frame"):
        if together:
            decoder.feed(final + b"W")
        else:
            assert _simple(decoder.feed(final)) == [(Kind.RESULT, 0, b"r")]
            decoder.feed(b"W")


@pytest.mark.timeout(10)
def test_sender_never_writes_more_items_per_frame_than_the_decoder_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every frame the child's Sender writes is accepted by the parent's decoder, however
    many items pile up in one batch (the limit is lowered to 100 to keep it cheap)."""
    monkeypatch.setattr(_framing, "MAX_ITEMS_PER_FRAME", 100)
    r, w = os.pipe()
    try:
        sender = Sender(w, 60.0, 1 << 30)  # no flusher thread: nothing is written early
        for i in range(250):
            sender.send_item(i)
        sender.send_final(Kind.RESULT, b"done")
        os.close(w)
        w = -1
        data = b""
        while chunk := os.read(r, 1 << 16):
            data += chunk
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    frames = FrameDecoder().feed(data)
    counts = [f.count for f in frames if f.kind is Kind.ITEMS]
    assert sum(counts) == 250
    assert max(counts) <= 100
    items = [bytes(p) for f in frames if f.kind is Kind.ITEMS for p in f.item_payloads()]
    assert [pickle.loads(p) for p in items] == list(range(250))
    assert frames[-1].kind is Kind.RESULT
