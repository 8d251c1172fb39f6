"""A pre-LayerNorm transformer block and two small models built from it.

* :class:`TinyLM` -- decoder-only language model (causal mask by default).
* :class:`TinyEncoder` -- bidirectional encoder with mean pooling.

Both accept any :class:`~companion.nn.masks.Mask` and explicit ``position_ids``; the position
scheme is one of ``"rope"``, ``"alibi"``, ``"learned"``, ``"sinusoidal"`` or ``"none"``.
Attention goes through :func:`companion.nn.attention.attention` (SDPA) by default; pass
``attn_fn`` to route it elsewhere (e.g. a Triton kernel with the same signature).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention, project_qkv, reference_attention
from .masks import CausalMask, KeyPaddingMask, Mask
from .positions import LearnedPositions, SinusoidalPositions, alibi_bias, apply_rope

Tensor = torch.Tensor
POSITION_SCHEMES = ("rope", "alibi", "learned", "sinusoidal", "none")


@dataclass
class TransformerConfig:
    """Sizes and choices of a small transformer."""

    vocab_size: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: same as n_heads; fewer: grouped-query attention
    d_ff: int | None = None  # None: 4 * d_model
    max_len: int = 512  # only used by learned positions
    pos: str = "rope"
    rope_base: float = 10000.0
    dropout: float = 0.0
    tie_embeddings: bool = True
    embed_std: float = 0.02  # init std of the token embeddings (~1 when layer 1 is not attention)

    def __post_init__(self) -> None:
        if self.pos not in POSITION_SCHEMES:
            raise ValueError(f"pos must be one of {POSITION_SCHEMES}, got {self.pos!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_kv_heads ({kv}) must divide n_heads ({self.n_heads})")
        if self.embed_std <= 0:
            raise ValueError(f"embed_std must be > 0, got {self.embed_std}")
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")


class MultiHeadAttention(nn.Module):
    """Multi-head (optionally grouped-query) self-attention with RoPE or ALiBi inside."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads or cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.pos = cfg.pos
        self.rope_base = cfg.rope_base
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * self.head_dim, bias=False)
        self.kv_proj = nn.Linear(cfg.d_model, 2 * self.n_kv_heads * self.head_dim, bias=False)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.keep_weights = False  # set True to store the last attention weights (for plots)
        self.last_weights: Tensor | None = None

    def forward(self, x: Tensor, mask: Mask | Tensor | None, position_ids: Tensor,
                attn_fn: Callable[..., Tensor] | None = None) -> Tensor:
        B, N, _ = x.shape
        q, k, v = self.project(x)  # (B, H, N, Dh), (B, Hkv, N, Dh) x 2
        bias = None
        if self.pos == "rope":
            q, k = apply_rope(q, position_ids, self.rope_base), apply_rope(k, position_ids, self.rope_base)
        elif self.pos == "alibi":
            bias = alibi_bias(self.n_heads, position_ids, position_ids).to(x.dtype)
        if self.keep_weights:
            out, self.last_weights = reference_attention(q, k, v, mask, bias=bias, return_weights=True)
        elif attn_fn is not None:
            out = attn_fn(q, k, v, mask=mask, bias=bias) if bias is not None else attn_fn(q, k, v, mask=mask)
        else:
            out = attention(q, k, v, mask, bias=bias)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, -1))


    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, H, N, Dh), k, v (B, Hkv, N, Dh) of ``x`` (B, N, d), before RoPE (:func:`project_qkv`)."""
        return project_qkv(x, self.q_proj, self.kv_proj, self.n_heads, self.n_kv_heads, self.head_dim)


class TransformerBlock(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)) (pre-LN, GELU MLP)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = MultiHeadAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        d_ff = cfg.d_ff or 4 * cfg.d_model
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, d_ff), nn.GELU(), nn.Linear(d_ff, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Mask | Tensor | None, position_ids: Tensor,
                attn_fn: Callable[..., Tensor] | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask, position_ids, attn_fn))
        return x + self.drop(self.mlp(self.ln2(x)))


class _Backbone(nn.Module):
    """Embeddings + absolute positions (if any) + blocks + final LayerNorm."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.embed.weight, std=cfg.embed_std)
        self.abs_pos: nn.Module | None = None
        if cfg.pos == "learned":
            self.abs_pos = LearnedPositions(cfg.max_len, cfg.d_model)
        elif cfg.pos == "sinusoidal":
            self.abs_pos = SinusoidalPositions(cfg.d_model)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def hidden(self, idx: Tensor, mask: Mask | Tensor | None, position_ids: Tensor | None,
               attn_fn: Callable[..., Tensor] | None = None, all_layers: bool = False) -> Tensor | list[Tensor]:
        """Token ids (B, N) -> final hidden states (B, N, d_model).

        ``all_layers=True`` returns every state instead: ``[embeddings, block 1, ..., ln_f(block L)]``
        (L + 1 tensors of shape (B, N, d_model); the inner ones are the un-normalised residual stream).
        """
        if not isinstance(idx, torch.Tensor) or idx.ndim != 2 or idx.is_floating_point():
            raise ValueError(f"idx must be an integer tensor of shape (B, N), got {getattr(idx, 'shape', idx)!r}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.cfg.vocab_size):
            raise ValueError(f"idx values must lie in [0, {self.cfg.vocab_size}), got [{int(idx.min())}, {int(idx.max())}]")
        B, N = idx.shape
        if position_ids is None:
            position_ids = torch.arange(N, device=idx.device)
        elif position_ids.shape[-1] != N:
            raise ValueError(f"position_ids must have N={N} entries, got shape {tuple(position_ids.shape)}")
        x = self.embed(idx)
        if self.abs_pos is not None:
            x = x + self.abs_pos(position_ids)
        x = self.drop(x)
        states = [x]
        for block in self.blocks:
            x = block(x, mask, position_ids, attn_fn)
            if all_layers:
                states.append(x)
        if all_layers:
            return states[:-1] + [self.ln_f(x)]
        return self.ln_f(x)


class TinyLM(_Backbone):
    """Decoder-only LM: ``forward(idx) -> logits (B, N, vocab)`` with a causal mask by default."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward(self, idx: Tensor, mask: Mask | Tensor | None = None, position_ids: Tensor | None = None,
                attn_fn: Callable[..., Tensor] | None = None) -> Tensor:
        mask = CausalMask() if mask is None else mask
        return self.lm_head(self.hidden(idx, mask, position_ids, attn_fn))

    def loss(self, idx: Tensor, targets: Tensor, ignore_index: int = -100, **kw) -> Tensor:
        """Mean next-token cross-entropy; ``targets`` (B, N) aligned with ``idx`` (already shifted)."""
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
        logits = self(idx, **kw)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index)

    def forward_cached(self, idx: Tensor, past: "KVCache | None" = None,
                        mask: Mask | Tensor | None = None) -> tuple[Tensor, "KVCache"]:
        """Logits (B, N, V) of ``idx`` (B, N) after the cached tokens, and the cache extended by them.

        ``past`` is what an earlier call returned (``None``: start empty); positions continue after it.
        The default mask is causal over the new tokens, with every cached token visible.
        """
        if self.abs_pos is not None:  # positions must live inside the attention (RoPE), not in the embeddings
            raise ValueError(f"forward_cached needs RoPE positions (pos='rope'), got {self.cfg.pos!r}")
        T = 0 if past is None else past[0][0].shape[2]
        pos = torch.arange(T, T + idx.shape[1], device=idx.device)
        if mask is None:
            mask = CausalMask() if T == 0 else torch.ones(idx.shape[1], T + idx.shape[1], dtype=torch.bool,
                                                          device=idx.device).tril(T)
        h, new = run_blocks_cached(self.blocks, self.drop(self.embed(idx)), pos, mask, past)
        if past is not None:  # extend keys and values; a layer's extra state (see run_blocks_cached) is kept
            new = [(torch.cat([p[0], n[0]], 2), torch.cat([p[1], n[1]], 2), *n[2:]) for p, n in zip(past, new)]
        return self.lm_head(self.ln_f(h)), new

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, eos_id: int | None = None) -> Tensor:
        """Greedy continuation of ``idx`` (B, N) by ``max_new_tokens`` tokens (no KV cache: small models)."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        for _ in range(max_new_tokens):
            nxt = self(idx)[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)
            if eos_id is not None and bool((nxt == eos_id).all()):
                break
        return idx


class TinyEncoder(_Backbone):
    """Bidirectional encoder: ``forward(idx, lengths=None) -> hidden (B, N, d_model)``."""

    def forward(self, idx: Tensor, lengths: Tensor | None = None, mask: Mask | Tensor | None = None,
                position_ids: Tensor | None = None) -> Tensor:
        if mask is None and lengths is not None:
            mask = KeyPaddingMask(lengths)
        return self.hidden(idx, mask, position_ids)

    @staticmethod
    def mean_pool(hidden: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Average over the first ``lengths[b]`` positions of each row: (B, N, d) -> (B, d)."""
        if lengths is None:
            return hidden.mean(dim=1)
        keep = (torch.arange(hidden.shape[1], device=hidden.device)[None] < lengths[:, None]).to(hidden.dtype)
        return (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp_min(1)


# ---------------------------------------------------------------- one KV-cache path for RoPE TinyLM blocks
KVCache = list  # per layer: (k, v), each (B, Hkv, T, Dh), RoPE already applied (+ a layer's state, see below)


def run_blocks_cached(blocks: nn.ModuleList, h: Tensor, position_ids: Tensor, mask: Mask | Tensor | None,
                      past: "KVCache | None" = None) -> tuple[Tensor, "KVCache"]:
    """The pre-LN RoPE blocks of a :class:`TinyLM` on embeddings ``h`` (B, N, d), with a key/value cache.

    With ``past`` (one ``(k, v)`` per block, (B, Hkv, T, Dh)), the N new positions attend to the T
    cached keys first and then to themselves; ``mask`` is then read as an (N, T + N) mask. Returns the
    last hidden states (before the final LayerNorm) and this call's own keys/values, one pair per block.
    Same arithmetic as :meth:`TransformerBlock.forward` (dropout included).

    An attention module may transform its rotated queries with per-sequence state kept in the cache
    (PLDR's ``G``): if it has ``cached_query(q, state) -> (q', state)``, it is called with the state of
    ``past`` (``None`` on the first call) and its entry is ``(k, v, state)``.
    """
    if h.ndim != 3:
        raise ValueError(f"h must have shape (B, N, d), got {tuple(h.shape)}")
    if past is not None and len(past) != len(blocks):
        raise ValueError(f"past must hold one (k, v) per block ({len(blocks)}), got {len(past)}")
    B, N, _ = h.shape
    kv: KVCache = []
    for i, block in enumerate(blocks):
        if not isinstance(block, TransformerBlock) or block.attn.pos != "rope":
            raise ValueError("blocks must be TransformerBlock modules with RoPE positions")
        a = block.attn
        q, k, v = a.project(block.ln1(h))
        q, k = apply_rope(q, position_ids, a.rope_base), apply_rope(k, position_ids, a.rope_base)
        if hasattr(a, "cached_query"):
            q, state = a.cached_query(q, None if past is None else past[i][2])
            kv.append((k, v, state))
        else:
            kv.append((k, v))
        if past is not None:
            k, v = torch.cat([past[i][0], k], dim=2), torch.cat([past[i][1], v], dim=2)
        out = attention(q, k, v, mask)  # (B, H, N, Dh)
        h = h + block.drop(a.out_proj(out.transpose(1, 2).reshape(B, N, -1)))
        h = h + block.drop(block.mlp(block.ln2(h)))
    return h, kv
