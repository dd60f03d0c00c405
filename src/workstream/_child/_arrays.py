"""Pickling items whose large buffers travel through shared memory (the child's side).

Runs only in the child. An item is pickled with protocol 5 and a ``buffer_callback``:
every out-of-band buffer it offers (numpy arrays, anything that pickles through
``pickle.PickleBuffer``) of at least ``threshold`` bytes is copied into a block of the
job's arena (:class:`_transport._shm.BlockPool`) and replaced by a 20-byte descriptor;
smaller ones stay in the pickle. Every item is first pickled on a fast path whose
callback only checks sizes: an item with no large buffer (every small item) is done in
one ``pickle.dumps`` (measured: 694 -> about 330 ns for a small dict, plain pickle's
cost); the first large buffer aborts it, and the item is pickled again with placement.

The descriptor reaches the pipe only with the item's payload, built after every copy
completed: a child killed in the middle of a copy never delivers a torn buffer.

torch CPU tensors pickle their storage as bytes (no ``PickleBuffer``), so when torch is
imported in the child, an item that is a tensor, or a dict / list / tuple holding one
directly, is pickled with a dispatch table that sends each eligible tensor (plain
``torch.Tensor``, CPU, strided, contiguous, no autograd, a numpy-compatible dtype, at
least ``threshold`` bytes) as its numpy view, rebuilt in the parent with
``torch.from_numpy`` — a tensor on the shared block. Anything else keeps torch's own
pickling (in-band). Items without tensors never pay for this check beyond a type test.
"""

from __future__ import annotations

import copyreg
import importlib
import io
import math
import operator
import pickle
import sys
import time
from collections.abc import Callable
from typing import Any

from .._errors import NotInWorkerError
from .._transport import _fds, _shm
from .._transport._shm import BlockPool, Descriptor

_PROTOCOL = 5
_CANCEL_FLAG = _fds.CANCEL_FLAG


class _HasLargeBuffer(Exception):
    """Raised by the fast path's callback: the item has a buffer for shared memory."""


