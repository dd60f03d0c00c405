"""``workstream.shared_empty``: arrays made in the job's arena travel as a descriptor and
arrive zero-copy; blocks are reused once both sides dropped them; clear errors outside a
worker, without an arena, or for an array the arena cannot hold."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

import workers_shared as ws
import workstream
from test_shm import arena_mappings, blocks_seen, in_shared_memory
from workstream._transport import _shm

KIB, MIB = 1 << 10, 1 << 20

pytestmark = pytest.mark.skipif(not _shm.supported(), reason="no memfd / libc mmap here")

METHODS = [
    "forkserver", "spawn",
    pytest.param("fork", marks=pytest.mark.filterwarnings("ignore::DeprecationWarning")),
]


@pytest.fixture(autouse=True)
def no_arena_left() -> object:
    before = arena_mappings()
    yield
    gc.collect()
    assert arena_mappings() == before, "an arena mapping outlived every array built on it"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("container", [False, True], ids=["alone", "in-a-dict"])
@pytest.mark.parametrize("method", METHODS)
def test_a_yielded_array_is_the_childs_memory(method: str, container: bool) -> None:
    """The parent's array is a view of the block the child wrote: a write the child makes
    after the yield shows through (no copy on either side)."""
    job = workstream.start(ws.write_after_yield, MIB, container, start_method=method)
    first = next(job)
    a = first["array"] if container else first  # type: ignore[index]
    assert in_shared_memory(a) and a.shape == (MIB // 8,) and a.dtype == np.float64
    assert next(job) == "written"
    assert a[0] == -1.0 and np.all(a[1:] == 7.0)
    job.result(timeout=30)
    assert blocks_seen(job) == 1
    del first, a


@pytest.mark.timeout(60)
def test_shape_and_dtype_are_kept() -> None:
    job = workstream.start(ws.numbered_2d, 3)
    for i, a in enumerate(job):
        assert in_shared_memory(a)
        assert a.shape == (256, 128) and a.dtype == np.float32 and a.flags.c_contiguous
        assert a.flags.writeable and np.all(a == i)
    job.result(timeout=30)


@pytest.mark.timeout(60)
def test_blocks_are_reused_once_both_sides_dropped_the_array() -> None:
    """300 arrays, each dropped by the child after its yield and by the consumer after
    reading it: a handful of blocks serve them all."""
    job = workstream.start(ws.numbered, 300, 256 * KIB, max_buffered_bytes=MIB)
    n = 0
    for a in job:
        assert in_shared_memory(a) and a[0] == n and a[-1] == n
        n += 1
    job.result(timeout=30)
    assert n == 300
    assert blocks_seen(job) <= 16, blocks_seen(job)


@pytest.mark.timeout(60)
def test_arrays_the_child_keeps_are_never_reused_under_it() -> None:
    """The child keeps every array it yielded and the consumer drops each: no block is
    reused while the child still refers to it (the child checks its arrays at the end)."""
    job = workstream.start(ws.keep_all, 20, 256 * KIB)
    for i, a in enumerate(job):
        assert np.all(a == i)
    del a
    job.result(timeout=30)  # the child's own check raised if a block had been reused


def test_a_pinned_block_is_not_reused_until_the_child_drops_it() -> None:
    """Unit: the parent freeing a shared_empty block does not make it reusable while the
    child's array lives; dropping it then does; an unsent array is freed on drop."""
    fd = _shm.create_arena(MIB)
    try:
        pool, table = _shm.BlockPool(fd), _shm.BlockTable(fd)
    finally:
        os.close(fd)
    data = memoryview(bytes(100 * KIB)).cast("B")
    slot, offset, exporter = pool.allocate(100 * KIB)  # type: ignore[misc]
    assert pool.pinned_slot(offset, offset + 10) == slot
    assert pool.mark_sent(slot, 100 * KIB) and not pool.mark_sent(slot, 100 * KIB)
    (view,) = table.buffers([(slot, offset, 100 * KIB)])
    del view  # the parent is done with it
    gc.collect()
    other = pool.put(data)
    assert other is not None and other[0] != slot  # still pinned by the child
    del exporter
    gc.collect()
    assert pool.pinned_slot(offset, offset + 10) is None
    assert pool.put(data)[0] == slot  # type: ignore[index]  # (other is still held)
    # An array never sent is freed when the child drops it.
    table.release_unread([(slot, offset, 100 * KIB)])
    s2, _o2, exporter2 = pool.allocate(100 * KIB)  # type: ignore[misc]
    assert s2 == slot
    del exporter2
    gc.collect()
    assert pool.put(data)[0] == slot  # type: ignore[index]
    pool.close()
    table.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n_bytes", [MIB, 80], ids=["large", "small"])
