"""Child target functions (and the shared case table) for the shared-memory array tests.

Importable by name, so every start method finds them. ``make_case`` is deterministic:
the child builds an item from its name, the test builds the same one to compare.
"""

from __future__ import annotations

import os
import signal
import sys
import types
from collections.abc import Iterator

import numpy as np

import workstream

KIB = 1 << 10
MIB = 1 << 20

_STRUCT = np.dtype([("id", "<i4"), ("pos", "<f8", (3,)), ("tag", "S5")])


def make_case(name: str) -> object:
    """Return the item called ``name`` (see ``CASES``)."""
    rng = np.random.default_rng(sum(map(ord, name)))  # the same in every process
    big = 40_000  # elements: above the 64 KiB threshold for every dtype below
    if name == "float64":
        return rng.random(big)
    if name == "float32-2d":
        return rng.random((200, 300)).astype(np.float32)
    if name == "uint8-image":
        return rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    if name == "int16":
        return rng.integers(-30000, 30000, big, dtype=np.int16)
    if name == "complex128":
        return rng.random(big) + 1j * rng.random(big)
    if name == "bool":
        return rng.random(big * 2) > 0.5
    if name == "fortran-order":
        return np.asfortranarray(rng.random((300, 200)))
    if name == "non-contiguous":
        return rng.random((400, 400))[::2, 1::3]
    if name == "zero-d":
        return np.array(3.25)
    if name == "empty":
        return np.zeros((0, 5))
    if name == "structured":
        a = np.zeros(10_000, dtype=_STRUCT)
        a["id"] = np.arange(10_000)
        a["pos"] = rng.random((10_000, 3))
        a["tag"] = b"ab"
        return a
    if name == "small-array":
        return np.arange(100)
    if name == "bytes":
        return bytes(range(256)) * 1024
    if name == "bytearray":
        return bytearray(b"xyz" * 100_000)
    if name == "nested":
        return {"step": 7, "images": [rng.random((64, 64, 4)) for _ in range(3)],
                "label": "batch", "small": np.ones(3)}
    if name == "readonly":
        a = rng.random(big)
        a.flags.writeable = False
        return a
    raise ValueError(name)


CASES = [
    "float64", "float32-2d", "uint8-image", "int16", "complex128", "bool", "fortran-order",
    "non-contiguous", "zero-d", "empty", "structured", "small-array", "bytes", "bytearray",
    "nested", "readonly",
]


def yield_cases(names: list[str]) -> Iterator[object]:
    for name in names:
        yield make_case(name)


def numbered_arrays(count: int, nbytes: int) -> Iterator[np.ndarray]:
    """Yield ``count`` float64 arrays of ``nbytes``; array ``i`` is filled with ``i``."""
    for i in range(count):
        yield np.full(nbytes // 8, float(i))


def numbered_arrays_forever(nbytes: int) -> Iterator[np.ndarray]:
    """Like :func:`numbered_arrays`, until cancelled."""
    i = 0
    while True:
        yield np.full(nbytes // 8, float(i))
        i += 1


def emit_arrays_from_threads(threads: int, per_thread: int, nbytes: int) -> int:
    """Emit arrays from several threads at once; array ``(t, k)`` holds ``t * 1000 + k``."""
    import threading

    def run(t: int) -> None:
        for k in range(per_thread):
            workstream.emit(np.full(nbytes // 8, float(t * 1000 + k)))

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return threads * per_thread


def arrays_then_kill_self(count: int, nbytes: int) -> Iterator[np.ndarray]:
    """Yield ``count`` numbered arrays, then die by SIGKILL (a hard crash after them)."""
    yield from numbered_arrays(count, nbytes)
    os.kill(os.getpid(), signal.SIGKILL)


def _explode_outside_the_worker() -> object:
    if not workstream.in_worker():
        raise ValueError("this object cannot be rebuilt in the parent")
    return "fine"


class LoadsOnlyInTheChild:
    """Pickles fine; unpickling it anywhere but in a worker raises."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return _explode_outside_the_worker, ()


def arrays_then_an_undeliverable_item(nbytes: int) -> Iterator[object]:
    """Two good arrays, then an item whose array is fine but whose other part cannot be
    unpickled in the parent, then arrays until cancelled."""
    yield np.full(nbytes // 8, 0.0)
    yield np.full(nbytes // 8, 1.0)
    yield (np.full(nbytes // 8, 2.0), LoadsOnlyInTheChild())
    yield from numbered_arrays_forever(nbytes)


# -- a stand-in for torch (not installed in CI): just what ArrayPickler touches ------------


class FakeTensor:
    """Just enough of ``torch.Tensor`` for the tensor path of ``ArrayPickler``."""

    device = types.SimpleNamespace(type="cpu")
    layout = "strided"

    def __init__(self, array: np.ndarray, requires_grad: bool = False) -> None:
        self.array = array
        self.requires_grad = requires_grad
        self.via_from_numpy = False

    def is_contiguous(self) -> bool:
        return bool(self.array.flags.c_contiguous)

    def element_size(self) -> int:
        return int(self.array.itemsize)

    def nelement(self) -> int:
        return int(self.array.size)

    def numpy(self) -> np.ndarray:
        return self.array

    def __reduce_ex__(self, protocol: object) -> tuple[object, ...]:
        # Like torch: the storage goes as plain bytes, in-band.
        return _fake_rebuild, (self.array.tobytes(), self.array.dtype.str, self.array.shape)


def _fake_rebuild(data: bytes, dtype: str, shape: tuple[int, ...]) -> FakeTensor:
    return FakeTensor(np.frombuffer(data, dtype=dtype).reshape(shape).copy())


def _fake_from_numpy(array: np.ndarray) -> FakeTensor:
    t = FakeTensor(array)
    t.via_from_numpy = True
    return t


def fake_torch_module() -> types.ModuleType:
    mod = types.ModuleType("torch")
    mod.Tensor = FakeTensor  # type: ignore[attr-defined]
    mod.strided = "strided"  # type: ignore[attr-defined]
    mod.from_numpy = _fake_from_numpy  # type: ignore[attr-defined]
    return mod


def fake_tensors(nbytes: int) -> Iterator[object]:
    """With a stand-in torch imported: a big tensor, one in a dict, one with autograd,
    a small one, and one nested two levels deep."""
    sys.modules["torch"] = fake_torch_module()
    yield FakeTensor(np.full(nbytes // 4, 1.0, dtype=np.float32))
    yield {"loss": 0.5, "features": FakeTensor(np.full(nbytes // 8, 2.0))}
    yield FakeTensor(np.full(nbytes // 8, 3.0), requires_grad=True)
    yield FakeTensor(np.arange(10, dtype=np.int64))
    yield {"outer": {"inner": FakeTensor(np.full(nbytes // 8, 5.0))}}
