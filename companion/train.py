"""The one training loop of the book: AdamW, warmup + cosine schedule, gradient clipping,
a tqdm progress bar, an evaluation callback and optional early stopping.

A chapter supplies two functions and gets a :class:`History` back::

    def batch_fn(step: int) -> Any: ...                 # a fresh batch (or use an iterable)
    def loss_fn(model, batch) -> torch.Tensor: ...      # scalar loss
    hist = train(model, loss_fn, batch_fn, steps=1500, lr=3e-3,
                 eval_fn=lambda m: {"acc": accuracy(m)}, eval_every=250)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm


@dataclass
class EarlyStop:
    """Stop when ``metric`` (from ``eval_fn``) has not improved for ``patience`` evaluations,
    or as soon as it reaches ``target`` (if given)."""

    metric: str
    patience: int = 3
    mode: str = "max"  # "max" or "min"
    target: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")


@dataclass
class History:
    """What happened during training: per-step losses, evaluations, wall time."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0

    def metric(self, name: str) -> list[float]:
        """The values of one evaluation metric, in order."""
        return [e[name] for e in self.evals]

    def smoothed_losses(self, window: int = 20) -> list[float]:
        """Running mean of the training loss over ``window`` steps (for plots)."""
        out, acc = [], 0.0
        for i, x in enumerate(self.losses):
            acc += x
            if i >= window:
                acc -= self.losses[i - window]
            out.append(acc / min(i + 1, window))
        return out


def lr_at(step: int, steps: int, lr: float, warmup: int, schedule: str) -> float:
    """Learning rate at ``step``: linear warmup, then constant or cosine decay to 10 %."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor],
          batches: Callable[[int], Any] | Iterable[Any], *, steps: int, lr: float = 1e-3,
          weight_decay: float = 0.0, warmup: int = 0, schedule: str = "cosine", clip: float | None = 1.0,
          optimizer: torch.optim.Optimizer | None = None,
          eval_fn: Callable[[nn.Module], dict[str, float]] | None = None, eval_every: int = 100,
          early_stop: EarlyStop | None = None, desc: str = "train", progress: bool = True) -> History:
    """Train ``model`` for ``steps`` optimisation steps and return its :class:`History`.

    ``batches`` is a function ``step -> batch`` or an iterable of batches. ``eval_fn`` runs
    in ``torch.no_grad()`` with the model in eval mode every ``eval_every`` steps and at the end.
    A parameter group of ``optimizer`` with an ``"lr_scale"`` entry runs at ``lr_scale`` times the
    scheduled learning rate (e.g. a head trained faster than the body).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")
    if early_stop is not None and eval_fn is None:
        raise ValueError("early_stop needs an eval_fn that returns the metric")
    opt = optimizer or torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    get = batches if callable(batches) else iter(batches).__next__
    hist = History()
    best, since_best = None, 0
    start = time.perf_counter()

    def evaluate(step: int) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            result = {k: float(v) for k, v in eval_fn(model).items()}
        model.train()
        hist.eval_steps.append(step)
        hist.evals.append(result)
        return result

    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=0.5)
    model.train()
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup, schedule) * group.get("lr_scale", 1.0)
        loss = loss_fn(model, get(step) if callable(batches) else get())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower lr or check the data")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        hist.steps.append(step)
        hist.losses.append(loss.item())
        last = step == steps - 1
        if eval_fn is not None and ((step + 1) % eval_every == 0 or last):
            result = evaluate(step + 1)
            bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.3f}" for k, v in result.items()})
            if early_stop is not None:
                value = result[early_stop.metric]
                better = best is None or (value > best if early_stop.mode == "max" else value < best)
                best, since_best = (value, 0) if better else (best, since_best + 1)
                reached = early_stop.target is not None and (
                    value >= early_stop.target if early_stop.mode == "max" else value <= early_stop.target)
                if (reached or since_best >= early_stop.patience) and not last:
                    hist.stopped_early = True
                    break
        elif step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    hist.seconds = time.perf_counter() - start
    return hist


def _check_stream(stream: torch.Tensor, length: int) -> None:
    if not isinstance(stream, torch.Tensor) or stream.ndim != 1 or stream.is_floating_point():
        raise ValueError(f"stream must be a 1-D integer tensor of token ids, got {getattr(stream, 'shape', stream)!r}")
    if length < 1 or stream.numel() < length + 1:
        raise ValueError(f"length must be in [1, len(stream) - 1] = [1, {stream.numel() - 1}], got {length}")


def lm_batches(stream: torch.Tensor, batch: int, length: int, seed: int = 0) -> Callable[[int], tuple]:
    """A ``step -> (x, y)`` batch function of random windows of a token stream, for :func:`train`.

    ``x`` and ``y`` are (batch, length) with ``y`` the next tokens of ``x``. The windows of step
    ``s`` depend only on ``(seed, s)``, so a run is reproducible and resumable.
    """
    _check_stream(stream, length)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")

    def get(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        start = torch.randint(0, stream.numel() - length, (batch, 1), generator=g)
        idx = start + torch.arange(length + 1)  # (batch, length + 1)
        window = stream[idx]
        return window[:, :-1], window[:, 1:]

    return get


def lm_windows(stream: torch.Tensor, length: int, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` non-overlapping windows of ``stream`` as ``(x, y)``, each (n, length): a fixed eval set."""
    _check_stream(stream, length)
    most = (stream.numel() - 1) // length
    n = most if n is None else n
    if not 1 <= n <= most:
        raise ValueError(f"n must be in [1, {most}] for length {length}, got {n}")
    x = stream[: n * length].view(n, length)
    y = stream[1: n * length + 1].view(n, length)
    return x, y


@torch.no_grad()
def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 16, **kw: Any) -> float:
    """Mean next-token cross-entropy (nats/token) of ``model(x, **kw)`` logits against ``y``, in batches."""
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"x and y must both be (n, length), got {tuple(x.shape)} and {tuple(y.shape)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, x.shape[0], batch):
        logits = model(x[i:i + batch], **kw)  # (b, length, V)
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[i:i + batch].flatten(),
                                                   reduction="sum").item()
    model.train(was_training)
    return total / y.numel()
