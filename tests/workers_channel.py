"""Children that write raw bytes onto their own data channel (``test_channel_attack.py``).

The data fd is the child's end of the pipe its parent decodes; writing to it directly
(after flushing what the sender holds) simulates a corrupt or hostile writer.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator


def data_fd() -> int:
    """The child's end of the data pipe, with everything pending written first."""
    from workstream._child import _context

    ctx = _context._current
    assert ctx is not None
    ctx.sender.flush()
    return ctx.sender._fd


def write_raw(data: bytes, then: str, items_before: int = 2) -> Iterator[object]:
    """Yield ``items_before`` items, write ``data`` to the channel, then ``then``:

    * ``"stuck"``: sit in a C call with SIGTERM blocked (only SIGKILL ends it);
    * ``"exit"``: ``os._exit(0)`` at once (no final frame of ours);
    * ``"return"``: return normally (our own final frame follows the bytes).
    """
    yield from range(items_before)
    fd = data_fd()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    if then == "exit":
        os._exit(0)
    if then == "stuck":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        time.sleep(300)  # ok: sleep (a stuck child the parent must kill)
    return "returned"
