"""Shared-memory blocks for large buffers: the arena, the child's pool, the parent's table.

Bytes only: no pickling, nothing of ours imported. One *arena* per job: a memfd (no name
anywhere in the file system, so no other user can open it and nothing is left in
``/dev/shm`` whatever happens) of ``STATE_BYTES + pool_bytes``, created by the parent
and passed to the child like the control block. Its size is set once (a sparse file:
pages are allocated on first write, freed when the last mapping and fd are gone)::

    offset 0              MAX_SLOTS state bytes, one per slot
    offset DONE_OFFSET    u64: out-of-band bytes the parent has decoded or dropped
    offset STATE_BYTES    blocks, page aligned, carved by the child as it needs them

State byte of slot ``i``: 0 = free (the child may write the block), 1 = in use (the
child wrote it and sent a descriptor; the parent has not finished with it). Only the
child sets 1 (on a free slot) and only the parent sets 0 (on a used slot), so the two
never race on a byte. A slot is tied to one block (offset, capacity) for the whole job.
The parent alone writes the u64 counter; the child compares it with what it sent to
bound the bytes still in the pipe (see :meth:`BlockPool.in_flight`).

Item payload with out-of-band buffers (an ordinary item is a plain protocol-5 pickle,
whose first byte is always 0x80)::

    0      1    MARK (0x00: never the first byte of a pickle)
    1      4    n, the number of buffers (u32)
    5      20n  n descriptors (slot u32, offset u64, length u64), in pickle's buffer order
    5+20n  ...  the pickle, made with ``buffer_callback`` (its big buffers are outside)

The parent maps the arena once, through libc's ``mmap`` rather than :mod:`mmap`: a
Python ``mmap`` object keeps a duplicate of the fd open for as long as it lives, and an
array the user keeps after the job ended must not keep a descriptor open. The mapping
is unmapped when the table is closed *and* the last buffer built on it is gone.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import sys
import threading
import weakref
from typing import Any

PAGE = mmap.PAGESIZE
STATE_BYTES = PAGE  # one page of state bytes
MAX_SLOTS = STATE_BYTES - 64
DONE_OFFSET = MAX_SLOTS
_DONE = struct.Struct("<Q")
MARK = 0
_COUNT = struct.Struct("<BI")
DESCRIPTOR = struct.Struct("<IQQ")
_FREE, _USED = 0, 1
_MIN_BLOCK = 64 << 10

Descriptor = tuple[int, int, int]  # (slot, offset, length)


def supported() -> bool:
    """True where arenas work here: memfd and a libc ``mmap`` reachable through ctypes."""
    return hasattr(os, "memfd_create") and _libc() is not None


def create_arena(pool_bytes: int) -> int:
    """Create a job's arena (a memfd, close-on-exec) for ``pool_bytes`` of blocks.

    Returns the fd; the caller owns it. Raises OSError if the kernel refuses.
    """
    fd = os.memfd_create("workstream-arrays", os.MFD_CLOEXEC)
    try:
        os.fchmod(fd, 0o600)  # no name to open it by; and /proc/<pid>/fd/N is ours only
        os.ftruncate(fd, STATE_BYTES + pool_bytes)
    except BaseException:
        os.close(fd)
        raise
    return fd


def block_capacity(n: int) -> int:
    """Capacity of a new block for an ``n``-byte buffer: the next power of two, at least
    64 KiB (a few size classes, so blocks of a stream of similar arrays get reused)."""
    cap = _MIN_BLOCK
    while cap < n:
        cap <<= 1
    return cap


def encode_payload(descriptors: list[Descriptor], pickled: bytes) -> bytes:
    """Return the item payload carrying ``descriptors`` and the in-band pickle."""
    parts = [_COUNT.pack(MARK, len(descriptors))]
    parts.extend(DESCRIPTOR.pack(*d) for d in descriptors)
    parts.append(pickled)
    return b"".join(parts)


def is_out_of_band(payload: bytes | memoryview) -> bool:
    """True if ``payload`` is an item with out-of-band buffers (see the module docstring)."""
    return len(payload) > 0 and payload[0] == MARK


def decode_payload(payload: bytes | memoryview) -> tuple[list[Descriptor], memoryview]:
    """Split an out-of-band payload into its descriptors and the pickle.

    Raises ValueError if the payload is malformed (the bounds of each descriptor are
    checked by :meth:`BlockTable.buffers`).
    """
    view = memoryview(payload)
    if len(view) < _COUNT.size:
        raise ValueError("out-of-band item payload shorter than its header")
    mark, n = _COUNT.unpack_from(view, 0)
    end = _COUNT.size + n * DESCRIPTOR.size
    if mark != MARK or n == 0 or end > len(view):
        raise ValueError(f"malformed out-of-band item payload ({n} descriptors)")
    descriptors = [
        DESCRIPTOR.unpack_from(view, _COUNT.size + i * DESCRIPTOR.size) for i in range(n)
    ]
    return descriptors, view[end:]


# -- the child's side -------------------------------------------------------------------


class BlockPool:
    """The child's blocks: writes large buffers into free blocks, carves new ones.

    Never waits: when no free block fits and the arena has no room (or all slots are
    taken), :meth:`put` returns None and the caller sends the buffer in-band. So a
    consumer that keeps every item (``list(job)``) can never deadlock the stream, and the
    shared memory of a job never exceeds the arena's size. Thread-safe: one lock around
    the choice of a block (the copy itself runs outside it, into a block now ours).
    :meth:`allocate` hands out blocks the child writes in place (``shared_empty``).
    """

    def __init__(self, fd: int) -> None:
        """Map the arena ``fd`` (the caller may close ``fd`` afterwards)."""
        size = os.fstat(fd).st_size
        self._map: mmap.mmap | None = mmap.mmap(fd, size)
        self._state = memoryview(self._map)[:STATE_BYTES]
        self._size = size
        self._next = STATE_BYTES  # where the next new block starts
        # Blocks by capacity class: [(slot, offset)], the most recently taken first. A
        # search takes the first free one: the block the consumer freed last (its pages
        # are mapped and likely still in cache), not the coldest one in carving order.
        self._classes: dict[int, list[tuple[int, int]]] = {}
        # Blocks that shared_empty() handed out and the child still refers to
        # (slot -> sent yet) Never reused while pinned, even once the parent freed it.
        self._pinned: dict[int, bool] = {}
        self._spans: dict[int, tuple[int, int]] = {}  # pinned slot -> (start, end)
        self._slots = 0
        self.blocks_created = 0
        self._sent = 0  # out-of-band bytes handed out by put() (and not given back)
        # Re-entrant: the finalizer of a shared_empty() array (_unpin) may run in a thread
        # that is inside a locked section (a garbage collection started by an allocation).
        self._lock = threading.RLock()

    def in_flight(self) -> int:
        """Out-of-band bytes sent (or about to be) that the parent has not decoded yet."""
        read = _DONE.unpack_from
        while True:  # the parent may be halfway through its 8-byte store: read until stable
            done: int = read(self._state, DONE_OFFSET)[0]
            if read(self._state, DONE_OFFSET)[0] == done:
                return self._sent - done

    def put(self, raw: memoryview) -> Descriptor | None:
        """Copy the contiguous byte buffer ``raw`` into a free block; return its descriptor.

        The slot is marked in use *before* the copy; the descriptor is only returned (and
        so only written to the pipe) after the copy completed, so a child killed during the
        copy never delivers a torn buffer. Returns None if no block can be had.
        """
        n = raw.nbytes
        cap = block_capacity(n)
        with self._lock:
            found = self._find_free(cap) or self._carve(cap)
            if found is None:  # the arena is full: a free block of a larger class will do
                for larger in sorted(c for c in self._classes if c > cap):
                    found = self._find_free(larger)
                    if found is not None:
                        break
                else:
                    return None
            slot, offset = found
            self._state[slot] = _USED
            self._sent += n
        assert self._map is not None
        self._map[offset : offset + n] = raw
        return slot, offset, n

    def _find_free(self, cap: int) -> tuple[int, int] | None:
        blocks = self._classes.get(cap)
        if not blocks:
            return None
        state, pinned = self._state, self._pinned
        for i, block in enumerate(blocks):
            if state[block[0]] == _FREE and block[0] not in pinned:
                if i:  # most recently taken first
                    del blocks[i]
                    blocks.insert(0, block)
                return block
        return None

    def _carve(self, cap: int) -> tuple[int, int] | None:
        slot = self._slots
        if slot >= MAX_SLOTS or self._next + cap > self._size:
            return None
        block = (slot, self._next)
        self._next += cap
        self._slots += 1
        self._classes.setdefault(cap, []).insert(0, block)
        self.blocks_created += 1
        return block

    @property
    def pool_bytes(self) -> int:
        """Bytes of the arena available for blocks (the job's ``shm_pool_bytes``)."""
        return self._size - STATE_BYTES

    def allocate(self, n: int) -> tuple[int, int, Any] | None:
        """Take a block for an ``n``-byte buffer that the child writes in place.

        Returns ``(slot, offset, exporter)``: the slot is marked in use and *pinned*, and
        ``exporter`` is a writable ctypes byte array on the block. Once the exporter and
        everything built on it are gone the pin is dropped, and the slot freed if its
        buffer was never sent (see :meth:`mark_sent`); a sent one is freed by the parent.
        A pinned block is never reused. None if no block can be had now.
        """
        cap = block_capacity(n)
        with self._lock:
            found = self._find_free(cap) or self._carve(cap)
            if found is None:
                return None
            slot, offset = found
            self._state[slot] = _USED
            self._pinned[slot] = False
            self._spans[slot] = (offset, offset + cap)
        assert self._map is not None
        exporter = (ctypes.c_ubyte * cap).from_buffer(self._map, offset)
        weakref.finalize(exporter, self._unpin, slot).atexit = False
        return slot, offset, exporter

    def _unpin(self, slot: int) -> None:
        with self._lock:
            sent = self._pinned.pop(slot, True)
            self._spans.pop(slot, None)
            if not sent and self._map is not None:
                self._state[slot] = _FREE  # never sent: the parent never saw it

    def mark_sent(self, slot: int, n: int) -> bool:
        """Record that ``n`` bytes of the pinned block ``slot`` are about to be sent.

        Returns False if that block was sent before: the caller then copies the buffer
        (two items must not share a block: releasing one would free it under the other).
        """
        with self._lock:
            if self._pinned.get(slot, True):
                return False
            self._pinned[slot] = True
            self._sent += n
            return True

    def pinned_slot(self, start: int, end: int) -> int | None:
        """The pinned block holding the arena bytes ``[start, end)``, or None."""
        if not self._spans:
            return None
        with self._lock:
            for slot, (lo, hi) in list(self._spans.items()):
                if lo <= start and end <= hi:
                    return slot
        return None

    @property
    def has_pinned(self) -> bool:
        """True while some block handed out by :meth:`allocate` is still referred to."""
        return bool(self._spans)

    def base_address(self) -> int:
        """The address of the arena's mapping in this process."""
        assert self._map is not None
        probe = ctypes.c_char.from_buffer(self._map)
        try:
            return ctypes.addressof(probe)
        finally:
            del probe

    def release(self, descriptors: list[Descriptor]) -> None:
        """Give back blocks whose descriptors were never sent (pickling failed later)."""
        with self._lock:
            for slot, _offset, n in descriptors:
                if slot in self._pinned:  # the child's own array: unsent again, kept
                    self._pinned[slot] = False
                else:
                    self._state[slot] = _FREE
                self._sent -= n

    def close(self) -> None:
        """Unmap the arena (idempotent)."""
        if self._map is not None:
            self._state.release()
            self._map.close()
            self._map = None


# -- the parent's side ------------------------------------------------------------------

_libc_handle: Any = None


def _libc() -> Any:
    global _libc_handle
    if _libc_handle is None and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [
                ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                ctypes.c_long,
            ]
            libc.munmap.restype = ctypes.c_int
            libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        except (OSError, AttributeError):
            return None
        _libc_handle = libc
    return _libc_handle


_MAP_FAILED = ctypes.c_void_p(-1).value


def _map_shared(fd: int, size: int) -> int:
    libc = _libc()
    if libc is None:
        raise OSError("libc mmap is not available")
    addr = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of the shared-memory arena failed: {os.strerror(err)}")
    return int(addr)


def _unmap(addr: int, size: int) -> None:
    libc = _libc()
    if libc is not None:
        libc.munmap(addr, size)


_exporter_types: dict[int, Any] = {}


def _exporter_type(capacity: int) -> Any:
    """A ctypes array type of ``capacity`` bytes that supports weak references.

    One per block capacity (a handful of power-of-two sizes). Its instances sit at the
    bottom of every buffer built on a block: a memoryview of it, a slice of that view, a
    numpy array on either, all keep it alive, so its death means "nothing refers to this
    block any more". (A memoryview cannot play this part: ``memoryview(m)`` refers to
    ``m``'s underlying exporter, not to ``m``.)
    """
    cls = _exporter_types.get(capacity)
    if cls is None:
        cls = type(f"_Block{capacity}", (ctypes.c_ubyte * capacity,), {})
        _exporter_types[capacity] = cls
    return cls


class BlockTable:
    """The parent's view of an arena: turns descriptors into buffers, releases blocks.

    Zero-copy (default): each buffer is a writable view of the block, backed by a fresh
    per-item exporter; when the last object built on it is gone (the user dropped the
    array and every view of it), a ``weakref.finalize`` sets the slot's state byte to
    free. Copy mode: the bytes are copied out and the slot is freed at once.

    Thread-safe: buffers are made by the runner thread; finalizers run in whatever thread
    drops the last reference.
    """

    def __init__(self, fd: int, copy: bool = False) -> None:
        """Map the arena ``fd`` (the caller keeps ownership of ``fd`` and may close it)."""
        size = os.fstat(fd).st_size
        addr = _map_shared(fd, size)
        mapping = (ctypes.c_ubyte * size).from_address(addr)
        # munmap once the table is closed and no buffer refers to the mapping any more;
        # never at interpreter exit (an array may still be read during shutdown: the
        # process's exit unmaps it anyway).
        weakref.finalize(mapping, _unmap, addr, size).atexit = False
        self._mapping: Any = mapping
        self._view: memoryview | None = memoryview(mapping).cast("B")
        self._state: memoryview | None = self._view[:STATE_BYTES]
        self._size = size
        self.copy = copy  # deliver copies (the slot is freed at once) instead of views
        # Re-entrant: a finalizer may run in a thread that is inside _release_slot.
        self._lock = threading.RLock()
        self.bytes_mapped = 0  # out-of-band bytes turned into buffers so far
        self._done = 0  # bytes_mapped + bytes of items dropped undecoded (see publish_done)
        self.blocks_seen = 0  # 1 + the highest slot seen (the child carves slots in order)

    def buffers(self, descriptors: list[Descriptor]) -> list[memoryview | bytearray]:
        """Return one buffer per descriptor (views, or copies in copy mode).

        Raises ValueError for a descriptor outside the arena (a corrupt channel), before
        making any buffer: the caller then frees the item's blocks itself, exactly once.
        """
        view, state = self._view, self._state
        if view is None or state is None:
            raise ValueError("the block table is closed")
        for slot, offset, n in descriptors:
            if not (
                slot < MAX_SLOTS and offset >= STATE_BYTES and offset + n <= self._size
                and n > 0
            ):
                raise ValueError(
                    f"out-of-band descriptor (slot {slot}, offset {offset}, {n} bytes) "
                    f"lies outside the {self._size}-byte arena"
                )
        out: list[memoryview | bytearray] = []
        for slot, offset, n in descriptors:
            self.bytes_mapped += n
            self._done += n
            if slot >= self.blocks_seen:
                self.blocks_seen = slot + 1
            if self.copy:
                out.append(bytearray(view[offset : offset + n]))
                self._release(slot)
                continue
            cap = block_capacity(n)
            if offset + cap > self._size:
                cap = self._size - offset
            exporter = _exporter_type(cap).from_buffer(self._mapping, offset)
            # The finalizer holds the state view (so the mapping) only while the
            # exporter lives, and the exporter holds the mapping anyway.
            weakref.finalize(exporter, _release_slot, state, self._lock, slot).atexit = False
            out.append(memoryview(exporter).cast("B")[:n])
        return out

    def release_unread(self, descriptors: list[Descriptor]) -> None:
        """Free the blocks of an item that is dropped without being decoded."""
        if self._state is None:
            return
        for slot, _offset, n in descriptors:
            self._done += n
            if slot < MAX_SLOTS:
                _release_slot(self._state, self._lock, slot)

    def publish_done(self) -> None:
        """Tell the child how many out-of-band bytes were decoded or dropped so far."""
        if self._state is not None:
            _DONE.pack_into(self._state, DONE_OFFSET, self._done)

    def _release(self, slot: int) -> None:
        assert self._state is not None
        _release_slot(self._state, self._lock, slot)

    @property
    def closed(self) -> bool:
        return self._state is None

    def close(self) -> None:
        """Drop the table's references to the mapping (idempotent); holds no fd.

        Buffers still held stay valid; the mapping is unmapped when the last one is gone
        (their finalizers then only write a state byte that nobody reads any more).
        """
        self._mapping = None
        self._view = None
        self._state = None


def _release_slot(state: memoryview, lock: Any, slot: int) -> None:
    # The lock (a full barrier) orders the reads of the block, done before the last
    # reference went, before the store that lets the child overwrite it.
    with lock:
        state[slot] = _FREE
