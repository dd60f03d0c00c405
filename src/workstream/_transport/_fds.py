"""The one module of the transport that touches file descriptors.

Pipes (with a larger kernel buffer where Linux allows it), the shared control block
(a memfd, or an unlinked temporary file where memfd_create does not exist), and a
``write_all`` that survives partial writes and EINTR.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
import tempfile

# Byte offsets in the control block (its first page).
CANCEL_FLAG = 0  # 0: run; 1: cancel requested (set by the parent, or by the child on SIGTERM)
READER_IDLE = 1  # 1 while the parent's runner waits for data with the pipe drained
HAS_CHILDREN = 2  # set by the child as it exits: 1 if it had child processes of its own

# -- STREAM: the item log, two halves (see _transport/_itemlog.py) -------------------------
ITEM_LOG_BASE = (8, 16)  # u64 each: the sequence number of each half's first record
ITEM_LOG_MAX_ITEMS = 4096  # records in one half (its index: one u64 per record)
ITEM_LOG_PAYLOAD_BYTES = 512 << 10  # pickled bytes in one half
_LOG = mmap.PAGESIZE  # the log starts on the page after the control bytes
ITEM_LOG_INDEX = (_LOG, _LOG + 8 * ITEM_LOG_MAX_ITEMS)
ITEM_LOG_PAYLOAD = (
    _LOG + 16 * ITEM_LOG_MAX_ITEMS, _LOG + 16 * ITEM_LOG_MAX_ITEMS + ITEM_LOG_PAYLOAD_BYTES
)

# The whole shared block: the control page, then the item log. Pages are allocated when
# first touched, so a job that yields little costs a few pages.
CONTROL_BLOCK_SIZE = ITEM_LOG_PAYLOAD[1] + ITEM_LOG_PAYLOAD_BYTES


def make_pipe(size_bytes: int | None = None) -> tuple[int, int]:
    """Return ``(read_fd, write_fd)``, both close-on-exec and blocking.

    On Linux the kernel buffer is raised to ``size_bytes`` where allowed (the kernel
    rounds up to a power of two pages; an unprivileged process may go up to
    ``/proc/sys/fs/pipe-max-size``). Elsewhere the default buffer is kept.
    """
    r, w = os.pipe()
    if size_bytes and sys.platform.startswith("linux"):
        import fcntl

        with contextlib.suppress(OSError):
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size_bytes)
    return r, w


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of ``data`` to the blocking ``fd``; raises OSError (e.g. EPIPE)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def writev_all(fd: int, buffers: list[bytes | memoryview]) -> None:
    """Write ``buffers`` back to back to the blocking ``fd`` (one ``writev`` when the pipe
    takes it all); survives partial writes; raises OSError (e.g. EPIPE)."""
    total = sum(map(len, buffers))
    written = os.writev(fd, buffers)
    if written == total:
        return
    views = [memoryview(b) for b in buffers]
    while written < total:
        skip = written
        rest = []
        for view in views:
            if skip >= len(view):
                skip -= len(view)
            else:
                rest.append(view[skip:])
                skip = 0
        views = rest
        total -= written
        written = os.writev(fd, views)


def make_control_block() -> tuple[int, mmap.mmap]:
    """Create the shared control block; return ``(fd, mapping)``.

    The block has no name anywhere in the file system (memfd, or an unlinked temp file),
    so no other process can open it and nothing is left behind if we are killed.
    """
    fd: int
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("workstream-control", os.MFD_CLOEXEC)
        # A memfd is created 0777; only /proc/<pid>/fd reaches it (guarded by ptrace
        # access checks), but keep it private like the mkstemp fallback: 0600.
        os.fchmod(fd, 0o600)
    else:  # macOS and others: an anonymous temporary file, unlinked at once
        handle, path = tempfile.mkstemp(prefix="workstream-")
        os.unlink(path)
        fd = handle
    try:
        os.ftruncate(fd, CONTROL_BLOCK_SIZE)
        mapping = mmap.mmap(fd, CONTROL_BLOCK_SIZE)
    except BaseException:
        os.close(fd)
        raise
    return fd, mapping


def map_control_block(fd: int) -> mmap.mmap:
    """Map a control block received from the parent (the fd may be closed afterwards)."""
    return mmap.mmap(fd, CONTROL_BLOCK_SIZE)


def close_quietly(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


class PassedFd:
    """Carries one descriptor to the child under any start method.

    Pickled (spawn, forkserver) it travels through multiprocessing's own fd passing
    (``reduction.DupFd``: inherited with spawn, SCM_RIGHTS with forkserver); with fork
    the object is simply inherited. The parent closes its copy after ``start()``.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[object, ...]:
        from multiprocessing import reduction

        return (_rebuild_passed_fd, (reduction.DupFd(self.fd),))

    def close(self) -> None:
        close_quietly(self.fd)
        self.fd = -1


def _rebuild_passed_fd(dup: object) -> PassedFd:
    return PassedFd(dup.detach())  # type: ignore[attr-defined]
