"""What the worker prints and logs, sent to the parent (``output="capture"/"logging"``).

Runs only in the child; installed by ``_runtime``'s start-up before any user code.
Three pipes, made by the parent (``ChildSettings.output_fds``):

* **stdout** and **stderr**: ``dup2``'d onto fds 1 and 2, so C code writing to them, and
  every subprocess the job starts (which inherits them), write into the pipes; the
  parent splits the bytes into lines, per stream;
* **tagged**: Python-level writes (``sys.stdout`` / ``sys.stderr``, so ``print``) and
  ``logging`` records, one frame per whole line or record (:data:`FRAME_HEADER`: a tag
  byte and a u32 body length). One pipe for all three keeps them in the order this
  process wrote them; a frame is written under one lock, in one ``write`` loop, so two
  threads' lines never interleave mid-line.

A process the job forks (``multiprocessing`` under fork) must not write frames into the
tagged pipe (its writes could tear ours): after a fork, its ``sys.stdout`` / ``sys.stderr``
and the logging handler write plain text to fds 1 and 2 instead.

Writes block while the pipe is full: the parent reads these pipes whatever its item
buffer holds (it drops output beyond its bounds, never stops reading), so a worker is
never blocked for longer than the parent takes to read. If the parent is gone, output
is dropped.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import sys
import threading
import traceback
from typing import Any

from .._options import ChildSettings

FRAME_HEADER = struct.Struct("<BI")
"""A tagged frame: tag (:data:`TAG_STDOUT` ...), body length; then the body."""
LOG_HEADER = struct.Struct("<IdHH")
"""A log record's body starts with: level, created (time.time()), len(logger name),
len(level name); then the logger name, the level name, the message (UTF-8)."""
TAG_STDOUT = 1
TAG_STDERR = 2
TAG_LOG = 3
MAX_LINE_BYTES = 64 << 10
"""A line longer than this is sent in pieces of this size (each its own line)."""

_lock = threading.Lock()  # one frame at a time into the tagged pipe
_tagged_fd = -1
_forked = False  # True in a process the worker forked: plain text to fds 1/2 instead


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:  # the parent is gone (EPIPE): nobody reads this output
            return
        view = view[n:]


def _send(tag: int, body: bytes) -> None:
    """Write one frame (or, in a forked process, the plain line to fd 1 or 2)."""
    if _forked or _tagged_fd < 0:
        fd = 1 if tag == TAG_STDOUT else 2
        _write_all(fd, body + b"\n")
        return
    with _lock:
        _write_all(_tagged_fd, FRAME_HEADER.pack(tag, len(body)) + body)


class _TaggedRaw(io.RawIOBase):
    """The binary layer under the worker's ``sys.stdout`` / ``sys.stderr``: cuts what
    is written into whole lines, each sent as one frame. Each thread has its own partial
    line, so two threads printing at once never mix their lines."""

    def __init__(self, tag: int, fd: int) -> None:
        super().__init__()
        self._tag = tag
        self._fd = fd
        self._partial: dict[int, bytearray] = {}  # thread ident -> its unfinished line
        self._plock = threading.Lock()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        """The real descriptor (1 or 2): code that hands it to a subprocess or to
        faulthandler writes into the same stream, through the raw pipe."""
        return self._fd

    def isatty(self) -> bool:
        return False

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        data = bytes(b)
        me = threading.get_ident()
        with self._plock:
            buf = self._partial.pop(me, None) or bytearray()
        buf += data
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            self._emit(bytes(buf[start:end]))
            start = end + 1
        del buf[:start]
        while len(buf) >= MAX_LINE_BYTES:
            self._emit(bytes(buf[:MAX_LINE_BYTES]))
            del buf[:MAX_LINE_BYTES]
        if buf:
            with self._plock:
                self._partial[me] = buf
        return len(data)

    def _emit(self, line: bytes) -> None:
        while len(line) > MAX_LINE_BYTES:
            _send(self._tag, line[:MAX_LINE_BYTES])
            line = line[MAX_LINE_BYTES:]
        _send(self._tag, line)

    def end_line(self) -> None:
        """Send every thread's partial last line as a line of its own (job's end)."""
        with self._plock:
            partial, self._partial = self._partial, {}
        for buf in partial.values():
            self._emit(bytes(buf))


class _TaggedHandler(logging.Handler):
    """Sends each logging record of the worker, with its level and logger, as a frame."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            elif record.exc_text:
                text += "\n" + record.exc_text
            if record.stack_info:
                text += "\n" + record.stack_info
            if _forked:
                _send(TAG_STDERR, f"{record.levelname}:{record.name}:{text}".encode())
                return
            name = record.name.encode("utf-8", "replace")[:0xFFFF]
            levelname = record.levelname.encode("utf-8", "replace")[:0xFFFF]
            body = (
                LOG_HEADER.pack(max(record.levelno, 0), record.created, len(name), len(levelname))
                + name + levelname + text.encode("utf-8", "replace")
            )
            _send(TAG_LOG, body)
        except Exception:
            self.handleError(record)


