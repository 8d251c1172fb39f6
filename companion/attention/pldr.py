"""PLDR-LLM: power-law graph attention (PLGA), its deductive outputs, and the KV- and G-caches.

A PLGA layer computes, per head, a small ``d_k x d_k`` "energy-curvature" tensor ``G`` from the Gram
matrix of the layer's queries and attends with ``softmax(Q G K^T / sqrt(d_k))`` (chapter eqs. 1-5).
``G = I`` is scaled-dot-product attention. Because ``Q G K^T = (Q G) K^T``, the layer folds ``G`` into
the queries and calls the book's fused attention. The model is :class:`companion.nn.TinyLM` with every
block's attention replaced by :class:`PowerLawGraphAttention`.

Caching (chapter section "G-cache"):

* the **KV-cache** is the book's shared cached path (:meth:`TinyLM.forward_cached`,
  :func:`companion.nn.run_blocks_cached`): per layer the rotated keys and values of the tokens seen
  so far, plus the ``G`` computed from the prompt, which the layer's ``cached_query`` hook folds into
  the new queries (the paper caches the metric input ``A``; ``G`` is a deterministic function of it,
  so caching ``G`` gives the same numbers without recomputing the network), and
* a **G-cache** -- a fixed ``G`` per layer that replaces the whole metric-learner network for every
  later input (``set_g_cache``); ``G = I`` turns the layer into plain attention.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import TinyLM, TransformerConfig, apply_rope, attention
from ..nn.masks import Mask

Tensor = torch.Tensor

__all__ = [
    "PowerLawGraphAttention", "pldr_lm", "plga_layers", "set_g_cache", "capture_g", "g_invariance",
    "generate", "iswiglu", "plot_g", "g_explorer",
]


def iswiglu(x: Tensor) -> Tensor:
    """``x * silu(x) = x^2 sigmoid(x) >= 0``: the non-negative activation of the metric tensor (eq. 3)."""
    return x * F.silu(x)


class _HeadSwiGLU(nn.Module):
    """A SwiGLU block ``(silu(y W1) * (y W3)) W2`` acting on the rows of each head's ``d_k x d_k`` matrix."""

    def __init__(self, n_heads: int, dk: int, d_ff: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_heads, dk, d_ff))
        self.w3 = nn.Parameter(torch.empty(n_heads, dk, d_ff))
        self.w2 = nn.Parameter(torch.empty(n_heads, d_ff, dk))
        for w in (self.w1, self.w3, self.w2):
            nn.init.normal_(w, std=1.0 / math.sqrt(w.shape[1]))

    def forward(self, y: Tensor) -> Tensor:  # (B, H, dk, dk) -> (B, H, dk, dk)
        hidden = F.silu(torch.einsum("bhij,hjf->bhif", y, self.w1)) * torch.einsum("bhij,hjf->bhif", y, self.w3)
        return torch.einsum("bhif,hfj->bhij", hidden, self.w2)


