"""The exceptions workstream raises, in one tree.

::

    BaseException
    └── Cancelled                 the job was cancelled (raised inside fn, and by result())
        └── JobTimeout            result() of a job whose timeout= ran out
    Exception
    └── WorkstreamError           base of everything else workstream raises on its own
        ├── WorkerError           fn raised in the child; remote traceback attached
        ├── WorkerCrashed         the child died without reporting (signal, os._exit, OOM)
        │   ├── ChannelBroken     the child sent bytes that are not a valid frame
        │   └── MemoryLimitExceeded  its process group went over max_memory; killed
        ├── DeliveryError         an item or the final value could not be unpickled here
        ├── CallbackError         an on_item / on_done callback raised; the job was cancelled
        ├── NotInWorkerError      emit() called outside a workstream child (also a RuntimeError)
        └── PoolFull              Pool.start() with max_queued jobs already queued

``Cancelled`` derives from ``BaseException`` (as in trio and asyncio) so that a user's
``except Exception:`` inside ``fn`` cannot swallow a cancel. Misuse of the API raises the
built-in ``TypeError`` / ``ValueError`` / ``RuntimeError`` at the call site.

This module must stay importable in the child and import nothing from the package.
"""

from __future__ import annotations

import queue as _queue
import signal as _signal

UNGUARDED_MAIN_EXIT = 87
"""Exit status of a worker that stopped because the main module it imported (spawn and
forkserver import it in every worker) called ``workstream.start()`` at import time: a
script without ``if __name__ == "__main__":``. The parent turns it into a clear error."""


def describe_exit(exit_code: int | None) -> str:
    """Render a process exit status: ``exit code 3`` or ``SIGSEGV (-11)``."""
    if exit_code is None:
        return "unknown exit status"
    if exit_code < 0:
        try:
            name = _signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"{name} ({exit_code})"
    return f"exit code {exit_code}"


class Cancelled(BaseException):
    """The job was cancelled.

    Inside the child it is raised at the next cancellation point (a ``yield``, ``emit()``,
    ``check_cancelled()``) or, after SIGTERM, at the next bytecode, so ``finally`` blocks
    run. In the parent ``Job.result()`` raises it when the job ended cancelled.
    """


class WorkstreamError(Exception):
    """Base class of the errors workstream raises (except ``Cancelled``)."""


class WorkerError(WorkstreamError):
    """``fn`` raised an exception in the child.

    ``remote_traceback`` holds the child's formatted traceback; when the original
    exception could be pickled it is attached as ``__cause__``.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        summary = f"{type_name}: {message}" if message else type_name
        super().__init__(
            f"the worker raised {summary}\n\n--- remote traceback ---\n{remote_traceback.rstrip()}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message, self.remote_traceback))


class WorkerCrashed(WorkstreamError):
    """The child process died without reporting an outcome.

    ``exit_code`` follows ``multiprocessing``: negative for a signal (``-11`` = SIGSEGV).
    ``signal_name`` is the signal's name or None: the signal that killed it, or the one
    sent from outside workstream that made it stop (then ``exit_code`` may be 0).
    ``summary``, when workstream knows why the process died (a script without a
    ``__main__`` guard, a signal from outside), replaces the generic first sentence.
    ``fault_stack``: for a fatal signal (SIGSEGV, SIGFPE, SIGABRT, SIGBUS, SIGILL), the
    Python stack of every thread at the crash as ``faulthandler`` wrote it; else None.
    ``where``: the innermost frame of the user's own code in the crashing thread
    (``"step() at /path/train.py:42"``), named in the message; None if unknown.
    """

    _hint_oom = True  # a SIGKILL nobody in workstream sent is most often the OOM killer
    stderr_tail: tuple[str, ...] = ()
    """The last lines of the worker's stderr (with ``output="capture"``/``"logging"``)."""

    def __init__(
        self, pid: int | None, exit_code: int | None, detail: str = "", *,
        summary: str | None = None, fault_stack: str | None = None, where: str | None = None,
    ) -> None:
        self.pid = pid
        self.summary = summary
        self.fault_stack = fault_stack
        self.where = where
        self.exit_code = exit_code
        self.signal_name: str | None = None
        if exit_code is not None and exit_code < 0:
            try:
                self.signal_name = _signal.Signals(-exit_code).name
            except ValueError:
                self.signal_name = None
        self.detail = detail
        if summary is not None:  # workstream knows why it died: say that first
            text = summary
        elif pid is None:
            text = "the worker process was never started"
        else:
            text = f"worker process {pid} died without reporting ({describe_exit(exit_code)})"
            if where:
                text += f" in {where}"
        if exit_code == -_signal.SIGKILL and self._hint_oom and summary is None:
            text += "; SIGKILL from outside often means the out-of-memory killer"
        if detail:
            text += f": {detail}"
        super().__init__(text)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_crashed, (type(self), self.pid, self.exit_code, self.detail,
                                   self.summary, self.signal_name, self.fault_stack,
                                   self.where), self._tail_state())

    def _tail_state(self) -> dict[str, object] | None:
        """What pickling adds to the rebuilt error: the stderr tail, set after creation."""
        return {"stderr_tail": self.stderr_tail} if self.stderr_tail else None


