"""Child functions for the clean-up tests (``tests/test_cleanup.py``).

Importable by every start method (conftest puts this directory on ``sys.path``). Each
function reports that it reached the point under test by yielding or emitting an item;
what its clean-up did it records as marker files in ``folder`` (the test checks them
once ``wait()`` returned). Sleeps inside children only simulate slow clean-up work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import workstream


class Res:
    """A local whose finalizer leaves a marker file: it exists once the object is freed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __del__(self) -> None:
        open(self.path, "w").close()


class Ctx:
    """A context manager whose ``__exit__`` leaves a marker file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> Ctx:
        return self

    def __exit__(self, *exc: object) -> None:
        open(self.path, "w").close()


def _mark(folder: str, name: str) -> None:
    open(os.path.join(folder, name), "w").close()


# -- the snippet and its variants ------------------------------------------------


def gen_with_local(folder: str) -> Iterator[int]:
    """The issue's snippet: a local with a finalizer, then yield forever."""
    r = Res(os.path.join(folder, "del"))  # noqa: F841 - held by the frame on purpose
    while True:
        yield 1


def gen_with_block(folder: str) -> Iterator[int]:
    """A local, a ``with`` block and a ``finally`` around an endless yield loop."""
    r = Res(os.path.join(folder, "del"))  # noqa: F841
    with Ctx(os.path.join(folder, "exit")):
        try:
            while True:
                yield 1
        finally:
            _mark(folder, "finally")


def emit_with_local(folder: str) -> None:
    """A plain function: a local with a finalizer, then emit() forever."""
    r = Res(os.path.join(folder, "del"))  # noqa: F841
    with Ctx(os.path.join(folder, "exit")):
        while True:
            workstream.emit(1)


def check_cancelled_with_local(folder: str) -> Iterator[str]:
    """Yield once, mark "running" (past the yield: a cancel can no longer be raised
    there), then spin on check_cancelled(): Cancelled is raised inside user code."""
    r = Res(os.path.join(folder, "del"))  # noqa: F841
    yield "ready"
    _mark(folder, "running")
    while True:
        workstream.check_cancelled()


def spin_with_local(folder: str) -> Iterator[str]:
    """Yield once, mark "running", then spin with no cancellation point: only SIGTERM
    stops it."""
    r = Res(os.path.join(folder, "del"))  # noqa: F841
    yield "ready"
    _mark(folder, "running")
    while True:
        pass


def gen_fails_keeping_exception(folder: str) -> Iterator[int]:
    """Yield once, then fail, keeping the exception in a local of a frame on its
    traceback (``saved = e``): a cycle exception -> traceback -> frame -> exception."""
    r = Res(os.path.join(folder, "del"))  # noqa: F841
    yield 1
    try:
        raise ValueError("boom")
    except ValueError as e:
        saved = e  # noqa: F841
        raise


# -- clean-up that misbehaves --------------------------------------------------------------


def finally_hangs(folder: str) -> Iterator[int]:
    """A ``finally`` that never returns: only SIGKILL ends the job."""
    try:
        while True:
            yield 1
    finally:
        _mark(folder, "finally-started")
        threading.Event().wait()


def finally_raises(folder: str) -> Iterator[int]:
    """A ``finally`` that raises while the cancel unwinds the generator."""
    try:
        while True:
            yield 1
    finally:
        raise OSError("disk full while saving the checkpoint")


def finally_yields(folder: str) -> Iterator[str]:
    """A ``finally`` that yields one last item (allowed on a cancel: it is delivered)."""
    try:
        while True:
            yield "work"
    finally:
        _mark(folder, "finally")
        yield "last words"


class ExitOnPickle:
    """An item whose pickling raises SystemExit (a BaseException) in the sender."""

    def __reduce__(self) -> Any:
        raise SystemExit(3)


def unsendable_then_finally_yields(folder: str) -> Iterator[object]:
    """Yield an item that cannot be sent (SystemExit while pickling it); the generator,
    closed by the worker, yields again in its ``finally``: RuntimeError from close()."""
    r = Res(os.path.join(folder, "del"))  # noqa: F841
    try:
        yield ExitOnPickle()
    finally:
        _mark(folder, "finally")
        yield "ignored GeneratorExit"


# -- descendants ---------------------------------------------------------------------------

# A grandchild that waits for EOF on its stdin (its parent, the worker, holds the only
# write end), then spends ``delay`` seconds cleaning up and leaves a marker. With
# ``ignore_eof`` it never exits by itself.
_GRANDCHILD = r"""
import os, sys, time
marker, delay, ignore_eof = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
print(os.getpid(), flush=True)
sys.stdin.buffer.read()
while ignore_eof:
    time.sleep(3600)  # ok: sleep (a grandchild that never exits by itself)
time.sleep(delay)  # ok: sleep (simulated clean-up work)
open(marker, "w").close()
"""

_KEEP: list[subprocess.Popen[bytes]] = []  # the worker keeps its grandchildren's handles


def _start_grandchild(folder: str, delay: float, ignore_eof: bool) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", _GRANDCHILD, os.path.join(folder, "grandchild"), str(delay),
         "1" if ignore_eof else "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())  # it runs: it will see EOF when the worker exits
    _KEEP.append(proc)
    return pid


def start_grandchild_and_return(folder: str, delay: float, ignore_eof: bool) -> int:
    """Start a grandchild (see above) and return its pid: the job completes at once."""
    return _start_grandchild(folder, delay, ignore_eof)


def start_grandchild_and_yield(folder: str, delay: float) -> Iterator[int]:
    """Start a grandchild, yield its pid, then yield forever (cancel it)."""
    yield _start_grandchild(folder, delay, False)
    while True:
        yield -1


def start_stubborn_grandchild_yield_and_return(folder: str) -> Iterator[int]:
    """Start a grandchild that ignores our exit, yield its pid, return."""
    yield _start_grandchild(folder, 0.0, True)


# -- PyTorch -------------------------------------------------------------------------------


def _shm_semaphores() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("sem.")}
    except OSError:
        return set()


_QUEUES: list[Any] = []  # kept alive on purpose, as a module-level cache would


def queue_kept_alive() -> Iterator[list[str]]:
    """Create a multiprocessing queue (its lock and semaphore are named: /dev/shm/sem.*)
    that stays referenced by a module global, yield the semaphores it created, then
    yield forever."""
    import multiprocessing

    before = _shm_semaphores()
    queue = multiprocessing.get_context("spawn").Queue()
    queue.put(1)  # starts its feeder thread, which holds the queue's lock and semaphore
    _QUEUES.append(queue)
    yield sorted(_shm_semaphores() - before)
    while True:
        yield []


def _loader_report(before: set[str]) -> tuple[list[int], list[str]]:
    import multiprocessing

    pids = sorted(p.pid for p in multiprocessing.active_children() if p.pid is not None)
    return pids, sorted(_shm_semaphores() - before)


def dataloader_forever(named_iterator: bool) -> Iterator[object]:
    """Iterate a torch DataLoader with two worker processes forever.

    The first item is ``(worker pids, /dev/shm semaphores created since the start)``;
    then one int per batch. ``named_iterator``: hold the iterator in a local (the case
    that leaked); otherwise a ``for`` loop holds it on the frame's stack.
    """
    import workers_torch

    before = _shm_semaphores()
    loader = workers_torch.make_loader()
    first = True
    if named_iterator:
        it = iter(loader)
        while True:
            batch = next(it)
            yield _loader_report(before) if first else int(batch.shape[0])
            first = False
    for batch in loader:
        yield _loader_report(before) if first else int(batch.shape[0])
        first = False
