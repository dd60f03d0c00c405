"""Child-side functions of ``bench/gpu_check.py`` (importable by every start method).

Stdlib only at import time: torch is imported in the worker, by the initializer, so
the parent never creates a CUDA context (its memory probes would otherwise see it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import workstream


def load_model(device: str, width: int) -> dict[str, Any]:
    """The Worker's initializer: import torch, put a small MLP and its optimizer on
    ``device``; return them (reachable by every job as ``workstream.worker_state()``)."""
    t0 = time.perf_counter()
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(width, width), torch.nn.ReLU(),
        torch.nn.Linear(width, width), torch.nn.ReLU(),
        torch.nn.Linear(width, 1),
    ).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {
        "torch": torch, "model": model, "opt": opt, "device": device, "width": width,
        "init_s": time.perf_counter() - t0, "pid": os.getpid(),
    }


def memory() -> dict[str, Any]:
    """What this worker process holds: CUDA allocator figures (bytes), RSS, pid."""
    state = workstream.worker_state()
    torch = state["torch"]
    out: dict[str, Any] = {"pid": os.getpid(), "init_s": state["init_s"]}
    if state["device"].startswith("cuda"):
        torch.cuda.synchronize()
        out["allocated"] = torch.cuda.memory_allocated()
        out["reserved"] = torch.cuda.memory_reserved()
    with open("/proc/self/statm") as f:
        out["rss"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return out


def train(batch: int, scratch_mib: int) -> Iterator[dict[str, Any]]:
    """Train until cancelled, yielding ``{"step", "loss"}`` per step.

    The job allocates a ``scratch_mib`` buffer of its own on the device (activations,
    a data cache); its ``finally`` frees it and empties the allocator's cache, so a
    cooperative cancel leaves the warm worker with the initializer's memory only.
    """
    state = workstream.worker_state()
    torch, model, opt, device = state["torch"], state["model"], state["opt"], state["device"]
    scratch = torch.empty(scratch_mib << 20, dtype=torch.uint8, device=device)
    try:
        step = 0
        while True:
            x = torch.randn(batch, state["width"], device=device)
            y = x.sum(dim=1, keepdim=True)
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            yield {"step": step, "loss": loss.item()}  # .item() syncs: one real step
            step += 1
    finally:
        del scratch
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()


def long_kernel(n: int, max_rounds: int, target_s: float, grace: float) -> Iterator[object]:
    """Start about ``target_s`` seconds of matmuls, then wait for them in one C call.

    Yields "queued", then the duration (s) of the C call the cancel will meet, then
    blocks: on CUDA in ``torch.cuda.synchronize()`` after queueing up to ``max_rounds``
    matmuls (the launch queue holds about a thousand); on the CPU in one ``torch.mm``
    after another, each lasting over twice ``grace``. The matrix size grows from ``n``
    until that holds. Python's SIGTERM handler cannot run until the C call returns, so
    a cancel must escalate to SIGKILL.
    """
    state = workstream.worker_state()
    torch, device = state["torch"], state["device"]
    cuda = device.startswith("cuda")
    # The C call must outlast the grace: per matmul, target_s / max_rounds on CUDA (one
    # synchronize waits for the whole chain), 3 * grace on the CPU (one mm per call).
    per_call = target_s / max_rounds if cuda else 3 * grace
    cap = 16384 if cuda else 8192
    for _attempt in range(2):
        a = torch.randn(n, n, device=device) / n
        b = torch.randn(n, n, device=device) / n
        t0 = time.perf_counter()
        c = a @ b
        if cuda:
            torch.cuda.synchronize()
        one = time.perf_counter() - t0
        if one >= per_call or n >= cap:
            break
        n = min(cap, int(n * (per_call / max(one, 1e-6)) ** (1 / 3)) + 1)
    rounds = max(1, min(max_rounds, int(target_s / max(one, 1e-6))))
    if cuda:
        for _ in range(rounds):
            c = c @ b
        yield "queued"
        yield rounds * one
        torch.cuda.synchronize()
    else:
        yield "queued"
        yield one
        for _ in range(rounds):
            c = torch.mm(c, b)
    yield "finished"  # not reached when cancelled in time
