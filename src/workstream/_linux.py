"""Linux-only process controls (prctl, pidfd), each with a documented fallback.

Everything here returns False / None where the mechanism does not exist, so callers can
fall back; nothing raises on other platforms.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

IS_LINUX = sys.platform.startswith("linux")
_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None


def _get_libc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and IS_LINUX:
        # The interpreter is linked against libc, so its own symbol table has prctl.
        # (ctypes.util.find_library would run ldconfig in a subprocess: ~2-10 ms.)
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.prctl  # noqa: B018 - raises AttributeError if absent
        except (OSError, AttributeError):
            try:
                _libc = ctypes.CDLL("libc.so.6", use_errno=True)
            except OSError:
                return None
    return _libc


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent *thread* exits.

    Returns False where unsupported. The parent side must therefore fork from a thread
    that outlives the child: a job's runner thread, or a Worker's supervisor thread (see
    ``_supervisor._child_process``).
    """
    libc = _get_libc()
    if libc is None:
        return False
    return bool(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)


def open_pidfd(pid: int) -> int | None:
    """Return a pidfd for ``pid`` (readable once it exits), or None where unsupported."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
    except OSError:
        return None
    return fd
