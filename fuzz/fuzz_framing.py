"""Coverage-guided fuzzing of the frame decoder with atheris (optional; not run in CI).

    pip install atheris
    python fuzz/fuzz_framing.py -atheris_runs=2000000      # or -max_total_time=600

The oracle is the decoder's contract (the same as ``tests/test_framing_fuzz.py``): for
any bytes, cut into chunks as the input says, ``FrameDecoder.feed`` returns frames,
buffers, or raises ``FrameError`` — never another exception; after a ``FrameError`` it
stays broken; it never holds more than it was given; and every ITEMS frame it returns
splits into payloads that add up to its body.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from workstream._transport._framing import FrameDecoder, FrameError, Kind, encode


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    decoder = FrameDecoder(max_frame_bytes=fdp.ConsumeIntInRange(0, 1 << 20))
    prefix = encode(Kind.READY) if fdp.ConsumeBool() else b""
    fed = 0
    error: FrameError | None = None
    chunks = [prefix]
    while fdp.remaining_bytes():
        chunks.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 4096)))
    for chunk in chunks:
        try:
            frames = decoder.feed(chunk)
        except FrameError as exc:
            error = exc
            frames = exc.frames
        fed += len(chunk)
        assert decoder.pending <= fed
        for frame in frames:
            if frame.kind is Kind.ITEMS:
                sizes = sum(len(p) for p in frame.item_payloads())
                assert sizes + 8 * frame.count == len(frame.body)
        if error is not None:
            try:
                decoder.feed(b"")
            except FrameError as again:
                assert again is error
            else:
                raise AssertionError("a broken decoder accepted more bytes")
            return


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
