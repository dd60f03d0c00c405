"""Child functions for the crash-report and memory-limit tests (``tests/test_crash*.py``,
``tests/test_memory_limit.py``).

Importable by every start method (conftest puts this directory on ``sys.path``). Each
line a report must name carries a ``# CRASH-LINE: <tag>`` comment, found by
:func:`line_of` (so editing this file does not break the tests).
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import workstream


def line_of(tag: str) -> int:
    """The line number of the ``# CRASH-LINE: <tag>`` comment in this file."""
    with open(__file__, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.rstrip().endswith(f"# CRASH-LINE: {tag}"):
                return number
    raise LookupError(tag)


def _step_segv() -> None:
    ctypes.string_at(0)  # CRASH-LINE: segv


def segfault_after_items(n: int) -> Iterator[int]:
    """Yield ``n`` items, then dereference NULL inside a helper (a SIGSEGV in C code
    called from ``_step_segv``)."""
    yield from range(n)
    _step_segv()


def _park() -> None:
    threading.Event().wait()


def segfault_with_threads() -> None:
    """A SIGSEGV while another thread of the user's is blocked: both stacks are reported."""
    threading.Thread(target=_park, name="parked", daemon=True).start()
    _step_segv()


def crash_inside_numpy() -> float:
    """A SIGSEGV inside numpy's C code (summing an array over unmapped memory); the
    innermost Python frame is numpy's own (site-packages), the one to name is ours."""
    import numpy as np

    bad = np.ctypeslib.as_array(ctypes.cast(8, ctypes.POINTER(ctypes.c_double)), shape=(64,))
    return float(bad.sum())  # CRASH-LINE: numpy


def abort() -> None:
    os.abort()  # CRASH-LINE: abort


def raise_signal(sig: int) -> None:
    """Deliver a fatal signal to this process (faulthandler handles it as if the CPU had
    raised it)."""
    signal.raise_signal(sig)  # CRASH-LINE: raise


def disable_faulthandler() -> int:
    """A job that turns faulthandler off (the next job on the same warm process must
    still get its report)."""
    faulthandler.disable()
    return os.getpid()


def pid() -> int:
    return os.getpid()


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


# -- memory ----------------------------------------------------------------------------

MiB = 1 << 20


def allocate(step_mib: int, until_mib: int) -> Iterator[int]:
    """Allocate (and touch) ``step_mib`` MiB at a time until ``until_mib`` MiB are held,
    yielding the MiB held after each step; then wait to be killed or cancelled."""
    import numpy as np

    held = []
    total = 0
    while total < until_mib:
        held.append(np.ones(step_mib * MiB, dtype=np.uint8))
        total += step_mib
        yield total
    while True:
        workstream.check_cancelled()
        threading.Event().wait(0.05)


def small_job(value: int) -> int:
    return value


_ALLOCATOR = """
import sys, time
import numpy as np
held = [np.ones(int(sys.argv[1]) << 20, dtype=np.uint8)]
sys.stdout.write("held\\n"); sys.stdout.flush()
time.sleep(60)  # ok: sleep (holds its memory until killed with the group)
"""


def subprocess_allocates(mib: int) -> Iterator[str]:
    """Start a subprocess that allocates ``mib`` MiB; yield once it holds them, then
    wait for it (killed with our process group over the limit)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _ALLOCATOR, str(mib)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    yield proc.stdout.readline().strip()
    proc.wait()
    yield "subprocess ended"


def join_cgroup_then_allocate(procs: str, step_mib: int, until_mib: int) -> Iterator[int]:
    """Move this worker into the cgroup whose ``cgroup.procs`` is ``procs`` (a test's
    small memory cgroup: the kernel's OOM killer acts there), then :func:`allocate`."""
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
    yield from allocate(step_mib, until_mib)


def start_detached_sleeper() -> int:
    """Start a process in a session of its own (it leaves the worker's process group,
    out of the group kill's reach) that sleeps until killed; return its pid."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],  # ok: sleep (a victim)
        start_new_session=True,
    )
    return proc.pid
