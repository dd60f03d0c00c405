"""The seed's GUI + listener + worker, written with workstream and Tkinter.

As examples/seed_qt.py, with workstream.tk.TkJob in place of the seed's listener thread:
the worker is a generator, Stop is job.cancel(), closing the window cancels the job: 63
lines (the seed's: 68, no window). Run it with --help for its options.
"""

import argparse
import sys
import tkinter


def worker():
    """The seed's Worker.run: count as fast as possible; each yield is an item."""
    i = 0
    while True:
        yield i
        i += 1


def main(stop_after=None):
    from workstream.tk import TkJob  # here, not at the top: the worker process skips it

    root = tkinter.Tk()
    root.title("workstream seed (Tk)")
    label = tkinter.Label(root, text="press Start", width=40)
    start = tkinter.Button(root, text="Start")
    stop = tkinter.Button(root, text="Stop", state="disabled")
    for widget in (label, start, stop):
        widget.pack(fill="x")
    received = []  # batch sizes seen by the GUI

    def on_start():
        received.clear()
        listener = TkJob.start(worker, widget=root, max_rate=30, on_items=show_items,
                               on_done=show_end)  # every item, in 30 lists per second
        stop.configure(command=listener.cancel, state="normal")
        start.configure(state="disabled")

    def show_items(items):
        received.append(len(items))
        label.configure(text=f"received {items[-1] + 1} items")
        if stop_after is not None and items[0] == 0:  # the first batch: arm the auto-Stop
            root.after(int(stop_after * 1000), stop.invoke)

    def show_end(outcome):
        stop.configure(state="disabled")
        start.configure(state="normal")
        label.configure(text=f"{outcome.kind}: {sum(received)} of {outcome.items_delivered} items")
        print(label.cget("text"), flush=True)
        if stop_after is not None:
            root.destroy()

    start.configure(command=on_start)
    if stop_after is not None:  # headless runs: press Start, Stop after stop_after s, quit
        on_start()
    root.mainloop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stop-after", type=float, metavar="SECONDS", help="Start, Stop, quit")
    sys.exit(main(parser.parse_args().stop_after))
