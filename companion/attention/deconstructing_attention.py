"""Controlled attention variants, alone and interleaved with standard attention.

Xue, Moosavi & Aletras, *Deconstructing Attention: Investigating Design Principles for Effective
Language Modeling* (IJCNLP-AACL 2025, arXiv 2510.11602). Everything the chapter
``book/attention/deconstructing-attention.md`` needs:

* **Mixers** that relax one principle of attention each, all parameter-matched to multi-head
  attention and plugged into :class:`companion.nn.TinyLM` blocks in place of ``block.attn``
  (same forward signature ``(x, mask, position_ids, attn_fn=None) -> (B, N, d)``):

  - ``"standard"``: the block's own :class:`companion.nn.MultiHeadAttention` (eq. (1));
  - ``"mlp"``: :class:`GatedMLPMixer`, no token mixing at all (eq. (2));
  - ``"approx"``: :class:`TaylorAttention`, softmax replaced by its 2nd-order Taylor
    expansion (eq. (3)), computable in linear time through the feature map :func:`taylor_features`;
  - ``"nonapx"``: :class:`NonApxAttention`, no pairwise similarity: a key-only score and a
    causal softmax-weighted running mean (eq. (4));
  - ``"rndembqk"``: :class:`FixedQKAttention`, queries and keys computed from a **fixed** input
    (random vectors, or a fixed token sequence for FixedSeqQK) passed through the model's own lower
    layers, so the mixing matrix is the same for every input (eq. (5)).

* **Configurations** of one model class, :class:`DeconLM`: :func:`layer_plan` lays out
  ``"uniform"`` (the variant everywhere) or ``"hybrid"`` (variant in odd layers, 1-indexed; standard
  attention in even layers).
* **Task**: multi-query associative recall (MQAR, :func:`mqar_batch`), which needs content-based
  lookup; :func:`mqar_accuracy` scores the recalled values.
* :func:`mixing_matrices` returns every layer's token-mixing matrix for plots.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import CausalMask, MultiHeadAttention, TinyLM, TransformerConfig
from ..nn.attention import dense_mask_for
from ..nn.masks import Mask
from ..nn.positions import apply_rope

Tensor = torch.Tensor
VARIANTS = ("standard", "mlp", "approx", "nonapx", "rndembqk")
LAYOUTS = ("uniform", "hybrid")
SEQUENCE_INDEPENDENT = ("rndembqk",)
IGNORE = -100


# ----------------------------------------------------------------------------------------------
# Mixing kernels (functions on q, k, v of shape (B, H, N, D))
# ----------------------------------------------------------------------------------------------

def _keep(mask: Mask | Tensor | None, q: Tensor, k: Tensor) -> Tensor:
    """Boolean keep-matrix (B|1, 1, N, N) of ``mask``; no mask means every key is visible."""
    keep = dense_mask_for(mask, q, k)
    if keep is None:
        return torch.ones(1, 1, q.shape[2], k.shape[2], dtype=torch.bool, device=q.device)
    return keep


def _check_4d(**tensors: Tensor) -> None:
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor of shape (B, H, N, D), "
                             f"got {getattr(t, 'shape', type(t).__name__)}")


def _check_causal_for_linear(mask: Mask | Tensor | None) -> None:
    if not isinstance(mask, CausalMask):
        raise ValueError(f"mask must be a CausalMask when linear=True (the scan is causal), got {mask!r}")


def taylor_features(x: Tensor) -> Tensor:
    """φ(x) = [1, x / d^¼, (x ⊗ x) / (√2 · √d)] along the last dim: (.., d) -> (.., 1 + d + d²).

    Chosen so that φ(q)·φ(k) = 1 + s + s²/2 with s = q·k/√d, the Taylor kernel of eq. (3).
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor (.., d), got {getattr(x, 'shape', type(x).__name__)}")
    d = x.shape[-1]
    ones = torch.ones_like(x[..., :1])
    outer = (x[..., :, None] * x[..., None, :]).flatten(-2)  # (.., d²)
    return torch.cat([ones, x / d ** 0.25, outer / math.sqrt(2 * d)], dim=-1)


