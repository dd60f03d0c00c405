"""Prototype: how much of workstream's one-item latency is the second hand-off in the parent?

Design-time experiment for issue 5 (single-item latency within 2x of a bare Pipe), not
part of the suite. A plain child process writes one length-prefixed pickled timestamp
(``perf_counter_ns()``) to a pipe every ``--interval`` ms; the parent receives it in one
of three ways and keeps receipt time - stamp (one-way latency, CLOCK_MONOTONIC):

* ``direct``: the consumer thread polls and reads the pipe itself (one wake-up, like a
  bare ``multiprocessing.Pipe``);
* ``runner``: workstream's present shape: a runner thread polls the pipe (and a wake
  pipe), reads, decodes, queues the batch and notifies a Condition; the consumer waits on
  that Condition (two wake-ups, and the consumer needs the GIL the runner holds until
  it blocks again);
* ``parked``: the runner as above, but a consumer that finds nothing queued *parks* it
  (a flag + one byte on the runner's wake pipe: the runner stops polling the data pipe),
  polls the data pipe itself, and un-parks the runner (another wake byte) once it has
  an item: one wake-up on the item's path, two extra runner wake-ups off it;
* ``sleep(0)``: the runner as above, then ``time.sleep(0)`` right after the notify: it
  releases the GIL at once, so the woken consumer need not wait for the runner to block;
* ``parked, lazy``: the same, but the consumer keeps the pipe between ``take()`` calls
  (the runner stays parked while the consumer iterates; the bound of what parking gives).

``--flood``: the child writes its frames as fast as it can (one ``write`` per item) and
the figure is items/s between the first and the last receipt: does a mode cost
throughput?

    python -m bench.latency_handoff [--n 2000] [--interval 2] [--repeats 3] [--flood]
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import select
import statistics
import sys
import threading
import time
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import multiprocessing as mp

from bench import _workers as w

WARMUP = 20


class Frames:
    """Length-prefixed pickles out of a byte stream."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, chunk: bytes) -> list[Any]:
        buf = self.buf
        buf += chunk
        out, pos = [], 0
        while len(buf) - pos >= 4:
            (size,) = w.LENGTH.unpack_from(buf, pos)
            if len(buf) - pos - 4 < size:
                break
            out.append(pickle.loads(bytes(buf[pos + 4 : pos + 4 + size])) if size else None)
            pos += 4 + size
        del buf[:pos]
        return out


def _start(n: int, interval: float) -> tuple[Any, int]:
    ctx = mp.get_context("forkserver")
    r, wr = ctx.Pipe(duplex=False)
    p = ctx.Process(target=w.tick_frames, args=(wr, n + WARMUP, interval), daemon=True)
    p.start()
    wr.close()
    return p, r


def run_direct(n: int, interval: float) -> list[tuple[int, int]]:
    p, conn = _start(n, interval)
    fd, frames, now = conn.fileno(), Frames(), time.perf_counter_ns
    lat: list[tuple[int, int]] = []
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    done = False
    while not done:
        poller.poll()
        for ts in frames.feed(os.read(fd, 1 << 20)):
            if ts is None:
                done = True
                break
            lat.append((ts, now()))
    p.join()
    conn.close()
    return lat


class Channel:
    """The runner thread and the consumer's side; ``park`` selects the parked variant."""

    def __init__(self, fd: int, park: str | None) -> None:
        self.fd, self.park = fd, park
        self.frames = Frames()
        self.cond = threading.Condition()
        self.queue: collections.deque[Any] = collections.deque()
        self.reader = threading.Lock()  # one reader of the data pipe at a time
        self.consumer_reads = False
        self.wake_r, self.wake_w = os.pipe()
        self.ended = False
        self.runner = threading.Thread(target=self._run, daemon=True)
        self.runner.start()

    def _read(self) -> None:
        with self.reader:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                return
            items = self.frames.feed(chunk)
        with self.cond:
            for item in items:
                if item is None:
                    self.ended = True
                else:
                    self.queue.append(item)
            self.cond.notify_all()
        if self.park == "yield":
            time.sleep(0)  # release the GIL now: the woken consumer takes it at once

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        polling_data = False
        while not self.ended:
            want = not self.consumer_reads
            if want != polling_data:
                if want:
                    poller.register(self.fd, select.POLLIN)
                else:
                    poller.unregister(self.fd)
                polling_data = want
            for fd, _ev in poller.poll(100):
                if fd == self.wake_r:
                    os.read(self.wake_r, 64)
                elif not self.consumer_reads:
                    self._read()

    def take(self) -> Any:
        with self.cond:
            if self.queue:
                return self.queue.popleft()
            if self.ended:
                return None
            if self.park in (None, "yield"):
                while not self.queue and not self.ended:
                    self.cond.wait()
                return self.queue.popleft() if self.queue else None
            parked, self.consumer_reads = self.consumer_reads, True
        if not parked:
            os.write(self.wake_w, b"p")  # park the runner
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        try:
            while True:
                with self.cond:
                    if self.queue:
                        return self.queue.popleft()
                    if self.ended:
                        return None
                poller.poll(100)
                os.set_blocking(self.fd, False)
                self._read()
        finally:
            if self.park == "eager":
                self.consumer_reads = False
                os.write(self.wake_w, b"u")  # un-park it

    def close(self) -> None:
        self.runner.join(5)
        os.close(self.wake_r)
        os.close(self.wake_w)


def run_channel(n: int, interval: float, park: str | None) -> list[tuple[int, int]]:
    p, conn = _start(n, interval)
    ch = Channel(conn.fileno(), park)
    lat: list[tuple[int, int]] = []
    now = time.perf_counter_ns
    while True:
        ts = ch.take()
        if ts is None:
            break
        lat.append((ts, now()))
    ch.close()
    p.join()
    conn.close()
    return lat


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=2.0, help="ms between items")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flood", action="store_true",
                        help="the child writes as fast as it can: report items/s instead")
    args = parser.parse_args(argv)
    interval = 0.0 if args.flood else args.interval / 1e3
    modes = {
        "direct (consumer reads)": lambda: run_direct(args.n, interval),
        "runner + Condition (workstream's shape)": lambda: run_channel(args.n, interval, None),
        "runner + Condition, sleep(0) after notify": lambda: run_channel(args.n, interval, "yield"),
        "runner parked while the consumer waits": lambda: run_channel(args.n, interval, "eager"),
        "runner parked, consumer keeps the pipe": lambda: run_channel(args.n, interval, "lazy"),
    }
    med: dict[str, list[float]] = {k: [] for k in modes}
    for rep in range(args.repeats):
        for name, fn in modes.items():
            got = fn()[WARMUP:]
            if args.flood:  # items/s between the first and the last receipt
                med[name].append((len(got) - 1) / ((got[-1][1] - got[0][1]) / 1e9))
            else:
                med[name].append(statistics.median(r - s for s, r in got) / 1e3)
            print(f"rep {rep + 1} {name:42s} {med[name][-1]:9.1f}", file=sys.stderr)
    best = max if args.flood else min
    ref = best(med["direct (consumer reads)"])
    unit = "items/s" if args.flood else "us"
    what = "flood" if args.flood else f"one-way latency, items every {args.interval:g} ms"
    print(f"{what}, {args.n} items, best of {args.repeats}")
    for name, values in med.items():
        print(f"{name:42s} {best(values):10.1f} {unit}  x direct {best(values) / ref:5.2f}  "
              f"(runs {', '.join(f'{v:.1f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
