"""Why transformers fail at multi-digit multiplication (Bai et al. 2025, arXiv 2510.00184): the data,
the running sum the middle digits need, the auxiliary-loss model, and linear probes.

* :func:`multiplication_batch` -- 4x4-digit products written least-significant digit first:
  ``a0 a1 a2 a3 * b0 b1 b2 b3 = c0 .. c7`` (18 tokens); the logits at positions 9..16 predict c0..c7.
* :func:`running_sum` -- ``s_k = sum_{i+j=k} a_i b_j``, ``c_hat_k = s_k + floor(c_hat_{k-1} / 10)``,
  ``c_k = c_hat_k mod 10`` (eq. mul-chat).
* :class:`AuxHeadProbe` -- per-head linear regressions ``w_h^T z_h`` of ``c_hat_k`` on the attention
  output *before* ``W_O`` at the answer positions, added to the loss with weight ``lam``
  (eq. mul-aux; the official checkpoint's ``linear_regression_heads``).
* :func:`digit_losses`, :func:`digit_accuracy` -- per-answer-digit CE and accuracy.
* :func:`ridge_probe_r2` -- closed-form ridge probes of ``c_hat_k`` from a representation.
* :func:`icot_sequence` -- the explicit chain-of-thought target (partial products per digit) that
  implicit CoT (Deng et al. 2024) removes stage by stage; :func:`icot_keep` is the removal schedule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.transformer import TinyLM

Tensor = torch.Tensor
TIMES, EQUALS, SEP = 10, 11, 12  # token ids after the ten digits
VOCAB = 13
N_DIGITS = 4
ANSWER = slice(2 * N_DIGITS + 1, 4 * N_DIGITS + 1)  # logits at positions 9..16 predict c0..c7


def digits_lsb(x: Tensor, n: int) -> Tensor:
    """The ``n`` decimal digits of ``x`` (B,), least significant first: (B, n)."""
    if x.is_floating_point() or x.ndim != 1:
        raise ValueError(f"x must be a 1-D integer tensor, got {x.dtype} {tuple(x.shape)}")
    return torch.stack([(x // 10 ** k) % 10 for k in range(n)], dim=1)


def running_sum(a: Tensor, b: Tensor) -> Tensor:
    """``c_hat_k`` for k = 0..2n-1 from digit tensors a, b (B, n), least significant first (eq. mul-chat)."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must be digit tensors of the same shape (B, n), got {tuple(a.shape)}, {tuple(b.shape)}")
    B, n = a.shape
    s = torch.zeros(B, 2 * n, dtype=torch.long)
    for i in range(n):
        for j in range(n):
            s[:, i + j] += a[:, i] * b[:, j]
    c_hat = torch.zeros_like(s)
    carry = torch.zeros(B, dtype=torch.long)
    for k in range(2 * n):
        c_hat[:, k] = s[:, k] + carry
        carry = c_hat[:, k] // 10
    return c_hat


