"""The guard process's program: run as ``python -I -S <this file>`` by ``_guard``.

Standard library only (``os``, ``signal``), and it imports nothing of workstream: the
guard never runs user code, and ``-I -S`` keeps the application's environment, the
site packages and the current directory out of it. It reads ``+PGID`` / ``-PGID`` lines
from its stdin; at end-of-file (the application exited or was SIGKILLed: the kernel
closes the write end) it SIGKILLs every group still registered and exits. SIGINT and
SIGTERM are ignored: a terminal's Ctrl-C or a stray ``kill`` must not disarm it.
"""

from __future__ import annotations

import contextlib
import os
import signal


def apply_lines(buf: bytes, groups: set[int]) -> bytes:
    """Apply every complete line of ``buf`` to ``groups``; return the incomplete rest.

    ``+N`` adds group N, ``-N`` removes it; any other line is ignored.
    """
    *lines, rest = buf.split(b"\n")
    for line in lines:
        if len(line) > 1 and line[1:].isdigit():
            if line[:1] == b"+":
                groups.add(int(line[1:]))
            elif line[:1] == b"-":
                groups.discard(int(line[1:]))
    return rest


def read_until_eof(fd: int, groups: set[int]) -> None:
    """Apply the lines read from ``fd`` to ``groups`` until end-of-file (or a read error)."""
    buf = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:
            continue
        except OSError:
            return
        if not chunk:
            return
        buf = apply_lines(buf + chunk, groups)


def kill_groups(groups: set[int]) -> None:
    """SIGKILL every group in ``groups``; a group that is gone already is skipped."""
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    groups: set[int] = set()
    read_until_eof(0, groups)
    kill_groups(groups)


if __name__ == "__main__":
    main()
