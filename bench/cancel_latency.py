"""Cancel latency: time from ``job.cancel()`` to ``job.wait()`` returning (child reaped).

Every trial starts a fresh child (untimed), waits for its "ready" item, lets it work
for 50 ms, then starts the clock, cancels and waits. The clock stops when ``wait()``
returns: by then the child has been reaped (the script checks that ``/proc/<pid>`` is
gone and counts the trials where it was not). Cases:

* ref: ``multiprocessing.Process`` in a busy loop, ``terminate()`` + ``join()``: the
  floor (a signal and a reap);
* ref: ``multiprocessing.Process`` checking an ``mp.Event`` in its loop, ``set()`` +
  ``join()``: the classic cooperative stop;
* ref: pebble (optional: ``pip install pebble``, the ``bench`` extra), ``ProcessPool``
  with one worker running a pure-Python task: ``future.cancel()`` -> the worker process
  is gone (pebble terminates it from its manager thread);
* ref: ``concurrent.futures.ProcessPoolExecutor`` with a running task:
  ``shutdown(wait=True, cancel_futures=True)`` returned. It cannot stop a running
  task, so this is the task's remaining time (task 1 s; quick 0.3 s; fewer trials);
* workstream, cooperative: the child yields as fast as it can, the consumer reads;
* workstream, flood with a stopped consumer: the child yields as fast as it can, the
  consumer stopped reading, so the parent's buffer (10,000 items) and the 1 MiB pipe
  are full and the child is blocked in ``write()`` (the script waits until it is);
  ``cancel()`` and ``cancel(discard=True)``;
* workstream, grace=0.5, the child never yields again: a pure-Python loop (stopped by
  SIGTERM at ``term_after`` = 0.25 s, whose handler raises ``Cancelled``); one long C
  call (``sum`` over 10**12 items: the Python SIGTERM handler cannot run, SIGKILL at
  0.5 s); a child that ignores SIGTERM (SIGKILL at 0.5 s).

Columns: median / p95 / max of the cancel -> wait() time, the median time the
``cancel()`` call itself took, the median of ``outcome.stop_latency`` (measured by
workstream from the request to the outcome), how the job ended (``outcome.rung``),
and the ratio of the median to the terminate()+join() reference.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/cancel_latency.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import multiprocessing as mp

import workstream
from bench import _common as bc
from bench import _workers as w

DELAY = 0.05
SHORT_GRACE = 0.5
PPE_TASK_S = 1.0  # set by run(): 0.3 s with --quick


def _gone(pid: int | None) -> bool:
    return pid is None or not os.path.exists(f"/proc/{pid}")


def _state(pid: int) -> str:
    """The kernel's one-letter state of the process (its main thread)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _wait_blocked(pid: int, timeout: float = 5.0) -> bool:
    """Wait until the child's main thread has been asleep for 5 consecutive polls."""
    end = bc.perf() + timeout
    streak = 0
    while bc.perf() < end:
        streak = streak + 1 if _state(pid) == "S" else 0
        if streak >= 5:
            return True
        time.sleep(0.005)
    return False


# -- references -----------------------------------------------------------------------------


def _started_reference(method: str, target: Any, *args: Any) -> tuple[Any, Any]:
    """Start a plain Process running ``target(writer, *args)``; return it and the read end
    once it reported ready and has worked for DELAY seconds."""
    ctx = mp.get_context(method)
    r, wr = ctx.Pipe(duplex=False)
    p = ctx.Process(target=target, args=(wr, *args), daemon=True)
    p.start()
    wr.close()
    if not r.poll(60) or r.recv() != w.READY:
        raise RuntimeError("no ready marker")
    time.sleep(DELAY)
    return p, r


def ref_terminate(method: str) -> dict[str, Any]:
    p, r = _started_reference(method, w.mp_busy)
    pid = p.pid
    t0 = bc.perf()
    p.terminate()
    t_call = bc.perf()
    p.join()
    t1 = bc.perf()
    p.close()
    r.close()
    return {"lat": t1 - t0, "call": t_call - t0, "gone": _gone(pid), "rung": "terminate"}


def ref_event(method: str) -> dict[str, Any]:
    stop = mp.get_context(method).Event()
    p, r = _started_reference(method, w.mp_cooperative, stop)
    pid = p.pid
    t0 = bc.perf()
    stop.set()
    t_call = bc.perf()
    p.join()
    t1 = bc.perf()
    code = p.exitcode
    p.close()
    r.close()
    return {"lat": t1 - t0, "call": t_call - t0, "gone": _gone(pid),
            "rung": "exit" if code == 0 else f"exit {code}"}


def _pool_worker_gone(pid: int, timeout: float = 30.0) -> bool:
    end = bc.perf() + timeout
    while not _gone(pid):
        if bc.perf() > end:
            return False
        time.sleep(0.0002)
    return True


