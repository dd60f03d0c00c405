"""The item log (``_transport._itemlog``) and the child's Sender writing it: what a
parent recovers after the child died is exactly the items the pipe did not carry whole,
in order, never a duplicate, never a torn or stale record."""

from __future__ import annotations

import os
import pickle
import threading

import pytest

from workstream._child._sender import Sender
from workstream._transport import _fds, _itemlog
from workstream._transport._framing import FrameDecoder, Kind


class _Pipe:
    """A pipe whose read end is drained by a thread (so a Sender never blocks)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.data = bytearray()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while chunk := os.read(self.r, 1 << 16):
            self.data += chunk

    def close(self) -> bytes:
        os.close(self.w)
        self._thread.join(10)
        os.close(self.r)
        return bytes(self.data)


def _items_in(data: bytes) -> list[object]:
    """The items of every complete ITEMS frame in ``data`` (a torn tail is ignored)."""
    frames = FrameDecoder().feed(data)
    return [
        pickle.loads(p) for f in frames if f.kind is Kind.ITEMS for p in f.item_payloads()
    ]


def _sender(pipe: _Pipe, block: bytearray, window: float = 60.0) -> Sender:
    return Sender(pipe.w, window, 1 << 30, block)  # no flusher: writes only when told


@pytest.mark.timeout(10)
def test_unflushed_items_are_recovered_in_order() -> None:
    block = bytearray(_fds.CONTROL_BLOCK_SIZE)
    pipe = _Pipe()
    sender = _sender(pipe, block)
    for i in range(100):
        sender.send_item(i)
    # The first item found the channel idle and went out at once, without the log; the
    # rest wait for the window (60 s) in the log.
    assert _items_in(pipe.close()) == [0]
    assert [pickle.loads(p) for p in _itemlog.recover(block, 1)] == list(range(1, 100))
    assert _itemlog.recover(block, 0) == []  # never a gap: 0 is not in the log


@pytest.mark.timeout(10)
def test_recovery_starts_after_what_the_pipe_delivered() -> None:
    """Several flushes (the halves alternate, each reused after a seal) then items only
    in the log: the pipe's items plus the recovered ones are 0..n-1, exactly once."""
    block = bytearray(_fds.CONTROL_BLOCK_SIZE)
    pipe = _Pipe()
    sender = _sender(pipe, block)
    n = 0
    for batch in (7, 300, 1, 50, 9):
        for _ in range(batch):
            sender.send_item(n)
            n += 1
        sender.flush()
    for _ in range(33):
        sender.send_item(n)
        n += 1
    piped = _items_in(pipe.close())
    recovered = [pickle.loads(p) for p in _itemlog.recover(block, len(piped))]
    assert piped + recovered == list(range(n))
    assert len(recovered) == 33


@pytest.mark.timeout(10)
def test_a_sealed_half_whose_write_was_cut_is_recovered_whole() -> None:
    """The child died while writing a sealed half (a torn frame in the pipe) with more
    items in the active half: both halves are recovered, in order."""
    block = bytearray(_fds.CONTROL_BLOCK_SIZE)
    pipe = _Pipe()
    sender = _sender(pipe, block)
    for i in range(10):
        sender.send_item(i)
    sender.flush()  # 0..9 delivered
    for i in range(10, 25):
        sender.send_item(i)
    # Seal 10..24 as a flush would, but "die" before writing it; then log 25..29.
    sender._seal(False)
    for i in range(25, 30):
        sender.send_item(i)
    assert _items_in(pipe.close()) == list(range(10))
    assert [pickle.loads(p) for p in _itemlog.recover(block, 10)] == list(range(10, 30))


@pytest.mark.timeout(10)
def test_a_torn_record_and_stale_entries_are_never_recovered() -> None:
    """A payload copied without its length (the child died between the two) is not a
    record; nor are the entries a reused half had before its seal."""
    block = bytearray(_fds.CONTROL_BLOCK_SIZE)
    pipe = _Pipe()
    sender = _sender(pipe, block)
    for i in range(40):  # half 0: 40 records
        sender.send_item(i)
    sender.flush()  # half 1 active
    for i in range(40, 45):
        sender.send_item(i)
    sender.flush()  # half 0 active again: its 40 old entries are zeroed
    sender.send_item(45)
    # A torn record: the next pickle lies in the payload area, its length never stored.
    torn = pickle.dumps(46)
    start = _fds.ITEM_LOG_PAYLOAD[0] + len(pickle.dumps(45))
    block[start : start + len(torn)] = torn
    assert _items_in(pipe.close()) == list(range(45))
    assert [pickle.loads(p) for p in _itemlog.recover(block, 45)] == [45]
    assert _itemlog.recover(block, 46) == []


