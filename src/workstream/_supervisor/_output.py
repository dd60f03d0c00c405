"""The parent's side of a worker's output (``output="capture"`` / ``"logging"``).

* :class:`OutputReader` (one per worker process, owned by its ``ChildProcess``): the
  read ends of the stdout, stderr and tagged pipes (see ``_child._output``), and the
  decoders that turn their bytes into :class:`~workstream.OutputEvent` s. The runner
  thread reads it through its loop's extra readers, and drains it once the child has
  exited (what a killed child wrote is still in the pipes). It never stops reading: its
  cost is bounded per byte, its memory by :data:`~workstream._child._output.MAX_LINE_BYTES`
  per stream.
* :class:`OutputSink` (one per job): the bounded tail (``job.output``), the stderr tail
  (crash outcomes), and the events waiting for the job's output thread (``on_output``,
  re-emitting into ``logging``): at most :data:`MAX_PENDING`; beyond that new events are
  dropped and counted, and the thread reports the count as an event of its own.

Order: each pipe's events keep their order; the three pipes are read in the order the
runner's ``poll()`` reports them, so a raw fd write and a ``print`` are ordered only by
when the parent read them.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

from .._child._output import (
    FRAME_HEADER,
    LOG_HEADER,
    MAX_LINE_BYTES,
    TAG_LOG,
    TAG_STDERR,
    TAG_STDOUT,
)
from .._outcomes import STDERR_TAIL_LINES, OutputEvent
from .._transport import _fds

TAIL_EVENTS = 1000
"""Events ``job.output`` keeps (the newest)."""
MAX_PENDING = 10_000
"""Events waiting for ``on_output`` / logging before new ones are dropped (and counted)."""
_READ_CHUNK = 64 << 10
_TAGGED_FIRST = 16  # chunks of the tagged pipe read before each raw read
_MAX_FRAME = 1 << 24  # a tagged frame's body beyond this is not ours: stop decoding it


class OutputSink:
    """One job's output: tail, stderr tail, and the queue of its output thread."""

    def __init__(
        self, name: str, mode: str, on_output: Callable[[OutputEvent], object] | None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._name = name
        self._on_output = on_output
        self._reemit = mode == "logging"
        self._on_error = on_error
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._tail: collections.deque[OutputEvent] = collections.deque(maxlen=TAIL_EVENTS)
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._count = 0  # events ever pushed (the tail holds the newest)
        self._pending: collections.deque[OutputEvent] | None = None
        if on_output is not None or self._reemit:
            self._pending = collections.deque()
        self.dropped = 0
        """Events the output thread never got (it fell behind by :data:`MAX_PENDING`)."""
        self._unreported = 0  # drops not yet reported by an event
        self._closed = False
        self._thread: threading.Thread | None = None
        self._failed = False
        self._delivered = False  # True once the output thread delivered its last event
        self._then: Callable[[], None] | None = None  # called by it then (see then())
        self.listener: Callable[[], None] | None = None
        """Called (runner thread) after each batch of new events: wakes GUI bridges."""

    @property
    def needs_thread(self) -> bool:
        return self._pending is not None

    # -- the runner's side ----------------------------------------------------------------

    def push(self, events: list[OutputEvent]) -> None:
        """Add decoded events (runner thread); never blocks for long."""
        if not events:
            return
        with self._lock:
            if self._closed:
                return
            for ev in events:
                self._tail.append(ev)
                if ev.stream == "stderr":
                    self._stderr.append(ev.text)
            self._count += len(events)
            pending = self._pending
            if pending is not None:
                room = MAX_PENDING - len(pending)
                if room < len(events):
                    lost = len(events) - max(room, 0)
                    self.dropped += lost
                    self._unreported += lost
                    events = events[:max(room, 0)]
                pending.extend(events)
                self._cond.notify_all()
        listener = self.listener
        if listener is not None:
            with contextlib.suppress(Exception):
                listener()

    def close(self) -> None:
        """No more events (the job's outcome is being published); idempotent."""
        with self._lock:
            self._closed = True
            self._cond.notify_all()

    # -- readers --------------------------------------------------------------------------

    def snapshot(self) -> tuple[OutputEvent, ...]:
        with self._lock:
            return tuple(self._tail)

    def since(self, count: int) -> tuple[tuple[OutputEvent, ...], int]:
        """Events pushed after the first ``count`` (those still in the tail), and the
        count to pass next time."""
        with self._lock:
            total = self._count
            new = min(max(total - count, 0), len(self._tail))
            events = tuple(self._tail)[len(self._tail) - new:] if new else ()
            return events, total

    def stderr_tail(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._stderr)

    # -- the output thread ----------------------------------------------------------------

    def start_thread(self) -> None:
        if self._pending is None or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._deliver, name=f"workstream-output:{self._name}", daemon=True
        )
        self._thread.start()

    def in_output_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def then(self, fn: Callable[[], None]) -> bool:
        """Have the output thread call ``fn`` once it delivered everything (the sink
        must be closed); False if there is nothing to wait for: call ``fn`` yourself.
        Never blocks, so the thread that publishes "finished" (a runner, a Worker's
        supervisor) never waits for a slow ``on_output``."""
        with self._lock:
            if self._thread is None or self._delivered:
                return False
            self._then = fn
            self._cond.notify_all()
            return True

    def _deliver(self) -> None:
        then = None
        try:
            self._deliver_all()
        finally:
            with self._lock:
                self._delivered = True
                then, self._then = self._then, None
            if then is not None:
                then()

    def _deliver_all(self) -> None:
        pending = self._pending
        assert pending is not None
        logger = logging.getLogger(f"workstream.job.{self._name}")
        while True:
            with self._lock:
                while not pending and not self._closed and not self._unreported:
                    self._cond.wait()
                batch = list(pending)
                pending.clear()
                lost, self._unreported = self._unreported, 0
                done = self._closed and not batch and not lost
            if done:
                return
            if lost:
                batch.insert(0, OutputEvent(
                    "log", f"workstream: {lost} events of output dropped (the output "
                    "thread fell behind)", time.time(), logger="workstream",
                    level=logging.WARNING, levelname="WARNING",
                ))
            for ev in batch:
                self._one(ev, logger)

    def _one(self, ev: OutputEvent, logger: logging.Logger) -> None:
        if self._reemit:
            with contextlib.suppress(Exception):
                _reemit(logger, ev)
        if self._on_output is not None and not self._failed:
            try:
                self._on_output(ev)
            except BaseException as exc:
                self._failed = True  # no more calls; the job is cancelled
                if self._on_error is not None:
                    self._on_error(exc)


