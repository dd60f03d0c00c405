"""``Pool.map(chunksize=k)`` / ``map_async(chunksize=k)``: a job runs ``fn`` over up to
``k`` inputs; results keep input order, an error raises at its input's position, leaving
early cancels the chunk being read too."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

import workers_pool as wp
import workers_stream as ws
import workstream
from conftest import wait_until


@pytest.mark.parametrize("k", [2, 3, 7, 50])
def test_chunked_map_keeps_input_order_and_runs_one_job_per_chunk(k: int) -> None:
    n = 20
    with workstream.Pool(2) as pool:
        before = pool.stats().submitted
        assert list(pool.map(wp.square, range(n), chunksize=k)) == [x * x for x in range(n)]
        assert pool.stats().submitted - before == -(-n // k)
        got = list(pool.map(wp.square, range(n), ordered=False, chunksize=k))
        assert sorted(got) == [x * x for x in range(n)]
        assert list(pool.map(wp.square, [], chunksize=k)) == []


def test_chunked_map_raises_at_the_position_of_the_input_that_raised() -> None:
    with workstream.Pool(2) as pool:
        got = []
        with pytest.raises(workstream.WorkerError, match="bad input 5"):
            for r in pool.map(functools.partial(wp.fail_on, bad=5), range(12), chunksize=4):
                got.append(r)
        assert got == [0, 1, 2, 3, 4]
        wait_until(lambda: pool.stats().running + pool.stats().queued == 0, 30, "cancels")


def test_chunked_map_of_a_generator_fn_gives_its_return_values() -> None:
    with workstream.Pool(1) as pool:
        assert list(pool.map(wp.numbers, [1, 2, 3], chunksize=2)) == [1, 2, 3]


def test_leaving_a_chunked_map_early_cancels_the_chunk_being_read(tmp_path: Any) -> None:
    gate = ws.make_gate(str(tmp_path), "g")
    with workstream.Pool(1) as pool:
        it = pool.map(wp.maybe_gate, [None, gate], chunksize=2)
        assert next(it) == 0  # the chunk's job is now blocked on the gate, in its second input
        wait_until(lambda: pool.stats().running == 1, 30, "the chunk to run")
        it.close()  # type: ignore[attr-defined]
        wait_until(lambda: pool.stats().running + pool.stats().queued == 0, 30, "the cancel")
        assert pool.stats().finished == pool.stats().submitted


def test_chunked_map_async_in_order_unordered_and_error() -> None:
    async def main(pool: workstream.Pool) -> list[int]:
        out = [r async for r in pool.map_async(wp.square, range(13), chunksize=4)]
        unordered = [
            r async for r in pool.map_async(wp.square, range(13), ordered=False, chunksize=4)
        ]
        assert sorted(unordered) == out
        got = []
        with pytest.raises(workstream.WorkerError, match="bad input 6"):
            async for r in pool.map_async(
                functools.partial(wp.fail_on, bad=6), range(12), chunksize=4
            ):
                got.append(r)
        assert got == [0, 1, 2, 3, 4, 5]
        return out

    with workstream.Pool(2) as pool:
        assert asyncio.run(main(pool)) == [x * x for x in range(13)]


def test_chunksize_must_be_a_positive_int() -> None:
    with workstream.Pool(1) as pool:
        with pytest.raises(ValueError, match="chunksize must be a positive int"):
            pool.map(wp.square, [1], chunksize=0)
        with pytest.raises(TypeError, match="chunksize must be a positive int"):
            pool.map(wp.square, [1], chunksize=2.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="chunksize must be a positive int"):
            pool.map_async(wp.square, [1], chunksize=True)
        with pytest.raises(ValueError, match="chunksize must be a positive int"):
            pool.map_async(wp.square, [1], chunksize=-1)