class PowerLawGraphAttention(nn.Module):
    """Power-law graph attention with RoPE (a drop-in for ``TinyLM.blocks[i].attn``).

    ``forward(x, mask, position_ids)`` maps (B, N, d_model) -> (B, N, d_model). Metric learner:
    ``n_res`` residual units of ``n_dense`` per-head SwiGLU blocks (width ``a_ff``) on ``A0 = LN(Q^T Q)``.
    """

    def __init__(self, cfg: TransformerConfig, n_res: int = 2, n_dense: int = 2, a_ff: int = 32) -> None:
        super().__init__()
        if n_res < 0 or n_dense < 1 or a_ff < 1:
            raise ValueError(f"need n_res >= 0, n_dense >= 1, a_ff >= 1, got {n_res}, {n_dense}, {a_ff}")
        if cfg.n_kv_heads not in (None, cfg.n_heads):
            raise ValueError("PLGA needs n_kv_heads == n_heads (the paper has no grouped-query variant)")
        H, dk = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.n_heads, self.dk, self.rope_base = H, dk, cfg.rope_base
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=True)  # the paper's projections carry biases
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.ln_a0 = nn.LayerNorm(dk)
        self.units = nn.ModuleList(
            nn.ModuleList([*(_HeadSwiGLU(H, dk, a_ff) for _ in range(n_dense)), nn.LayerNorm(dk)])
            for _ in range(n_res))
        eye = torch.eye(dk).expand(H, dk, dk)
        self.w = nn.Parameter(eye + 0.1 * torch.randn(H, dk, dk))  # A_LM = iSwiGLU(W A + b)
        self.b = nn.Parameter(torch.zeros(H, dk, dk))
        self.p = nn.Parameter(torch.ones(H, dk, dk))  # A_P = A_LM ** p, element-wise learned exponents
        self.a = nn.Parameter(torch.randn(H, dk, dk) / math.sqrt(dk))  # G = a A_P + b_a
        self.b_a = nn.Parameter(torch.zeros(H, dk, dk))
        self.g_cache: Tensor | None = None  # fixed G (H, dk, dk) or (1, H, dk, dk): skips the network
        self.keep_outputs = False  # store the last deductive outputs for plots
        self.last: dict[str, Tensor] = {}

    pos = "rope"  # RoPE inside the layer: the shared cached path (nn.run_blocks_cached) rotates q and k

    def deductive(self, q: Tensor) -> dict[str, Tensor]:
        """The metric learner and the deductive outputs for queries ``q`` (B, H, N, dk) (eqs. 2-4).

        Returns ``A0, A, A_LM, A_P, G``, each (B, H, dk, dk).
        """
        a0 = self.ln_a0(torch.einsum("bhni,bhnj->bhij", q, q))  # Gram over all positions
        a = a0
        for unit in self.units:
            y = a
            for block in unit[:-1]:
                y = block(y)
            a = unit[-1](a + y)
        a_lm = iswiglu(torch.einsum("hij,bhjk->bhik", self.w, a) + self.b) + 1e-9
        a_p = a_lm.pow(self.p)
        g = torch.einsum("hij,bhjk->bhik", self.a, a_p) + self.b_a
        return {"A0": a0, "A": a, "A_LM": a_lm, "A_P": a_p, "G": g}

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v (B, H, N, dk) of ``x`` (B, N, d_model), before RoPE (one biased projection, as in the paper)."""
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.n_heads, self.dk).permute(2, 0, 3, 1, 4)
        return q, k, v

    def cached_query(self, q: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor]:
        """Rotated queries (B, H, N, dk) -> (q G, G): the hook of :func:`companion.nn.run_blocks_cached`.

        ``g`` is the ``G`` held in the KV-cache (None on the first call: then the G-cache if set, else
        ``G`` of these queries, i.e. of the prompt). Later tokens reuse the prompt's ``G``.
        """
        if g is None:
            g = self.g_of(q)
        return q @ g, g

    def g_of(self, q: Tensor) -> Tensor:
        """``G`` (B, H, dk, dk) for rotated queries ``q`` (B, H, N, dk): the G-cache if set, else the network's."""
        if self.g_cache is not None:
            return self.g_cache.expand(q.shape[0], -1, -1, -1)
        outputs = self.deductive(q)
        if self.keep_outputs:
            self.last = {name: t.detach() for name, t in outputs.items()}
        return outputs["G"]

    def forward(self, x: Tensor, mask: Mask | Tensor | None, position_ids: Tensor, attn_fn=None) -> Tensor:
        if attn_fn is not None:
            raise ValueError("PowerLawGraphAttention computes its own attention; attn_fn must be None")
        B, N, _ = x.shape
        q, k, v = self.project(x)  # (B, H, N, dk) each
        q, k = apply_rope(q, position_ids, self.rope_base), apply_rope(k, position_ids, self.rope_base)
        out = attention(q @ self.g_of(q), k, v, mask)  # softmax(Q G K^T / sqrt(dk)) V, eq. 5
        return self.out_proj(out.transpose(1, 2).reshape(B, N, -1))


def pldr_lm(cfg: TransformerConfig, n_res: int = 2, n_dense: int = 2, a_ff: int = 32) -> TinyLM:
    """A :class:`TinyLM` whose blocks use :class:`PowerLawGraphAttention` (RoPE inside the layer)."""
    if cfg.pos != "none":
        raise ValueError(f"cfg.pos must be 'none' (PLGA applies RoPE itself), got {cfg.pos!r}")
    model = TinyLM(cfg)
    for block in model.blocks:
        block.attn = PowerLawGraphAttention(cfg, n_res, n_dense, a_ff)
    return model


def plga_layers(model: TinyLM) -> list[PowerLawGraphAttention]:
    """The PLGA modules of ``model``, one per block."""
    layers = [b.attn for b in model.blocks if isinstance(b.attn, PowerLawGraphAttention)]
    if len(layers) != len(model.blocks):
        raise ValueError("model must be a PLDR model from pldr_lm (every block's attn a PowerLawGraphAttention)")
    return layers


@torch.no_grad()
def capture_g(model: TinyLM, idx: Tensor) -> list[Tensor]:
    """``G`` of every layer for inputs ``idx`` (B, N): a list of (B, H, dk, dk) tensors (full PLGA)."""
    layers = plga_layers(model)
    saved = [(layer.g_cache, layer.keep_outputs) for layer in layers]
    for layer in layers:
        layer.g_cache, layer.keep_outputs = None, True
    was_training = model.training
    model.eval()
    try:
        model(idx)
        return [layer.last["G"] for layer in layers]
    finally:
        model.train(was_training)
        for layer, (g, keep) in zip(layers, saved):
            layer.g_cache, layer.keep_outputs = g, keep


