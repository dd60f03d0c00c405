"""Bytes and frames only. ``_framing`` is pure (no I/O) and fuzzable; ``_fds`` touches fds."""
