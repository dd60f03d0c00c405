"""Reading a worker's fault report: the stacks ``faulthandler`` wrote at a fatal signal.

Pure code (no I/O): the text comes from the parent's fault file (``_transport._fds``),
read by the runner once the worker was reaped. :func:`innermost_user_frame` finds the
frame a crash report names: the innermost frame of the crashing thread that is the
user's own code, not workstream's, the standard library's or an installed package's.
"""

from __future__ import annotations

import pathlib
import re
import sysconfig
from dataclasses import dataclass
from functools import lru_cache

_FRAME = re.compile(r'^\s+File "(?P<file>.*)", line (?P<line>\d+|\?\?\?) in (?P<func>.*)$')
_THREAD = re.compile(r"^(Current thread|Thread) .*:$")


@dataclass(frozen=True)
class Frame:
    """One frame of a fault report."""

    file: str
    line: int | None
    function: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{self.function}() at {where}"


def crashing_thread_frames(report: str) -> list[Frame]:
    """The frames of the thread that received the signal ("Current thread"; the first
    thread listed if none is so marked), innermost first, as faulthandler lists them."""
    blocks: list[tuple[bool, list[Frame]]] = []
    for line in report.splitlines():
        header = _THREAD.match(line)
        if header is not None:
            blocks.append((header.group(1) == "Current thread", []))
            continue
        frame = _FRAME.match(line)
        if frame is not None and blocks:
            number = frame.group("line")
            blocks[-1][1].append(Frame(
                frame.group("file"), int(number) if number.isdigit() else None,
                frame.group("func"),
            ))
    for current, frames in blocks:
        if current:
            return frames
    return blocks[0][1] if blocks else []


@lru_cache(maxsize=1)
def _library_dirs() -> tuple[pathlib.PurePath, ...]:
    """Directories whose code is not the user's: this package, the standard library,
    and where packages are installed."""
    dirs = {pathlib.PurePath(__file__).parents[1]}
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if key in paths:
            dirs.add(pathlib.PurePath(paths[key]))
    return tuple(sorted(dirs))


def is_user_file(file: str) -> bool:
    """False for frozen modules, ``<string>`` (multiprocessing's bootstrap), workstream,
    the standard library and anything under a ``site-packages`` or ``dist-packages``
    directory. Other names in brackets are the user's (``<dynamic-code>``: a function
    cloudpickle sent by value with no file of its own; ``<stdin>``)."""
    if file.startswith("<frozen") or file == "<string>":
        return False
    if file.startswith("<"):
        return True
    path = pathlib.PurePath(file)
    if {"site-packages", "dist-packages"} & set(path.parts):
        return False
    return not any(path.is_relative_to(d) for d in _library_dirs())


def innermost_user_frame(report: str) -> Frame | None:
    """The innermost frame of the crashing thread that is the user's code; None if it
    has none (a crash inside a library called from no code of the user's)."""
    for frame in crashing_thread_frames(report):
        if is_user_file(frame.file):
            return frame
    return None
