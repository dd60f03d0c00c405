"""GUI responsiveness: how long a Qt event loop stalls while a worker floods it with items.

A 5 ms QTimer ticks in the GUI thread while N small dict items (``_workers.ws_stream``)
go one by one to a slot; the figures are the gaps between two ticks (the widest, p99,
median) and the delivery rate. Rows, all in one process, interleaved per repeat:

* reference: the seed's design, a listener thread that iterates the job and emits one
  queued signal per item (each emit posts an event to the GUI thread);
* a 16 ms QTimer that calls ``job.drain()`` and hands out everything it got (the
  README's polling recipe, no time box);
* ``workstream.qt.QtJob`` (one wake per GUI turn, time-boxed slices of 8 ms).

Runs offscreen (QT_QPA_PLATFORM=offscreen). Ratios: the widest gap of each row over the
reference's, same repeat combination (best-of-N or ``--stat median``).
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/gui_gap.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import _common as C
from bench import _workers as W


def run_row(row: str, n: int, start_method: str, slot_us: float) -> dict[str, float]:
    """One run of ``row``: deliver n items to a slot that works ``slot_us`` microseconds
    on each while a 5 ms timer ticks; return the figures."""
    from PySide6.QtCore import QObject, Qt, QTimer, Signal
    from PySide6.QtWidgets import QApplication

    import workstream
    from workstream.qt import QtJob

    app = QApplication.instance() or QApplication([])
    ticks: list[float] = []
    got: list[Any] = []
    done = threading.Event()
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    keep: list[Any] = []

    def finish() -> None:
        done.set()
        app.quit()

    work = slot_us / 1e6

    def on_item(item: Any) -> None:
        if item == W.READY:
            return
        if work:  # what a real slot does with an item (format it, update a widget)
            end = time.perf_counter() + work
            while time.perf_counter() < end:
                pass
        got.append(item)
        if len(got) == n:
            finish()

    if row == "QtJob (time-boxed slices)":
        qjob = QtJob.start(W.ws_stream, "dict", n, start_method=start_method)
        qjob.item.connect(on_item)
        keep.append(qjob)
    elif row == "QTimer 16 ms + drain(), no time box":
        job = workstream.start(W.ws_stream, "dict", n, start_method=start_method)
        poll = QTimer()
        poll.setInterval(16)
        poll.timeout.connect(lambda: [on_item(x) for x in job.drain()])
        poll.start()
        keep += [job, poll]
    else:  # the reference: a listener thread, one queued signal per item

        class Bridge(QObject):
            sig = Signal(object)

        bridge = Bridge()
        bridge.sig.connect(on_item, Qt.ConnectionType.QueuedConnection)
        job = workstream.start(W.ws_stream, "dict", n, start_method=start_method)

        def listen() -> None:
            for item in job:
                bridge.sig.emit(item)

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        keep += [job, bridge, listener]
    timer.start()
    t0 = time.perf_counter()
    QTimer.singleShot(120_000, finish)  # a bound: a hang ends the run
    app.exec()
    elapsed = time.perf_counter() - t0
    timer.stop()
    for obj in keep:
        if isinstance(obj, workstream.Job):
            obj.cancel()
            obj.wait(timeout=30)
    if len(got) != n:
        raise RuntimeError(f"{row}: {len(got)} of {n} items delivered")
    gaps = [b - a for a, b in itertools.pairwise(ticks)] or [elapsed]
    return {
        "rate": n / elapsed,
        "max_ms": max(gaps) * 1000,
        "p99_ms": C.pct(gaps, 99) * 1000,
        "median_ms": C.median(gaps) * 1000,
        "ticks": len(ticks),
    }


ROWS = (
    "listener thread, 1 queued signal/item",
    "QTimer 16 ms + drain(), no time box",
    "QtJob (time-boxed slices)",
)


def main() -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    parser = C.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=None, metavar="N",
                        help="items per run (default 300,000; --quick 50,000)")
    args = parser.parse_args()
    n = C.pick(args, "items", 300_000, 50_000)
    repeats = C.pick(args, "repeats", 3, 1)
    report = C.Report("bench/gui_gap.py", args, {"items": n, "repeats": repeats})
    for slot_us, items in ((0.0, n), (20.0, max(1, n // 3))):
        table(report, args, items, repeats, slot_us)
    report.note("A slot with work to do (20 us an item: a label update, some formatting) "
                "is what a GUI really connects; the listener thread then outruns the GUI "
                "and its queued events pile up in Qt's event queue, unbounded.")
    report.finish()


def table(report: C.Report, args: Any, n: int, repeats: int, slot_us: float) -> None:
    """Measure every row ``repeats`` times (interleaved) and add one table."""
    results: dict[str, list[dict[str, float]]] = {row: [] for row in ROWS}
    for r in range(repeats):
        for row in ROWS:
            C.log(f"slot {slot_us:g} us, repeat {r + 1}/{repeats}: {row}")
            results[row].append(run_row(row, n, args.start_method, slot_us))

    def comb(row: str, key: str, higher: bool = False) -> float:
        return C.combine([x[key] for x in results[row]], args.stat, higher_is_better=higher)

    ref = comb(ROWS[0], "max_ms")
    rows = [
        {
            "row": row, "rate": comb(row, "rate", True), "max": comb(row, "max_ms"),
            "p99": comb(row, "p99_ms"), "median": comb(row, "median_ms"),
            "ratio": C.ratio(comb(row, "max_ms"), ref),
        }
        for row in ROWS
    ]
    columns: list[C.Column] = [
        C.Column("row", "delivery"), C.Column("rate", "items/s", ",.0f"),
        C.Column("max", "widest gap ms", ".1f"), C.Column("p99", "p99 gap ms", ".1f"),
        C.Column("median", "median gap ms", ".1f"),
        C.Column("ratio", "widest / reference", ".3f"),
    ]
    report.add_table(f"5 ms QTimer gaps while {n:,} dict items go one by one to a slot "
                     f"working {slot_us:g} us on each ({args.stat} of {repeats})", columns, rows)


if __name__ == "__main__":
    main()
