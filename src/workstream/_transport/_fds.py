"""The one module of the transport that touches file descriptors.

Pipes (with a larger kernel buffer where Linux allows it), the shared control block
(a memfd, or an unlinked temporary file where memfd_create does not exist), and a
``write_all`` that survives partial writes and EINTR.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import sys
import tempfile

# Byte offsets in the control block (its first page).
CANCEL_FLAG = 0  # 0: run; 1: cancel requested (set by the parent, or by the child on SIGTERM)
READER_IDLE = 1  # 1 while the parent's runner waits for data with the pipe drained
HAS_CHILDREN = 2  # set by the child as it exits: 1 if it had child processes of its own
# -- CRASH: offsets 2048-2111 are reserved for the crash reports (none used yet).

FAULT_REPORT_LIMIT = 256 << 10
"""Most bytes of a fault report the parent reads (faulthandler writes at most 100 frames
for each of at most 100 threads: far less in practice)."""
# -- PROGRESS: offsets 64-2047 (progress slot; time to save a checkpoint).
# The progress slot is a seqlock written only by the child: PROGRESS_SEQ (u32) is odd
# while a report is being written, even when it is whole; PROGRESS_LEN (u32) bytes of
# report follow at PROGRESS_DATA.
PROGRESS_SEQ = 64
PROGRESS_LEN = 68
PROGRESS_DATA = 72
PROGRESS_MAX = 1400  # most bytes of one report (PROGRESS_DATA + PROGRESS_MAX <= STOP_AT)
# f64 values, each with one writer (time.monotonic() seconds: CLOCK_MONOTONIC is the
# same clock in every process of the machine).
STOP_AT = 1984  # parent: the cancel's SIGKILL deadline before any extra grace; 0: none
MAX_GRACE = 1992  # parent: the job's max_grace
GRACE_ASKED = 2000  # child: seconds of extra grace the job asked for, in all
GRACE_GRANTED = 2008  # child: seconds of it granted (at most MAX_GRACE)
PROGRESS_END = 2048  # first byte after this block (cleared for each job of a Worker)


_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")


def write_progress(block: mmap.mmap, report: bytes) -> None:
    """Write ``report`` (at most ``PROGRESS_MAX`` bytes) into the progress slot; the one
    writer (the child) must serialise its calls."""
    if len(report) > PROGRESS_MAX:
        raise ValueError(f"a progress report of {len(report)} bytes; at most {PROGRESS_MAX}")
    odd = _U32.unpack_from(block, PROGRESS_SEQ)[0] | 1  # (odd already: a torn write)
    _U32.pack_into(block, PROGRESS_SEQ, odd)  # odd: being written
    _U32.pack_into(block, PROGRESS_LEN, len(report))
    block[PROGRESS_DATA:PROGRESS_DATA + len(report)] = report
    _U32.pack_into(block, PROGRESS_SEQ, (odd + 1) & 0xFFFFFFFF or 2)


def read_progress(block: mmap.mmap, known_seq: int, tries: int = 64) -> tuple[int, bytes | None]:
    """Read the progress slot: ``(seq, report)``; report is None if the sequence number is
    still ``known_seq`` (nothing new), or if no whole report could be read in ``tries``
    attempts (the writer kept writing; the caller keeps its last one). Never blocks."""
    for _ in range(tries):
        seq = _U32.unpack_from(block, PROGRESS_SEQ)[0]
        if seq == known_seq:
            return seq, None
        if seq & 1:
            continue
        n = _U32.unpack_from(block, PROGRESS_LEN)[0]
        data = bytes(block[PROGRESS_DATA:PROGRESS_DATA + min(n, PROGRESS_MAX)])
        if _U32.unpack_from(block, PROGRESS_SEQ)[0] == seq:
            return seq, data
    return known_seq, None


def read_f64(block: mmap.mmap, offset: int) -> float:
    """The f64 at ``offset`` of the control block."""
    return float(_F64.unpack_from(block, offset)[0])


def write_f64(block: mmap.mmap, offset: int, value: float) -> None:
    """Write the f64 ``value`` at ``offset`` of the control block."""
    _F64.pack_into(block, offset, value)


def clear_progress_block(block: mmap.mmap) -> None:
    """Zero the PROGRESS block (offsets 64-2047): a new job of a warm process."""
    block[PROGRESS_SEQ:PROGRESS_END] = bytes(PROGRESS_END - PROGRESS_SEQ)

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