def ref_pebble(method: str) -> dict[str, Any]:
    import pebble  # optional; the case is skipped when missing

    ctx = mp.get_context(method)
    r, wr = ctx.Pipe(duplex=False)
    pool = pebble.ProcessPool(
        max_workers=1, context=ctx, initializer=w.pool_init, initargs=(wr,)
    )
    try:
        future = pool.schedule(w.pool_task, args=(60.0,))
        if not r.poll(60):
            raise RuntimeError("the pool task never started")
        pid = r.recv()
        time.sleep(DELAY)
        t0 = bc.perf()
        future.cancel()
        t_call = bc.perf()
        gone = _pool_worker_gone(pid)
        t1 = bc.perf()
    finally:
        pool.stop()
        pool.join(30)
        wr.close()
        r.close()
    return {"lat": t1 - t0, "call": t_call - t0, "gone": gone, "rung": "pool-terminate"}


def ref_ppe(method: str, task_s: float) -> dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context(method)
    r, wr = ctx.Pipe(duplex=False)
    ex = ProcessPoolExecutor(
        max_workers=1, mp_context=ctx, initializer=w.pool_init, initargs=(wr,)
    )
    try:
        future = ex.submit(w.pool_task, task_s)
        if not r.poll(60):
            raise RuntimeError("the pool task never started")
        pid = r.recv()
        time.sleep(DELAY)
        t0 = bc.perf()
        ex.shutdown(wait=True, cancel_futures=True)
        t1 = bc.perf()
    finally:
        ex.shutdown(wait=True)
        wr.close()
        r.close()
    rung = "task finished" if future.done() and not future.cancelled() else "?"
    return {"lat": t1 - t0, "call": t1 - t0, "gone": _pool_worker_gone(pid, 5.0),
            "rung": rung}


# -- workstream -----------------------------------------------------------------------------


def _ws_trial(
    method: str, fn: Callable[..., Any], *, read: bool = False, flood: bool = False,
    grace: float | None = None, discard: bool = False,
) -> dict[str, Any]:
    options: dict[str, Any] = {"start_method": method}
    if grace is not None:
        options["grace"] = grace
    job = workstream.start(fn, **options)
    try:
        it = iter(job)
        if next(it) != w.READY:
            raise RuntimeError("no ready marker")
        pid = job.pid
        assert pid is not None
        if read:  # the consumer keeps reading until the cancel
            end = bc.perf() + DELAY
            for _ in it:
                if bc.perf() >= end:
                    break
        elif flood:  # the consumer stopped: wait until the child blocks in write()
            time.sleep(DELAY)
            if not _wait_blocked(pid):
                raise RuntimeError("the flooding child never blocked")
        else:
            time.sleep(DELAY)
        t0 = bc.perf()
        job.cancel(discard=discard)
        t_call = bc.perf()
        outcome = job.wait(30)
        t1 = bc.perf()
    finally:
        if not job.done():
            job.cancel(grace=0)
            job.wait(30)
    if not isinstance(outcome, workstream.CancelledOutcome):
        raise RuntimeError(f"outcome {outcome!r}")
    return {"lat": t1 - t0, "call": t_call - t0, "gone": _gone(pid),
            "stop": outcome.stop_latency, "rung": outcome.rung}


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[str], dict[str, Any]]
    slow: bool = False  # runs --slow-trials times only
    needs: str | None = None  # an optional package; the case is skipped without it


REF = "ref: mp.Process terminate() + join()"
COOPERATIVE = "workstream cooperative (yield loop, consumer reading)"
CASES = [
    Case(REF, ref_terminate),
    Case("ref: mp.Process, mp.Event flag, set() + join()", ref_event),
    Case("ref: pebble ProcessPool, future.cancel() of a running task", ref_pebble,
         needs="pebble"),
    Case("ref: ProcessPoolExecutor.shutdown(cancel_futures=True), task running",
         lambda m: ref_ppe(m, PPE_TASK_S), slow=True),
    Case(COOPERATIVE,
         lambda m: _ws_trial(m, w.ws_yield_loop, read=True)),
    Case("workstream flood, consumer stopped, channel full",
         lambda m: _ws_trial(m, w.ws_yield_loop, flood=True)),
    Case("workstream flood, consumer stopped, discard=True",
         lambda m: _ws_trial(m, w.ws_yield_loop, flood=True, discard=True)),
    Case(f"workstream Python loop, no yields, grace={SHORT_GRACE}",
         lambda m: _ws_trial(m, w.ws_python_loop, grace=SHORT_GRACE)),
    Case(f"workstream stuck in a C call, grace={SHORT_GRACE}",
         lambda m: _ws_trial(m, w.ws_c_call, grace=SHORT_GRACE)),
    Case(f"workstream ignores SIGTERM, grace={SHORT_GRACE}",
         lambda m: _ws_trial(m, w.ws_ignore_sigterm, grace=SHORT_GRACE)),
]


