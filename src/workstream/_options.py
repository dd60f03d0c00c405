"""The tunables of a job, in one documented place, validated at the call site."""

from __future__ import annotations

import math
import multiprocessing
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol

DEFAULT_GRACE = 2.0
"""Seconds ``cancel()`` gives a job before SIGKILL.

Two seconds: long enough for a loop that yields every few hundred milliseconds to notice
the cooperative request and for its ``finally`` blocks to save a checkpoint; short enough
that a Stop button never feels ignored. A child stuck in a C call is gone 2 s after Stop.
"""

DEFAULT_TERM_FRACTION = 0.5
"""Part of the grace period spent on the cooperative request before SIGTERM is sent."""


def default_start_method() -> str:
    """forkserver on Linux (measured 2-3x faster starts than spawn, and it forks from a
    single-threaded server, so it is as safe as spawn for a threaded GUI parent);
    spawn everywhere else. Never fork: the parent has threads."""
    if sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


@dataclass(frozen=True)
class Options:
    """Keyword-only options of :func:`workstream.start`."""

    grace: float = DEFAULT_GRACE
    """Default grace of ``cancel()``: the child is gone this many seconds after it."""
    term_after: float | None = None
    """Seconds after ``cancel()`` to send SIGTERM; None = ``grace * 0.5``."""
    start_method: str | None = None
    """``"forkserver"`` (default on Linux), ``"spawn"`` (default elsewhere) or ``"fork"``."""
    max_buffered_items: int | None = 10_000
    """Items received but not yet consumed before the parent stops reading (backpressure);
    None = unbounded."""
    max_buffered_bytes: int | None = 64 << 20
    """Pickled bytes received but not yet consumed before the parent stops reading."""
    batch_window: float = 0.001
    """Longest time (s) an item waits in the child to be batched with later ones; 0 writes
    every item through before the ``yield`` returns. Latency only: a hard crash loses
    nothing either way (the item log, ``_transport._itemlog``)."""
    max_batch_bytes: int = 256 << 10
    """Pending pickled bytes in the child that trigger a write at once."""
    pipe_bytes: int = 1 << 20
    """Kernel buffer of the data pipe (Linux); with the batch, the most in flight."""
    shm_threshold: int | None = 64 << 10
    """Buffers of at least this many bytes inside an item (numpy arrays, anything that
    pickles through ``pickle.PickleBuffer``) travel through shared memory instead of the
    pipe; None sends everything through the pipe."""
    shm_pool_bytes: int = 256 << 20
    """Most shared memory one job may use for such buffers (sparse: pages are allocated as
    written); beyond it, while the consumer still holds earlier items, buffers go in-band."""
    shm_copy: bool = False
    """Deliver copies of shared-memory buffers (their block is reused at once) instead of
    zero-copy views (the block is reused once the item and every view of it are dropped)."""
    kill_group: bool = True
    """Kill the child's process group (its own subprocesses) when the job ends, and have
    the guard kill it if this application dies."""
    name: str | None = None
    """Name of the worker process and of the job's threads (default: fn's name)."""
    on_item: Callable[[Any], object] | None = None
    """Called with each item on the job's listener thread; iteration is then refused."""
    on_done: Callable[[Any], object] | None = None
    """Called once with the outcome on the job's listener thread, after the last on_item."""
    # -- CRASH: the memory limit
    max_memory: int | None = None
    """Most memory (bytes) the worker's process group (the worker and its descendants)
    may hold; over it the group is SIGKILLed and the job ends crashed with
    ``MemoryLimitExceeded``. Enforced by a memory cgroup of the worker's own where one can
    be created (``_supervisor._cgroup``), else by measuring the group's resident memory
    every 50 ms (``_supervisor._memory``). None: no limit. A Worker's: fixed for its
    process, checked per job."""
    # -- PROGRESS: progress and time to save a checkpoint
    on_progress: Callable[[Any], object] | None = None
    """Called with each new :class:`workstream.Progress` on the job's listener thread
    (paced: at most every ``PROGRESS_TICK`` seconds, only the newest), before on_done."""
    max_grace: float = 0.0
    """Most extra seconds the worker may obtain with ``workstream.request_grace()``
    (added to a cancel's SIGTERM and SIGKILL deadlines); 0: none."""
    # -- POOL: time limit of a job (also per job on a Worker and a Pool) ----------------
    timeout: float | None = None
    """Seconds the job may run, counted from the moment it starts running (not while it
    waits for a process or in a Pool's queue); then it is cancelled with its grace, as by
    ``cancel()``, and its outcome says ``timed_out``. None: no limit."""
    # -- OUTPUT: what the worker prints and logs -----------------------------------------
    output: str = "inherit"
    """``"inherit"``: the worker writes to the application's stdout/stderr (default);
    ``"capture"``: its lines and logging records become :class:`OutputEvent` s
    (``job.output``, ``on_output``); ``"logging"``: as capture, and each is re-emitted
    into this process's ``logging`` under ``workstream.job.<name>``."""
    on_output: Callable[[Any], object] | None = None
    """Called with each :class:`OutputEvent` on the job's output thread; with the
    default ``output="inherit"`` it implies ``"capture"``."""

    def __post_init__(self) -> None:
        _check_seconds("grace", self.grace, allow_zero=False)
        if self.term_after is not None:
            _check_seconds("term_after", self.term_after, allow_zero=True)
            if self.term_after > self.grace:
                raise ValueError(
                    f"term_after={self.term_after} must not exceed grace={self.grace}"
                )
        if self.start_method is not None:
            if not isinstance(self.start_method, str):
                raise TypeError(
                    f"start_method must be a str or None, not {type(self.start_method).__name__}"
                )
            methods = multiprocessing.get_all_start_methods()
            if self.start_method not in methods:
                raise ValueError(
                    f"start_method={self.start_method!r} is not available here; "
                    f"choose one of {methods}"
                )
        for name in ("max_buffered_items", "max_buffered_bytes"):
            value = getattr(self, name)
            if value is not None:
                _check_count(name, value, "a positive int or None")
        _check_seconds("batch_window", self.batch_window, allow_zero=True)
        for name in ("max_batch_bytes", "pipe_bytes"):
            _check_count(name, getattr(self, name), "a positive int")
        if self.shm_threshold is not None:
            _check_count("shm_threshold", self.shm_threshold, "a positive number of bytes or None")
        _check_count("shm_pool_bytes", self.shm_pool_bytes, "a positive int")
        if not isinstance(self.shm_copy, bool):
            raise TypeError(f"shm_copy must be a bool, not {type(self.shm_copy).__name__}")
        if not isinstance(self.kill_group, bool):
            raise TypeError(f"kill_group must be a bool, not {type(self.kill_group).__name__}")
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"name must be a str or None, not {type(self.name).__name__}")
        for name in ("on_item", "on_done"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable or None, not {type(value).__name__}")
        _check_crash_options(self)
        _check_progress_options(self)
        _check_pool_options(self)
        _check_output_options(self)

    @property
    def output_mode(self) -> str:
        """``output``, with ``on_output`` turning the default "inherit" into "capture"."""
        if self.output == "inherit" and self.on_output is not None:
            return "capture"
        return self.output

    @property
    def resolved_start_method(self) -> str:
        return self.start_method or default_start_method()

    def term_delay(self, grace: float) -> float:
        """Seconds after a cancel with ``grace`` at which SIGTERM is sent."""
        if self.term_after is not None:
            return min(self.term_after, grace)
        return grace * DEFAULT_TERM_FRACTION

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], caller: str = "workstream.start()") -> Options:
        """Build options from keyword arguments of ``caller``, rejecting unknown names
        (``TypeError`` saying how keyword arguments reach the function instead)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            if caller == "workstream.Worker()":  # it takes no function
                hint = ("Worker() takes no function: pass one to worker.start(fn, *args), "
                        "with keyword arguments as functools.partial(fn, name=value)")
            else:
                hint = "To pass keyword arguments to fn, use functools.partial(fn, name=value)"
            raise TypeError(
                f"{caller} got unknown option(s) {', '.join(map(repr, unknown))}; "
                f"options are {', '.join(sorted(known))}. {hint}"
            )
        return cls(**kwargs)


class PassedDescriptor(Protocol):
    """A descriptor on its way to the child (``_transport._fds.PassedFd``)."""

    fd: int

    def close(self) -> None: ...


@dataclass(frozen=True)
class ArenaSettings:
    """The job's shared-memory arena, as the child maps it (see ``_supervisor._arrays``)."""

    fd: PassedDescriptor
    """The arena's memfd; the child closes it once mapped."""
    threshold: int
    """Buffers of at least this many bytes go through the arena (``shm_threshold``)."""
    max_in_pipe: int | None
    """Most bytes of such buffers sent in-band while the arena is full (None: no cap)."""


