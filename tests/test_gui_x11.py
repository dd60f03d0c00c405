"""``workstream demo --gui`` on a real X server: a private Xvfb and Qt's ``xcb`` platform.

The offscreen platform needs none of the X libraries Qt's xcb plugin links; a window on a
real display does, and without them Qt aborts (issue 9 §5: "xcb-cursor0 or libxcb-cursor0
is needed", exit 134). These tests run the demo as a user would on a display and check
the screenshot taken from the X server's pixels. Skipped, with the reason, where Xvfb is
not installed; a missing library fails, naming it (``./dev`` installs them as root).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytest.importorskip("numpy")
pytest.importorskip("PySide6.QtGui")  # the error says why: not installed, or a missing library

from gui_support import xvfb_display

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """A private Xvfb display for the module."""
    with xvfb_display() as name:
        yield name


def xcb_missing_libraries() -> list[str]:
    """The libraries Qt's xcb platform plugin links that the dynamic loader cannot find."""
    import PySide6

    plugin = pathlib.Path(PySide6.__file__).parent / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    if not plugin.exists():
        return [f"{plugin} (the plugin itself)"]
    out = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True, timeout=30).stdout
    return sorted({line.split()[0] for line in out.splitlines() if "not found" in line})


def test_xcb_platform_plugin_finds_every_library() -> None:
    """Every library the xcb plugin links is installed (``./dev`` installs them as root)."""
    if sys.platform != "linux":
        pytest.skip("Qt's xcb plugin is the Linux one")
    assert xcb_missing_libraries() == []


def image_facts(path: pathlib.Path) -> tuple[int, int, int, float]:
    """(width, height, distinct colours, share of the commonest colour) of a PNG, sampled
    on a grid (QImage decodes it; no platform plugin is involved)."""
    from PySide6.QtGui import QImage

    image = QImage(str(path))
    assert not image.isNull(), f"{path} is not an image Qt can read"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    counts: dict[int, int] = {}
    for y in range(0, image.height(), 4):
        for x in range(0, image.width(), 4):
            rgb = image.pixel(x, y) & 0xFFFFFF
            counts[rgb] = counts.get(rgb, 0) + 1
    return image.width(), image.height(), len(counts), max(counts.values()) / sum(counts.values())


@pytest.mark.timeout(60)
def test_the_demo_window_opens_on_a_real_x_display(display: str, tmp_path: pathlib.Path) -> None:
    """Regression test for issue 9 §5: the demo runs on Xvfb through Qt's xcb platform
    (no abort), stops cleanly, and its screenshot, read back from the X server's
    pixels, is the real window: a PNG of the window's size with a drawn curve, text and
    buttons, not a blank (black or single-colour) frame."""
    shot = tmp_path / "x11.png"
    env = {k: v for k, v in os.environ.items() if k not in ("WAYLAND_DISPLAY",)}
    env.update(DISPLAY=display, QT_QPA_PLATFORM="xcb")
    proc = subprocess.run(
        [sys.executable, "-m", "workstream", "demo", "--gui", "--stop-after", "1",
         "--screenshot", str(shot)],
        capture_output=True, text=True, env=env, timeout=50, cwd=ROOT,
    )
    missing = xcb_missing_libraries()
    assert proc.returncode == 0, (
        f"exit {proc.returncode}; libraries the xcb plugin lacks: {missing or 'none'}\n"
        + proc.stdout + proc.stderr)
    rows = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    assert rows["display"] == f"xcb on {display}", proc.stdout
    assert rows["outcome"] == "cancelled" and rows["processes left"].startswith("0 "), proc.stdout
    assert rows["screenshot taken from"] == "the display", proc.stdout
    width, height, colours, commonest = image_facts(shot)
    assert width >= 500 and height >= 400, (width, height)
    assert colours >= 8, f"only {colours} colours: a blank frame, not the window"
    assert commonest < 0.9, f"{commonest:.0%} of the frame is one colour"