class ArrayPickler:
    """Pickles items for the sender, moving large buffers into the job's arena.

    Thread-safe: ``emit`` may be called from several threads at once, and their items
    are pickled concurrently (a user ``__reduce__`` that blocks holds up only its own
    thread); each call keeps its placed blocks in its own list, and the pool has a lock.
    """

    def __init__(
        self, pool: BlockPool, threshold: int, max_in_pipe: int | None, control: Any
    ) -> None:
        self._pool = pool
        self._threshold = threshold
        self._max_in_pipe = max_in_pipe
        self._control = control  # byte 0: the cancel flag
        self._base: int | None = None  # the arena's address here (for shared_empty arrays)
        # The fast path's callback: one bound method, not one per item. The Sender calls
        # pickle.dumps with it directly (a Python call less per item), then dumps_placing.
        self.check_small = self._raise_if_large

    def _raise_if_large(self, buf: pickle.PickleBuffer) -> bool:
        """The fast path's callback: small buffers stay in-band; a large one, or one of
        a :func:`shared_empty` array (whatever its size), aborts."""
        raw = buf.raw()
        if raw.nbytes < self._threshold and not (
            self._pool.has_pinned and self._shared_slot(raw, raw.nbytes) is not None
        ):
            return True
        raise _HasLargeBuffer

    def _place(self, buf: pickle.PickleBuffer, placed: list[Descriptor]) -> bool:
        # pickle's contract: a false return value makes the buffer out-of-band.
        raw = buf.raw()  # contiguous bytes (C or Fortran order), no copy
        n = raw.nbytes
        shared = self._shared_slot(raw, n) if self._pool.has_pinned else None
        if shared is None and n < self._threshold:
            return True
        if self._max_in_pipe is not None:
            self._wait_for_room(n, self._max_in_pipe)
        if shared is not None:
            if self._pool.mark_sent(shared[0], n):
                placed.append((shared[0], shared[1], n))  # a shared_empty() array: no copy
                return False
            if n < self._threshold:
                return True  # sent before: copied, in-band like any small buffer
        desc = self._pool.put(raw)
        if desc is None:  # no block to be had: send it in-band (correct, slower)
            return True
        placed.append(desc)
        return False

    def _shared_slot(self, raw: memoryview, n: int) -> tuple[int, int] | None:
        """``(slot, offset)`` if ``raw`` lies in a block of :func:`shared_empty` (sent or
        not: :meth:`BlockPool.mark_sent` tells); None for any other buffer."""
        np = sys.modules.get("numpy")
        if np is None or n == 0:
            return None
        if self._base is None:
            self._base = self._pool.base_address()
        start = np.frombuffer(raw, np.uint8).__array_interface__["data"][0] - self._base
        slot = self._pool.pinned_slot(start, start + n)
        return None if slot is None else (slot, start)

    def _wait_for_room(self, n: int, limit: int) -> None:
        """Wait while the parent has more than ``limit`` out-of-band bytes left to read.

        This is the pipe's backpressure for bytes that do not travel in it: a descriptor
        is tiny, so without it a slow consumer would let the child run ahead until the
        arena is full. Items the consumer has *taken* do not count (they are read), so
        holding every item (``list(job)``) can never block the child here. Returns at
        once when nothing is in flight (one item may exceed ``limit``) and as soon as a
        cancel was requested (its flag is read at every poll), so a cancelled child
        always reaches its next cancellation point. Polls with a backoff capped at 1 ms:
        the parent has no way to wake us but the shared counter.
        """
        pool, control = self._pool, self._control
        delay = 20e-6
        while True:
            in_flight = pool.in_flight()
            if in_flight <= 0 or in_flight + n <= limit or control[_CANCEL_FLAG]:
                return
            time.sleep(delay)
            delay = min(delay * 2, 1e-3)

    def dumps(self, item: Any) -> bytes:
        """Return the item's payload: a plain pickle, or descriptors + pickle.

        Raises the pickling error (after freeing any block already written) exactly as
        ``pickle.dumps`` would; cloudpickle is tried for what plain pickle refuses.
        """
        if sys.modules.get("torch") is None:
            try:
                return pickle.dumps(item, _PROTOCOL, buffer_callback=self.check_small)
            except Exception:
                pass  # a large buffer; or an error that dumps_placing raises again
        return self.dumps_placing(item)

    def dumps_placing(self, item: Any) -> bytes:
        """:meth:`dumps` without the fast path: large buffers go to shared memory."""
        placed: list[Descriptor] = []

        def place(buf: pickle.PickleBuffer) -> bool:
            return self._place(buf, placed)

        try:
            data = self._pickle(item, place, placed)
        except BaseException:
            self._pool.release(placed)
            raise
        if not placed:
            return data
        return _shm.encode_payload(placed, data)

    def _pickle(
        self, item: Any, place: Callable[[pickle.PickleBuffer], bool],
        placed: list[Descriptor],
    ) -> bytes:
        try:
            torch = sys.modules.get("torch")
            if torch is not None and _holds_tensor(item, torch.Tensor):
                return self._dumps_with_tensors(item, place, torch)
            return pickle.dumps(item, _PROTOCOL, buffer_callback=place)
        except Exception as first:
            self._pool.release(placed)
            placed.clear()
            import cloudpickle

            try:
                data: bytes = cloudpickle.dumps(item, _PROTOCOL, buffer_callback=place)
            except Exception:
                raise first from None
            return data

    def _dumps_with_tensors(
        self, item: Any, place: Callable[[pickle.PickleBuffer], bool], torch: Any
    ) -> bytes:
        out = io.BytesIO()
        pickler = pickle.Pickler(out, _PROTOCOL, buffer_callback=place)
        table = dict(copyreg.dispatch_table)
        threshold = self._threshold

        def reduce_tensor(t: Any) -> Any:
            if (
                t.device.type == "cpu" and not t.requires_grad and t.layout == torch.strided
                and t.is_contiguous() and t.element_size() * t.nelement() >= threshold
            ):
                try:
                    array = t.numpy()  # raises for bfloat16, conjugate / negative views
                except Exception:
                    pass
                else:
                    return tensor_from_array, (array,)
            return t.__reduce_ex__(_PROTOCOL)

        table[torch.Tensor] = reduce_tensor
        pickler.dispatch_table = table
        pickler.dump(item)
        return out.getvalue()

    def close(self) -> None:
        """Unmap the arena (the job is over)."""
        self._pool.close()


