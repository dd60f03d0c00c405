"""How many items does a hard crash lose? A flood killed right after its last yield.

The child yields ``n`` small ints as fast as it can and SIGKILLs itself right after the
last ``yield``; the parent counts what arrived. Reported per run, for the default
``batch_window`` (1 ms) and for ``batch_window=0`` (write-through). Both must lose none:
every item is in the item log before its ``yield`` returns (issue 11), and the parent
recovers from it what the pipe did not carry.

    python -m bench.crash_loss [--n 200000] [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from collections.abc import Iterator

import workstream


def flood_then_die(n: int) -> Iterator[int]:
    yield from range(n)
    os.kill(os.getpid(), signal.SIGKILL)


def run(n: int, window: float) -> tuple[int, float]:
    job = workstream.start(flood_then_die, n, batch_window=window)
    t = time.perf_counter()
    got = sum(1 for _ in job)
    rate = got / (time.perf_counter() - t)
    job.wait(timeout=60)
    return n - got, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    for window in (0.001, 0.0):
        results = [run(args.n, window) for _ in range(args.runs)]
        lost = [lost for lost, _ in results]
        rate = max(r for _, r in results)
        print(
            f"batch_window={window}: lost per run {lost}; max {max(lost)} items "
            f"= {max(lost) / rate * 1e3:.2f} ms of the stream at {rate / 1e3:.0f} k items/s"
        )


if __name__ == "__main__":
    main()