@dataclass(frozen=True)
class ChildSettings:
    """What the parent tells a new child process, pickled with its other arguments.

    Built once per process by ``_supervisor._child_process.ChildProcess.launch`` and read
    once, before any user code, by ``_child._runtime``'s start-up.
    """

    batch_window: float
    """``Options.batch_window``."""
    max_batch_bytes: int
    """``Options.max_batch_bytes``."""
    close_fds: tuple[int, ...] = ()
    """fork only: the parent's descriptors the child inherited and must close first (its
    lifeline would never reach end-of-file while it holds the write end itself)."""
    arrays: ArenaSettings | None = None
    """The shared-memory arena; None: every buffer travels in-band."""
    parent_pid: int | None = None
    """fork and spawn: the pid the child must see as its parent; another one means the
    parent died before PR_SET_PDEATHSIG was armed. None under forkserver (the parent
    is the fork server)."""
    forkserver: bool = False
    """Started by the fork server: drop the inherited end of its "alive" pipe."""
    faults: PassedDescriptor | None = None
    """The file ``faulthandler`` writes the stacks of every thread into on a fatal
    signal (SIGSEGV, SIGFPE, SIGABRT, SIGBUS, SIGILL); the parent reads it after the
    death. None: faulthandler is left as it is."""
    output_fds: tuple[PassedDescriptor, PassedDescriptor, PassedDescriptor] | None = None
    """``output=`` capture or logging: write ends of the stdout, stderr and tagged (Python
    lines and logging records) pipes; None: the child keeps the inherited fds 1 and 2."""
    log_level: int = 30
    """Level the child's root logger starts at with captured output (the parent's
    effective level for ``workstream.job.<name>``)."""


