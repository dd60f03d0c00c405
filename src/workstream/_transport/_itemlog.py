"""The item log: every pickled item is in shared memory before its ``yield`` returns.

Pure layout and recovery: no I/O, no threads. The log lives in the job's control block
(``_fds``: the page of control bytes, then the log), a memfd that the parent maps too, so
what the child wrote there survives the child. The child's ``_sender.Sender`` writes it;
the parent reads it only after the child died without its final frame (:func:`recover`).

Two halves, each a base sequence number (a u64 in the control page: the number of its
first record), an index of u64 lengths and a payload area. The child appends each item
to the *active* half: the pickle into the payload area, then one aligned 8-byte store of
its length into the index. Flushing seals the active half: the other one becomes active
(first its index entries are zeroed up to the count it had, then its base is set), and
the sealed half is written to the pipe *as is*, as one ITEMS frame (lengths, then
payloads; ``_framing``), while items go on into the other half. A half is reused only
after its write completed, so at any time the two halves hold every item that the pipe
may not have carried whole.

Torn records need no fence and no checksum: a process dies between two instructions,
and the length of a record is one store issued after its payload, so a non-zero entry
names a complete payload, and a walk of a half stops at its first zero entry (the record
being written when the child died, whose ``yield`` had not returned). Recovery takes,
from both halves, the records whose sequence numbers the parent has not yet received
through the pipe, in order: exactly once, never a duplicate (sequence numbers), never a
gap (it stops at the first one). The index is read in host byte order, as the child
wrote it through a ``Q`` memoryview; the pipe's frames are little-endian, which every
supported platform is.
"""

from __future__ import annotations

import struct
from typing import Any

from . import _fds

_U64 = struct.Struct("=Q")
_INDEX = struct.Struct(f"={_fds.ITEM_LOG_MAX_ITEMS}Q")


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
        pos = _fds.ITEM_LOG_PAYLOAD[half]
        end = pos + _fds.ITEM_LOG_PAYLOAD_BYTES
        for k, length in enumerate(_INDEX.unpack_from(block, _fds.ITEM_LOG_INDEX[half])):
            if not length or pos + length > end:
                break
            if base + k >= first:
                records.append((base + k, bytes(block[pos : pos + length])))
            pos += length
    records.sort(key=lambda r: r[0])
    out: list[bytes] = []
    for seq, data in records:
        if seq != first + len(out):
            break
        out.append(data)
    return out