def multiplication_batch(n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``n`` random 4x4-digit problems: tokens (n, 18) and the running sums c_hat (n, 8)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    a = torch.randint(10 ** (N_DIGITS - 1), 10 ** N_DIGITS, (n,), generator=generator)
    b = torch.randint(10 ** (N_DIGITS - 1), 10 ** N_DIGITS, (n,), generator=generator)
    da, db = digits_lsb(a, N_DIGITS), digits_lsb(b, N_DIGITS)
    c = digits_lsb(a * b, 2 * N_DIGITS)
    seq = torch.cat([da, torch.full((n, 1), TIMES), db, torch.full((n, 1), EQUALS), c], dim=1)
    return seq, running_sum(da, db)


def icot_sequence(seq: Tensor) -> Tensor:
    """The explicit-CoT version of a batch: ``a * b = [p_0 SEP p_1 SEP .. p_3 SEP] c``, where ``p_j`` is the
    partial product ``a * b_j`` (5 digits, least significant first). Implicit CoT removes the CoT tokens
    from the left, stage by stage, until none are left (:func:`icot_keep`)."""
    if seq.ndim != 2 or seq.shape[1] != 4 * N_DIGITS + 2:
        raise ValueError(f"seq must be (B, {4 * N_DIGITS + 2}) multiplication tokens, got {tuple(seq.shape)}")
    da, db = seq[:, :N_DIGITS], seq[:, N_DIGITS + 1: 2 * N_DIGITS + 1]
    w = 10 ** torch.arange(N_DIGITS)
    a = (da * w).sum(1)
    parts = []
    for j in range(N_DIGITS):
        parts += [digits_lsb(a * db[:, j], N_DIGITS + 1), torch.full((seq.shape[0], 1), SEP)]
    return torch.cat([seq[:, : 2 * N_DIGITS + 2], *parts, seq[:, 2 * N_DIGITS + 2:]], dim=1)


def icot_keep(step: int, steps: int, n_cot: int, stages: int | None = None) -> int:
    """How many CoT tokens are still present at ``step`` of ``steps``: removed in equal stages, the last
    stage (a quarter of training by default) has none."""
    stages = stages or 4
    if steps < 1 or n_cot < 0 or stages < 1:
        raise ValueError(f"need steps >= 1, n_cot >= 0, stages >= 1, got {steps}, {n_cot}, {stages}")
    stage = min(stages, step * (stages + 1) // steps)
    return max(0, n_cot - round(stage * n_cot / stages))


class AuxHeadProbe(nn.Module):
    """Per-head linear regressions ``w_h^T z_h`` (no bias) of ``c_hat / scale`` from the attention output of
    ``layer`` *before* W_O (head dim ``d_h``), at the answer positions (eq. mul-aux)."""

    def __init__(self, model: TinyLM, layer: int, heads: tuple[int, ...], scale: float = 100.0) -> None:
        super().__init__()
        cfg = model.cfg
        if not 0 <= layer < cfg.n_layers or not heads or any(not 0 <= h < cfg.n_heads for h in heads):
            raise ValueError(f"layer must be in [0, {cfg.n_layers}) and heads in [0, {cfg.n_heads}), got {layer}, {heads}")
        self.layer, self.heads, self.scale = layer, tuple(heads), scale
        self.d_head = cfg.d_model // cfg.n_heads
        self.n_heads = cfg.n_heads
        self.probes = nn.ModuleList(nn.Linear(self.d_head, 1, bias=False) for _ in heads)

    def loss(self, model: TinyLM, seq: Tensor, c_hat: Tensor, positions: slice = ANSWER) -> tuple[Tensor, Tensor]:
        """(logits (B, N-1, V), mean squared probe error over heads and answer positions)."""
        store: list[Tensor] = []
        hook = model.blocks[self.layer].attn.out_proj.register_forward_pre_hook(lambda m, a: store.append(a[0]))
        try:
            logits = model(seq[:, :-1])
        finally:
            hook.remove()
        B, N, _ = store[0].shape
        z = store[0].view(B, N, self.n_heads, self.d_head)[:, positions]  # (B, 8, H, Dh)
        target = c_hat.float() / self.scale  # (B, 8)
        err = torch.stack([(p(z[:, :, h]).squeeze(-1) - target) ** 2 for p, h in zip(self.probes, self.heads)])
        return logits, err.mean()


def digit_losses(logits: Tensor, seq: Tensor) -> Tensor:
    """Per-answer-digit cross-entropy (8,) of next-token ``logits`` (B, N-1, V) on ``seq`` (B, N)."""
    tgt = seq[:, 1:][:, ANSWER]  # (B, 8)
    lg = logits[:, ANSWER]  # (B, 8, V)
    return F.cross_entropy(lg.transpose(1, 2), tgt, reduction="none").mean(0)


@torch.no_grad()
def digit_accuracy(model: TinyLM, seq: Tensor) -> Tensor:
    """Per-answer-digit accuracy (8,) with teacher forcing (the digit given the true earlier digits)."""
    pred = model(seq[:, :-1])[:, ANSWER].argmax(-1)
    return (pred == seq[:, 1:][:, ANSWER]).float().mean(0)


def ridge_probe_r2(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, ridge: float = 1e-2) -> float:
    """R^2 on held-out data of a closed-form ridge regression of ``y`` (n,) on ``x`` (n, d) (with intercept)."""
    if x_train.ndim != 2 or y_train.shape != (x_train.shape[0],) or x_test.shape[1] != x_train.shape[1]:
        raise ValueError(f"x must be (n, d) and y (n,), got {tuple(x_train.shape)}, {tuple(y_train.shape)}, "
                         f"{tuple(x_test.shape)}")
    mu, sd = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    xt = torch.cat([(x_train - mu) / sd, torch.ones(len(x_train), 1)], 1).double()
    A = xt.T @ xt + ridge * len(x_train) * torch.eye(xt.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(A, xt.T @ y_train.double())
    xs = torch.cat([(x_test - mu) / sd, torch.ones(len(x_test), 1)], 1).double()
    resid = y_test.double() - xs @ w
    return float(1 - resid.pow(2).sum() / (y_test.double() - y_test.double().mean()).pow(2).sum())
