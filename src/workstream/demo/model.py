"""The demo's worker: a small neural network, written in plain numpy, trained on two spirals.

:func:`train` is what ``workstream demo`` runs in the child process (it lives here, in an
importable module, so the worker receives it by reference). It is an ordinary generator:
call it directly to train in-process (the tests do), or hand it to ``workstream.start``.
This module imports numpy and nothing of workstream.

The model is a 2 -> 64 (tanh) -> 1 perceptron with a logistic output, trained full-batch
on 2000 points of two interleaved spirals with hand-written gradients and Adam. One step
takes about 2 ms on a laptop core, so the default 2000 steps last about 4 s.

With ``stuck=True`` the worker, after a few steps, enters one long numpy call (a
three-matrix ``np.einsum`` without path optimisation, sized to last ``stuck_seconds``):
a C call that cannot notice a cooperative cancel, so only SIGTERM/SIGKILL can stop it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

DEFAULT_STEPS = 2000
"""Training steps of ``workstream demo`` (about 4 s on one laptop core)."""
POINTS = 2000
"""Points in the synthetic data set (half per spiral)."""
HIDDEN = 64
"""Units of the hidden tanh layer."""
LEARNING_RATE = 0.01
STUCK_AT_STEP = 25
"""In ``stuck`` mode, the step after which the worker enters the long C call."""
STUCK_SECONDS = 30.0
"""In ``stuck`` mode, roughly how long the C call lasts if nobody stops it."""

_CALIBRATION_SIZE = 100
_MAX_STUCK_SIZE = 2000


class _StepFields(TypedDict):
    step: int
    loss: float
    accuracy: float


class StepItem(_StepFields, total=False):
    """One item per training step. ``stuck`` is present only on the item sent right
    before the worker enters its long C call; it describes the call."""

    stuck: str


class Summary(TypedDict):
    """What :func:`train` returns when it runs to its end."""

    steps: int
    final_loss: float
    final_accuracy: float
    seconds: float


class InjectedFailure(RuntimeError):
    """Raised by :func:`train` at ``fail_at`` (``workstream demo --fail-at``)."""


def make_spirals(points: int, noise: float, seed: int) -> tuple[Array, Array]:
    """Return ``(x, y)``: ``points`` 2-D points of two interleaved spirals and labels 0/1.

    ``x`` has shape ``(points, 2)`` and values within about [-2, 2]; ``y`` has shape
    ``(points, 1)``. The same seed always gives the same data.
    """
    rng = np.random.default_rng(seed)
    turns = 4 * np.pi
    angle = np.sqrt(rng.random(points)) * turns
    label = rng.integers(0, 2, points)
    radius = 2 * angle / turns
    phase = angle + np.pi * label
    x = np.stack([radius * np.cos(phase), radius * np.sin(phase)], axis=1)
    x = x + noise * rng.standard_normal((points, 2))
    return x.astype(np.float64), label.astype(np.float64).reshape(-1, 1)


@dataclass
class MLP:
    """A 2 -> hidden (tanh) -> 1 perceptron; the output is a logit."""

    w1: Array
    b1: Array
    w2: Array
    b2: Array

    @classmethod
    def init(cls, hidden: int, seed: int) -> MLP:
        """Random weights (same seed, same weights); biases zero."""
        rng = np.random.default_rng(seed)
        return cls(
            w1=rng.standard_normal((2, hidden)),
            b1=np.zeros(hidden),
            w2=rng.standard_normal((hidden, 1)) / np.sqrt(hidden),
            b2=np.zeros(1),
        )

    def params(self) -> list[Array]:
        """The weight arrays, in a fixed order (updated in place by the optimiser)."""
        return [self.w1, self.b1, self.w2, self.b2]


def loss_and_grads(model: MLP, x: Array, y: Array) -> tuple[float, float, list[Array]]:
    """Return (mean binary cross-entropy, accuracy, gradients in ``model.params()`` order).

    Pure: the model is not changed.
    """
    hidden = np.tanh(x @ model.w1 + model.b1)
    logit = hidden @ model.w2 + model.b2
    loss = float(np.mean(np.logaddexp(0.0, logit) - y * logit))
    accuracy = float(np.mean((logit > 0) == (y > 0.5)))
    d_logit = (0.5 * (1.0 + np.tanh(0.5 * logit)) - y) / len(x)  # sigmoid, no overflow
    d_hidden = (d_logit @ model.w2.T) * (1.0 - hidden * hidden)
    grads = [x.T @ d_hidden, d_hidden.sum(axis=0), hidden.T @ d_logit, d_logit.sum(axis=0)]
    return loss, accuracy, grads


@dataclass
class Adam:
    """The Adam optimiser, by hand: :meth:`update` changes the parameters in place."""

    lr: float = LEARNING_RATE
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    t: int = 0
    m: list[Array] = field(default_factory=list)
    v: list[Array] = field(default_factory=list)

    def update(self, params: list[Array], grads: list[Array]) -> None:
        """Take one Adam step of every parameter along its gradient."""
        if not self.m:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.t += 1
        c1 = 1.0 - self.beta1**self.t
        c2 = 1.0 - self.beta2**self.t
        for p, g, m, v in zip(params, grads, self.m, self.v, strict=True):
            m *= self.beta1
            m += (1.0 - self.beta1) * g
            v *= self.beta2
            v += (1.0 - self.beta2) * g * g
            p -= self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


def train_step(model: MLP, opt: Adam, x: Array, y: Array) -> tuple[float, float]:
    """One full-batch step; return the loss and accuracy measured *before* the update."""
    loss, accuracy, grads = loss_and_grads(model, x, y)
    opt.update(model.params(), grads)
    return loss, accuracy


def train(
    steps: int = DEFAULT_STEPS,
    *,
    seed: int = 0,
    stuck: bool = False,
    stuck_seconds: float = STUCK_SECONDS,
    fail_at: int | None = None,
    report: Callable[..., object] | None = None,
) -> Generator[StepItem, None, Summary]:
    """Train the MLP for ``steps`` steps, yielding one :class:`StepItem` per step.

    Each ``yield`` is a cancellation point when run by ``workstream.start``. Returns a
    :class:`Summary`. With ``stuck``, the item of step ``min(STUCK_AT_STEP, steps - 1)``
    carries a ``stuck`` description and the generator then spends about
    ``stuck_seconds`` in one C call before it trains on. With ``fail_at``, raises
    :class:`InjectedFailure` at that step. Deterministic for a given seed (except the
    length of the C call). ``report`` (``workstream.progress`` in the demo) is called
    after each step as ``report(done, steps, loss=..., accuracy=...)``.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    started = time.perf_counter()
    x, y = make_spirals(POINTS, noise=0.06, seed=seed)
    model = MLP.init(HIDDEN, seed=seed + 1)
    opt = Adam()
    loss = accuracy = float("nan")
    stuck_at = min(STUCK_AT_STEP, steps - 1) if stuck else -1
    size = stuck_matrix_size(stuck_seconds) if stuck else 0
    for step in range(steps):
        if step == fail_at:
            raise InjectedFailure(f"injected failure at step {step} (--fail-at)")
        loss, accuracy = train_step(model, opt, x, y)
        if report is not None:
            report(step + 1, steps, loss=loss, accuracy=accuracy)
        item: StepItem = {"step": step, "loss": loss, "accuracy": accuracy}
        if step == stuck_at:
            item["stuck"] = describe_long_call(size, stuck_seconds)
            yield item
            long_c_call(size)
        else:
            yield item
    return {
        "steps": steps,
        "final_loss": loss,
        "final_accuracy": accuracy,
        "seconds": time.perf_counter() - started,
    }


