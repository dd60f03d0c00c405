"""The item stream of one job, as pure code: the bounded buffer between the runner and
the consumer, with its backpressure accounting, and the consumer's cursor.

No lock, no clock, no I/O in here. :class:`StreamBuffer` is shared by two threads, so its
owner (``_supervisor._jobcore.JobCore``) calls it only while holding its lock, and acts on
what it answers (wake the runner, wake consumers). :class:`ItemCursor` belongs to the one
consumer reading at a time (``for item in job``, ``drain()``, ``async for``, the callback
thread; the GUI bridges read through ``drain()``), so it needs no lock at all.

::

    runner ──push(batch, nbytes)──► StreamBuffer ──pop()──► ItemCursor ──next()──► user
              (over_limit: pause        (counts items,         (hands out one item
               reading the pipe)         bytes, discards)       and forgets it)

The cursor forgets every item it hands out (it pops it off the batch): a zero-copy
shared-memory block is reused as soon as the consumer drops its array, so nothing here
may keep a reference to an item the consumer already has.
"""

from __future__ import annotations

import collections
from typing import Final


class _Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


EMPTY: Final = _Marker("EMPTY")
"""What :meth:`ItemCursor.next` and :meth:`ItemCursor.load` give when no item is at hand."""

END: Final = _Marker("END")
"""What :meth:`ItemCursor.load` gives once the stream ended and everything was taken."""