def taylor_weights(q: Tensor, k: Tensor, mask: Mask | Tensor | None = None) -> Tensor:
    """Mixing matrix of eq. (3): A_ij ∝ 1 + s_ij + s_ij²/2 over visible keys, rows sum to 1: (B, H, N, N)."""
    _check_4d(q=q, k=k)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, N, N)
    kern = (1 + s + s * s / 2) * _keep(mask, q, k)  # > 0 everywhere: ((s + 1)² + 1) / 2
    return kern / kern.sum(-1, keepdim=True).clamp_min(torch.finfo(kern.dtype).tiny)


def taylor_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None,
                     linear: bool = False) -> Tensor:
    """Taylor-softmax attention (eq. (3)), (B, H, N, D) -> (B, H, N, D).

    ``linear=False``: the explicit N×N form for any mask. ``linear=True``: the causal form in linear
    time, o_i = φ(q_i)ᵀ Σ_{j≤i} φ(k_j) v_jᵀ / φ(q_i)ᵀ Σ_{j≤i} φ(k_j) (prefix sums of feature outer products).
    """
    _check_4d(q=q, k=k, v=v)
    if not linear:
        return taylor_weights(q, k, mask) @ v
    _check_causal_for_linear(mask)
    fq, fk = taylor_features(q), taylor_features(k)  # (B, H, N, F)
    kv = torch.cumsum(fk[..., :, None] * v[..., None, :], dim=2)  # (B, H, N, F, D)
    num = (fq[..., None, :] @ kv).squeeze(-2)  # (B, H, N, D)
    den = (fq * torch.cumsum(fk, dim=2)).sum(-1, keepdim=True)  # (B, H, N, 1)
    return num / den


def nonapx_scores(q: Tensor, k: Tensor) -> Tensor:
    """Key-only scores s_j = 1ᵀ(q_j ⊙ k_j)/√d of eq. (4): (B, H, N, D) -> (B, H, N)."""
    _check_4d(q=q, k=k)
    return (q * k).sum(-1) / math.sqrt(q.shape[-1])


def nonapx_weights(q: Tensor, k: Tensor, mask: Mask | Tensor | None = None) -> Tensor:
    """Mixing matrix of eq. (4): A_ij = softmax over visible j of s_j (the same score in every row): (B, H, N, N)."""
    s = nonapx_scores(q, k)  # (B, H, N)
    keep = _keep(mask, q, k)
    scores = s[..., None, :].expand(*s.shape[:-1], q.shape[2], s.shape[-1]).masked_fill(~keep, float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row that sees no key mixes nothing


def nonapx_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None,
                     linear: bool = False) -> Tensor:
    """Non-approximate attention (eq. (4)), (B, H, N, D) -> (B, H, N, D).

    ``linear=False``: the N×N form for any mask. ``linear=True``: the causal running mean
    o_i = Σ_{j≤i} e^{s_j} v_j / Σ_{j≤i} e^{s_j} in linear time (:func:`nonapx_scan`), numerically safe
    for any spread of the scores.
    """
    _check_4d(q=q, k=k, v=v)
    if not linear:
        return nonapx_weights(q, k, mask) @ v
    _check_causal_for_linear(mask)
    return nonapx_scan(nonapx_scores(q, k), v)