def test_yielding_the_same_array_twice_sends_a_copy_the_second_time(n_bytes: int) -> None:
    job = workstream.start(ws.yield_twice, n_bytes)
    first, second, marker = list(job)
    job.result(timeout=30)
    assert marker == "written"
    assert first[0] == -1.0 and second[0] == 3.0  # only the first is the child's memory
    assert np.all(first[1:] == 3.0) and np.all(second == 3.0)
    assert in_shared_memory(first) and in_shared_memory(second) == (n_bytes >= 64 * KIB)
    del first, second


@pytest.mark.timeout(60)
def test_a_small_array_is_shared_too() -> None:
    """Below shm_threshold a shared_empty array still travels zero-copy (the caller asked
    for shared memory); only an empty one is ordinary."""
    assert workstream.start(ws.make, (0, 3), "float64").result(timeout=30) == ((0, 3), "float64")
    job = workstream.start(ws.numbered, 3, 1 * KIB)
    got = list(job)
    job.result(timeout=30)
    assert [int(a[0]) for a in got] == [0, 1, 2]
    assert all(in_shared_memory(a) and a.nbytes == KIB for a in got)
    job = workstream.start(ws.write_after_yield, 80, True)  # ten float64
    first = next(job)
    assert next(job) == "written" and first["array"][0] == -1.0  # type: ignore[index]
    job.result(timeout=30)
    del first, got


@pytest.mark.timeout(60)
def test_a_warm_workers_jobs_use_shared_empty() -> None:
    with workstream.Worker() as worker:
        for _ in range(3):
            job = worker.start(ws.numbered, 30, 256 * KIB, max_buffered_bytes=MIB)
            for i, a in enumerate(job):
                assert in_shared_memory(a) and np.all(a == i)
            assert job.wait(timeout=30).kept_warm
        del a
        job = worker.start(ws.write_after_yield, MIB, True)
        item = next(job)
        assert next(job) == "written" and item["array"][0] == -1.0  # type: ignore[index]
        job.wait(timeout=30)
        del item


@pytest.mark.timeout(60)
def test_nothing_is_left_after_a_cancel_with_arrays_held() -> None:
    before = arena_mappings()
    job = workstream.start(ws.numbered, 10_000, 256 * KIB, max_buffered_bytes=MIB)
    held = [next(job) for _ in range(3)]
    job.cancel()
    job.wait(timeout=30)
    assert [int(a[0]) for a in held] == [0, 1, 2]
    del held, job  # (the job keeps the items it had read and not handed out)
    gc.collect()
    assert arena_mappings() == before


def test_outside_a_worker_it_raises_not_in_worker_error() -> None:
    with pytest.raises(workstream.NotInWorkerError, match="shared_empty"):
        workstream.shared_empty(10)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("shape", "dtype", "options", "error"),
    [
        ((MIB,), "float64", {"shm_threshold": None}, "shm_threshold=None"),
        ((MIB,), "float64", {"shm_pool_bytes": MIB}, "raise shm_pool_bytes"),
        ((10,), object, {}, "plain dtype"),
        ((-1,), "float64", {}, "negative dimension"),
    ],
    ids=["no-arena", "too-big", "object-dtype", "negative-shape"],
)
def test_misuse_in_the_worker_raises_a_clear_error(
    shape: object, dtype: object, options: dict[str, object], error: str
) -> None:
    job = workstream.start(ws.make, shape, dtype, **options)  # type: ignore[arg-type]
    with pytest.raises(workstream.WorkerError, match=error):
        job.result(timeout=30)


@pytest.mark.timeout(60)
def test_an_item_that_failed_to_pickle_leaves_the_array_unsent() -> None:
    """The failed item took the array's descriptor; its failure gives it back, so the
    array yielded alone afterwards still travels zero-copy."""
    job = workstream.start(ws.unpicklable_then_alone, MIB)
    first = next(job)
    assert next(job) == "written"
    assert first[0] == -1.0 and np.all(first[1:] == 5.0)
    job.result(timeout=30)
    del first


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("shape", "want"),
    [(np.int64(5), (5,)), ([np.int64(2), 3], (2, 3)), ((4, 0), (4, 0)), (7, (7,))],
    ids=["numpy-int", "list-of-ints", "empty", "int"],
)
def test_a_shape_is_any_int_or_sequence_of_ints(shape: object, want: tuple[int, ...]) -> None:
    assert workstream.start(ws.make, shape, "float32").result(timeout=30) == (want, "float32")
