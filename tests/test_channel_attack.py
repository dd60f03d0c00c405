"""The data channel under attack, end to end: a worker writes raw bytes onto its own data
pipe and the parent must survive — the job ends crashed with ``ChannelBroken`` (or, for
well-framed bytes that cannot be unpickled, failed with ``DeliveryError``), with a clear
message, at once, with every earlier item delivered, and nothing left behind. Also: the
channel's permissions (nothing another local user could open).

``test_outcomes.py`` has the first two cases (garbage after an item; a good frame and
garbage in one read); this table covers the rest of the protocol.
"""

from __future__ import annotations

import os
import pickle
import signal
import stat
import struct
from typing import Any

import pytest

import workers_channel as wch
import workers_lifecycle as wl
import workstream
from conftest import bounded_wait, wait_until
from workstream._transport._framing import HEADER, MAGIC, Kind, encode, encode_items


def _header(kind: int, count: int, body_len: int) -> bytes:
    return HEADER.pack(MAGIC, kind, 0, count, body_len)


def _report(**fields: object) -> bytes:
    return pickle.dumps(fields)


BROKEN = workstream.ChannelBroken
KILLED = -signal.SIGKILL

ATTACKS = [
    # (id, bytes written after 2 good items, then, error type, message fragment, exit code)
    ("hostile-length-2**62", _header(Kind.ITEMS, 1, 2**62), "stuck", BROKEN,
     f"frame #4: body of {2**62} bytes exceeds the limit", KILLED),
    ("hostile-length-u64-max", _header(Kind.RESULT, 0, 2**64 - 1), "stuck", BROKEN,
     "exceeds the limit", KILLED),
    ("hostile-count", _header(Kind.ITEMS, 2**32 - 1, 1 << 30), "stuck", BROKEN,
     f"ITEMS frame with count {2**32 - 1}", KILLED),
    ("unknown-kind", _header(9, 0, 0), "stuck", BROKEN, "unknown frame kind 9", KILLED),
    ("lying-item-lengths", _header(Kind.ITEMS, 2, 16 + 3) + struct.pack("<2Q", 2**63, 2**63)
     + b"abc", "stuck", BROKEN, "item lengths do not add up to the body", KILLED),
    ("second-ready", encode(Kind.READY), "stuck", BROKEN, "frame #4: a second READY frame",
     KILLED),
    ("bytes-after-final", encode(Kind.RESULT, pickle.dumps("x")) + b"junk", "stuck", BROKEN,
     "bytes after the final frame", None),
    ("second-final", encode(Kind.RESULT, pickle.dumps("x")), "return", BROKEN,
     "frame #5: bytes after the final frame", None),
    ("error-report-garbage", encode(Kind.ERROR, b"\x80\x05garbage"), "exit", BROKEN,
     "the ERROR frame's report cannot be read (UnpicklingError", 0),
    ("error-report-not-a-dict", encode(Kind.ERROR, pickle.dumps(42)), "exit", BROKEN,
     "the ERROR frame's report cannot be read (ValueError: a int, not a dict)", 0),
    ("error-report-missing-field", encode(Kind.ERROR, _report(type="X", message="m")), "exit",
     BROKEN, "field 'traceback' missing or not a str", 0),
    ("cancelled-report-wrong-type", encode(Kind.CANCELLED, _report(by=1, traceback="")),
     "exit", BROKEN, "the CANCELLED frame's report cannot be read", 0),
    ("item-pickle-garbage", encode_items([b"\x80\x05not a pickle"]), "stuck",
     workstream.DeliveryError, "item #3 could not be unpickled in the parent", KILLED),
    ("result-pickle-garbage", encode(Kind.RESULT, b"\x80\x05not a pickle"), "exit",
     workstream.DeliveryError, "the final value could not be unpickled in the parent", 0),
    ("torn-huge-frame", _header(Kind.RESULT, 0, 4 << 30) + b"x" * 1000, "exit",
     workstream.WorkerCrashed, "it died in the middle of writing a frame (1016 bytes dropped)",
     0),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("data", "then", "error", "fragment", "exit_code"),
    [pytest.param(*row[1:], id=row[0]) for row in ATTACKS],
)
def test_malformed_channel(
    data: bytes, then: str, error: type, fragment: str, exit_code: int | None
) -> None:
    """The parent survives the bytes: the outcome names what was wrong, the two items
    before it are delivered, the child is killed (if still alive) and reaped."""
    job = workstream.start(wch.write_raw, data, then, grace=0.5, batch_window=0)
    outcome = bounded_wait(job, 30, f"attack {data[:20]!r}")
    items = list(job)
    assert items == [0, 1]
    assert outcome.items_delivered == 2
    err: Any = outcome.error  # type: ignore[union-attr]
    assert type(err) is error, f"{outcome!r}"
    assert fragment in str(err), str(err)
    assert "internal error" not in str(err)
    if error is BROKEN:
        assert outcome.kind == "crashed"
        assert "out-of-memory" not in str(err)
        assert str(err).count("malformed data channel") == 1
    elif error is workstream.DeliveryError:
        assert outcome.kind == "failed"
    if exit_code is not None:
        assert outcome.exit_code == exit_code, f"{outcome!r}"
    else:  # the child may finish exiting before the SIGKILL lands
        assert outcome.exit_code in (0, KILLED), f"{outcome!r}"
    assert job.pid is not None and not os.path.exists(f"/proc/{job.pid}")


@pytest.mark.timeout(30)
def test_huge_declared_frame_does_not_make_the_parent_allocate(tmp_path: Any) -> None:
    """A child that declares a 4 GiB frame and then sends little: the parent holds only
    what arrived (its RSS does not grow by gigabytes), and a cancel still ends the job."""
    import psutil

    before = psutil.Process().memory_info().rss
    job = workstream.start(
        wch.write_raw, _header(Kind.RESULT, 0, 4 << 30) + b"x" * (1 << 20), "stuck",
        grace=0.5,
    )
    wait_until(lambda: job._runner._intake.decoder.pending >= 16 + (1 << 20), 20,
               "the parent to buffer the first MiB of the frame")
    grown = psutil.Process().memory_info().rss - before
    assert grown < 256 << 20, f"the parent grew by {grown >> 20} MiB"
    job.cancel(grace=0.2)
    outcome = bounded_wait(job, 20, "cancel of a half-sent huge frame")
    assert outcome.kind == "cancelled" and outcome.rung == "sigkill"
    assert list(job) == [0, 1]


@pytest.mark.timeout(30)
def test_channel_fds_are_unnamed_and_private() -> None:
    """The child holds no named file of ours (nothing in /dev/shm), its memfd / unlinked
    control block is mode 0600, and the parent's ends of the channel are pipes."""
    job = workstream.start(wch.write_raw, b"", "stuck", grace=0.2)
    it = iter(job)
    assert next(it) == 0
    pid = job.pid
    assert pid is not None
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("/memfd:") or "(deleted)" in target:
                mode = os.stat(f"/proc/{pid}/fd/{fd}").st_mode
                assert stat.S_IMODE(mode) & 0o077 == 0, (target, oct(mode))
            assert not target.startswith("/dev/shm"), target
        child = job._runner._child  # the job's ChildProcess
        for name in ("data_r", "lifeline_w"):
            fd = getattr(child, name)
            assert stat.S_ISFIFO(os.fstat(fd).st_mode), name
    finally:
        job.cancel(grace=0)
        bounded_wait(job, 20, "the permission probe job")
    assert not wl.pid_alive(pid)