def nonapx_scan(s: Tensor, v: Tensor) -> Tensor:
    """Causal softmax-weighted running mean o_i = Σ_{j≤i} e^{s_j} v_j / Σ_{j≤i} e^{s_j}: s (B, H, N), v (B, H, N, D).

    Computed in log space with prefix log-sum-exps (``torch.logcumsumexp``): each step adds
    log(e^a + e^b) = max(a, b) + log(1 + e^{-|a - b|}), a *running* maximum, so every row i is
    normalised by its own prefix and nothing over- or underflows however far apart the scores are.
    A global shift e^{s_j - max s} (what one prefix sum of exponentials needs) makes the early rows
    0/0 once the scores span more than ~100 (float32). Values may be negative, so each value column
    is shifted by a constant c (its minimum minus 1, so v - c >= 1 has a logarithm); the weights of a
    row sum to 1, so adding c back is exact: Σ_j w_ij (v_j - c) + c = Σ_j w_ij v_j.
    """
    if not isinstance(s, torch.Tensor) or s.ndim != 3 or not s.is_floating_point():
        raise ValueError(f"s must be a floating-point tensor (B, H, N), got {getattr(s, 'shape', type(s).__name__)}")
    _check_4d(v=v)
    if v.shape[:3] != s.shape:
        raise ValueError(f"v must be (B, H, N, D) with (B, H, N) = {tuple(s.shape)}, got {tuple(v.shape)}")
    log_z = torch.logcumsumexp(s, dim=-1)[..., None]  # (B, H, N, 1): log Σ_{j≤i} e^{s_j}
    c = v.amin(dim=2, keepdim=True).detach() - 1  # (B, H, 1, D): per value column; o does not depend on it
    log_num = torch.logcumsumexp(s[..., None] + torch.log(v - c), dim=2)  # (B, H, N, D)
    return torch.exp(log_num - log_z) + c


def softmax_weights(q: Tensor, k: Tensor, mask: Mask | Tensor | None = None) -> Tensor:
    """Standard attention's mixing matrix softmax(q kᵀ/√d) over visible keys (eq. (1)): (B, H, N, N)."""
    _check_4d(q=q, k=k)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~_keep(mask, q, k), float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


# ----------------------------------------------------------------------------------------------
# Mixers: drop-in replacements for block.attn
# ----------------------------------------------------------------------------------------------

