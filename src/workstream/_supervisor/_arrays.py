"""The parent's side of large buffers in shared memory: one :class:`ArrayChannel` per job.

Owned by the job's runner thread. It creates the job's arena (``_transport._shm``),
hands the child its fd at launch, turns out-of-band item payloads back into objects
whose big buffers are views of the arena (or copies, with ``shm_copy=True``), frees the
blocks of items that are dropped undecoded, and is closed with the job's other
descriptors. After :meth:`close` it holds no fd; arrays the user still holds stay valid
until dropped (the mapping is unmapped with the last of them).
"""

from __future__ import annotations

import pickle
from typing import Any

from .._options import ArenaSettings, Options
from .._transport import _fds, _shm

_loads = pickle.loads


class ArrayChannel:
    """Per-job shared-memory state of the parent (see the module docstring)."""

    def __init__(self, pool_bytes: int, threshold: int, copy: bool) -> None:
        """Create the arena and map it. Raises OSError if the kernel refuses."""
        self._fd: int | None = _shm.create_arena(pool_bytes)
        try:
            self._table = _shm.BlockTable(self._fd, copy)
        except BaseException:
            _fds.close_quietly(self._fd)
            raise
        self._threshold = threshold
        self._counted = 0  # table.bytes_mapped already reported by take_new_bytes

    @classmethod
    def for_options(cls, options: Options) -> ArrayChannel | None:
        """The channel ``options`` ask for, or None (disabled, or unsupported here: large
        buffers then travel in-band, pickled through the pipe)."""
        if options.shm_threshold is None or not _shm.supported():
            return None
        try:
            return cls(options.shm_pool_bytes, options.shm_threshold, options.shm_copy)
        except OSError:
            return None

    def child_settings(self, max_in_pipe: int | None) -> ArenaSettings:
        """What the child needs (the arena fd travels like the control block's)."""
        assert self._fd is not None
        return ArenaSettings(_fds.PassedFd(self._fd), self._threshold, max_in_pipe)

    def close_fd(self) -> None:
        """Close the parent's fd of the arena (the mapping does not need it)."""
        _fds.close_quietly(self._fd)
        self._fd = None

    def loads(self, payload: memoryview) -> Any:
        """Unpickle one out-of-band payload; raises what unpickling raises (or ValueError
        for a malformed payload). Blocks of a failed item are freed."""
        descriptors, pickled = _shm.decode_payload(payload)
        try:
            buffers = self._table.buffers(descriptors)
        except ValueError:
            self._table.release_unread(descriptors)
            raise
        # If unpickling fails, the buffers die here and their finalizers free the blocks.
        return _loads(pickled, buffers=buffers)

    def release_unread(self, payloads: list[memoryview]) -> None:
        """Free the blocks of items dropped without decoding (discarded, or after an error)."""
        for p in payloads:
            if _shm.is_out_of_band(p):
                try:
                    descriptors, _ = _shm.decode_payload(p)
                except ValueError:
                    continue
                self._table.release_unread(descriptors)

    @property
    def copy(self) -> bool:
        """True: deliver copies and free each block at once (``shm_copy``). May change
        between jobs of a warm worker, which share one channel."""
        return self._table.copy

    @copy.setter
    def copy(self, value: bool) -> None:
        self._table.copy = value

    @property
    def blocks_seen(self) -> int:
        """How many distinct blocks the child has used so far (for tests and benchmarks)."""
        return self._table.blocks_seen

    def take_new_bytes(self) -> int:
        """Out-of-band bytes decoded since the last call (they count as buffered bytes).

        Called once per chunk read; also tells the child how far the parent has read, so
        the child never has more than ``max_buffered_bytes`` of them in the pipe.
        """
        self._table.publish_done()
        total = self._table.bytes_mapped
        new = total - self._counted
        self._counted = total
        return new

    def close(self) -> None:
        """Close the fd and drop the mapping (idempotent); held arrays stay valid."""
        self.close_fd()
        self._table.close()