class StreamBuffer:
    """Batches of decoded items waiting for the consumer, and what they count for.

    Not thread-safe: the owner calls every method under its own lock. The runner pushes
    whole batches (one per read of the pipe); the consumer pops whole batches. Reading
    the pipe pauses at the high-water mark (``max_items`` / ``max_bytes``, either one
    reached) and resumes once the consumer brought the buffer down to half of it, so a
    consumer slightly behind does not make the runner stop and start on every batch.
    """

    __slots__ = (
        "_batches", "_max_bytes", "_max_items", "buffered_bytes", "buffered_items",
        "discarding", "ended", "items_discarded", "items_received", "reader_paused",
    )

    def __init__(self, max_items: int | None, max_bytes: int | None) -> None:
        self._batches: collections.deque[tuple[list[object], int]] = collections.deque()
        self._max_items = max_items
        self._max_bytes = max_bytes
        self.buffered_items = 0
        self.buffered_bytes = 0
        self.items_received = 0
        """Items queued for the consumer and not discarded since (the outcome's
        ``items_delivered``)."""
        self.items_discarded = 0
        self.reader_paused = False
        """True iff the runner stopped reading the pipe for backpressure."""
        self.ended = False
        """No batch will come any more (the job's outcome is known)."""
        self.discarding = False
        """A ``cancel(discard=True)`` came: pushed items are counted, never queued."""

    # -- the runner's side ----------------------------------------------------------------

    def push(self, items: list[object], nbytes: int) -> bool:
        """Queue a batch of ``nbytes`` bytes; True if queued, False if counted discarded."""
        if self.discarding:
            self.items_discarded += len(items)
            return False
        self._batches.append((items, nbytes))
        self.buffered_items += len(items)
        self.buffered_bytes += nbytes
        self.items_received += len(items)
        return True

    def count_discarded(self, n: int) -> None:
        """``n`` items were dropped before they reached the buffer."""
        self.items_discarded += n

    def end(self) -> None:
        """No more batches: once the buffer is empty, :meth:`pop` says the stream ended."""
        self.ended = True

    def update_paused(self, cancelling: bool) -> bool:
        """Decide whether the runner reads the pipe now; return True to pause.

        It pauses when the buffer is at its bound, unless a cancel is on the way (the
        channel must then be drained for the child to see it and end).
        """
        self.reader_paused = not cancelling and self._at_high_water()
        return self.reader_paused

    # -- the consumer's side --------------------------------------------------------------

    def pop(self) -> list[object] | None:
        """Take the oldest batch; None if there is none (look at :attr:`ended`)."""
        if not self._batches:
            return None
        items, nbytes = self._batches.popleft()
        self.buffered_items -= len(items)
        self.buffered_bytes -= nbytes
        return items

    def may_resume(self) -> bool:
        """True if the runner paused reading and the buffer is down to half its bound:
        the owner wakes the runner to read again."""
        return self.reader_paused and not self._over_low_water()

    def discard(self) -> None:
        """``cancel(discard=True)``: drop what is buffered and every later batch."""
        self.discarding = True
        while self._batches:
            items, _ = self._batches.popleft()
            self.items_discarded += len(items)
            self.items_received -= len(items)
        self.buffered_items = 0
        self.buffered_bytes = 0

    def count_taken_but_discarded(self, n: int) -> None:
        """The consumer had taken ``n`` items that a discard dropped before it saw them."""
        self.items_discarded += n
        self.items_received -= n

    # -- the bounds -----------------------------------------------------------------------

    def _at_high_water(self) -> bool:
        return (self._max_items is not None and self.buffered_items >= self._max_items) or (
            self._max_bytes is not None and self.buffered_bytes >= self._max_bytes
        )

    def _over_low_water(self) -> bool:
        return (
            self._max_items is not None and self.buffered_items > self._max_items // 2
        ) or (self._max_bytes is not None and self.buffered_bytes > self._max_bytes // 2)


class ItemCursor:
    """The consumer's place in the batch it took: hands out one item at a time.

    Owned by one consumer at a time (its owner makes sure), so it has no lock. The batch
    at hand is kept reversed and handed out with ``list.pop()``, so the cursor holds no
    item it handed out (and an item costs one C call). After :meth:`discard`
    (``cancel(discard=True)``, from any thread: it only sets a flag) the consumer's next
    call drops the rest of the batch.

    It is an iterator too: ``__next__`` hands out the batch at hand and, at its end,
    asks :meth:`_refill` (which a subclass defines: take and :meth:`load` the next batch,
    blocking if need be) for what comes next. So ``for item in cursor`` costs one
    Python call per item, the loop's own.
    """

    __slots__ = ("_discard", "_rest")

    def __init__(self) -> None:
        self._rest: list[object] = []  # the batch at hand, last item first
        self._discard = False

    def __iter__(self) -> ItemCursor:
        return self

    def __next__(self) -> object:
        rest = self._rest
        if rest and not self._discard:
            return rest.pop()
        item = self._refill()
        if item is END:
            raise StopIteration
        return item

    def _refill(self) -> object:
        """The first item of the next batch, or :data:`END`; called by ``__next__``
        once the batch at hand is used up (or discarded). This base has no source."""
        return END

    def next(self) -> object:
        """The next item of the batch at hand, or :data:`EMPTY` (take a new batch, then
        :meth:`load` it; first call :meth:`drop_discarded` if :attr:`discarded`)."""
        rest = self._rest
        if rest and not self._discard:
            return rest.pop()
        return EMPTY

    def load(self, batch: list[object] | None) -> object:
        """Make ``batch`` (as taken from the buffer; the cursor owns it now) the one at
        hand and return its first item; :data:`END` for None (the stream ended),
        :data:`EMPTY` for ``[]``."""
        if batch is None:
            self._rest = []
            return END
        if not batch:
            return EMPTY
        batch.reverse()
        self._rest = batch
        return batch.pop()

    def take_rest(self) -> list[object]:
        """Hand out every item left in the batch at hand, in order (``drain()``)."""
        rest = self._rest
        self._rest = []
        out = rest[::-1]
        rest.clear()  # another holder of the list (a traceback's frame) keeps no item
        return out

    @property
    def left(self) -> int:
        """How many items of the batch at hand are not handed out yet."""
        return len(self._rest)

    def discard(self) -> None:
        """Drop the rest of the batch at the consumer's next call (safe from any thread:
        only a flag is set; the flag stays, as the discard it mirrors)."""
        self._discard = True

    @property
    def discarded(self) -> bool:
        return self._discard

    def drop_discarded(self) -> int:
        """Drop the rest of the batch after :meth:`discard`; return how many items."""
        n = len(self._rest)
        self._rest.clear()
        self._rest = []
        return n
