"""Large arrays through shared memory: content, zero-copy views and their lifetime, block
reuse, copy mode, backpressure by bytes, cancel while the child waits for room, torn
arrays on SIGKILL, and nothing left behind (fd, mapping, /dev/shm) after any outcome."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import signal
import time
import weakref

import numpy as np
import pytest

import workers_arrays as wa
import workstream
from conftest import wait_until
from workstream import CancelledOutcome, Crashed
from workstream._transport import _shm

KIB, MIB = wa.KIB, wa.MIB

pytestmark = pytest.mark.skipif(not _shm.supported(), reason="no memfd / libc mmap here")


def arena_mappings() -> int:
    """Mappings of workstream arenas in this process (memfds show up by name in maps)."""
    with open("/proc/self/maps") as f:
        return sum("workstream-arrays" in line for line in f)


def in_shared_memory(a: np.ndarray) -> bool:
    """True if ``a``'s memory is a block of a job's arena (not a private copy)."""
    obj: object = a
    while isinstance(obj, np.ndarray):
        obj = obj.base
    return isinstance(obj, memoryview) and type(obj.obj).__name__.startswith("_Block")


def blocks_seen(job: workstream.Job) -> int:  # type: ignore[type-arg]
    channel = job._runner._intake.arrays
    return 0 if channel is None else channel.blocks_seen


def assert_same(got: object, want: object) -> None:
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.flags.f_contiguous == want.flags.f_contiguous
        assert np.array_equal(got, want)
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys()
        for k in want:
            assert_same(got[k], want[k])
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)
    else:
        assert type(got) is type(want) and got == want


@pytest.fixture(autouse=True)
def no_arena_left() -> object:
    """Every arena mapping is gone once the test dropped what it held."""
    before = arena_mappings()
    yield
    gc.collect()
    assert arena_mappings() == before, "an arena mapping outlived every array built on it"


# -- the arena without processes (unit) -------------------------------------------------------


@pytest.fixture
def arena() -> object:
    """A child's pool and a parent's table on one 1 MiB arena, in this process."""
    fd = _shm.create_arena(MIB)
    try:
        pool, table = _shm.BlockPool(fd), _shm.BlockTable(fd)
    finally:
        os.close(fd)
    yield pool, table
    pool.close()
    table.close()


def test_payloads_round_trip_and_malformed_ones_are_refused() -> None:
    """Descriptors and pickle come back as encoded; a truncated or empty header raises."""
    payload = _shm.encode_payload([(1, 8192, 100), (2, 73728, 5)], b"\x80\x05pickle")
    assert _shm.is_out_of_band(payload) and not _shm.is_out_of_band(b"\x80\x05")
    descriptors, pickled = _shm.decode_payload(payload)
    assert descriptors == [(1, 8192, 100), (2, 73728, 5)] and bytes(pickled) == b"\x80\x05pickle"
    for bad in (b"\x00", b"\x00\x00\x00\x00\x00", payload[:30]):
        with pytest.raises(ValueError):
            _shm.decode_payload(bad)


def test_a_block_is_reused_only_once_its_last_view_is_gone(arena: object) -> None:
    """Same block again once the view is dropped; a new one while it is held."""
    pool, table = arena  # type: ignore[misc]
    data = memoryview(bytes(range(256)) * 400).cast("B")
    first = pool.put(data)
    (view,) = table.buffers([first])
    assert bytes(view) == bytes(data)
    second = pool.put(data)
    assert second[0] != first[0]  # the first block is still held
    inner = memoryview(view)[:10]  # a view of the view keeps the block too
    del view
    assert pool.put(data)[0] not in (first[0], second[0])
    del inner
    gc.collect()
    assert pool.put(data)[0] == first[0]


def test_the_most_recently_used_free_block_is_taken_first(arena: object) -> None:
    """Blocks freed in sending order: the next put takes the last one sent (its pages are
    warm), not the coldest one in carving order."""
    pool, table = arena  # type: ignore[misc]
    data = memoryview(bytes(100 * KIB)).cast("B")
    sent = [pool.put(data) for _ in range(3)]
    assert len({d[0] for d in sent}) == 3
    table.release_unread(sent)
    assert pool.put(data)[0] == sent[-1][0]


def test_a_descriptor_outside_the_arena_is_refused_without_side_effects(arena: object) -> None:
    """A corrupt descriptor raises before any buffer is made or any block is counted."""
    _pool, table = arena  # type: ignore[misc]
    good = (0, _shm.STATE_BYTES, 100)
    for bad in ((0, 0, 100), (0, _shm.STATE_BYTES, 2 * MIB), (_shm.MAX_SLOTS, 8192, 1)):
        with pytest.raises(ValueError, match="outside"):
            table.buffers([good, bad])
    assert table.bytes_mapped == 0 and table.blocks_seen == 0


# -- content ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "method",
    ["forkserver", "spawn",
     pytest.param("fork", marks=pytest.mark.filterwarnings("ignore::DeprecationWarning"))],
)
def test_every_kind_of_item_arrives_intact_and_in_order(method: str) -> None:
    """dtype, shape, order and content survive for every case; big contiguous arrays come
    as views of shared memory, and the rest as ordinary copies."""
    names = wa.CASES * 2
    job = workstream.start(wa.yield_cases, names, start_method=method)
    got = list(job)
    job.result(timeout=30)
    assert len(got) == len(names)
    for name, item in zip(names, got, strict=True):
        assert_same(item, wa.make_case(name))
    by_name = dict(zip(names, got, strict=True))
    for name in ("float64", "uint8-image", "fortran-order", "structured", "readonly"):
        assert in_shared_memory(by_name[name]), name  # type: ignore[arg-type]
    for name in ("non-contiguous", "zero-d", "small-array"):
        assert not in_shared_memory(by_name[name]), name  # type: ignore[arg-type]
    assert all(in_shared_memory(a) for a in by_name["nested"]["images"])  # type: ignore[index]
    assert by_name["float64"].flags.writeable  # type: ignore[attr-defined]
    assert not by_name["readonly"].flags.writeable  # type: ignore[attr-defined]
    assert blocks_seen(job) > 0


@pytest.mark.timeout(60)
def test_emit_from_several_threads_keeps_every_array_whole() -> None:
    """Arrays emitted concurrently from threads each arrive whole and exactly once."""
    job = workstream.start(wa.emit_arrays_from_threads, 4, 50, 128 * KIB)
    seen = sorted(int(a[0]) for a in job if np.all(a == a[0]))
    assert job.result(timeout=30) == 200
    assert seen == sorted(t * 1000 + k for t in range(4) for k in range(50))


@pytest.mark.timeout(60)
def test_threshold_none_sends_everything_through_the_pipe() -> None:
    """shm_threshold=None: no arena at all, and arrays are still right."""
    before = arena_mappings()
    job = workstream.start(wa.numbered_arrays, 5, MIB, shm_threshold=None)
    arrays = list(job)
    assert arena_mappings() == before
    assert [a[0] for a in arrays] == [0, 1, 2, 3, 4]
    assert not any(in_shared_memory(a) for a in arrays)
    assert job._runner._intake.arrays is None


# -- lifetime -----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_held_views_stay_valid_after_the_job_ended() -> None:
    """100 arrays kept past the end of the job keep their content; no fd stays open for
    them, and the mapping goes with the last one."""
    before = arena_mappings()
    job = workstream.start(wa.numbered_arrays, 100, 128 * KIB)
    held = list(job)
    job.result(timeout=30)
    del job
    gc.collect()
    assert all(in_shared_memory(a) for a in held)
    assert arena_mappings() == before + 1  # alive, without any fd (the leak check sees fds)
    for i, a in enumerate(held):
        assert a.shape == (16 * KIB,) and np.all(a == i)
    held[3][:] = -1.0  # writable, and private to this item
    assert np.all(held[3] == -1.0) and np.all(held[4] == 4)
    del held, a
    gc.collect()
    assert arena_mappings() == before


@pytest.mark.timeout(60)
def test_blocks_are_reused_when_the_consumer_drops_each_array() -> None:
    """1,000 arrays through a handful of blocks: a block is reused once its array is gone."""
    job = workstream.start(wa.numbered_arrays, 1000, 100 * KIB, max_buffered_bytes=MIB)
    n = 0
    for a in job:
        assert in_shared_memory(a) and a[0] == n and a[-1] == n
        n += 1
    job.result(timeout=30)
    assert n == 1000
    # In flight at most: 1 MiB in the pipe + 1 MiB queued + one chunk + the item held.
    assert blocks_seen(job) <= 40, blocks_seen(job)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["for", "async for", "drain"])
def test_the_stream_keeps_no_array_it_handed_out(how: str) -> None:
    """Under ``async for`` as under ``for`` and ``drain()``, an array handed out lives only
    as long as the consumer holds it: the stream keeps no reference to it (nor to the
    first of a batch), although the rest of its batch is still at hand, so its
    shared-memory block can be reused at once."""
    n = 20
    job = workstream.start(
        wa.numbered_arrays, n, 100 * KIB, max_buffered_items=None, max_buffered_bytes=None
    )
    refs: list[weakref.ref[np.ndarray]] = []

    def check(a: np.ndarray) -> None:
        assert in_shared_memory(a) and a[0] == len(refs)
        refs.append(weakref.ref(a))

    async def read_async() -> None:
        await job.wait_async()  # every item is buffered now, in a few batches
        async for a in job:
            check(a)
            del a
            assert all(r() is None for r in refs), f"item {len(refs) - 1} is still held"

    if how == "async for":
        asyncio.run(read_async())
    else:
        job.wait(timeout=30)
        if how == "for":
            for a in job:
                check(a)
                del a
                assert all(r() is None for r in refs), f"item {len(refs) - 1} is still held"
        else:
            for a in job.drain():
                check(a)
                del a
    assert len(refs) == n and all(r() is None for r in refs)
    assert isinstance(job.outcome, workstream.Completed)


@pytest.mark.timeout(60)
def test_a_view_of_a_view_keeps_the_block() -> None:
    """A slice (or a memoryview of it) outliving its array keeps the block from reuse."""
    job = workstream.start(wa.numbered_arrays, 300, 100 * KIB, max_buffered_bytes=MIB)
    kept = []
    for i, a in enumerate(job):
        if i % 50 == 0:
            kept.append((i, memoryview(a[10:20])))
    job.result(timeout=30)
    for i, view in kept:
        assert np.all(np.frombuffer(view, dtype=np.float64) == i)
    del kept, view


@pytest.mark.timeout(60)
def test_copy_mode_delivers_private_arrays_and_frees_blocks_at_once() -> None:
    """shm_copy=True: arrays own their memory and blocks are reused regardless of holding."""
    job = workstream.start(
        wa.numbered_arrays, 200, 100 * KIB, shm_copy=True, max_buffered_bytes=MIB
    )
    held = list(job)
    job.result(timeout=30)
    assert [a[0] for a in held] == list(range(200))
    assert not any(in_shared_memory(a) for a in held)
    assert all(np.all(a == i) for i, a in enumerate(held))
    assert blocks_seen(job) <= 40, blocks_seen(job)


@pytest.mark.timeout(60)
def test_a_small_pool_sends_the_rest_in_band_when_everything_is_held() -> None:
    """With every item held and the pool full, later arrays travel in-band: no deadlock."""
    job = workstream.start(wa.numbered_arrays, 40, 128 * KIB, shm_pool_bytes=MIB)
    held = list(job)
    job.result(timeout=30)
    assert [a[0] for a in held] == list(range(40))
    shared = sum(in_shared_memory(a) for a in held)
    assert 0 < shared <= 8 < len(held)


# -- backpressure and cancel ------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_slow_consumer_bounds_the_bytes_in_flight() -> None:
    """Shared-memory bytes count for max_buffered_bytes; the child waits for the parent to
    read, so a slow consumer does not let it run ahead through the arena."""
    job = workstream.start(wa.numbered_arrays, 150, 256 * KIB, max_buffered_bytes=MIB)
    peak = 0
    for i, a in enumerate(job):
        assert a[0] == i
        peak = max(peak, job._core.buffered_bytes)
        time.sleep(0.002)  # ok: sleep (simulated slow consumer)
    job.result(timeout=30)
    # Queued at most: the bound + what one read can decode (itself bounded by the child).
    assert peak <= 3 * MIB, peak
    # Without the child's wait it would use ~150 blocks (one per array).
    assert blocks_seen(job) <= 24, blocks_seen(job)


@pytest.mark.timeout(60)
def test_cancel_reaches_a_child_waiting_for_room() -> None:
    """A child held back because the parent stopped reading ends cooperatively on a
    cancel (long before SIGTERM would come)."""
    job = workstream.start(
        wa.numbered_arrays_forever, MIB, max_buffered_bytes=2 * MIB, grace=30.0
    )
    wait_until(lambda: job._core.reader_paused, 20, "the runner to stop reading")
    assert blocks_seen(job) <= 8  # it did not run on through the arena: it waits
    job.cancel()
    outcome = job.wait(timeout=30)
    assert isinstance(outcome, CancelledOutcome) and outcome.rung == "cooperative"


def test_the_wait_for_room_ends_when_the_cancel_flag_is_set() -> None:
    """The child's wait for the parent to read returns once the cancel flag is set, even
    if the parent never reads again."""
    import threading

    from workstream._child._arrays import ArrayPickler

    fd = _shm.create_arena(MIB)
    try:
        pool = _shm.BlockPool(fd)
    finally:
        os.close(fd)
    control = bytearray(64)
    pickler = ArrayPickler(pool, 64 * KIB, MIB, control)
    pool._sent = 10 * MIB  # as if 10 MiB were sent and never read
    waiter = threading.Thread(target=pickler._wait_for_room, args=(MIB, MIB))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive(), "returned although nothing was read and no cancel came"
    control[0] = 1
    waiter.join(10)
    assert not waiter.is_alive()
    pickler.close()


# -- nothing left behind --------------------------------------------------------------------


def _end_by_completion() -> None:
    job = workstream.start(wa.numbered_arrays, 50, MIB)
    assert len(list(job)) == 50


def _end_by_cancel() -> None:
    job = workstream.start(wa.numbered_arrays_forever, MIB)
    for i, _a in enumerate(job):
        if i == 5:
            job.cancel()
    assert isinstance(job.wait(timeout=30), CancelledOutcome)


def _end_by_cancel_discard() -> None:
    job = workstream.start(wa.numbered_arrays_forever, MIB)
    for i, _a in enumerate(job):
        if i == 5:
            job.cancel(discard=True)
    assert isinstance(job.wait(timeout=30), CancelledOutcome)


def _end_by_child_sigkill() -> None:
    # batch_window=0: each item is written before its yield returns, so none is lost.
    job = workstream.start(wa.arrays_then_kill_self, 20, MIB, batch_window=0)
    assert len(list(job)) == 20
    outcome = job.wait(timeout=30)
    assert isinstance(outcome, Crashed) and outcome.exit_code == -signal.SIGKILL


def _end_by_parent_exception() -> None:
    with pytest.raises(KeyError), workstream.start(wa.numbered_arrays_forever, MIB) as job:
        for i, _a in enumerate(job):
            if i == 3:
                raise KeyError("consumer failed")
    assert job.done()


def _end_by_cancel_before_reading() -> None:
    job = workstream.start(wa.numbered_arrays_forever, MIB, max_buffered_bytes=4 * MIB)
    wait_until(lambda: job._core.reader_paused, 20, "the runner to stop reading")
    job.cancel(grace=0)
    job.wait(timeout=30)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "end",
    [_end_by_completion, _end_by_cancel, _end_by_cancel_discard, _end_by_child_sigkill,
     _end_by_parent_exception, _end_by_cancel_before_reading],
    ids=["completion", "cancel", "cancel-discard", "child-sigkill", "parent-exception",
         "sigkill-while-queued"],
)
def test_nothing_is_left_after_any_outcome(end: object) -> None:
    """No fd, no /dev/shm entry (the autouse leak check) and no mapping (this module's
    fixture) remain once the job ended, however it ended."""
    before = arena_mappings()
    end()  # type: ignore[operator]
    gc.collect()
    assert arena_mappings() == before


@pytest.mark.timeout(60)
def test_an_item_that_cannot_be_unpickled_here_fails_the_job_cleanly() -> None:
    """An out-of-band item whose pickle fails in the parent: DeliveryError, the arrays
    before it delivered, and nothing left behind."""
    job = workstream.start(wa.arrays_then_an_undeliverable_item, MIB)
    got = list(job)
    outcome = job.wait(timeout=30)
    assert isinstance(outcome, workstream.Failed)
    assert isinstance(outcome.error, workstream.DeliveryError)
    assert "cannot be rebuilt in the parent" in str(outcome.error)
    assert [a[0] for a in got] == [0.0, 1.0]


# -- torn arrays ------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_a_child_killed_mid_copy_never_delivers_a_torn_array() -> None:
    """SIGKILL at random moments while 16 MiB arrays are copied into reused blocks: every
    delivered array is whole (one value throughout) and they come in order."""
    rng = random.Random(1234)
    for _round in range(4):
        job = workstream.start(wa.numbered_arrays_forever, 16 * MIB, max_buffered_bytes=32 * MIB)
        delivered = 0
        kill_after = rng.randint(1, 6)
        for a in job:
            assert a[0] == delivered and np.all(a == a[0]), "torn or out-of-order array"
            delivered += 1
            if delivered == kill_after:
                # Most of the child's time goes into filling and copying 16 MiB: a kill at
                # a random moment lands in a copy more often than not.
                time.sleep(rng.random() * 0.01)  # ok: sleep (random kill moment)
                os.kill(job.pid, signal.SIGKILL)  # type: ignore[arg-type]
        outcome = job.wait(timeout=30)
        assert isinstance(outcome, Crashed)
        assert delivered >= kill_after


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "exc", "fragment"),
    [
        ({"shm_threshold": 0}, ValueError, "shm_threshold must be a positive number of bytes"),
        ({"shm_threshold": 1.5}, TypeError, "shm_threshold must be"),
        ({"shm_threshold": True}, TypeError, "shm_threshold must be"),
        ({"shm_pool_bytes": 0}, ValueError, "shm_pool_bytes must be a positive int"),
        ({"shm_pool_bytes": None}, TypeError, "shm_pool_bytes must be a positive int"),
        ({"shm_copy": 1}, TypeError, "shm_copy must be a bool"),
    ],
    ids=["threshold-0", "threshold-float", "threshold-bool", "pool-0", "pool-none", "copy-int"],
)
def test_bad_shared_memory_options_fail_at_the_call(
    options: dict[str, object], exc: type[Exception], fragment: str
) -> None:
    """A bad shared-memory option raises at start(), naming the option."""
    with pytest.raises(exc, match=fragment):
        workstream.start(wa.numbered_arrays, 1, KIB, **options)  # type: ignore[arg-type]


# -- interpreter exit -------------------------------------------------------------------------

_EXIT_SCRIPT = """
import atexit, sys
sys.path.insert(0, {tests!r})
import numpy as np
held = []
atexit.register(lambda: print("sum", sum(int(a[0]) for a in held), flush=True))
import workstream, workers_arrays as wa
if __name__ == "__main__":
    held.extend(workstream.start(wa.numbered_arrays, 10, 128 * 1024))