def _reemit(logger: logging.Logger, ev: OutputEvent) -> None:
    """Hand ``ev`` to this process's logging (``output="logging"``)."""
    if ev.stream == "log":
        level = ev.level if ev.level is not None else logging.INFO
    else:
        level = logging.INFO if ev.stream == "stdout" else logging.WARNING
    if not logger.isEnabledFor(level):
        return
    record = logger.makeRecord(
        logger.name, level, "(worker)", 0, ev.text, (), None,
        extra={"worker_logger": ev.logger, "worker_pid": ev.pid, "stream": ev.stream},
    )
    if ev.stream == "log":
        record.created = ev.time
        record.msecs = (ev.time - int(ev.time)) * 1000
        if ev.levelname:
            record.levelname = ev.levelname
    logger.handle(record)


class OutputReader:
    """The parent's ends of one worker process's output pipes, and their decoders."""

    def __init__(self, stdout_r: int, stderr_r: int, tagged_r: int) -> None:
        for fd in (stdout_r, stderr_r, tagged_r):
            os.set_blocking(fd, False)
        self.fds = (stdout_r, stderr_r, tagged_r)
        self._open = set(self.fds)
        self._partial = {stdout_r: bytearray(), stderr_r: bytearray()}
        self._names = {stdout_r: "stdout", stderr_r: "stderr"}
        self._tagged = bytearray()
        self._tagged_broken = False
        self.pid: int | None = None
        self.sink: OutputSink | None = None
        """The job the events go to; None between a warm worker's jobs (the bytes wait
        in the pipes for the next job)."""

    def open_fds(self) -> tuple[int, ...]:
        return tuple(fd for fd in self.fds if fd in self._open)

    def read(self, fd: int) -> bool:
        """Read what ``fd`` has now (one chunk) and deliver its whole lines; False once
        it reached end-of-file (every writer closed it).

        Before a raw pipe (fd 1, fd 2) is read, the tagged pipe is drained (up to
        :data:`_TAGGED_FIRST` chunks): Python-level output written before a raw write is
        then delivered before it.
        """
        tagged = self.fds[2]
        if fd != tagged and tagged in self._open:
            self._drain_one(tagged, _TAGGED_FIRST)
        try:
            data = os.read(fd, _READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if not data:
            self._open.discard(fd)
            self._flush_partial(fd)
            return False
        self._feed(fd, data)
        return True

    def drain(self) -> None:
        """Read every pipe until it is empty (non-blocking): after the child exited, or a
        warm job's final frame. A grandchild still writing does not hold us up."""
        # The tagged pipe first: what a dying process writes last goes to the raw fds
        # (C's abort message, a fatal error's report), so it stays last in the tail.
        for fd in sorted(self.open_fds(), key=lambda fd: fd != self.fds[2]):
            self._drain_one(fd, 64)  # at most 4 MiB per pipe: a bound if a grandchild floods

    def _drain_one(self, fd: int, chunks: int) -> None:
        for _ in range(chunks):
            try:
                data = os.read(fd, _READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._open.discard(fd)
                self._flush_partial(fd)
                return
            self._feed(fd, data)

    def end(self) -> None:
        """The process is gone: deliver partial last lines."""
        for fd in self._partial:
            self._flush_partial(fd)

    def close(self) -> None:
        for fd in self.fds:
            _fds.close_quietly(fd)
        self._open.clear()

    def _feed(self, fd: int, data: bytes) -> None:
        now = time.time()
        events: list[OutputEvent] = []
        if fd == self.fds[2]:
            self._feed_tagged(data, now, events)
        else:
            stream = self._names[fd]
            buf = self._partial[fd]
            buf += data
            start = 0
            while True:
                end = buf.find(b"\n", start)
                if end < 0:
                    break
                events.append(self._line(stream, buf[start:end], now))
                start = end + 1
            del buf[:start]
            while len(buf) >= MAX_LINE_BYTES:
                events.append(self._line(stream, buf[:MAX_LINE_BYTES], now))
                del buf[:MAX_LINE_BYTES]
        sink = self.sink
        if sink is not None:
            sink.push(events)

    def _flush_partial(self, fd: int) -> None:
        buf = self._partial.get(fd)
        if buf:
            event = self._line(self._names[fd], buf, time.time())
            buf.clear()
            if self.sink is not None:
                self.sink.push([event])

    def _line(self, stream: str, raw: bytes | bytearray, now: float) -> OutputEvent:
        text = bytes(raw).decode("utf-8", "replace")
        if text.endswith("\r"):
            text = text[:-1]
        return OutputEvent(stream, text, now, pid=self.pid)  # type: ignore[arg-type]

    def _feed_tagged(self, data: bytes, now: float, events: list[OutputEvent]) -> None:
        if self._tagged_broken:
            return
        buf = self._tagged
        buf += data
        pos = 0
        head = FRAME_HEADER.size
        while len(buf) - pos >= head:
            tag, length = FRAME_HEADER.unpack_from(buf, pos)
            if length > _MAX_FRAME or tag not in (TAG_STDOUT, TAG_STDERR, TAG_LOG):
                self._tagged_broken = True  # not our frames: ignore the rest of this pipe
                buf.clear()
                events.append(OutputEvent(
                    "log", "workstream: the worker's tagged output pipe is corrupt; "
                    "its Python-level output is ignored from here on", now,
                    logger="workstream", level=logging.ERROR, levelname="ERROR", pid=self.pid,
                ))
                return
            if len(buf) - pos - head < length:
                break
            body = bytes(buf[pos + head:pos + head + length])
            pos += head + length
            if tag == TAG_LOG:
                events.append(self._record(body, now))
            else:
                events.append(self._line("stdout" if tag == TAG_STDOUT else "stderr", body, now))
        del buf[:pos]

    def _record(self, body: bytes, now: float) -> OutputEvent:
        try:
            level, created, n_name, n_level = LOG_HEADER.unpack_from(body)
            at = LOG_HEADER.size
            name = body[at:at + n_name].decode("utf-8", "replace")
            at += n_name
            levelname = body[at:at + n_level].decode("utf-8", "replace")
            text = body[at + n_level:].decode("utf-8", "replace")
        except Exception:  # a short body: keep what it says as text
            return OutputEvent("log", body.decode("utf-8", "replace"), now, pid=self.pid)
        return OutputEvent(
            "log", text, created, logger=name, level=level, levelname=levelname, pid=self.pid
        )
