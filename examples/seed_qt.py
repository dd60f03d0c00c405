"""The seed's GUI + listener + worker, written with workstream and Qt (PySide6).

The original: a Worker process filling a multiprocessing.Queue, a Listener thread blocked in
queue.get(), a "GUI" whose stop() hangs or leaves a zombie (68 lines, no window). Here: a
generator, QtJob as the listener, Stop is job.cancel(), closing the window cancels: 67 lines.
"""

import argparse
import sys


def worker():
    """The seed's Worker.run: count as fast as possible; each yield is an item."""
    i = 0
    while True:
        yield i
        i += 1


def main(stop_after=None):
    from PySide6.QtCore import Qt, QTimer
    from PySide6.QtWidgets import QApplication, QLabel, QPushButton, QVBoxLayout, QWidget

    from workstream.qt import QtJob  # here, not at the top: the worker process skips it

    app = QApplication(sys.argv[:1])
    window = QWidget()
    window.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)  # closed = destroyed = cancel
    label, start, stop = QLabel("press Start"), QPushButton("Start"), QPushButton("Stop")
    layout = QVBoxLayout(window)
    for widget in (label, start, stop):
        layout.addWidget(widget)
    received = []  # batch sizes seen by the GUI

    def on_start():
        received.clear()
        listener = QtJob.start(worker, parent=window, max_rate=30)  # every item, 30 lists/s
        listener.items.connect(lambda items: show_items(items, listener))
        listener.finished.connect(lambda outcome: show_end(outcome, listener))
        stop.clicked.connect(listener.cancel)
        start.setEnabled(False)

    def show_items(items, listener):
        received.append(len(items))
        label.setText(f"received {items[-1] + 1} items")
        if stop_after is not None and items[0] == 0:  # the first batch: arm the auto-Stop
            QTimer.singleShot(int(stop_after * 1000), listener.cancel)

    def show_end(outcome, listener):
        stop.clicked.disconnect(listener.cancel)
        start.setEnabled(True)
        label.setText(f"{outcome.kind}: {sum(received)} of {outcome.items_delivered} items")
        print(label.text(), flush=True)
        if stop_after is not None:
            app.quit()

    start.clicked.connect(on_start)
    window.show()
    if stop_after is not None:  # headless runs: press Start, Stop after stop_after s, quit
        on_start()
    return app.exec()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stop-after", type=float, metavar="SECONDS", help="Start, Stop, quit")
    sys.exit(main(parser.parse_args().stop_after))