def set_g_cache(model: TinyLM, gs: Sequence[Tensor] | str | None) -> None:
    """Fix ``G`` in every layer (the G-cache): a list of (H, dk, dk) or (1, H, dk, dk) tensors,
    ``"identity"`` (= scaled-dot-product attention), or ``None`` to run the full network again."""
    layers = plga_layers(model)
    if gs is None or isinstance(gs, str):
        if gs not in (None, "identity"):
            raise ValueError(f"gs must be a list of tensors, 'identity' or None, got {gs!r}")
        for layer in layers:
            layer.g_cache = None if gs is None else torch.eye(layer.dk).expand(layer.n_heads, -1, -1).clone()
        return
    if len(gs) != len(layers):
        raise ValueError(f"gs must hold one G per layer ({len(layers)}), got {len(gs)}")
    for layer, g in zip(layers, gs):
        want = (layer.n_heads, layer.dk, layer.dk)
        if tuple(g.shape[-3:]) != want or g.ndim not in (3, 4) or (g.ndim == 4 and g.shape[0] != 1):
            raise ValueError(f"each G must have shape {want} or (1, *{want}), got {tuple(g.shape)}")
        layer.g_cache = g.detach()


@torch.no_grad()
def g_invariance(model: TinyLM, idx: Tensor) -> list[float]:
    """Per layer, ``||std_x G|| / ||mean_x G||`` over the inputs ``idx`` (B, N): 0 = G ignores the input."""
    if idx.ndim != 2 or idx.shape[0] < 2:
        raise ValueError(f"idx must be (B, N) with B >= 2 inputs, got {tuple(idx.shape)}")
    return [float(g.std(dim=0).norm() / g.mean(dim=0).norm()) for g in capture_g(model, idx)]


@torch.no_grad()
def generate(model: TinyLM, prompt: Tensor, max_new_tokens: int, cache: bool = True) -> Tensor:
    """Greedy continuation of ``prompt`` (1, N) by ``max_new_tokens`` tokens -> (1, N + max_new_tokens).

    ``cache=False`` recomputes the whole sequence (and, without a G-cache, its ``G``) at every step;
    ``cache=True`` runs the prompt once, then one token per step through the book's shared cached path
    (:meth:`TinyLM.forward_cached`), whose cache holds each layer's keys, values and the ``G`` computed
    from the prompt (:meth:`PowerLawGraphAttention.cached_query`).
    """
    if prompt.ndim != 2 or prompt.shape[0] != 1 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must have shape (1, N) with N >= 1, got {tuple(prompt.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    plga_layers(model)
    was_training = model.training
    model.eval()
    try:
        idx = prompt
        if not cache:
            for _ in range(max_new_tokens):
                idx = torch.cat([idx, model(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
            return idx
        logits, past = model.forward_cached(prompt)
        for _ in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
            idx = torch.cat([idx, nxt], dim=1)
            logits, past = model.forward_cached(nxt, past)
        return idx
    finally:
        model.train(was_training)  # generate() leaves the model in the mode it found it


def plot_g(g: Tensor, ax=None, title: str | None = None):
    """Heat map of one head's ``G`` (dk, dk) with a symmetric colour scale."""
    import matplotlib.pyplot as plt

    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"g must be a square (dk, dk) matrix, got {tuple(g.shape)}")
    ax = ax or plt.subplots(figsize=(3.6, 3.2))[1]
    lim = float(g.abs().max())
    im = ax.imshow(g.cpu(), cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xlabel("column j")
    ax.set_ylabel("row i")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def g_explorer(model: TinyLM, texts: dict[str, Tensor]):
    """Pick a prompt, a layer and a head: ``G`` for that prompt, ``G`` for the first prompt (the
    G-cache), and their difference on one colour scale."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from ..widgets import redraw_on

    if not texts:
        raise ValueError("texts must map at least one name to a (1, N) tensor of token ids")
    names = list(texts)
    gs = {name: capture_g(model, ids) for name, ids in texts.items()}  # name -> per-layer (1, H, dk, dk)
    n_layers, n_heads = len(gs[names[0]]), gs[names[0]][0].shape[1]
    prompt = W.Dropdown(options=names, value=names[-1], description="prompt")
    layer = W.IntSlider(value=0, min=0, max=n_layers - 1, description="layer")
    head = W.IntSlider(value=0, min=0, max=n_heads - 1, description="head")

    def draw() -> None:
        g = gs[prompt.value][layer.value][0, head.value]
        g_ref = gs[names[0]][layer.value][0, head.value]
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
        plot_g(g, axes[0], f"G for {prompt.value!r}")
        plot_g(g_ref, axes[1], f"G-cache (from {names[0]!r})")
        plot_g(g - g_ref, axes[2], f"difference: {float((g - g_ref).norm() / g_ref.norm()):.1%} of the norm")
        fig.tight_layout()

    return redraw_on([prompt, layer, head], draw, vertical=True)
