"""Child target functions for tests/test_output*.py (importable under every start method)."""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import workstream


def all_kinds() -> int:
    """Write through every path: print, sys.stderr, fd 1/2, a subprocess, logging, C."""
    print("py out")
    print("py err", file=sys.stderr)
    os.write(1, b"fd out\n")
    os.write(2, b"fd err\n")
    subprocess.run([sys.executable, "-c", "print('sub out')"], check=True)
    log = logging.getLogger("worker.log")
    log.setLevel(logging.DEBUG)
    log.debug("debug %s", "record")
    log.error("error record")
    ctypes.CDLL(None).printf(b"c printf\n")  # buffered by libc: a pipe is not a tty
    return 7


def tagged_order(n: int) -> None:
    """Python-level stdout, stderr and logging, interleaved: one order in the parent."""
    log = logging.getLogger("order")
    for i in range(n):
        print(f"out {i}")
        print(f"err {i}", file=sys.stderr)
        log.warning("log %d", i)


def raw_lines(stream_fd: int, n: int) -> None:
    """n numbered lines through the raw fd (no Python buffering)."""
    for i in range(n):
        os.write(stream_fd, f"raw {i}\n".encode())


def partial_last_line() -> None:
    print("no newline at the end", end="")


def threads_printing(n_threads: int, n_lines: int, width: int) -> None:
    """Several threads print long lines at once: each must arrive whole."""

    def run(k: int) -> None:
        line = chr(ord("a") + k) * width
        for _ in range(n_lines):
            print(line)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def flood_fd(total_bytes: int) -> int:
    """total_bytes of 100-byte lines written to fd 1 in 1 MiB chunks."""
    line = b"x" * 99 + b"\n"
    chunk = line * ((1 << 20) // len(line))
    written = 0
    while written < total_bytes:
        view = memoryview(chunk)
        while view:  # whole chunks: every line complete
            n = os.write(1, view)
            view = view[n:]
            written += n
    os.write(1, b"flood done\n")
    return written


def flood_print(n: int) -> int:
    for i in range(n):
        print(f"line {i}")
    return n


def die_after_stderr(how: str) -> None:
    """Write a few stderr lines, then die without reporting."""
    faulthandler.disable()  # pytest's, inherited under fork: its report would fill the tail
    for i in range(30):
        print(f"err line {i}", file=sys.stderr)
    os.write(2, b"last words from fd 2\n")
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    os.abort()


def print_until_cancelled() -> Iterator[str]:
    """Yield a marker, then loop until cancelled; print in the finally block."""
    try:
        print("before the marker")
        yield "ready"
        while True:
            workstream.check_cancelled()
            threading.Event().wait(0.01)
    finally:
        print("in finally", flush=True)
        print("stderr in finally", file=sys.stderr, flush=True)


def say(text: str) -> str:
    print(text)
    return text


def basic_config_then_log() -> None:
    """A worker that configures logging itself, as a script run alone would."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("app").info("info after basicConfig")