class GatedMLPMixer(nn.Module):
    """The "mlp" variant (eq. (2)): O = W_dn [SiLU(W_g H) ⊙ W_up H], position by position.

    The hidden width round(4d/3) gives 3·d·round(4d/3) ≈ 4d² parameters, those of multi-head
    attention (W_Q, W_K, W_V, W_O). Its mixing matrix is the identity: no token sees another.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        width = round(4 * cfg.d_model / 3)
        self.gate = nn.Linear(cfg.d_model, width, bias=False)
        self.up = nn.Linear(cfg.d_model, width, bias=False)
        self.down = nn.Linear(width, cfg.d_model, bias=False)
        self.keep_weights = False
        self.last_weights: Tensor | None = None

    def forward(self, x: Tensor, mask: Mask | Tensor | None, position_ids: Tensor,
                attn_fn: Callable[..., Tensor] | None = None) -> Tensor:
        if attn_fn is not None:
            raise ValueError("attn_fn must be None: the mlp variant has no attention to route")
        if self.keep_weights:
            self.last_weights = torch.eye(x.shape[1], device=x.device)[None, None]  # (1, 1, N, N)
        return self.down(F.silu(self.gate(x)) * self.up(x))


class _ProjectedMixer(MultiHeadAttention):
    """A mixer with the projections W_Q, W_K, W_V, W_O of multi-head attention (same parameters).

    With ``cfg.pos == "rope"`` the queries and keys are rotated like those of the standard layers
    (``rotate``; the Non-approximate score q_j·k_j pairs a query and a key of the same position,
    where the rotation cancels, so it skips it).
    """

    rotate = True

    def __init__(self, cfg: TransformerConfig) -> None:
        if cfg.pos == "alibi":
            raise ValueError(f"cfg.pos must be 'rope', 'learned', 'sinusoidal' or 'none' for the variants, got {cfg.pos!r}")
        if (cfg.n_kv_heads or cfg.n_heads) != cfg.n_heads:
            raise ValueError("cfg.n_kv_heads must equal cfg.n_heads: the variants are matched to multi-head attention")
        super().__init__(cfg)

    def _heads(self, t: Tensor) -> Tensor:
        B, N, _ = t.shape
        return t.view(B, N, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, N, Dh)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k, v = self.kv_proj(x).chunk(2, dim=-1)
        return self._heads(self.q_proj(x)), self._heads(k), self._heads(v)

    def _out(self, o: Tensor) -> Tensor:
        B, _, N, _ = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(B, N, -1))

    def weights(self, q: Tensor, k: Tensor, mask: Mask | Tensor | None) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, mask: Mask | Tensor | None, position_ids: Tensor,
                attn_fn: Callable[..., Tensor] | None = None) -> Tensor:
        if attn_fn is not None:
            raise ValueError(f"attn_fn must be None: {type(self).__name__} is not softmax(q kᵀ) v")
        q, k, v = self._qkv(x)
        if self.pos == "rope" and self.rotate:  # RoPE on the queries and keys, as in the standard layers
            q, k = apply_rope(q, position_ids, self.rope_base), apply_rope(k, position_ids, self.rope_base)
        w = self.weights(q, k, mask)  # (B|1, H, N, N)
        if self.keep_weights:
            self.last_weights = w.detach()
        return self._out(w @ v)


class TaylorAttention(_ProjectedMixer):
    """The "approx" variant (eq. (3)): pairwise q·k similarity, softmax replaced by 1 + s + s²/2."""

    def weights(self, q: Tensor, k: Tensor, mask: Mask | Tensor | None) -> Tensor:
        return taylor_weights(q, k, mask)


class NonApxAttention(_ProjectedMixer):
    """The "nonapx" variant (eq. (4)): Q = SiLU(H W_Q), a score per key s_j, a softmax-weighted running mean."""

    rotate = False  # RoPE(q_j)·RoPE(k_j) = q_j·k_j: a rotation of one position's pair changes nothing

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = super()._qkv(x)
        return F.silu(q), k, v

    def weights(self, q: Tensor, k: Tensor, mask: Mask | Tensor | None) -> Tensor:
        return nonapx_weights(q, k, mask)


class FixedQKAttention(_ProjectedMixer):
    """The "rndembqk" variant (eq. (5)): Q, K from the fixed input X (batch row 0), V from every row.

    Only meaningful inside :class:`DeconLM`, which puts the fixed input in row 0 of the batch so that
    X is that input passed through the model's own lower layers. The mixing matrix (1, H, N, N) is
    computed once and shared by the whole batch.
    """

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = super()._qkv(x)
        return q[:1], k[:1], v  # (1, H, N, Dh), (1, H, N, Dh), (B, H, N, Dh)

    def weights(self, q: Tensor, k: Tensor, mask: Mask | Tensor | None) -> Tensor:
        if isinstance(mask, Mask) and mask.batch_size != 1:
            raise ValueError("mask must be the same for every row (batch_size 1) for a sequence-independent map")
        return softmax_weights(q, k, mask)


MIXERS: dict[str, type[nn.Module]] = {
    "mlp": GatedMLPMixer, "approx": TaylorAttention, "nonapx": NonApxAttention, "rndembqk": FixedQKAttention,
}


# ----------------------------------------------------------------------------------------------
# The model: uniform and hybrid configurations of one class
# ----------------------------------------------------------------------------------------------

def layer_plan(variant: str, layout: str, n_layers: int) -> tuple[str, ...]:
    """Which mixer each layer gets. ``"hybrid"``: the variant in odd layers (1-indexed), standard in even ones."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if layout == "uniform":
        return (variant,) * n_layers
    return tuple(variant if i % 2 == 1 else "standard" for i in range(1, n_layers + 1))


class FixedRowEmbedding(nn.Module):
    """Token embedding that prepends the fixed input as batch row 0: (B, N) -> (1 + B, N, d).

    The fixed input is ``fixed_tokens`` embedded by the model's own table (FixedSeqQK) or, if None,
    random vectors ε ~ N(0, σ²I) drawn once (RndEmbQK). Absolute positions are added to it like to
    any row, then it goes through the same blocks, so each layer's fixed X changes with the
    parameters during training but never with the input.
    """

    def __init__(self, embed: nn.Embedding, max_len: int, sigma: float, seed: int,
                 fixed_tokens: Tensor | None = None) -> None:
        super().__init__()
        self.inner = embed
        if fixed_tokens is not None:
            t = torch.as_tensor(fixed_tokens)
            if t.ndim != 1 or t.is_floating_point() or t.numel() < max_len:
                raise ValueError(f"fixed_tokens must be a 1-D integer tensor of >= {max_len} ids, got {tuple(t.shape)}")
            self.register_buffer("fixed_tokens", t[:max_len].long().clone())
            self.eps = None
        else:
            if sigma <= 0:
                raise ValueError(f"sigma must be > 0, got {sigma}")
            g = torch.Generator().manual_seed(seed)
            self.register_buffer("eps", sigma * torch.randn(max_len, embed.embedding_dim, generator=g))
            self.fixed_tokens = None

    @property
    def weight(self) -> Tensor:
        return self.inner.weight

    def fixed_input(self, n: int) -> Tensor:
        """The fixed input of the first ``n`` positions, (n, d)."""
        return self.inner(self.fixed_tokens[:n]) if self.eps is None else self.eps[:n]

    def forward(self, idx: Tensor) -> Tensor:
        x = self.inner(idx)  # (B, N, d)
        return torch.cat([self.fixed_input(idx.shape[1])[None], x], dim=0)  # (1 + B, N, d)