def _rebuild_crashed(
    cls: type[WorkerCrashed], pid: int | None, exit_code: int | None, detail: str,
    summary: str | None, signal_name: str | None, fault_stack: str | None = None,
    where: str | None = None,
) -> WorkerCrashed:
    err = cls(pid, exit_code, detail, summary=summary, fault_stack=fault_stack, where=where)
    err.signal_name = signal_name
    return err


class ChannelBroken(WorkerCrashed):
    """The child wrote bytes that are not a valid frame; the job was killed."""

    _hint_oom = False  # workstream itself sent the SIGKILL


class MemoryLimitExceeded(WorkerCrashed):
    """The worker's process group went over ``max_memory``; workstream SIGKILLed it.

    ``limit`` is ``max_memory`` and ``peak`` the most the group held at one measurement
    (bytes). Polled (resident memory of the worker and its descendants, every 50 ms),
    ``peak`` may exceed ``limit`` by what the group allocated in between; enforced by the
    kernel (a memory cgroup), it is the cgroup's peak charge, at most about ``limit``.
    """

    _hint_oom = False  # workstream itself sent the SIGKILL

    def __init__(
        self, pid: int | None, exit_code: int | None, *, limit: int, peak: int,
    ) -> None:
        self.limit = limit
        self.peak = peak
        super().__init__(pid, exit_code, summary=(
            f"worker process {pid} was killed by workstream: its process group went over "
            f"max_memory={limit} ({_mib(limit)}; peak {_mib(peak)})"
        ))

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_memory, (self.pid, self.exit_code, self.limit, self.peak),
                self._tail_state())


def _rebuild_memory(
    pid: int | None, exit_code: int | None, limit: int, peak: int,
) -> MemoryLimitExceeded:
    return MemoryLimitExceeded(pid, exit_code, limit=limit, peak=peak)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class DeliveryError(WorkstreamError):
    """An item or the final value arrived but could not be unpickled in the parent."""


class CallbackError(WorkstreamError):
    """An ``on_item`` or ``on_done`` callback raised; the job was cancelled because of it.

    The callback's exception is ``__cause__``.
    """


class NotInWorkerError(WorkstreamError, RuntimeError):
    """A child-side call (``emit``) was made outside a function run by ``workstream.start``."""


class JobTimeout(Cancelled):
    """``result()`` of a job whose ``timeout=`` ran out: it was cancelled (with its grace,
    as by ``cancel()``) because it ran longer than that.

    A :class:`Cancelled`, so ``except workstream.Cancelled`` handles it too; the outcome
    is a ``CancelledOutcome`` with ``timed_out=True``.
    """


class PoolFull(WorkstreamError, _queue.Full, RuntimeError):
    """``Pool.start()`` found ``max_queued`` jobs already waiting in the queue.

    Also a ``queue.Full`` and a ``RuntimeError``. Nothing was queued; try again once a
    job has started (``pool.map`` waits for room by itself).
    """
