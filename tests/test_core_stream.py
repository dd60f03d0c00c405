"""The pure stream (``_core._stream``): the bounded buffer's accounting and the cursor
that forgets each item it hands out. Unit tests: no process, no thread, no clock."""

from __future__ import annotations

import gc
import weakref

import pytest

from workstream._core._stream import EMPTY, END, ItemCursor, StreamBuffer


class Item:
    """An object that can be watched with a weak reference."""

    def __init__(self, n: int) -> None:
        self.n = n


@pytest.mark.timeout(10)
def test_the_cursor_forgets_every_item_it_hands_out() -> None:
    """Once handed out, an item lives only as long as the consumer keeps it, although
    the rest of its batch is still at hand (a shared-memory block is then reused)."""
    items = [Item(i) for i in range(4)]
    refs = [weakref.ref(x) for x in items]
    cursor = ItemCursor()
    first = cursor.load(items)
    del items
    assert isinstance(first, Item) and first.n == 0
    del first
    assert refs[0]() is None
    second = cursor.next()
    assert isinstance(second, Item) and second.n == 1
    del second
    assert refs[1]() is None
    rest = cursor.take_rest()
    assert [x.n for x in rest] == [2, 3]  # type: ignore[attr-defined]
    del rest
    gc.collect()
    assert all(r() is None for r in refs)


@pytest.mark.timeout(10)
def test_the_cursor_answers_empty_and_end() -> None:
    """An empty batch is EMPTY, None (the end) is END, an exhausted batch is EMPTY."""
    cursor = ItemCursor()
    assert cursor.next() is EMPTY
    assert cursor.load([]) is EMPTY
    assert cursor.load(["a"]) == "a"
    assert cursor.next() is EMPTY and cursor.left == 0
    assert cursor.load(None) is END
    assert cursor.next() is EMPTY


@pytest.mark.timeout(10)
def test_a_discard_drops_the_rest_of_the_batch_at_hand() -> None:
    """After discard() the cursor hands out nothing more of its batch; drop_discarded()
    says how many items it dropped (they count as discarded, not delivered)."""
    cursor = ItemCursor()
    assert cursor.load([1, 2, 3, 4]) == 1
    cursor.discard()
    assert cursor.discarded and cursor.next() is EMPTY
    assert cursor.drop_discarded() == 3
    assert cursor.left == 0


@pytest.mark.timeout(10)
def test_the_buffer_counts_items_and_bytes_and_pauses_at_its_bound() -> None:
    """Reading pauses at either bound and resumes only once the consumer brought the
    buffer down to half of it; a cancel on the way never pauses it."""
    buf = StreamBuffer(max_items=4, max_bytes=None)
    assert buf.push([1, 2], 20) and not buf.update_paused(cancelling=False)
    assert buf.push([3, 4], 20) and buf.update_paused(cancelling=False)
    assert (buf.buffered_items, buf.buffered_bytes, buf.items_received) == (4, 40, 4)
    assert not buf.update_paused(cancelling=True)  # the channel must drain to end
    assert buf.update_paused(cancelling=False)
    assert buf.pop() == [1, 2]
    assert buf.may_resume()  # down to 2 of 4: half the bound
    assert buf.pop() == [3, 4] and buf.pop() is None
    assert (buf.buffered_items, buf.buffered_bytes) == (0, 0)
    by_bytes = StreamBuffer(max_items=None, max_bytes=100)
    by_bytes.push([1], 40)
    assert not by_bytes.update_paused(cancelling=False)
    by_bytes.push([2], 60)
    assert by_bytes.update_paused(cancelling=False)
    by_bytes.pop()
    assert not by_bytes.may_resume()  # 60 bytes left: over half of 100
    by_bytes.pop()
    assert by_bytes.may_resume()
    unbounded = StreamBuffer(max_items=None, max_bytes=None)
    unbounded.push(list(range(10_000)), 1 << 30)
    assert not unbounded.update_paused(cancelling=False)


@pytest.mark.timeout(10)
def test_low_water_keeps_a_paused_reader_paused_until_half_empty() -> None:
    """With 10 items buffered at a bound of 10, taking 4 leaves 6 (> 5): no resume yet."""
    buf = StreamBuffer(max_items=10, max_bytes=None)
    for i in range(5):
        buf.push([i, i], 2)
    assert buf.update_paused(cancelling=False)
    buf.pop()
    buf.pop()
    assert not buf.may_resume()
    buf.pop()
    assert buf.may_resume()


@pytest.mark.timeout(10)
def test_discard_drops_the_buffer_and_every_later_batch() -> None:
    """A discard empties the buffer (what was received counts as discarded instead)
    and later pushes are counted, not queued; the end is still seen."""
    buf = StreamBuffer(max_items=None, max_bytes=None)
    buf.push([1, 2, 3], 30)
    buf.discard()
    assert (buf.items_received, buf.items_discarded, buf.buffered_bytes) == (0, 3, 0)
    assert buf.push([4], 10) is False
    buf.count_discarded(2)
    buf.count_taken_but_discarded(0)
    assert (buf.items_received, buf.items_discarded) == (0, 6)
    assert buf.pop() is None and not buf.ended
    buf.end()
    assert buf.ended and buf.pop() is None


@pytest.mark.timeout(10)
def test_items_taken_but_dropped_move_from_received_to_discarded() -> None:
    """The consumer had taken a batch and saw one item when a discard came: the two
    unseen items are not delivered."""
    buf = StreamBuffer(max_items=None, max_bytes=None)
    buf.push([1, 2, 3], 3)
    cursor = ItemCursor()
    assert cursor.load(buf.pop()) == 1
    cursor.discard()
    buf.count_taken_but_discarded(cursor.drop_discarded())
    assert (buf.items_received, buf.items_discarded) == (1, 2)