_raws: list[_TaggedRaw] = []


def install(settings: ChildSettings) -> None:
    """Point fds 1 and 2, ``sys.stdout`` / ``sys.stderr`` and the root logger at the
    parent's output pipes (no-op with ``output="inherit"``). Call before user code."""
    global _tagged_fd
    passed = settings.output_fds
    if passed is None:
        return
    out, err, tagged = passed
    with contextlib.suppress(OSError):
        for src, target in ((out, 1), (err, 2)):
            os.dup2(src.fd, target)  # inheritable: the job's subprocesses write here too
    out.close()
    err.close()
    _tagged_fd = tagged.fd
    os.set_inheritable(_tagged_fd, False)
    for name, tag, fd in (("stdout", TAG_STDOUT, 1), ("stderr", TAG_STDERR, 2)):
        raw = _TaggedRaw(tag, fd)
        _raws.append(raw)
        stream = io.TextIOWrapper(
            raw, encoding="utf-8", errors="backslashreplace",  # type: ignore[type-var]
            write_through=True,
        )
        setattr(sys, name, stream)
    root = logging.getLogger()
    root.addHandler(_TaggedHandler())
    root.setLevel(settings.log_level)
    logging.basicConfig = _basic_config  # type: ignore[assignment]


_original_basic_config = logging.basicConfig


def _basic_config(**kwargs: Any) -> None:
    """``logging.basicConfig`` in a worker whose records we send: it works as if our
    handler were not there (it would otherwise do nothing, root having a handler), and a
    stream handler it adds for our own ``sys.stderr`` / ``sys.stdout`` is dropped (our
    handler already sends each record, with its level: it would arrive twice)."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _TaggedHandler)]
    for h in ours:
        root.removeHandler(h)
    before = set(root.handlers)
    try:
        _original_basic_config(**kwargs)
    finally:
        for added in root.handlers[:]:
            stream = getattr(added, "stream", None)
            if added not in before and stream is not None and stream in (sys.stderr, sys.stdout):
                root.removeHandler(added)
        for h in ours:
            if h not in root.handlers:
                root.addHandler(h)


def end_of_job() -> None:
    """Before the job's final frame: send partial last lines, and flush C's stdio
    buffers (a C ``printf`` to a pipe is buffered, and ``os._exit`` would lose it)."""
    if _tagged_fd < 0:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    for raw in _raws:
        with contextlib.suppress(Exception):
            raw.end_line()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)


def _after_fork_in_child() -> None:
    """In a process the worker forked: plain lines from now on; fresh locks (another
    thread may have held one at the fork)."""
    global _forked, _lock
    if _tagged_fd < 0:  # not a worker with captured output (the application, say)
        return
    _forked = True
    _lock = threading.Lock()
    for raw in _raws:
        raw._plock = threading.Lock()
        raw._partial = {}


os.register_at_fork(after_in_child=_after_fork_in_child)
