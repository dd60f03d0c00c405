"""Pickling items whose large buffers travel through shared memory (the child's side).

Runs only in the child. An item is pickled with protocol 5 and a ``buffer_callback``:
every out-of-band buffer it offers (numpy arrays, anything that pickles through
``pickle.PickleBuffer``) of at least ``threshold`` bytes is copied into a block of the
job's arena (:class:`_transport._shm.BlockPool`) and replaced by a 20-byte descriptor;
smaller ones stay in the pickle. An item without such buffers is an ordinary pickle, so
small items pay only the callback's presence (measured: nothing visible).

The descriptor reaches the pipe only with the item's payload, built after every copy
completed: a child killed in the middle of a copy never delivers a torn buffer.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any

from .._transport import _shm
from .._transport._shm import BlockPool, Descriptor

_PROTOCOL = 5


class ArrayPickler:
    """Pickles items for the sender, moving large buffers into the job's arena.

    Thread-safe (``emit`` may be called from several threads): one lock around each
    item's pickling, held only while its large buffers are being placed.
    """

    def __init__(self, pool: BlockPool, threshold: int) -> None:
        self._pool = pool
        self._threshold = threshold
        self._lock = threading.Lock()
        self._placed: list[Descriptor] = []

    def _place(self, buf: pickle.PickleBuffer) -> bool:
        # pickle's contract: a false return value makes the buffer out-of-band.
        raw = buf.raw()  # contiguous bytes (C or Fortran order), no copy
        if raw.nbytes < self._threshold:
            return True
        desc = self._pool.put(raw)
        if desc is None:  # no block to be had: send it in-band (correct, slower)
            return True
        self._placed.append(desc)
        return False

    def dumps(self, item: Any) -> bytes:
        """Return the item's payload: a plain pickle, or descriptors + pickle.

        Raises the pickling error (after freeing any block already written) exactly as
        ``pickle.dumps`` would; cloudpickle is tried for what plain pickle refuses.
        """
        with self._lock:
            self._placed = []
            try:
                data = self._pickle(item)
            except BaseException:
                self._pool.release(self._placed)
                raise
            placed = self._placed
            if not placed:
                return data
            return _shm.encode_payload(placed, data)

    def _pickle(self, item: Any) -> bytes:
        try:
            return pickle.dumps(item, _PROTOCOL, buffer_callback=self._place)
        except Exception as first:
            self._pool.release(self._placed)
            self._placed = []
            import cloudpickle

            try:
                data: bytes = cloudpickle.dumps(item, _PROTOCOL, buffer_callback=self._place)
            except Exception:
                raise first from None
            return data

    def close(self) -> None:
        """Unmap the arena (the job is over)."""
        self._pool.close()