class DeconLM(TinyLM):
    """A :class:`TinyLM` whose layer ``i`` mixes tokens with ``layers[i]`` (one of :data:`VARIANTS`).

    ``"standard"`` layers keep the block's own multi-head attention, so a plan of only ``"standard"``
    *is* the TinyLM. With a sequence-independent layer the fixed input rides along as batch row 0
    (:class:`FixedRowEmbedding`) and is dropped from the logits.
    """

    def __init__(self, cfg: TransformerConfig, layers: Sequence[str], sigma: float = 1.0,
                 seed: int = 0, fixed_tokens: Tensor | None = None) -> None:
        layers = tuple(layers)
        if len(layers) != cfg.n_layers:
            raise ValueError(f"layers must name one variant per layer ({cfg.n_layers}), got {len(layers)}")
        bad = [v for v in layers if v not in VARIANTS]
        if bad:
            raise ValueError(f"layers must hold variants from {VARIANTS}, got {bad}")
        super().__init__(cfg)
        self.layers = layers
        for block, variant in zip(self.blocks, layers):
            if variant != "standard":
                block.attn = MIXERS[variant](cfg)
        self.fixed_row = any(v in SEQUENCE_INDEPENDENT for v in layers)
        if self.fixed_row:
            self.embed = FixedRowEmbedding(self.embed, cfg.max_len, sigma, seed, fixed_tokens)

    def forward(self, idx: Tensor, mask: Mask | Tensor | None = None, position_ids: Tensor | None = None,
                attn_fn: Callable[..., Tensor] | None = None) -> Tensor:
        if self.fixed_row and position_ids is not None and position_ids.ndim != 1:
            raise ValueError("position_ids must be 1-D (N,) when the model has a sequence-independent layer")
        if self.fixed_row and isinstance(mask, torch.Tensor):
            raise ValueError("mask must be a Mask object shared by all rows when the model has a sequence-independent layer")
        logits = super().forward(idx, mask, position_ids, attn_fn)
        return logits[1:] if self.fixed_row else logits  # drop the fixed row

    def mixers(self) -> list[nn.Module]:
        """The token mixer of every layer, bottom to top."""
        return [block.attn for block in self.blocks]


@torch.no_grad()
def mixing_matrices(model: DeconLM, idx: Tensor) -> list[Tensor]:
    """Each layer's mixing matrix for the input ``idx`` (B, N): a list of (B|1, H|1, N, N) tensors."""
    mixers = model.mixers()
    for m in mixers:
        m.keep_weights = True
    try:
        model(idx)
        out = [m.last_weights for m in mixers]
    finally:
        for m in mixers:
            m.keep_weights = False
            m.last_weights = None
    if model.fixed_row:  # standard layers also saw the fixed row 0
        out = [w if w.shape[0] == 1 else w[1:] for w in out]
    return out


# ----------------------------------------------------------------------------------------------
# Multi-query associative recall
# ----------------------------------------------------------------------------------------------

def mqar_vocab_size(n_keys: int, n_values: int) -> int:
    """Vocabulary of :func:`mqar_batch`: keys ``[0, K)``, values ``[K, K+V)``, then one record token per (key, value)."""
    if n_keys < 1 or n_values < 1:
        raise ValueError(f"n_keys and n_values must be >= 1, got {n_keys}, {n_values}")
    return n_keys + n_values + n_keys * n_values