def build_parser() -> argparse.ArgumentParser:
    parser = bc.make_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--trials", type=int, default=None, help="trials per case (default 20, quick 3)"
    )
    parser.add_argument(
        "--slow-trials", type=int, default=None,
        help="trials of the ProcessPoolExecutor case (default 5, quick 2)",
    )
    return parser


def run(args: argparse.Namespace) -> bc.Report:
    """Measure every case (progress on stderr); return the report, not yet printed."""
    global PPE_TASK_S
    trials = bc.pick(args, "trials", 20, 3)
    slow_trials = min(trials, bc.pick(args, "slow_trials", 5, 2))
    PPE_TASK_S = 0.3 if args.quick else 1.0
    method = args.start_method
    report = bc.Report(
        "cancel_latency", args,
        {"trials": trials, "slow_trials": slow_trials, "delay_s": DELAY,
         "short_grace_s": SHORT_GRACE, "ppe_task_s": PPE_TASK_S, "start_method": method},
    )
    skipped = {c.name: why for c in CASES if c.needs and (why := bc.missing(c.needs))}
    cases = [c for c in CASES if c.name not in skipped]
    results: dict[str, list[dict[str, Any]]] = {c.name: [] for c in cases}
    # Interleave: trial 1 of every case, then trial 2, ... (load drifts hit all alike).
    for t in range(trials):
        for case in cases:
            if case.slow and t >= slow_trials:
                continue
            try:
                res = case.run(method)
            except Exception:
                bc.log(f"  {case.name} FAILED:\n{traceback.format_exc()}")
                continue
            finally:
                gc.collect()  # untimed: a big leftover must not be collected in a clock
            results[case.name].append(res)
            bc.log(f"  trial {t + 1}/{trials} {case.name:58s} {res['lat'] * 1e3:9.2f} ms "
                   f"{res['rung']}")

    ref_med = bc.median([r["lat"] for r in results[REF]])
    rows = []
    for case in cases:
        res = results[case.name]
        lat = [r["lat"] for r in res]
        stops = [r["stop"] for r in res if r.get("stop") is not None]
        rungs = Counter(r["rung"] for r in res)
        rows.append({
            "case": case.name,
            "n": len(res),
            "med_ms": bc.median(lat) * 1e3,
            "p95_ms": bc.pct(lat, 95) * 1e3,
            "max_ms": max(lat) * 1e3 if lat else math.nan,
            "call_ms": bc.median([r["call"] for r in res]) * 1e3,
            "stop_ms": bc.median(stops) * 1e3 if stops else math.nan,
            "ended": " ".join(f"{k}:{v}" for k, v in sorted(rungs.items())),
            "not_reaped": sum(not r["gone"] for r in res),
            "x_ref": bc.ratio(bc.median(lat), ref_med),
            "all_ms": [round(x * 1e3, 3) for x in lat],
            "ref": REF,
        })
    rows += [{"case": name, "skipped": why, "ref": REF} for name, why in skipped.items()]
    cols = [
        bc.Column("case", "case"),
        bc.Column("n", "n"),
        bc.Column("med_ms", "med ms", ".2f"),
        bc.Column("p95_ms", "p95 ms", ".2f"),
        bc.Column("max_ms", "max ms", ".2f"),
        bc.Column("call_ms", "cancel() ms", ".3f"),
        bc.Column("stop_ms", "stop_latency ms", ".2f"),
        bc.Column("ended", "ended"),
        bc.Column("not_reaped", "alive after"),
        bc.Column("x_ref", "x terminate", ".1f"),
    ]
    report.add_table(
        f"cancel() -> wait() returned, {trials} trials per case, start_method={method}",
        cols, rows,
    )
    coop = next((r for r in rows if r["case"] == COOPERATIVE and not r.get("skipped")), None)
    if coop is not None:
        report.headline("cooperative cancel() -> child reaped, wait() returned, median",
                        coop["med_ms"], "ms", "Process.terminate() + join()", ref_med * 1e3)
    report.note("stop_latency: outcome.stop_latency (workstream's own measure, cancel request "
                "to outcome); alive after: trials where /proc/<pid> still existed after "
                "wait() (should be 0)")
    report.note(f"expected: the Python loop ends by SIGTERM at grace/2 = {SHORT_GRACE / 2} s; "
                f"the C call and the SIGTERM-ignoring child by SIGKILL at {SHORT_GRACE} s")
    report.note(f"ProcessPoolExecutor: shutdown() waits for the running task ({PPE_TASK_S:g} s "
                "long, cancelled 50 ms in): its figure is the task's remaining time")
    for name, why in skipped.items():
        report.note(f"{name}: skipped, {why}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    report = run(build_parser().parse_args(argv))
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
