"""The item log: every pickled item is in shared memory before its ``yield`` returns.

Pure layout and recovery: no I/O, no threads. The log lives in the job's control block
(``_fds``: the page of control bytes, then the log), a memfd that the parent maps too, so
what the child wrote there survives the child. The child's ``_sender.Sender`` writes it;
the parent reads it only after the child died without its final frame (:func:`recover`).

Two halves, each a base sequence number (a u64 in the control page), an index of u64
entries and a payload area. The child appends each item to the *active* half: the pickle
into the payload area, then one aligned 8-byte store of its entry
``(seq mod 2**32) << 32 | length``. Flushing seals the active half: the other one becomes
active (its base set to the next sequence number first, which invalidates every stale
entry in it), and the sealed half is written to the pipe *as is*, as a ``TAGGED`` ITEMS
frame (entries, then payloads; ``_framing``), while items go on into the other half. A
half is reused only after its write completed, so at any time the records of the two
halves hold every item that the pipe may not have carried whole.

Torn records need no fence or checksum: a process dies between two instructions, and
the entry of a record is one store issued after its payload, so an entry either names a
complete payload or is stale; a stale entry carries an older sequence number, which the
base of its half rejects. Recovery takes, from both halves, the valid records whose
sequence number the parent has not yet received through the pipe, in order: exactly
once, never a duplicate (sequence numbers), never a gap (it stops at the first one).
Host byte order is little-endian on every supported platform; the entries are read
with ``=`` (native) formats, as the child wrote them through a ``Q`` memoryview.
"""

from __future__ import annotations

import struct
from typing import Any

from . import _fds

MASK = 0xFFFFFFFF
_U64 = struct.Struct("=Q")
_INDEX = struct.Struct(f"={_fds.ITEM_LOG_MAX_ITEMS}Q")


def entry(seq: int, length: int) -> int:
    """The index entry of the record with sequence number ``seq`` and ``length`` bytes."""
    return (seq & MASK) << 32 | length


def next_seq(block: Any) -> int:
    """The sequence number the next item will get, read from an idle child's ``block``
    (a warm worker between jobs: both halves flushed, the active one empty)."""
    bases: list[int] = [_U64.unpack_from(block, off)[0] for off in _fds.ITEM_LOG_BASE]
    return max(bases)


def recover(block: Any, first: int) -> list[bytes]:
    """The pickles logged in ``block`` with sequence numbers ``first``, ``first + 1``, ...
    (as many as are there, in order, stopping at a gap). Call it only once the writer
    is dead: a live writer may be changing what this reads."""
    records: list[tuple[int, bytes]] = []
    for half in (0, 1):
        (base,) = _U64.unpack_from(block, _fds.ITEM_LOG_BASE[half])
        entries = _INDEX.unpack_from(block, _fds.ITEM_LOG_INDEX[half])
        pos = _fds.ITEM_LOG_PAYLOAD[half]
        end = pos + _fds.ITEM_LOG_PAYLOAD_BYTES
        for k, e in enumerate(entries):
            seq = base + k
            length = e & MASK
            if e >> 32 != seq & MASK or not length or pos + length > end:
                break
            if seq >= first:
                records.append((seq, bytes(block[pos : pos + length])))
            pos += length
    records.sort(key=lambda r: r[0])
    out: list[bytes] = []
    for seq, data in records:
        if seq != first + len(out):
            break
        out.append(data)
    return out
