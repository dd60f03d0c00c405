"""Child-side fault injection for the fault matrix (``tests/test_fault_matrix.py``).

Importable by every start method. :func:`cell` runs the child of one matrix cell: it
reaches ``phase``, creates ``marker`` (so the test knows the child is there), then commits
``fault``. Faults that must happen while the child is being unpickled, imported or
pickled travel as objects whose ``__reduce__`` points back here.

Sleeps here are only the "stuck" faults themselves or bounded polls of the child's own
write counter.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import workstream

ITEMS_BEFORE = 3  # items a mid-stream cell yields before its fault
EXIT_CODE = 3  # os._exit() code of the os-exit fault
SYS_EXIT_CODE = 5  # sys.exit() code of the sys-exit fault
PAD = 3000  # item padding in the channel-full phase (a 4 KiB pipe holds one item)
BIG = 4 << 20  # the item that is larger than any pipe buffer


class UnpicklableError(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class BadStrError(Exception):
    """An exception whose ``str()`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


def mark(path: str, text: str = "") -> None:
    """Create ``path`` atomically with ``text`` in it."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def _spawn_grandchild() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # ok: sleep
    return proc.pid


def _stuck_in_c() -> None:
    """Sit in a C call that holds the GIL and never checks for signals (SIGTERM blocked)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    ctypes.PyDLL(None).sleep(300)  # ok: sleep (the stuck C call under test)


SHM_ITEM_BYTES = 256 * 1024  # above the default shm_threshold (64 KiB)


def _fault_inside_shm_write(fault: str, marker: str) -> None:
    """Make the next shared-memory write commit ``fault`` inside ``BlockPool.put``: the
    slot is taken and the bytes are in the block, but its descriptor has not been
    returned, so it never reaches the pipe (a kill in the middle of the copy is the
    same window, with fewer bytes written)."""
    from workstream._transport import _shm

    original = _shm.BlockPool.put

    def put(self: Any, raw: memoryview) -> Any:
        original(self, raw)
        commit(fault, marker)
        raise AssertionError("not reached")

    _shm.BlockPool.put = put  # type: ignore[method-assign]


def commit(fault: str, marker: str) -> None:
    """Commit ``fault`` now (after creating ``marker``). Returns only for faults that are
    not terminal here (big-item, unpicklable-item: the caller yields them)."""
    if fault == "subprocess":
        mark(marker, str(_spawn_grandchild()))
        os._exit(EXIT_CODE)
    if fault in ("parent-killed", "subprocess-stuck"):
        mark(marker, f"{os.getpid()} {_spawn_grandchild()}")
        _stuck_in_c()
    mark(marker)
    if fault == "exception":
        raise ValueError("injected fault")
    if fault == "sys-exit":
        sys.exit(SYS_EXIT_CODE)
    if fault == "os-exit":
        os._exit(EXIT_CODE)
    if fault == "sigsegv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if fault == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "sigterm-ignored-spin":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            pass
    if fault == "sigterm-handler-replaced-spin":
        signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the user's own handler
        while True:
            pass
    if fault == "stuck-in-c":
        _stuck_in_c()
    if fault == "unpicklable-exception":
        raise UnpicklableError("injected unpicklable fault")
    if fault == "exception-bad-str":
        raise BadStrError()
    if fault in ("big-item", "unpicklable-item"):
        return
    raise AssertionError(f"unknown fault {fault!r}")


# -- faults that travel inside a pickle ----------------------------------------------------


class FaultOnUnpickle:
    """Unpickling this object (in the child) commits the fault."""

    def __init__(self, fault: str, marker: str) -> None:
        self.fault, self.marker = fault, marker

    def __reduce__(self) -> tuple[object, ...]:
        return (commit, (self.fault, self.marker))


IMPORT_FAULT: tuple[str, str] | None = None  # read by workers_importfault at import


def import_with_fault(fault: str, marker: str) -> None:
    """Import ``workers_importfault`` afresh; its top-level code commits the fault."""
    global IMPORT_FAULT
    IMPORT_FAULT = (fault, marker)
    sys.modules.pop("workers_importfault", None)
    importlib.import_module("workers_importfault")


class FaultOnImport:
    """Unpickling this object (in the child) imports a module whose import faults."""

    def __init__(self, fault: str, marker: str) -> None:
        self.fault, self.marker = fault, marker

    def __reduce__(self) -> tuple[object, ...]:
        return (import_with_fault, (self.fault, self.marker))


class FaultOnPickle:
    """Pickling this object (the child's return value) commits the fault."""

    def __init__(self, fault: str, marker: str) -> None:
        self.fault, self.marker = fault, marker

    def __reduce__(self) -> tuple[object, ...]:
        if self.fault == "unpicklable-item":
            raise TypeError("cannot pickle 'FaultOnPickle' object (injected)")
        commit(self.fault, self.marker)
        return (str, ("not reached",))


def fault_in_parent(fault: str) -> object:
    """The reconstructor of :class:`FaultInParent`: faults only outside a worker."""
    if workstream.in_worker():
        return "harmless in the child"
    if fault == "exception":
        raise ValueError("injected fault in the parent's unpickling")
    if fault == "sys-exit":
        sys.exit(SYS_EXIT_CODE)
    raise AssertionError(fault)


class FaultInParent:
    """Pickles fine in the child; unpickling it in the parent commits the fault."""

    def __init__(self, fault: str) -> None:
        self.fault = fault

    def __reduce__(self) -> tuple[object, ...]:
        return (fault_in_parent, (self.fault,))


class FaultOnFlush:
    """A stand-in for ``sys.stdout`` whose ``flush()`` (run by the child after its final
    frame, just before it exits) commits the fault."""

    def __init__(self, fault: str, marker: str) -> None:
        self.fault, self.marker = fault, marker

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        commit(self.fault, self.marker)


# -- the child of one cell ------------------------------------------------------------------


def _wait_for_write_stall(window: float) -> None:
    """Return once this process wrote nothing for ``window`` s (per /proc/self/io)."""

    def wchar() -> int:
        with open("/proc/self/io") as f:
            return int(next(ln for ln in f if ln.startswith("wchar:")).split()[1])

    last, since = wchar(), time.monotonic()
    while True:
        time.sleep(0.01)  # ok: sleep (bounded poll of the kernel's write counter)
        now = wchar()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= window:
            return


def cell(phase: str, fault: str, marker: str, *pickled: object) -> Iterator[object]:
    """The child of one matrix cell (``pickled`` carries the unpickle/import faults)."""
    if phase == "mid-stream":
        yield from range(ITEMS_BEFORE)
        commit(fault, marker)
        if fault == "big-item":
            yield b"x" * BIG
            return "done"
        if fault == "unpicklable-item":
            yield threading.Lock()
        raise AssertionError("not reached")
    if phase == "channel-full":
        yield from _channel_full(fault, marker)
        raise AssertionError("not reached")
    if phase == "shm-write":
        import numpy

        yield from range(ITEMS_BEFORE)
        _fault_inside_shm_write(fault, marker)
        yield numpy.arange(SHM_ITEM_BYTES // 8, dtype=numpy.float64)  # out-of-band
        raise AssertionError("not reached")
    if phase == "pickle-final":
        yield from range(ITEMS_BEFORE)
        return FaultOnPickle(fault, marker)
    if phase == "parent-unpickle-item":
        yield from range(ITEMS_BEFORE)
        yield FaultInParent(fault)
        mark(marker)
        while True:  # until the parent's own cancel (the item could not be delivered)
            workstream.check_cancelled()
            time.sleep(0.002)  # ok: sleep (simulated work between cancellation points)
    if phase == "parent-unpickle-final":
        yield from range(ITEMS_BEFORE)
        mark(marker)
        return FaultInParent(fault)
    if phase == "after-final":
        yield from range(ITEMS_BEFORE)
        sys.stdout = FaultOnFlush(fault, marker)  # type: ignore[assignment]
        return "done"
    if phase.startswith("cancel-"):
        yield from range(ITEMS_BEFORE)
        yield from _during_cancel(phase, fault, marker)
        raise AssertionError("not reached")
    if phase in ("child-unpickle", "child-import", "startup", "handshake"):
        # The fault already happened (or will not: a phase that faulted returns never).
        raise AssertionError(f"{phase}: the fault did not stop the child")
    raise AssertionError(f"unknown phase {phase!r}")


def _during_cancel(phase: str, fault: str, marker: str) -> Iterator[object]:
    armed = marker + ".armed"
    if fault in ("subprocess-stuck", "parent-killed"):
        # Start the subprocess before the cancel can come: a short grace must not kill
        # the child before it has one.
        mark(marker, f"{os.getpid()} {_spawn_grandchild()}")
        fault = "prespawned"
    if phase == "cancel-sigkill":
        # The whole cancel is ignored: SIGTERM and the flag; only SIGKILL ends it.
        if fault == "sigterm-ignored-spin":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            mark(armed)
            while True:
                pass
        mark(armed)
        _commit_in_cancel(fault, marker)
        raise AssertionError("not reached")
    try:
        mark(armed)
        if phase == "cancel-cooperative":
            while True:
                workstream.check_cancelled()
                time.sleep(0.002)  # ok: sleep (simulated work between cancellation points)
        else:  # cancel-sigterm: a long call in user code that SIGTERM interrupts
            time.sleep(300)  # ok: sleep (the call SIGTERM must interrupt)
    finally:
        _commit_in_cancel(fault, marker)
    yield "not reached"


def _commit_in_cancel(fault: str, marker: str) -> None:
    if fault == "prespawned":  # the marker already holds the pids
        _stuck_in_c()
    commit(fault, marker)


def _channel_full(fault: str, marker: str) -> Iterator[object]:
    """Flood padded items; once the writes stall (the parent stopped reading and the pipe
    is full), a helper thread records how many items were written whole and faults."""
    written = [0]

    from workstream._child import _context

    assert _context._current is not None
    write_lock = _context._current.sender._write_lock

    def helper() -> None:
        # Stalled *inside* a write (the sender's write lock is held): not merely a main
        # thread that a loaded machine did not schedule for a while.
        _wait_for_write_stall(0.15)
        while not write_lock.locked():
            _wait_for_write_stall(0.15)
        # The main thread is blocked writing item written[0]: items before it are whole.
        mark(marker + ".count", str(written[0]))
        commit(fault, marker)

    threading.Thread(target=helper, daemon=True).start()
    i = 0
    blob = b"x" * PAD
    while True:
        written[0] = i
        yield (i, blob)
        i += 1


# -- start-up and handshake faults (fork only: the patch is inherited) ---------------------


def startup_fault(fault: str, marker: str) -> object:
    """A replacement for ``_runtime.set_parent_death_signal`` that faults instead."""

    def patched(sig: int) -> None:
        commit(fault, marker)

    return patched


def handshake_fault(original: object, fault: str, marker: str) -> object:
    """A replacement for ``Sender.send_ready`` that sends READY, then faults."""

    def patched(self: object) -> None:
        original(self)  # type: ignore[operator]
        commit(fault, marker)

    return patched