@pytest.mark.timeout(10)
def test_recovery_stops_at_a_gap() -> None:
    """Items the parent never counted cannot be skipped over: if the log starts after
    ``first``, nothing is delivered out of order."""
    block = bytearray(_fds.CONTROL_BLOCK_SIZE)
    pipe = _Pipe()
    sender = _sender(pipe, block)
    for i in range(10):
        sender.send_item(i)
        if i in (4, 9):
            sender.flush()  # the second seal reuses (zeroes) the half of 0..4
    sender.send_item(10)
    pipe.close()
    assert _itemlog.recover(block, 3) == []  # 3 and 4 are no longer in the log
    assert [pickle.loads(p) for p in _itemlog.recover(block, 5)] == list(range(5, 11))
    assert [pickle.loads(p) for p in _itemlog.recover(block, 10)] == [10]


@pytest.mark.timeout(10)
def test_an_item_larger_than_a_half_is_written_alone_and_numbered() -> None:
    """An item too large for the log goes through the pipe before send_item returns,
    and takes its sequence number: what follows it is recovered after it."""
    block = bytearray(_fds.CONTROL_BLOCK_SIZE)
    pipe = _Pipe()
    sender = _sender(pipe, block)
    sender.send_item("a")
    big = b"B" * (_fds.ITEM_LOG_PAYLOAD_BYTES + 1)
    sender.send_item(big)
    sender.send_item("c")
    assert _items_in(pipe.close()) == ["a", big]
    assert [pickle.loads(p) for p in _itemlog.recover(block, 2)] == ["c"]
    assert _itemlog.next_seq(block) == 2  # "c" is logged, not yet flushed


@pytest.mark.timeout(10)
def test_next_seq_after_a_final_flush() -> None:
    """A warm worker's next job numbers its items from the log's next sequence number."""
    block = bytearray(_fds.CONTROL_BLOCK_SIZE)
    pipe = _Pipe()
    sender = _sender(pipe, block)
    for i in range(12):
        sender.send_item(i)
    sender.send_final(Kind.RESULT, pickle.dumps(None), last=False)
    pipe.close()
    assert _itemlog.next_seq(block) == 12
    assert _itemlog.recover(block, 12) == []


@pytest.mark.timeout(10)
def test_items_written_alone_are_not_recovered_again() -> None:
    """Items written alone (the parent waited) stay in the active half as records; after
    a crash only the later, unwritten ones are recovered; a half full of items written
    alone is still sealed and reused (write-through never stalls)."""
    block = bytearray(_fds.CONTROL_BLOCK_SIZE)
    pipe = _Pipe()
    sender = Sender(pipe.w, 0.0, 1 << 30, block)  # write-through: every item alone
    n = _fds.ITEM_LOG_MAX_ITEMS + 10  # more than a half holds
    for i in range(n):
        sender.send_item(i)
    piped = _items_in(pipe.close())
    assert piped == list(range(n))
    assert _itemlog.recover(block, n) == []
    assert _itemlog.next_seq(block) <= n


@pytest.mark.timeout(10)
def test_logged_items_after_items_written_alone_are_recovered() -> None:
    block = bytearray(_fds.CONTROL_BLOCK_SIZE)
    pipe = _Pipe()
    sender = _sender(pipe, block)  # 60 s window
    for i in range(5):
        block[_fds.READER_IDLE] = 1  # the parent waits: each item goes out alone
        sender.send_item(i)
    for i in range(5, 12):
        sender.send_item(i)  # a batch opens: these wait in the log
    assert _items_in(pipe.close()) == list(range(5))
    assert [pickle.loads(p) for p in _itemlog.recover(block, 5)] == list(range(5, 12))
    assert _itemlog.recover(block, 0) == []  # the first 5 skipped the log


@pytest.mark.timeout(10)
def test_writev_all_survives_partial_writes() -> None:
    """A gather larger than the pipe's buffer is written whole, in order, across the
    partial writes of a blocking pipe (the path of a large sealed half)."""
    r, w = _fds.make_pipe(4096)
    parts = [b"h" * 16, bytes(range(256)) * 300, memoryview(b"p" * 70_001)[1:]]
    got = bytearray()

    def read() -> None:
        while chunk := os.read(r, 1000):
            got.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        _fds.writev_all(w, parts)
    finally:
        os.close(w)
        reader.join(10)
        os.close(r)
    assert bytes(got) == b"".join(bytes(p) for p in parts)


@pytest.mark.timeout(10)
def test_a_large_batch_goes_out_as_one_gathered_frame() -> None:
    """A batch of more than 16 KiB of pickles (written with writev) arrives whole."""
    block = bytearray(_fds.CONTROL_BLOCK_SIZE)
    pipe = _Pipe()
    sender = _sender(pipe, block)
    items = [("x" * 1000, i) for i in range(100)]
    for item in items:
        sender.send_item(item)
    sender.flush()
    assert _items_in(pipe.close()) == items