def _einsum3(a: Array) -> Array:
    """``a @ a @ a`` as one naive O(n**4) einsum loop: a single C call, GIL released."""
    out: Array = np.einsum("ij,jk,kl->il", a, a, a, optimize=False)
    return out


def stuck_matrix_size(seconds: float) -> int:
    """Return the matrix size n for which :func:`long_c_call` lasts about ``seconds`` here.

    Times a small call (about 0.05 s) and scales it: the call costs n**4.
    """
    a = np.full((_CALIBRATION_SIZE, _CALIBRATION_SIZE), 1e-3)
    t0 = time.perf_counter()
    _einsum3(a)
    elapsed = max(time.perf_counter() - t0, 1e-6)
    size = int(_CALIBRATION_SIZE * (max(seconds, 0.0) / elapsed) ** 0.25)
    return max(_CALIBRATION_SIZE, min(size, _MAX_STUCK_SIZE))


def describe_long_call(size: int, seconds: float) -> str:
    """A one-line description of :func:`long_c_call` for the user."""
    return (
        f"np.einsum('ij,jk,kl->il') of three {size}x{size} matrices without path "
        f"optimisation: one C call of about {seconds:.0f} s"
    )


def long_c_call(size: int) -> float:
    """Run the long C call on ``size`` x ``size`` matrices; return a checksum.

    No Python bytecode runs in this thread until it returns, so neither a cooperative
    cancel nor the SIGTERM handler can interrupt it; SIGKILL can.
    """
    a = np.full((size, size), 1.0 / size)
    return float(_einsum3(a)[0, 0])
