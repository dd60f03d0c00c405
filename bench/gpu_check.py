"""GPU check: a warm Worker training a small torch model on CUDA, cancelled two ways.

One prepared script (under 3 minutes on a GPU machine), run as
``python -m bench.gpu_check [--device cuda|cpu] [--json PATH]``:

1. ``workstream.Worker(load_model)``: the initializer imports torch and puts a small MLP
   on the device, once. Figures: time until ready, the worker's device memory.
2. A training job streams per-step losses; after ``--steps`` losses it is cancelled
   cooperatively. Expected: ``cancelled`` (cooperative), ``kept_warm=True``, the same
   pid, and the job's own device memory (a scratch buffer) freed by its ``finally``
   (checked from inside the worker: ``torch.cuda.memory_allocated`` back to the
   initializer's figure). Figures: start -> first loss on the warm worker, steps/s,
   stop latency.
3. A job queues a long chain of matmuls and waits for it in one C call
   (``torch.cuda.synchronize``); it is cancelled with ``--grace``. Expected: the SIGKILL
   rung, ``kept_warm=False``, and the device memory back: used memory as seen by
   ``nvidia-smi`` (or ``torch.cuda.mem_get_info`` in a fresh probe process; the parent
   never touches CUDA) returns to the figure measured before the Worker existed.
4. The next job runs on a new process (initializer again): ``worker.restarts == 1``.

Without torch, or without a CUDA device (for ``--device cuda``), it prints
``no CUDA device: skipped (...)`` and exits 0. ``--device cpu`` runs the same steps on
the CPU (memory checks then use the worker's RSS and the process being gone).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/gpu_check.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import _common as bc
from bench import _gpu_workers as gw

MiB = 1 << 20
_PROBE = (
    "import torch, json; f, t = torch.cuda.mem_get_info(); "
    "print(json.dumps({'used': t - f, 'total': t}))"
)


def skip_reason(device: str) -> str | None:
    """Why this check cannot run here, or None. Never creates a CUDA context here."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    if not device.startswith("cuda"):
        return None
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True, text=True, timeout=120,
    )
    if probe.returncode != 0:
        return f"torch failed to import: {probe.stderr.strip().splitlines()[-1:]}"
    if probe.stdout.strip() != "True":
        return "torch.cuda.is_available() is False"
    return None


