"""A worker's process group after the worker exited: who is left, and waiting for them.

Parent side only. A worker leads its own process group; what it started (a DataLoader's
workers, a fork server or resource tracker of its own, subprocesses) is in that group.
When the worker ends by itself, those descendants usually notice (EOF on a pipe, the
parent gone) and exit on their own, cleaning up after themselves (a resource tracker
unlinks what was leaked); killing the group at once would cut that short. So the
runner first waits here, bounded, and only then SIGKILLs the group.

The group id stays ours while the group has a member: under fork and spawn the leader
is our child, a zombie until we reap it after this wait; under forkserver the server
reaps it at once, but the kernel does not hand out a pid that still names a live
process group. Once the group is empty the caller kills it at once (as before this
wait existed: a recycled id would need the pid counter to wrap around in between).
Members are found in ``/proc``; where there is no ``/proc`` nothing can be waited for
and the group is killed at once.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Callable

from .._linux import open_pidfd

_POLL_FALLBACK_MAX = 0.02  # s: longest sleep between scans where there are no pidfds


def _pgid_and_state(pid: str) -> tuple[int, bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) <= 2:
        return None
    return int(fields[2]), fields[0]


def live_members(pgid: int) -> list[int] | None:
    """Pids of the members of group ``pgid`` that are not zombies; None without ``/proc``.

    Zombies do not count: killed or exited descendants are reaped by whoever adopted
    them (init, or a subreaper that may never do it), not by us.
    """
    try:
        os.killpg(pgid, 0)
    except OSError:
        return []  # no such group
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    out = []
    for entry in entries:
        if entry.isdigit():
            facts = _pgid_and_state(entry)
            if facts is not None and facts[0] == pgid and facts[1] != b"Z":
                out.append(int(entry))
    return out


def has_live_members(pgid: int) -> bool:
    """True if group ``pgid`` has a member that is not a zombie (True if unknowable)."""
    members = live_members(pgid)
    return members is None or bool(members)


def wait_until_empty(
    pgid: int,
    deadline: Callable[[], float],
    wake_fd: int | None = None,
    on_wake: Callable[[], None] | None = None,
) -> bool:
    """Wait until group ``pgid`` has no live member, or until ``deadline()``; True if empty.

    ``deadline`` is asked again after every wake-up, so a later request (a shorter
    cancel) can shorten the wait. Sleeps in one ``poll()`` on the members' pidfds (any
    exit ends it; the group is then scanned again, since members may have started
    others) and ``wake_fd`` (drained, then ``on_wake()`` is called). Never longer than
    the deadline; returns False at once where members cannot be listed.
    """
    fallback_delay = 0.0005
    while True:
        members = live_members(pgid)
        if members is None:
            return False
        if not members:
            return True
        remaining = deadline() - time.monotonic()
        if remaining <= 0:
            return False
        pidfds = _open_member_pidfds(pgid, members)
        try:
            poller = select.poll()
            for fd in pidfds:
                poller.register(fd, select.POLLIN)
            if wake_fd is not None:
                poller.register(wake_fd, select.POLLIN)
            timeout = remaining
            if not pidfds:  # no pidfds here: scan again soon
                timeout = min(remaining, fallback_delay)
                fallback_delay = min(fallback_delay * 2, _POLL_FALLBACK_MAX)
            events = poller.poll(max(1, int(timeout * 1000) + 1))
        finally:
            for fd in pidfds:
                os.close(fd)
        if wake_fd is not None and any(fd == wake_fd for fd, _ in events):
            with contextlib.suppress(OSError):
                os.read(wake_fd, 4096)
            if on_wake is not None:
                on_wake()


def _open_member_pidfds(pgid: int, members: list[int]) -> list[int]:
    """Pidfds of ``members`` still in group ``pgid`` (a pid that was recycled between the
    scan and the open is checked out again: its group differs)."""
    out = []
    for pid in members:
        fd = open_pidfd(pid)
        if fd is None:
            continue
        facts = _pgid_and_state(str(pid))
        if facts is None or facts[0] != pgid:
            os.close(fd)
            continue
        out.append(fd)
    return out