def mqar_batch(batch: int, n_pairs: int, n_queries: int, n_keys: int, n_values: int,
               generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Multi-query associative recall ``r1 … rP  q1 a1 … qQ aQ`` as ``(x, y)``, each (batch, P + 2Q - 1).

    Each record token ``r`` stands for one (key, value) pair; the P keys of a sequence are distinct.
    Each query ``q`` is one of the sequence's keys (drawn with replacement) and ``a`` its value. ``y``
    holds the value at the query positions (the next token is the answer) and ``IGNORE`` elsewhere,
    so only the recall is trained and scored. Answering needs content-based lookup: find the record
    whose key is the query.
    """
    if batch < 1 or n_pairs < 1 or n_queries < 1:
        raise ValueError(f"batch, n_pairs and n_queries must be >= 1, got {batch}, {n_pairs}, {n_queries}")
    mqar_vocab_size(n_keys, n_values)
    if n_pairs > n_keys:
        raise ValueError(f"n_pairs must be <= n_keys = {n_keys} (keys are distinct), got {n_pairs}")
    keys = torch.rand(batch, n_keys, generator=generator).argsort(-1)[:, :n_pairs]  # distinct per row
    values = torch.randint(0, n_values, (batch, n_pairs), generator=generator)
    records = n_keys + n_values + keys * n_values + values  # (batch, P)
    which = torch.randint(0, n_pairs, (batch, n_queries), generator=generator)
    queries, answers = keys.gather(1, which), n_keys + values.gather(1, which)
    seq = torch.cat([records, torch.stack([queries, answers], -1).flatten(1)], 1)  # (batch, P + 2Q)
    x, nxt = seq[:, :-1], seq[:, 1:]
    y = torch.full_like(x, IGNORE)
    q_pos = n_pairs + 2 * torch.arange(n_queries)  # positions of the queries in x
    y[:, q_pos] = nxt[:, q_pos]
    return x, y


@torch.no_grad()
def mqar_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 256) -> float:
    """Fraction of recalled values (argmax at the query positions) that are right."""
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"x and y must both be (n, length), got {tuple(x.shape)} and {tuple(y.shape)}")
    was_training = model.training
    model.eval()
    hits, total = 0, 0
    for i in range(0, x.shape[0], batch):
        pred = model(x[i:i + batch]).argmax(-1)
        scored = y[i:i + batch] != IGNORE
        hits += int((pred == y[i:i + batch])[scored].sum())
        total += int(scored.sum())
    model.train(was_training)
    return hits / max(total, 1)


def mixing_explorer(models: dict[str, DeconLM], x: Tensor) -> "W.Widget":
    """Pick a trained model, a layer and an input sequence (a row of ``x``); see that layer's
    head-averaged mixing matrix next to the one for row 0, and how much the two differ."""
    import ipywidgets as W
    import matplotlib.pyplot as plt

    from ..viz import plot_attention
    from ..widgets import redraw_on

    if not models:
        raise ValueError("models must hold at least one DeconLM")
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ValueError(f"x must be a (n, N) tensor of token ids, got {getattr(x, 'shape', x)!r}")
    name = W.Dropdown(options=list(models), description="model")
    layer = W.IntSlider(value=1, min=1, max=len(next(iter(models.values())).blocks), description="layer")
    row = W.IntSlider(value=1, min=1, max=x.shape[0] - 1, description="input #")

    def draw():
        model = models[name.value]
        mats = mixing_matrices(model, x[[0, row.value]])[layer.value - 1].mean(1)  # (1|2, N, N)
        mats = mats.expand(2, -1, -1)
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
        for ax, m, r in zip(axes, mats, (0, row.value)):
            plot_attention(m, ax=ax, title=f"input #{r}")
        kind = model.layers[layer.value - 1]
        fig.suptitle(f"{name.value}, layer {layer.value} ({kind}): "
                     f"max |difference| = {float((mats[0] - mats[1]).abs().max()):.3f}", fontsize=10)

    return redraw_on([name, layer, row], draw)