def device_used_bytes() -> tuple[int, str]:
    """Memory in use on GPU 0, measured from outside every worker: nvidia-smi if there
    is one, else torch.cuda.mem_get_info() in a fresh probe process."""
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run(
            [smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        return int(float(out.strip().splitlines()[0]) * MiB), "nvidia-smi"
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    used = int(json.loads(out)["used"])
    return used, "torch.cuda.mem_get_info (probe process)"


def wait_memory_back(baseline: int, tolerance: int, timeout: float) -> tuple[int, float]:
    """Poll the device's used memory until within ``tolerance`` of ``baseline``."""
    t0 = time.monotonic()
    used = device_used_bytes()[0]
    while used > baseline + tolerance and time.monotonic() - t0 < timeout:
        time.sleep(0.2)  # ok: sleep (bounded poll of an external fact)
        used = device_used_bytes()[0]
    return used, time.monotonic() - t0


def run(args: Any) -> dict[str, Any]:
    import workstream

    device = args.device
    cuda = device.startswith("cuda")
    res: dict[str, Any] = {"device": device}
    checks: dict[str, bool] = {}
    if cuda:
        used0, res["probe"] = device_used_bytes()
        res["used_before_mib"] = used0 / MiB
    t0 = bc.perf()
    with workstream.Worker(gw.load_model, (device, args.width), prestart=False) as worker:
        pid = worker.wait_ready(timeout=300)
        res["ready_s"] = bc.perf() - t0
        mem0 = worker.start(gw.memory).result(timeout=60)
        res["init_in_child_s"] = mem0["init_s"]
        if cuda:
            res["worker_allocated_mib"] = mem0["allocated"] / MiB
            res["used_with_worker_mib"] = device_used_bytes()[0] / MiB
        bc.log(f"worker {pid} ready in {res['ready_s']:.2f} s")

        # -- 2. stream losses, cancel cooperatively ----------------------------------------
        t1 = bc.perf()
        job = worker.start(gw.train, args.batch, args.scratch_mib)
        losses: list[float] = []
        first_at = None
        for item in job:
            if first_at is None:
                first_at = bc.perf()
            losses.append(item["loss"])
            if len(losses) == args.steps:
                job.cancel()
        out = job.wait(timeout=60)
        t2 = bc.perf()
        assert first_at is not None
        res["warm_first_loss_ms"] = (first_at - t1) * 1e3
        res["steps"] = len(losses)
        res["steps_per_s"] = (len(losses) - 1) / max(1e-9, t2 - first_at)
        res["loss_first_last"] = [losses[0], losses[-1]]
        res["coop_outcome"] = f"{out.kind} {getattr(out, 'rung', '')} kept_warm={out.kept_warm}"
        res["coop_stop_ms"] = (getattr(out, "stop_latency", None) or float("nan")) * 1e3
        checks["cooperative cancel kept the process warm"] = (
            out.kind == "cancelled" and getattr(out, "rung", "") == "cooperative"
            and out.kept_warm is True and out.pid == pid
        )
        mem1 = worker.start(gw.memory).result(timeout=60)
        if cuda:
            res["allocated_after_job_mib"] = mem1["allocated"] / MiB
            checks["the job's device memory was freed (allocated back to the model's)"] = (
                mem1["allocated"] <= mem0["allocated"] + MiB
            )
        checks["same process after the cooperative cancel"] = mem1["pid"] == pid

        # -- 3. a long kernel: escalation ---------------------------------------------------
        job = worker.start(
            gw.long_kernel, args.kernel_n, args.kernel_rounds, args.kernel_s, args.grace,
            grace=args.grace,
        )
        it = iter(job)
        first = next(it)
        res["kernel_chain_s_estimate"] = next(it)
        used_during = device_used_bytes()[0] / MiB if cuda else None
        t3 = bc.perf()
        job.cancel()
        rest = list(it)
        out = job.wait(timeout=60)
        res["kernel_outcome"] = (
            f"{out.kind} {getattr(out, 'rung', '')} exit={out.exit_code} "
            f"kept_warm={out.kept_warm}"
        )
        res["kernel_stop_ms"] = (bc.perf() - t3) * 1e3
        checks["the long kernel was stopped by SIGKILL"] = (
            first == "queued" and "finished" not in rest
            and res["kernel_chain_s_estimate"] > 2 * args.grace and out.kind == "cancelled"
            and getattr(out, "rung", "") == "sigkill" and out.kept_warm is False
        )
        checks["the killed process is gone"] = not os.path.exists(f"/proc/{pid}")
        if cuda:
            res["used_during_kernel_mib"] = used_during
            used, took = wait_memory_back(
                int(res["used_before_mib"] * MiB), args.tolerance_mib * MiB, 30.0
            )
            res["used_after_kill_mib"] = used / MiB
            res["memory_back_s"] = took
            checks["device memory back to the figure before the Worker"] = (
                used <= res["used_before_mib"] * MiB + args.tolerance_mib * MiB
            )

        # -- 4. the replacement ------------------------------------------------------------
        t4 = bc.perf()
        mem2 = worker.start(gw.memory).result(timeout=300)
        res["replacement_first_job_s"] = bc.perf() - t4
        res["restarts"] = worker.restarts
        checks["the next job ran on a new, initialized process"] = (
            mem2["pid"] != pid and worker.restarts == 1
        )
    res["checks"] = checks
    return res


def main(argv: list[str] | None = None) -> int:
    parser = bc.make_parser(__doc__.splitlines()[0], start_method=False)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--steps", type=int, default=200, help="losses before the cancel")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=1024, help="hidden width of the MLP")
    parser.add_argument("--scratch-mib", type=int, default=512,
                        help="device memory the training job allocates for itself")
    parser.add_argument("--kernel-n", type=int, default=None,
                        help="starting matrix size of the long kernel (default 8192 cuda, "
                             "2048 cpu; grown until the C call outlasts the grace)")
    parser.add_argument("--kernel-rounds", type=int, default=900,
                        help="most matmuls queued (CUDA's launch queue holds about 1000)")
    parser.add_argument("--kernel-s", type=float, default=20.0,
                        help="how long the kernel chain should take (rounds are sized to it)")
    parser.add_argument("--grace", type=float, default=1.0, help="grace of the kernel's cancel")
    parser.add_argument("--tolerance-mib", type=int, default=64,
                        help="used memory may exceed the figure before the Worker by this")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.kernel_n is None:
        args.kernel_n = 8192 if cuda else 2048
    if args.quick:
        args.steps = min(args.steps, 50)
        if not cuda:
            args.scratch_mib = min(args.scratch_mib, 64)
    reason = skip_reason(args.device)
    if reason is not None:
        print(f"no CUDA device: skipped ({reason})" if cuda else f"skipped ({reason})")
        return 0
    report = bc.Report("gpu_check", args, {k: v for k, v in vars(args).items() if k != "json"})
    res = run(args)
    checks = res.pop("checks")
    report.add_table(
        f"warm Worker on {args.device}: figures",
        [bc.Column("what", "what"), bc.Column("value", "value")],
        [{"what": k, "value": f"{v:.3f}" if isinstance(v, float) else str(v)}
         for k, v in res.items()],
    )
    report.add_table(
        "checks", [bc.Column("check", "check"), bc.Column("ok", "ok")],
        [{"check": k, "ok": "yes" if v else "NO"} for k, v in checks.items()],
    )
    report.finish()
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
