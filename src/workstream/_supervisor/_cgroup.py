"""The memory limit enforced by the kernel: a memory cgroup of the worker's own.

Parent side only. Where this process may create a memory cgroup below its own (root in
a container or on CI; cgroup v2 with the memory controller enabled for our cgroup's
children, or the cgroup v1 memory controller), ``ChildProcess.launch`` creates one per
worker process with the limit (``memory.max`` / ``memory.limit_in_bytes``, swap
included where the kernel accounts it), moves the worker into it before it runs any
user code (its descendants then join by themselves), and removes it once the worker and
its group are gone. The kernel then enforces the limit: past it, its out-of-memory
killer kills a process of the cgroup, which the runner sees in the cgroup's
``oom_kill`` count (``memory.events`` / ``memory.oom_control``) and answers by killing
the whole group and ending the job with ``MemoryLimitExceeded``.

Where none can be created (the usual case for a user who is not root) the runner polls
the group's resident memory instead (``_memory``). :data:`ENABLED` turns this module
off (the tests use it to exercise the polling on a machine that has cgroups).
"""

from __future__ import annotations

import functools
import itertools
import os
import time

ENABLED = True
"""False: never create a cgroup (the memory limit is then enforced by polling)."""
REMOVE_WAIT = 0.5
"""Seconds to wait for a cgroup's last members to be gone before giving up removing it."""

_counter = itertools.count()


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _write(path: str, text: str) -> bool:
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(text)
    except OSError:
        return False
    return True


def _keyed(text: str | None, key: str) -> int | None:
    """The value of ``key`` in a ``key value`` per line file (``memory.events``)."""
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
            return int(parts[1])
    return None


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """``(root, mount point, fs type, super options)`` of every cgroup mount."""
    out = []
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or not tail[0].startswith("cgroup"):
            continue
        out.append((fields[3], fields[4], tail[0], set(tail[2].split(","))))
    return out


@functools.lru_cache(maxsize=1)
def _parent_dirs() -> list[tuple[int, str]]:
    """Where a cgroup of ours could go: ``(version, our own cgroup's directory)``, v2
    first. Found once per process."""
    own: dict[int, str] = {}
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            own[2] = parts[2]
        elif "memory" in parts[1].split(","):
            own[1] = parts[2]
    found = []
    for root, mount, fstype, options in _mounts():
        version = 2 if fstype == "cgroup2" else 1
        if version not in own or (version == 1 and "memory" not in options):
            continue
        path = own[version]
        if root != "/":
            if not path.startswith(root):
                continue
            path = path[len(root):]
        directory = os.path.join(mount, path.lstrip("/"))
        if version == 2:
            enabled = (_read(os.path.join(directory, "cgroup.subtree_control")) or "").split()
            if "memory" not in enabled:
                continue
        found.append((version, directory))
    return sorted(found, reverse=True)


class MemoryCgroup:
    """One worker process's memory cgroup (see the module docstring)."""

    def __init__(self, version: int, path: str) -> None:
        self.version = version
        self.path = path

    @classmethod
    def create(cls, limit: int) -> MemoryCgroup | None:
        """A new cgroup limited to ``limit`` bytes; None where none can be made."""
        if not ENABLED:
            return None
        for version, parent in _parent_dirs():
            path = os.path.join(parent, f"workstream-{os.getpid()}-{next(_counter)}")
            try:
                os.mkdir(path, 0o755)
            except OSError:
                continue
            group = cls(version, path)
            if group._set_limit(limit):
                return group
            group.remove()
        return None

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _set_limit(self, limit: int) -> bool:
        if self.version == 2:
            if not _write(self._file("memory.max"), str(limit)):
                return False
            _write(self._file("memory.swap.max"), "0")  # absent without swap accounting
            return True
        if not _write(self._file("memory.limit_in_bytes"), str(limit)):
            return False
        _write(self._file("memory.memsw.limit_in_bytes"), str(limit))  # likewise
        return True

    def add(self, pid: int) -> bool:
        """Move process ``pid`` into the cgroup; False if that failed."""
        return _write(self._file("cgroup.procs"), str(pid))

    def oom_kills(self) -> int:
        """How many processes the kernel's out-of-memory killer killed in this cgroup."""
        if self.version == 2:
            return _keyed(_read(self._file("memory.events")), "oom_kill") or 0
        return _keyed(_read(self._file("memory.oom_control")), "oom_kill") or 0

    def begin_measuring(self) -> int:
        """Start a job's measurement: reset the peak where the kernel allows (v1; v2
        from Linux 6.12); return the current out-of-memory kill count."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        _write(self._file(name), "0" if self.version == 1 else "reset")
        return self.oom_kills()

    def peak(self) -> int | None:
        """The most memory the cgroup was charged at once (bytes); None if unknown."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        text = _read(self._file(name))
        return int(text) if text is not None and text.strip().isdigit() else None

    def remove(self) -> bool:
        """Remove the cgroup (idempotent). Processes still in it (a descendant that left
        the worker's process group with ``setsid()``, out of the group kill's reach, or
        one the ``kill_group=False`` option spares) are moved back into our own cgroup
        first: they outlive the job as they would without a limit. Waits at most
        :data:`REMOVE_WAIT` s (for members not yet reaped); True once it is gone."""
        deadline = time.monotonic() + REMOVE_WAIT
        delay = 0.001
        parent_procs = os.path.join(os.path.dirname(self.path), "cgroup.procs")
        while True:
            try:
                os.rmdir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
            for pid in (_read(self._file("cgroup.procs")) or "").split():
                _write(parent_procs, pid)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
