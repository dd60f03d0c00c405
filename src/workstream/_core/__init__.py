"""The core: job policy as pure code (no I/O, no clock, no threads); see docs/design.md."""
