"""The memory limit (``max_memory=``): measuring a worker's process group from the runner.

Parent side only. The runner's poll loop calls :meth:`MemoryWatch.check` (through its
tick hook) and, when it says the group is over the limit, SIGKILLs the group. What is
measured: the resident memory (RSS, ``/proc/<pid>/statm``) of the worker and of every
live member of its process group (its subprocesses, a DataLoader's workers), summed.
Pages shared between them (copy-on-write after a fork, shared libraries, shared memory
both map) count once per process that maps them, so the sum can overstate what the
group costs the machine: the limit errs on the side of stopping early.

How often: the known members every :data:`POLL_INTERVAL` s; the group's member list
itself (a scan of ``/proc``, which costs more on a machine with many processes) every
:data:`SCAN_INTERVAL` s, and on the first check. A group can therefore go over the
limit by what it allocates in one interval before it is stopped (a process touching
memory at 5 GB/s: 250 MB), and a new subprocess counts from the next scan.

Also :func:`oom_kill_count`: the kernel's count of processes its out-of-memory killer
killed (``/proc/vmstat``), read before and after a job to recognise a worker the kernel
killed (not workstream).
"""

from __future__ import annotations

import os

from . import _group
from ._cgroup import MemoryCgroup

POLL_INTERVAL = 0.05
"""Seconds between two measurements of the group's resident memory."""
SCAN_INTERVAL = 0.5
"""Seconds between two scans of ``/proc`` for the group's members."""

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` in bytes; None if it is gone (or unknowable)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            fields = f.read().split()
        return int(fields[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


class MemoryWatch:
    """Measures the resident memory of one worker's process group against a limit.

    ``pid`` leads the group (the worker calls ``setpgid(0, 0)`` at start-up: until then
    it is counted alone). With ``cgroup`` (the worker's memory cgroup, see ``_cgroup``)
    the kernel enforces the limit, and a check reads the cgroup's out-of-memory kill
    count instead (one small file): the group is over its limit once that count rose
    since this watch began. Used by the runner thread only.
    """

    def __init__(
        self, pid: int, limit: int, now: float, cgroup: MemoryCgroup | None = None
    ) -> None:
        self.pid = pid
        self.limit = limit
        self.cgroup = cgroup
        self._oom_kills = 0 if cgroup is None else cgroup.begin_measuring()
        self.peak = 0
        """The most the group held at one measurement (bytes)."""
        self.last = 0
        """The group's resident memory at the latest measurement (bytes)."""
        self._members: set[int] = {pid}
        self._next_check = now
        self._next_scan = now

    def ms_until_due(self, now: float) -> int:
        """Milliseconds until the next measurement is due (0: now)."""
        return max(0, int((self._next_check - now) * 1000) + 1)

    def check(self, now: float) -> bool:
        """Measure if a measurement is due; True if the group is over the limit."""
        if now < self._next_check:
            return False
        self._next_check = now + POLL_INTERVAL
        if self.cgroup is not None:
            return self.kernel_enforced()
        if now >= self._next_scan:
            self._next_scan = now + SCAN_INTERVAL
            members = _group.live_members(self.pid)
            if members is not None:
                self._members = {self.pid, *members}
        total = 0
        for pid in list(self._members):
            rss = resident_bytes(pid)
            if rss is None:
                self._members.discard(pid)
            else:
                total += rss
        self.last = total
        self.peak = max(self.peak, total)
        return total > self.limit


    def kernel_enforced(self) -> bool:
        """With a cgroup: True if the kernel's out-of-memory killer killed a process of
        it since this watch began (the peak is then read from the cgroup)."""
        cgroup = self.cgroup
        if cgroup is None or cgroup.oom_kills() <= self._oom_kills:
            return False
        self.peak = max(self.peak, cgroup.peak() or self.limit)
        return True


def oom_kill_count() -> int | None:
    """How many processes the kernel's out-of-memory killer has killed since boot (the
    ``oom_kill`` line of ``/proc/vmstat``, Linux 4.13+); None where unknown."""
    try:
        with open("/proc/vmstat", "rb") as f:
            for line in f:
                if line.startswith(b"oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