"""


@pytest.mark.timeout(60)
def test_arrays_are_still_readable_in_atexit_handlers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Arrays kept until interpreter exit stay mapped while atexit handlers run."""
    import subprocess
    import sys

    script = tmp_path / "hold.py"
    script.write_text(_EXIT_SCRIPT.format(tests=os.path.dirname(__file__)))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=50
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "sum 45"


# -- torch tensors (a stand-in: torch is not installed in CI) ----------------------------------


@pytest.mark.timeout(60)
def test_cpu_tensors_travel_as_shared_memory_views(monkeypatch: pytest.MonkeyPatch) -> None:
    """With torch imported in the child, eligible tensors (top level or directly in a
    container) come back through torch.from_numpy on shared memory; the others keep
    torch's own pickling."""
    monkeypatch.setitem(__import__("sys").modules, "torch", wa.fake_torch_module())
    job = workstream.start(wa.fake_tensors, MIB)
    big, in_dict, grad, small, nested = list(job)
    job.result(timeout=30)
    assert big.via_from_numpy and in_shared_memory(big.array)
    assert big.array.dtype == np.float32 and np.all(big.array == 1.0)
    assert in_dict["loss"] == 0.5 and in_dict["features"].via_from_numpy
    assert in_shared_memory(in_dict["features"].array)
    assert not grad.via_from_numpy and np.all(grad.array == 3.0)  # autograd: torch's way
    assert not small.via_from_numpy and list(small.array) == list(range(10))
    assert not nested["outer"]["inner"].via_from_numpy  # two levels deep: torch's way
    assert np.all(nested["outer"]["inner"].array == 5.0)
    del big, in_dict


@pytest.mark.timeout(60)
def test_a_warm_workers_jobs_share_one_arena() -> None:
    """Arrays through a Worker: jobs in turn use the process's arena; arrays held from
    an earlier job stay intact while later jobs reuse free blocks."""
    with workstream.Worker() as worker:
        first = list(worker.start(wa.numbered_arrays, 20, 128 * KIB))
        for _ in range(3):
            job = worker.start(wa.numbered_arrays, 50, 128 * KIB, max_buffered_bytes=MIB)
            for i, a in enumerate(job):
                assert in_shared_memory(a) and np.all(a == i)
            assert job.wait(timeout=30).kept_warm
        copies = list(worker.start(wa.numbered_arrays, 5, 128 * KIB, shm_copy=True))
        assert not any(in_shared_memory(a) for a in copies)
    assert all(in_shared_memory(a) and np.all(a == i) for i, a in enumerate(first))
    del first, a
