"""Positional encodings: sinusoidal, learned, rotary (RoPE) and ALiBi.

Every function takes explicit ``position_ids`` rather than assuming ``0..N-1``, because several
chapters (set-based prompting, InfLLM, SeqPE, ...) are precisely about *which* positions tokens get.
"""

from __future__ import annotations

import math

import torch
from torch import nn

Tensor = torch.Tensor


def _check_positions(position_ids: Tensor, name: str = "position_ids", allow_float: bool = False) -> Tensor:
    if not isinstance(position_ids, torch.Tensor) or (position_ids.is_floating_point() and not allow_float):
        raise ValueError(f"{name} must be an integer tensor of shape (N,) or (B, N)"
                         + (" (or a float tensor of fractional positions)" if allow_float else ""))
    if position_ids.ndim not in (1, 2):
        raise ValueError(f"{name} must have shape (N,) or (B, N), got {tuple(position_ids.shape)}")
    return position_ids


def sinusoidal_table(n: int, dim: int, base: float = 10000.0) -> Tensor:
    """The (n, dim) table of Vaswani et al.: PE[p, 2i] = sin(p / base^(2i/dim)), PE[p, 2i+1] = cos(...)."""
    if dim % 2:
        raise ValueError(f"dim must be even for sinusoidal encodings, got {dim}")
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    inv = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(n, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)
    return table


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal absolute positions, added to token embeddings. Works for any position."""

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim must be even, got {dim}")
        self.register_buffer("inv_freq", base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim), persistent=False)

    def forward(self, position_ids: Tensor) -> Tensor:
        """(N,) or (B, N) -> (N, dim) or (B, N, dim)."""
        p = _check_positions(position_ids).float()[..., None] * self.inv_freq  # (.., N, dim/2)
        return torch.stack([p.sin(), p.cos()], dim=-1).flatten(-2)


class LearnedPositions(nn.Module):
    """A trainable table of ``max_len`` absolute position vectors (GPT-2 style)."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(max_len, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, position_ids: Tensor) -> Tensor:
        p = _check_positions(position_ids)
        if p.numel() and int(p.max()) >= self.table.num_embeddings:
            raise ValueError(
                f"position {int(p.max())} is beyond the learned table (max_len={self.table.num_embeddings}); "
                "learned positions cannot extrapolate"
            )
        return self.table(p)


def rope_cos_sin(position_ids: Tensor, head_dim: int, base: float = 10000.0,
                 inv_freq: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """cos and sin of RoPE angles θ_i · p with θ_i = base^(-2i/head_dim); shapes (.., N, head_dim).

    ``position_ids`` may be fractional (a float tensor: interpolated or scaled positions);
    ``inv_freq`` (head_dim/2,), when given, replaces the frequencies θ_i (e.g. per-dimension scaling).
    """
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
    p = _check_positions(position_ids, allow_float=True)
    p = p if p.dtype == torch.float64 else p.float()
    if inv_freq is None:
        inv = base ** (-torch.arange(0, head_dim, 2, dtype=p.dtype, device=p.device) / head_dim)
    else:
        if inv_freq.shape != (head_dim // 2,):
            raise ValueError(f"inv_freq must have shape (head_dim/2,) = ({head_dim // 2},), got {tuple(inv_freq.shape)}")
        inv = inv_freq.to(device=p.device, dtype=p.dtype)
    ang = p[..., None] * inv  # (.., N, head_dim/2)
    ang = torch.cat([ang, ang], dim=-1)  # half-split layout, as in Llama / Hugging Face
    return ang.cos(), ang.sin()


def apply_rope(x: Tensor, position_ids: Tensor, base: float = 10000.0, inv_freq: Tensor | None = None) -> Tensor:
    """Rotate pairs (x_i, x_{i+D/2}) of ``x`` (B, H, N, D) by angle θ_i · position.

    ``position_ids`` (N,) or (B, N) may be integer or float (fractional positions, as in position
    interpolation); ``inv_freq`` optionally replaces θ_i (see :func:`rope_cos_sin`).
    """
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, H, N, D), got {tuple(x.shape)}")
    p = _check_positions(position_ids, allow_float=True)
    if p.shape[-1] != x.shape[2]:
        raise ValueError(f"position_ids must have N={x.shape[2]} entries, got shape {tuple(p.shape)}")
    cos, sin = rope_cos_sin(p, x.shape[-1], base, inv_freq)
    if cos.ndim == 3:  # (B, N, D) -> (B, 1, N, D)
        cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos.to(x.dtype) + rotated * sin.to(x.dtype)).to(x.dtype)


def alibi_slopes(n_heads: int) -> Tensor:
    """Head slopes m_h = 2^(-8h/n) (Press et al.), extended as in the paper for n not a power of two."""
    if n_heads < 1:
        raise ValueError(f"n_heads must be >= 1, got {n_heads}")

    def powers(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return torch.tensor(powers(n_heads))
    closest = 2 ** math.floor(math.log2(n_heads))
    extra = powers(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(powers(closest) + extra)


def alibi_bias(n_heads: int, q_positions: Tensor, k_positions: Tensor) -> Tensor:
    """Additive ALiBi bias -m_h · |q - k|, shape (1, H, Nq, Nk) (or (B, H, Nq, Nk) for batched positions)."""
    qp = _check_positions(q_positions, "q_positions")
    kp = _check_positions(k_positions, "k_positions")
    dist = (qp[..., :, None] - kp[..., None, :]).abs().float()  # (.., Nq, Nk)
    if dist.ndim == 2:
        dist = dist[None]
    slopes = alibi_slopes(n_heads).to(dist.device)
    return -slopes.view(1, -1, 1, 1) * dist[:, None]