def _check_crash_options(opts: Options) -> None:
    if opts.max_memory is not None:
        _check_count("max_memory", opts.max_memory, "a positive number of bytes or None")
        if not sys.platform.startswith("linux"):
            raise NotImplementedError(
                f"max_memory is enforced on Linux only (it reads /proc), not on {sys.platform}"
            )


def _check_progress_options(opts: Options) -> None:
    if opts.on_progress is not None and not callable(opts.on_progress):
        raise TypeError(
            f"on_progress must be callable or None, not {type(opts.on_progress).__name__}"
        )
    _check_seconds("max_grace", opts.max_grace, allow_zero=True)


def _check_pool_options(opts: Options) -> None:
    if opts.timeout is not None:
        _check_seconds("timeout", opts.timeout, allow_zero=False)


def _check_count(name: str, value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be {what}, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be {what}, not {value!r}")


def _check_seconds(name: str, value: object, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, not {value!r}")


def check_grace(value: object, name: str = "grace") -> float:
    """Validate a duration argument (``cancel(grace=...)``, ``wait(timeout=...)``);
    ``name`` is the argument's name in the error message."""
    _check_seconds(name, value, allow_zero=True)
    return float(value)  # type: ignore[arg-type]


OUTPUT_MODES = ("inherit", "capture", "logging")


def _check_output_options(opts: Options) -> None:
    """OUTPUT's options: ``output`` one of :data:`OUTPUT_MODES`; ``on_output`` callable
    and only with output captured."""
    if not isinstance(opts.output, str):
        raise TypeError(
            f"output must be one of {', '.join(map(repr, OUTPUT_MODES))}, "
            f"not {type(opts.output).__name__}"
        )
    if opts.output not in OUTPUT_MODES:
        raise ValueError(
            f"output={opts.output!r} is not a mode; choose one of "
            f"{', '.join(map(repr, OUTPUT_MODES))}"
        )
    if opts.on_output is not None and not callable(opts.on_output):
        raise TypeError(
            f"on_output must be callable or None, not {type(opts.on_output).__name__}"
        )
