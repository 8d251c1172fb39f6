"""Reference scaled-dot-product attention that takes a :class:`~companion.nn.masks.Mask`.

Two entry points with identical semantics:

* :func:`reference_attention` -- explicit math (scores, softmax, weighted sum); returns the
  attention weights on request. The ground truth every kernel is tested against.
* :func:`attention` -- the same result through ``torch.nn.functional.scaled_dot_product_attention``
  (fast on CPU); used inside the book's transformer blocks.

Conventions (shared with :mod:`companion.kernels`): ``q`` is ``(B, H, Nq, D)``, ``k`` and ``v``
are ``(B, Hkv, Nk, D)`` with ``Hkv`` dividing ``H`` (grouped-query attention). A query row that
sees no key returns zeros, never NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .masks import Mask

Tensor = torch.Tensor


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Raise ``ValueError`` naming the argument when q/k/v shapes or dtypes do not fit together."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"{name} must have shape (B, H, N, D), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (B, Hkv, Nk, D), got {tuple(k.shape)} and {tuple(v.shape)}")
    B, H, _, D = q.shape
    if k.shape[0] != B:
        raise ValueError(f"k must have batch size {B} like q, got shape {tuple(k.shape)}")
    if k.shape[3] != D:
        raise ValueError(f"k must have head dim D={D} like q, got shape {tuple(k.shape)}")
    if k.shape[1] == 0 or H % k.shape[1] != 0:
        raise ValueError(f"k/v heads ({k.shape[1]}) must divide q heads ({H}) for grouped-query attention")


def dense_mask_for(mask: Mask | Tensor | None, q: Tensor, k: Tensor) -> Tensor | None:
    """The boolean keep-matrix ``(B or 1, 1, Nq, Nk)`` for ``mask`` on these q/k, or None."""
    if mask is None:
        return None
    B, nq, nk = q.shape[0], q.shape[2], k.shape[2]
    if isinstance(mask, Mask):
        d = mask.dense(nq, nk, device=q.device)  # (Bm, Nq, Nk)
    elif isinstance(mask, torch.Tensor):
        if mask.dtype != torch.bool:
            raise ValueError(f"mask tensor must be bool (True = attend), got {mask.dtype}")
        d = mask if mask.ndim == 3 else mask.reshape(-1, *mask.shape[-2:]) if mask.ndim == 2 else None
        if d is None:
            raise ValueError(f"mask tensor must have shape (Nq, Nk) or (B, Nq, Nk), got {tuple(mask.shape)}")
        d = d.to(q.device)
    else:
        raise ValueError(f"mask must be a companion.nn.masks.Mask, a bool tensor or None, got {type(mask).__name__}")
    if d.shape[-2:] != (nq, nk):
        raise ValueError(f"mask must cover (Nq, Nk) = ({nq}, {nk}), got {tuple(d.shape[-2:])}")
    if d.shape[0] not in (1, B):
        raise ValueError(f"mask batch size must be 1 or {B}, got {d.shape[0]}")
    return d.unsqueeze(1)


def _check_bias(bias: Tensor | None, q: Tensor, nk: int) -> None:
    if bias is None:
        return
    if bias.ndim != 4 or bias.shape[-2:] != (q.shape[2], nk) or bias.shape[0] not in (1, q.shape[0]) \
            or bias.shape[1] not in (1, q.shape[1]):
        raise ValueError(
            f"bias must have shape (B or 1, H or 1, Nq, Nk) = (.., .., {q.shape[2]}, {nk}), got {tuple(bias.shape)}"
        )


def _repeat_kv(k: Tensor, n_rep: int) -> Tensor:
    """(B, Hkv, N, D) -> (B, Hkv * n_rep, N, D) for grouped-query attention."""
    return k if n_rep == 1 else k.repeat_interleave(n_rep, dim=1)


def reference_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None,
                        scale: float | None = None, bias: Tensor | None = None,
                        return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(q kᵀ · scale + bias, masked) v, computed explicitly.

    Returns ``(B, H, Nq, D)`` and, with ``return_weights``, the weights ``(B, H, Nq, Nk)``.
    """
    check_qkv(q, k, v)
    _check_bias(bias, q, k.shape[2])
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    n_rep = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, Nq, Nk)
    if bias is not None:
        scores = scores + bias
    keep = dense_mask_for(mask, q, k)
    if keep is not None:
        visible = keep.any(dim=-1, keepdim=True)  # (B|1, 1, Nq, 1)
        scores = scores.masked_fill(~keep, float("-inf"))
        scores = torch.where(visible, scores, torch.zeros_like(scores))  # no NaN on empty rows
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype) * visible
    else:
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    out = torch.matmul(weights, v)
    return (out, weights) if return_weights else out


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None,
              scale: float | None = None, bias: Tensor | None = None) -> Tensor:
    """Same result as :func:`reference_attention`, through PyTorch's fused SDPA."""
    check_qkv(q, k, v)
    _check_bias(bias, q, k.shape[2])
    n_rep = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    keep = dense_mask_for(mask, q, k)
    if keep is None and bias is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    visible = None
    if keep is not None:
        visible = keep.any(dim=-1, keepdim=True)
        keep = keep | ~visible  # give empty rows something to attend to, zero them below
    if bias is None:
        attn_mask = keep
    else:
        attn_mask = bias.to(q.dtype)
        if keep is not None:
            attn_mask = attn_mask.masked_fill(~keep, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    return out if visible is None else out * visible


# ---------------------------------------------------------------- partial attentions and their exact merge
def attention_with_lse(q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None,
                       scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Softmax attention over one subset of keys, with the log-sum-exp of its scores.

    ``q`` (B, H, Nq, D); ``k, v`` (B, Hkv, Nk, D). ``mask`` is a :class:`Mask`, a bool tensor
    (Nq, Nk) / (B, Nq, Nk), or a 4-D bool tensor broadcastable to (B, H, Nq, Nk) (True = attend).
    Returns o (B, H, Nq, D), normalised over these keys, and lse = log Σ_j exp(s_j) (B, H, Nq);
    a row that sees no key gets o = 0 and lse = -inf. Partials over disjoint key sets combine
    exactly with :func:`merge_partials`.
    """
    check_qkv(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    n_rep = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, Nq, Nk)
    if isinstance(mask, torch.Tensor) and mask.ndim == 4:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask tensor must be bool (True = attend), got {mask.dtype}")
        keep = mask
    else:
        keep = dense_mask_for(mask, q, k)
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, Nq); -inf where nothing is visible
    p = torch.exp(scores - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)[..., None])
    return torch.matmul(p, v), lse


def merge_partials(outs: "list[Tensor] | tuple[Tensor, ...]",
                   lses: "list[Tensor] | tuple[Tensor, ...]") -> tuple[Tensor, Tensor]:
    """Exact merge of partial attentions over disjoint key sets (the log-sum-exp merge).

    o = Σ_p exp(lse_p - lse) o_p with lse = log Σ_p exp(lse_p). ``outs[p]`` is (..., D) and
    ``lses[p]`` its prefix (...). Rows that no part saw stay o = 0, lse = -inf (never NaN).
    Returns (o, lse), so merges compose.
    """
    if len(outs) == 0 or len(outs) != len(lses):
        raise ValueError(f"outs and lses must be non-empty and of equal length, got {len(outs)} and {len(lses)}")
    for i, (o, s) in enumerate(zip(outs, lses)):
        if o.shape != outs[0].shape or s.shape != o.shape[:-1]:
            raise ValueError(f"outs[{i}] must have the shape (..., D) of outs[0] {tuple(outs[0].shape)} and "
                             f"lses[{i}] its prefix, got {tuple(o.shape)} and {tuple(s.shape)}")
    lse_all = torch.stack(list(lses))  # (P, ...)
    total = torch.logsumexp(lse_all, dim=0)  # (...)
    safe = torch.where(torch.isinf(total), torch.zeros_like(total), total)
    weights = torch.exp(lse_all - safe)  # (P, ...): each part's share; 0 for a part that saw nothing
    return (weights[..., None] * torch.stack(list(outs))).sum(0), total


# ---------------------------------------------------------------- the q/k/v projection split into heads
def project_qkv(x: Tensor, q_proj: "torch.nn.Module", kv_proj: "torch.nn.Module", n_heads: int,
                n_kv_heads: int, head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """The projections of a (grouped-query) attention layer, split into heads.

    ``x`` (B, N, d) -> q (B, H, N, Dh), k and v (B, Hkv, N, Dh), with ``q_proj: d -> H·Dh`` and the
    fused ``kv_proj: d -> 2·Hkv·Dh`` of :class:`~companion.nn.transformer.MultiHeadAttention` (no RoPE
    applied). The one place that knows the layout, for modules that reuse a layer's weights
    (InfLLM, cache augmentation, the cached forward of :class:`~companion.nn.TinyLM`).
    """
    if x.ndim != 3:
        raise ValueError(f"x must have shape (B, N, d), got {tuple(x.shape)}")
    B, N, _ = x.shape
    q = q_proj(x).view(B, N, n_heads, head_dim).transpose(1, 2)  # (B, H, N, Dh)
    k, v = kv_proj(x).view(B, N, 2, n_kv_heads, head_dim).permute(2, 0, 3, 1, 4)  # (B, Hkv, N, Dh) each
    return q, k, v
