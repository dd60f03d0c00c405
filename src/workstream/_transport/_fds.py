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

CONTROL_BLOCK_SIZE = mmap.PAGESIZE
# Byte offsets in the control block.
CANCEL_FLAG = 0  # 0: run; 1: cancel requested (set by the parent, or by the child on SIGTERM)
READER_IDLE = 1  # 1 while the parent's runner waits for data with the pipe drained
HAS_CHILDREN = 2  # set by the child as it exits: 1 if it had child processes of its own
# -- CRASH: offsets 2048-2111 are reserved for the crash reports (none used yet).

FAULT_REPORT_LIMIT = 256 << 10
"""Most bytes of a fault report the parent reads (faulthandler writes at most 100 frames
for each of at most 100 threads: far less in practice)."""


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


def make_fault_file() -> int:
    """Create the file a child's ``faulthandler`` writes its fatal-signal report into.

    Like the control block it has no name in the file system (a memfd, else an unlinked
    temporary file), so nothing is left behind; the parent reads it after the child died
    (:func:`read_fault_file`) and closes it with the child's other descriptors.
    """
    if hasattr(os, "memfd_create"):
        fd: int = os.memfd_create("workstream-faults", os.MFD_CLOEXEC)
        os.fchmod(fd, 0o600)
        return fd
    handle, path = tempfile.mkstemp(prefix="workstream-faults-")
    os.unlink(path)
    return handle


def read_fault_file(fd: int) -> str | None:
    """What a child's ``faulthandler`` wrote into ``fd`` (from offset 0, at most
    :data:`FAULT_REPORT_LIMIT` bytes, undecodable bytes replaced); None if nothing, or
    if it cannot be read. Leaves the file offset alone."""
    try:
        data = os.pread(fd, FAULT_REPORT_LIMIT, 0)
    except OSError:
        return None
    text = data.decode("utf-8", "replace").strip("\n")
    return text or None


def reset_fault_file(fd: int) -> None:
    """Empty the fault file and rewind it (a warm worker, before each job)."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)


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
