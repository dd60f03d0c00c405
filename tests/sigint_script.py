"""Run by test_sigint.py in a new session: a Ctrl-C to our process group while the first
worker (and, under forkserver, multiprocessing's fork server) is still starting up.

Usage: ``python sigint_script.py METHOD MODE WINDOW_FIFO SENT_FIFO`` (MODE: ``ignore``:
the handler only notes the Ctrl-C; ``cancel``: the main thread then cancels the job).

Synchronisation: the process that is starting (the fork server or the spawned worker,
importing this file as ``__mp_main__``; the forked worker, in an at-fork hook) writes a
byte to WINDOW_FIFO, then waits for the byte on SENT_FIFO that says the group got SIGINT.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading

HOOK_ENV = "WORKSTREAM_TEST_SIGINT_FIFOS"


def _in_the_window() -> None:
    """Tell the test script we are starting up, then wait (bounded) until it sent SIGINT."""
    fifos = os.environ.pop(HOOK_ENV, None)  # once: children of a fork server inherit this
    if fifos is None:
        return
    window, sent = fifos.split(os.pathsep)
    fd = os.open(window, os.O_WRONLY)
    os.write(fd, b"w")
    os.close(fd)
    fd = os.open(sent, os.O_RDONLY | os.O_NONBLOCK)
    try:
        select.select([fd], [], [], 30)
    finally:
        os.close(fd)


if __name__ == "__mp_main__":
    _in_the_window()  # the fork server's preload, or a spawned worker's start-up


def numbers() -> list[int]:
    return [0, 1, 2]


def gen() -> object:
    yield from numbers()


def subprocess_masks() -> str:
    """A subprocess's blocked and ignored signal masks, as /proc/self/status shows them."""
    import subprocess

    out = subprocess.run(
        ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout


def write_status(path: str) -> None:
    """An application's own multiprocessing target: save our /proc status."""
    with open("/proc/self/status") as src, open(path, "w") as dst:
        dst.write(src.read())


def zombies() -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] == "Z":
            found.append(int(entry))
    return found


def main() -> None:
    method, mode, window, sent = sys.argv[1:5]
    import workstream

    got_sigint = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        print("handler ran in", "parent" if os.getpid() == parent else "CHILD", flush=True)
        got_sigint.set()

    parent = os.getpid()
    signal.signal(signal.SIGINT, on_sigint)
    win_fd = os.open(window, os.O_RDWR)  # O_RDWR: neither open blocks, no early EOF
    sent_fd = os.open(sent, os.O_RDWR)
    os.environ[HOOK_ENV] = os.pathsep.join([window, sent])
    if method == "fork":
        os.register_at_fork(after_in_child=_in_the_window)

    job = workstream.start(gen, start_method=method)
    ready, _, _ = select.select([win_fd], [], [], 30)
    assert ready, "the starting process never reached the window"
    os.killpg(0, signal.SIGINT)  # what a terminal does on Ctrl-C
    assert got_sigint.wait(30), "our own handler never ran"
    os.write(sent_fd, b"s")
    if mode == "cancel":
        job.cancel()
    items = list(job)
    outcome = job.wait(timeout=30)
    print("items", items, "outcome", outcome.kind if outcome else None, flush=True)
    if outcome is not None and outcome.kind == "crashed":
        print("error", getattr(outcome, "error", ""), flush=True)

    job2 = workstream.start(subprocess_masks, start_method=method)
    print("masks", job2.result(timeout=30).replace("\n", " "), flush=True)
    if method == "forkserver":
        # The application's own process, from the fork server that workstream started.
        import multiprocessing

        status = os.path.join(os.path.dirname(window), "status")
        proc = multiprocessing.get_context("forkserver").Process(
            target=write_status, args=(status,)
        )
        proc.start()
        proc.join(30)
        with open(status) as f:
            blocked = [x for x in f.read().splitlines() if x.startswith("SigBlk")]
        print("app child", *blocked, flush=True)
    print("zombies", zombies(), flush=True)


if __name__ == "__main__":
    main()