def _holds_tensor(item: Any, tensor_type: type) -> bool:
    """True if ``item`` is a tensor or a dict / list / tuple with a tensor directly in it."""
    kind = type(item)
    if kind is tensor_type:
        return True
    if kind is dict:
        values = item.values()
    elif kind is list or kind is tuple:
        values = item
    else:
        return False
    return any(type(value) is tensor_type for value in values)


def tensor_from_array(array: Any) -> Any:
    """Rebuild a tensor sent by :class:`ArrayPickler` (runs in the parent, on unpickling).

    The tensor shares the array's memory (a block of shared memory, kept until the tensor
    and every view of it are gone). A read-only array (sent in-band) is copied first:
    torch tensors are always writable.
    """
    torch = importlib.import_module("torch")
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


current: ArrayPickler | None = None
"""The worker's pickler (None: no arena), set at the worker's start-up."""


def shared_empty(shape: int | tuple[int, ...], dtype: Any = float) -> Any:
    """Return a new uninitialised numpy array that lives in the job's shared memory.

    Call it inside a worker, fill the array, and yield (or ``emit``) it, alone or inside
    a container: only its descriptor travels, and the parent receives a view of the same
    memory (no copy on either side). The block is reused once the parent dropped the
    item and every view of it *and* the worker dropped the array. After yielding, the
    array belongs to the parent: writes the worker still makes show through in the
    parent's array (no lock orders them), though never in another item. Yielding the
    same array a second time sends a copy.

    Any size goes (an array smaller than ``shm_threshold`` takes a 64 KiB block all the
    same); an empty array, or one asked for while every block of the arena is held by
    items the consumer keeps, is an ordinary array (yielding it copies it, as for any
    array).

    Raises :class:`NotInWorkerError` outside a worker; RuntimeError if the job has no
    shared memory (``shm_threshold=None``, or no memfd here); ValueError if the array
    does not fit in the arena (raise ``shm_pool_bytes``) or for a bad shape;
    TypeError for a dtype holding Python objects.
    """
    import numpy as np

    from . import _context

    if _context._current is None:
        raise NotInWorkerError(
            "workstream.shared_empty() must be called inside a function run by "
            "workstream.start() or a Worker; outside one, use numpy.empty()"
        )
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError(f"workstream.shared_empty() needs a plain dtype, not {dt} (it holds "
                        "Python objects, which cannot live in shared memory)")
    try:
        dims: tuple[int, ...] = (operator.index(shape),)  # type: ignore[arg-type]
    except TypeError:
        dims = tuple(operator.index(d) for d in shape)  # type: ignore[union-attr]
    if any(d < 0 for d in dims):
        raise ValueError(f"workstream.shared_empty(): negative dimension in shape {dims}")
    count = math.prod(dims)
    nbytes = count * dt.itemsize
    pickler = current
    if pickler is None:
        raise RuntimeError(
            "workstream.shared_empty() needs the job's shared memory, and this job has "
            "none: it was started with shm_threshold=None (pass a size in bytes, the "
            "default is 64 KiB), or this system has no memfd"
        )
    if nbytes == 0:
        return np.empty(dims, dt)
    pool = pickler._pool
    if _shm.block_capacity(nbytes) > pool.pool_bytes:
        raise ValueError(
            f"workstream.shared_empty(): {nbytes} bytes do not fit in the job's shared "
            f"memory (shm_pool_bytes={pool.pool_bytes}); raise shm_pool_bytes to at least "
            f"{_shm.block_capacity(nbytes)}"
        )
    got = pool.allocate(nbytes)
    if got is None:
        return np.empty(dims, dt)
    exporter = got[2]
    return np.frombuffer(exporter, dtype=dt, count=count).reshape(dims)
