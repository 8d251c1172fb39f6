"""Five proposals of Li (2024), *The Nature of Mathematical Modeling and Probabilistic Optimization
Engineering in Generative AI* (arXiv 2410.18441), as runnable code for the chapter
``book/attention/probabilistic-attention.md``. Equation numbers refer to that chapter.

1. **PrFlashAttention** -- causal attention over a *sampled* set of key blocks: key block ``c`` is
   visible to query block ``r`` with probability ``p(r - c)`` (eq. (1)); the diagonal is always kept
   and the softmax is renormalised over the kept blocks (eq. (2)). :func:`keep_probabilities`
   calibrates ``p`` to a block budget, :func:`sample_block_layout` draws layouts,
   :func:`prflash_mask` turns one into a :class:`~companion.nn.masks.BlockSelectMask` that the
   book's Triton kernel (:mod:`companion.kernels.attention`) skips tile by tile, and
   :class:`PrFlashAttention` is the ``attn_fn`` that plugs it into :class:`~companion.nn.TinyLM`.
2. **Staircase adaptive quantisation (SAQ)** of a multi-query KV cache -- per-group asymmetric
   min-max quantisation (:func:`quantize`, :func:`dequantize`, eq. (3)) with bit widths that step down
   with a token's age (:class:`Staircase`, eq. (4)); :func:`saq_attention` evaluates a whole sequence
   at once, exactly as token-by-token decoding with such a cache would.
3. **Harmonic RoPE + ALiBi** -- RoPE scores plus the distance penalty ``-λ_h H_{i-j}`` with harmonic
   numbers instead of ALiBi's linear distance (eq. (5)): :func:`harmonic_bias`, :func:`harmonic_attention`.
4. **Likelihood-optimal sub-word encoding** -- Viterbi segmentation under a unigram model
   (:func:`viterbi_segment`, eq. (6)) and hard-EM re-estimation (:func:`fit_unigram`), compared with
   BPE's greedy merges on the same vocabulary.
5. **Cross-entropy method** for hyper-parameters (:func:`cross_entropy_method`, eq. (7)), applied to
   word vectors from the shifted-PPMI factorisation that skip-gram with negative sampling performs
   implicitly (:class:`CooccurrenceCounts`, :func:`sppmi_vectors`, :func:`word_similarity_score`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch
from scipy.stats import spearmanr

from ..kernels.attention import IMPLS
from ..kernels.attention import attention as kernel_attention
from ..nn.attention import attention as sdpa_attention
from ..nn.attention import check_qkv
from ..nn.masks import EMPTY, FULL, PARTIAL, BlockSelectMask, CausalMask, Mask
from ..nn.positions import alibi_slopes

Tensor = torch.Tensor
DISTANCE_KINDS = ("geometric", "inverse", "uniform")


# ------------------------------------------------------------------------------------------------
# 1. PrFlashAttention
# ------------------------------------------------------------------------------------------------
def _check_blocks_budget(n_blocks: int, budget: float) -> None:
    if not isinstance(n_blocks, int) or n_blocks < 2:
        raise ValueError(f"n_blocks must be an int >= 2 (at least one off-diagonal block), got {n_blocks!r}")
    if not 0.0 < float(budget) <= 1.0:
        raise ValueError(f"budget must be a fraction in (0, 1], got {budget!r}")


def _shape(kind: str, param: float, dist: Tensor) -> Tensor:
    """p(Δ) for Δ >= 1 of one family at parameter ``param`` (float64)."""
    if kind == "geometric":  # p(Δ) = ρ^(Δ-1): the neighbouring block is always kept
        return param ** (dist - 1)
    if kind == "inverse":  # p(Δ) = min(1, κ/Δ)
        return (param / dist).clamp(max=1.0)
    return torch.full_like(dist, param)  # uniform


def expected_kept_fraction(probs: Tensor) -> float:
    """Expected share of the off-diagonal causal blocks kept, for ``probs[Δ] = p(Δ)`` (length R)."""
    if probs.ndim != 1 or probs.numel() < 2:
        raise ValueError(f"probs must be a 1-D tensor p(0..R-1) with R >= 2, got shape {tuple(probs.shape)}")
    r = probs.numel()
    count = torch.arange(r, 0, -1, dtype=torch.float64)  # R - Δ blocks at distance Δ
    return float((count[1:] * probs[1:].double()).sum() / (r * (r - 1) / 2))


def keep_probabilities(n_blocks: int, budget: float, kind: str = "geometric") -> Tensor:
    """p(Δ), Δ = 0..n_blocks-1 (eq. (1)): p(0) = 1, and the off-diagonal blocks are kept with an
    expected fraction of exactly ``budget``.

    ``kind``: ``"geometric"`` p(Δ) = ρ^(Δ-1) (needs budget >= 2 / n_blocks), ``"inverse"``
    p(Δ) = min(1, κ/Δ) (both decay with the block distance; the parameter is found by bisection)
    or ``"uniform"`` p(Δ) = budget.
    """
    _check_blocks_budget(n_blocks, budget)
    if kind not in DISTANCE_KINDS:
        raise ValueError(f"kind must be one of {DISTANCE_KINDS}, got {kind!r}")
    dist = torch.arange(1, n_blocks, dtype=torch.float64)
    if kind == "geometric" and budget < 2 / n_blocks:
        raise ValueError(f"budget must be >= 2 / n_blocks = {2 / n_blocks:.3f} for kind='geometric' "
                         f"(it always keeps the neighbouring block), got {budget}")
    if kind == "uniform":
        param = float(budget)
    else:
        lo, hi = (0.0, 1.0) if kind == "geometric" else (0.0, float(n_blocks))
        for _ in range(100):  # the kept fraction grows monotonically with the parameter
            mid = (lo + hi) / 2
            frac = expected_kept_fraction(torch.cat([torch.ones(1, dtype=torch.float64), _shape(kind, mid, dist)]))
            lo, hi = (mid, hi) if frac < budget else (lo, mid)
        param = hi
    return torch.cat([torch.ones(1, dtype=torch.float64), _shape(kind, param, dist)])


def block_distance(n_blocks: int) -> Tensor:
    """(R, R) long: r - c for query block r and key block c (negative above the diagonal)."""
    idx = torch.arange(n_blocks)
    return idx[:, None] - idx[None, :]


def sample_block_layout(probs: Tensor, batch: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``batch`` causal block layouts (B, R, R) bool: block (r, c), c <= r, is kept with
    probability ``probs[r - c]`` independently; the diagonal (``probs[0]``) is always kept."""
    if probs.ndim != 1 or probs.numel() < 1 or (probs < 0).any() or (probs > 1).any():
        raise ValueError(f"probs must be a 1-D tensor of probabilities p(0..R-1), got {probs!r}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    r = probs.numel()
    dist = block_distance(r)
    p = probs.double()[dist.clamp(min=0)] * (dist >= 0)  # (R, R), zero above the diagonal
    p.diagonal().fill_(1.0)
    u = torch.rand((batch, r, r), generator=generator, dtype=torch.float64)
    return u < p  # (B, R, R)


def nearest_block_layout(n_blocks: int, budget: float) -> Tensor:
    """The deterministic variant (R, R): keep the diagonal and the ``round(budget · R(R-1)/2)``
    off-diagonal blocks nearest to it (ties: later query blocks first) -- a block sliding window."""
    _check_blocks_budget(n_blocks, budget)
    dist = block_distance(n_blocks)
    r, c = (dist > 0).nonzero(as_tuple=True)  # off-diagonal causal blocks, (M,) each
    d = dist[r, c]  # computed once: O(R^2), not once per comparison
    order = sorted(range(r.numel()), key=lambda i: (int(d[i]), -int(r[i])))
    keep = round(budget * n_blocks * (n_blocks - 1) / 2)
    layout = torch.eye(n_blocks, dtype=torch.bool)
    pick = torch.tensor(order[:keep], dtype=torch.long)
    layout[r[pick], c[pick]] = True
    return layout


def prflash_mask(layout: Tensor, block_size: int) -> Mask:
    """Causal attention restricted to the kept blocks of ``layout`` ((R, R) or (B, R, R) bool)."""
    if not isinstance(layout, torch.Tensor) or layout.dtype != torch.bool or layout.ndim not in (2, 3) \
            or layout.shape[-1] != layout.shape[-2]:
        raise ValueError("layout must be a square bool tensor (R, R) or (B, R, R), "
                         f"got {getattr(layout, 'shape', layout)}")
    return CausalMask() & BlockSelectMask(layout, block_size, block_size)


def prflash_tile_codes(layout: Tensor) -> Tensor:
    """Kernel tile codes of a kept-block layout, for tiles of one block each: (R, R) or (B, R, R) bool
    -> (1 or B, R, R) int8 with the diagonal PARTIAL (causal inside the block), kept off-diagonal blocks
    FULL and the rest EMPTY. Pass it as ``block_plan(..., layout=...)`` (tiles = blocks): the plan is
    then built straight from the sampled layout, with no mask to lay out first."""
    if not isinstance(layout, torch.Tensor) or layout.dtype != torch.bool or layout.ndim not in (2, 3) \
            or layout.shape[-1] != layout.shape[-2]:
        raise ValueError("layout must be a square bool tensor (R, R) or (B, R, R), "
                         f"got {getattr(layout, 'shape', layout)}")
    lay = layout if layout.ndim == 3 else layout[None]
    r = lay.shape[-1]
    if not bool(lay[:, torch.arange(r), torch.arange(r)].all()):
        raise ValueError("layout must keep every diagonal block (each query block sees itself)")
    causal = torch.ones(r, r, dtype=torch.bool).tril(-1)  # strictly below the diagonal
    codes = torch.full(lay.shape, EMPTY, dtype=torch.int8)
    codes[lay & causal] = FULL
    codes[:, torch.arange(r), torch.arange(r)] = PARTIAL
    return codes


class PrFlashAttention:
    """``attn_fn`` for :class:`~companion.nn.TinyLM`: every call (every layer, every batch row) draws
    a fresh block layout from ``p(Δ)`` and attends over the kept blocks only (eq. (2)).

    ``probs`` is p(0..R-1) for the R = N / block_size blocks of the sequences it will see, or
    ``layout`` a fixed (R, R) layout (the deterministic variant). ``impl`` is passed to
    :func:`companion.kernels.attention.attention` (``"triton"``: the block-sparse kernel).
    """

    def __init__(self, block_size: int, probs: Tensor | None = None, layout: Tensor | None = None,
                 impl: str = "torch", generator: torch.Generator | None = None) -> None:
        if (probs is None) == (layout is None):
            raise ValueError("give exactly one of probs (sampled layouts) and layout (a fixed layout)")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.block_size, self.probs, self.layout, self.impl, self.generator = block_size, probs, layout, impl, generator
        self.kept, self.total = 0, 0  # running count of kept / causal blocks, for the accounting

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, mask: Mask | None = None, bias: Tensor | None = None) -> Tensor:
        if bias is not None:
            raise ValueError("PrFlashAttention takes no additive bias (use pos='rope' or 'none')")
        if mask is not None and not isinstance(mask, Mask):
            raise ValueError(f"mask must be a companion.nn.masks.Mask or None, got {type(mask).__name__}")
        n = k.shape[2]
        r = -(-n // self.block_size)
        n_blocks = (self.probs if self.probs is not None else self.layout).shape[-1]
        if r != n_blocks:
            raise ValueError(f"sequences of {n} tokens need {r} blocks of {self.block_size}, "
                             f"but probs/layout describe {n_blocks}")
        if self.probs is not None:
            layout = sample_block_layout(self.probs, q.shape[0], self.generator)  # (B, R, R)
        else:
            layout = self.layout
        self.kept += int(layout.sum()) * (q.shape[0] if layout.ndim == 2 else 1)
        self.total += q.shape[0] * r * (r + 1) // 2
        m = prflash_mask(layout, self.block_size)
        return kernel_attention(q, k, v, m if mask is None else mask & m, impl=self.impl)


# ------------------------------------------------------------------------------------------------
# 2. Staircase adaptive quantisation of the KV cache
# ------------------------------------------------------------------------------------------------
SCALE_BITS = 16  # each group stores its scale and its minimum in fp16


@dataclass
class QuantizedTensor:
    """Integer codes with a per-group scale and minimum (eq. (3)); ``x ≈ codes · scale + minimum``."""

    codes: Tensor  # (..., G, group_size) uint8, values in [0, 2^bits - 1]
    scale: Tensor  # (..., G, 1) float16
    minimum: Tensor  # (..., G, 1) float16
    bits: int
    shape: torch.Size

    @property
    def n_bits(self) -> int:
        """Storage of the codes plus the fp16 scale and minimum of every group, in bits."""
        return self.codes.numel() * self.bits + 2 * SCALE_BITS * self.scale.numel()


def _check_bits_group(bits: int, group_size: int, dim: int | None = None) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an int in [1, 8], got {bits!r}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    if dim is not None and dim % group_size:
        raise ValueError(f"the last dimension ({dim}) must be a multiple of group_size ({group_size})")


def quantize(x: Tensor, bits: int, group_size: int) -> QuantizedTensor:
    """Asymmetric min-max quantisation of ``x`` in groups of ``group_size`` along the last dim (eq. (3))."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {type(x).__name__}")
    _check_bits_group(bits, group_size, x.shape[-1])
    g = x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size).float()  # (..., G, gs)
    lo = g.amin(-1, keepdim=True).half()
    hi = g.amax(-1, keepdim=True).half()
    levels = 2**bits - 1
    scale = ((hi.float() - lo.float()) / levels).half()
    safe = torch.where(scale.float() > 0, scale.float(), torch.ones_like(scale, dtype=torch.float32))
    codes = ((g - lo.float()) / safe).round().clamp(0, levels).to(torch.uint8)
    return QuantizedTensor(codes, scale, lo, bits, x.shape)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``codes · scale + minimum``, back in the original shape."""
    return (qt.codes.float() * qt.scale.float() + qt.minimum.float()).reshape(qt.shape).to(dtype)


def fake_quantize(x: Tensor, bits: int, group_size: int) -> Tensor:
    """``dequantize(quantize(x))`` in ``x``'s dtype: the value a quantised cache gives back."""
    return dequantize(quantize(x, bits, group_size), x.dtype)


@dataclass(frozen=True)
class Staircase:
    """Bit width by age (eq. (4)): the newest ``widths[0]`` tokens at ``bits[0]``, the next
    ``widths[1]`` at ``bits[1]``, ..., every older token at ``bits[-1]``. One stair = uniform."""

    bits: tuple[int, ...]
    widths: tuple[int, ...] = ()
    group_size: int = 32

    def __post_init__(self) -> None:
        if not self.bits or len(self.widths) != len(self.bits) - 1:
            raise ValueError("a staircase needs len(widths) == len(bits) - 1, "
                             f"got bits={self.bits}, widths={self.widths}")
        for b in self.bits:
            _check_bits_group(b, self.group_size)
        if any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"widths must be ints >= 1, got {self.widths}")
        if any(b2 > b1 for b1, b2 in zip(self.bits, self.bits[1:])):
            raise ValueError(f"bits must not increase with age, got {self.bits}")

    def level(self, age: Tensor) -> Tensor:
        """Stair index of tokens of age ``age`` (0 = the newest token)."""
        edges = torch.tensor(self.widths, device=age.device).cumsum(0)
        return torch.bucketize(age, edges, right=True)

    def bits_per_value(self, age: Tensor) -> Tensor:
        """Stored bits per cached value at age ``age``, fp16 scale and minimum included."""
        b = torch.tensor(self.bits, dtype=torch.float64, device=age.device)[self.level(age)]
        return b + 2 * SCALE_BITS / self.group_size

    def cache_bits(self, length: int) -> float:
        """Mean bits per cached value of a full cache of ``length`` tokens."""
        return float(self.bits_per_value(torch.arange(length)).mean())

    def scoring_bits(self, length: int) -> float:
        """Mean bits per value read while scoring ``length`` tokens one by one (every (query, key) pair)."""
        age = torch.arange(length)
        return float((self.bits_per_value(age) * (length - age)).sum() / (length * (length + 1) / 2))

    def __str__(self) -> str:
        if len(self.bits) == 1:
            return f"uniform {self.bits[0]}-bit"
        return "stairs " + "/".join(map(str, self.bits)) + " (widths " + "/".join(map(str, self.widths)) + ")"


def staircase_levels(x: Tensor, staircase: Staircase) -> list[Tensor]:
    """The values a staircase cache holds for ``x`` at every stair: stair 0 quantises ``x`` at
    ``bits[0]``, stair s re-quantises stair s-1 at ``bits[s]`` (a token is demoted, not re-read)."""
    out, cur = [], x
    for b in staircase.bits:
        cur = fake_quantize(cur, b, staircase.group_size)
        out.append(cur)
    return out


def saq_attention(q: Tensor, k: Tensor, v: Tensor, staircase: Staircase, mask: Mask | None = None) -> Tensor:
    """Causal attention in which key/value ``j`` seen from query ``i`` is read from stair
    ``level(i - j)`` of the cache (eq. (4)): what token-by-token decoding with a staircase cache
    computes, for a whole sequence at once. ``k``, ``v``: (B, Hkv, N, D), ``q``: (B, H, N, D)."""
    check_qkv(q, k, v)
    if mask is not None and not isinstance(mask, CausalMask):
        raise ValueError(f"saq_attention is causal decoding; mask must be None or CausalMask, got {mask!r}")
    nq, nk = q.shape[2], k.shape[2]
    rep = q.shape[1] // k.shape[1]
    age = (nk - nq + torch.arange(nq, device=q.device))[:, None] - torch.arange(nk, device=q.device)[None]  # (Nq, Nk)
    level = staircase.level(age.clamp(min=0))
    causal = age >= 0
    scores = torch.zeros(q.shape[0], q.shape[1], nq, nk, dtype=torch.float32, device=q.device)
    ks, vs = staircase_levels(k, staircase), staircase_levels(v, staircase)
    for s, ks_ in enumerate(ks):
        sel = (level == s) & causal
        if sel.any():
            scores += torch.where(sel, q.float() @ ks_.float().repeat_interleave(rep, 1).transpose(-1, -2), 0.0)
    scores = (scores / math.sqrt(q.shape[-1])).masked_fill(~causal, float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # (B, H, Nq, Nk)
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    for s, vs_ in enumerate(vs):
        sel = (level == s) & causal
        if sel.any():
            out += torch.where(sel, probs, 0.0) @ vs_.float().repeat_interleave(rep, 1)
    return out.to(q.dtype)


class SAQAttention:
    """``attn_fn`` for :class:`~companion.nn.TinyLM` that reads keys and values from a staircase cache."""

    def __init__(self, staircase: Staircase) -> None:
        if not isinstance(staircase, Staircase):
            raise ValueError(f"staircase must be a Staircase, got {type(staircase).__name__}")
        self.staircase = staircase

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, mask: Mask | None = None, bias: Tensor | None = None) -> Tensor:
        if bias is not None:
            raise ValueError("SAQAttention takes no additive bias")
        return saq_attention(q, k, v, self.staircase, mask)


# ------------------------------------------------------------------------------------------------
# 3. Harmonic RoPE + ALiBi
# ------------------------------------------------------------------------------------------------
def harmonic_numbers(n: int) -> Tensor:
    """H_0 .. H_{n-1} with H_0 = 0 and H_Δ = Σ_{k=1}^{Δ} 1/k, summed in float64, returned as float32."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    terms = torch.cat([torch.zeros(1, dtype=torch.float64), 1.0 / torch.arange(1, n, dtype=torch.float64)])
    return terms.cumsum(0).float()


def harmonic_bias(n_heads: int, nq: int, nk: int | None = None) -> Tensor:
    """(1, H, Nq, Nk) additive bias -λ_h H_{i-j} for j <= i (eq. (5)), λ_h = 2^(-8h/H) (ALiBi's slopes);
    zero above the diagonal (the causal mask hides it). Query i sits at position nk - nq + i."""
    nk = nq if nk is None else nk
    if nq < 1 or nk < nq:
        raise ValueError(f"need 1 <= nq <= nk, got nq={nq}, nk={nk}")
    dist = (nk - nq + torch.arange(nq))[:, None] - torch.arange(nk)[None]  # (Nq, Nk)
    h = harmonic_numbers(nk)[dist.clamp(min=0)]
    return -alibi_slopes(n_heads).view(1, -1, 1, 1) * h[None, None]


def harmonic_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None = None, bias: Tensor | None = None) -> Tensor:
    """``attn_fn`` for a RoPE :class:`~companion.nn.TinyLM`: SDPA with the harmonic bias added (eq. (5))."""
    check_qkv(q, k, v)
    hb = harmonic_bias(q.shape[1], q.shape[2], k.shape[2]).to(q.device, q.dtype)
    return sdpa_attention(q, k, v, mask, bias=hb if bias is None else bias + hb)


# ------------------------------------------------------------------------------------------------
# 4. Likelihood-optimal sub-word encoding
# ------------------------------------------------------------------------------------------------
def viterbi_segment(word: str, logp: Mapping[str, float], max_len: int) -> tuple[list[str], float]:
    """The segmentation of ``word`` into vocabulary pieces with the highest unigram log-likelihood
    Σ log p(piece) (eq. (6)), by dynamic programming over end positions. Raises if none exists."""
    if not isinstance(word, str) or not word:
        raise ValueError(f"word must be a non-empty str, got {word!r}")
    n = len(word)
    best = [0.0] + [-math.inf] * n
    back = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - max_len), end):
            lp = logp.get(word[start:end])
            if lp is not None and best[start] + lp > best[end]:
                best[end], back[end] = best[start] + lp, start
    if best[n] == -math.inf:
        raise ValueError(f"word {word!r} cannot be segmented with this vocabulary")
    pieces, end = [], n
    while end > 0:
        pieces.append(word[back[end]:end])
        end = back[end]
    return pieces[::-1], best[n]


def unigram_logp(counts: Mapping[str, float], vocab: Iterable[str], smoothing: float = 0.5) -> dict[str, float]:
    """Log-probabilities of a unigram model over ``vocab`` from piece counts (add-``smoothing``)."""
    vocab = list(vocab)
    if not vocab or smoothing <= 0:
        raise ValueError("vocab must be non-empty and smoothing > 0")
    total = sum(counts.get(t, 0.0) for t in vocab) + smoothing * len(vocab)
    return {t: math.log((counts.get(t, 0.0) + smoothing) / total) for t in vocab}


def segment_corpus(words: Mapping[str, int], segment: Callable[[str], Sequence[str]]) -> Counter:
    """Piece counts of a corpus given as ``{word: count}`` and a segmentation function."""
    out: Counter = Counter()
    for w, c in words.items():
        for piece in segment(w):
            out[piece] += c
    return out


def corpus_score(words: Mapping[str, int], segment: Callable[[str], Sequence[str]],
                 logp: Mapping[str, float]) -> dict[str, float]:
    """Log-likelihood per character (nats) and tokens per character of a segmentation under ``logp``."""
    chars = sum(len(w) * c for w, c in words.items())
    if chars == 0:
        raise ValueError("words must hold at least one character")
    ll, toks = 0.0, 0
    for w, c in words.items():
        pieces = segment(w)
        ll += c * sum(logp[p] for p in pieces)
        toks += c * len(pieces)
    return {"nats_per_char": -ll / chars, "tokens_per_char": toks / chars}


def fit_unigram(words: Mapping[str, int], vocab: Iterable[str], init: Mapping[str, float],
                iters: int = 3, smoothing: float = 0.5) -> tuple[dict[str, float], list[float]]:
    """Hard EM: Viterbi-segment the corpus under the current model, re-count, repeat (``iters`` times).
    Returns the log-probabilities and the training nats/char after each iteration (never increasing)."""
    vocab = list(vocab)
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an int >= 1, got {iters!r}")
    if not vocab or not words:
        raise ValueError("vocab and words must be non-empty")
    max_len = max(map(len, vocab))
    logp = unigram_logp(init, vocab, smoothing)
    history = []
    for _ in range(iters):
        seg = {w: viterbi_segment(w, logp, max_len)[0] for w in words}
        history.append(corpus_score(words, seg.__getitem__, logp)["nats_per_char"])
        logp = unigram_logp(segment_corpus(words, seg.__getitem__), vocab, smoothing)
    return logp, history


# ------------------------------------------------------------------------------------------------
# 5. The cross-entropy method, and word vectors to tune with it
# ------------------------------------------------------------------------------------------------
@dataclass
class CEMResult:
    """What :func:`cross_entropy_method` did: per iteration the samples, their scores and the
    sampling distribution (mean, std) they were drawn from; the best sample overall."""

    samples: list[Tensor] = field(default_factory=list)  # each (n_samples, P)
    scores: list[Tensor] = field(default_factory=list)  # each (n_samples,)
    means: list[Tensor] = field(default_factory=list)  # each (P,)
    stds: list[Tensor] = field(default_factory=list)
    best_x: Tensor | None = None
    best_score: float = -math.inf


def cross_entropy_method(objective: Callable[[Tensor], float], lower: Sequence[float], upper: Sequence[float],
                         n_samples: int = 12, elite_frac: float = 0.25, iters: int = 4,
                         smoothing: float = 0.7, generator: torch.Generator | None = None) -> CEMResult:
    """Maximise ``objective`` over the box [lower, upper] with the cross-entropy method (eq. (7)):
    sample from a diagonal Gaussian (clipped to the box), keep the elite quantile, move the
    Gaussian's mean and std towards the elite's (with ``smoothing``), repeat."""
    lo, hi = torch.as_tensor(lower, dtype=torch.float64), torch.as_tensor(upper, dtype=torch.float64)
    if lo.ndim != 1 or lo.shape != hi.shape or not (hi > lo).all():
        raise ValueError(f"lower and upper must be 1-D of equal length with upper > lower, got {lower}, {upper}")
    if not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}")
    if not 0 < elite_frac < 1 or not isinstance(iters, int) or iters < 1 or not 0 < smoothing <= 1:
        raise ValueError("need 0 < elite_frac < 1, iters >= 1 and 0 < smoothing <= 1; "
                         f"got {elite_frac}, {iters}, {smoothing}")
    n_elite = max(1, round(elite_frac * n_samples))
    mean, std = (lo + hi) / 2, (hi - lo) / 2
    res = CEMResult()
    for _ in range(iters):
        x = (mean + std * torch.randn(n_samples, lo.numel(), generator=generator, dtype=torch.float64)).clamp(lo, hi)
        scores = torch.tensor([float(objective(row)) for row in x], dtype=torch.float64)
        res.samples.append(x)
        res.scores.append(scores)
        res.means.append(mean)
        res.stds.append(std)
        top = int(scores.argmax())
        if scores[top] > res.best_score:
            res.best_x, res.best_score = x[top].clone(), float(scores[top])
        elite = x[scores.argsort(descending=True)[:n_elite]]
        mean = smoothing * elite.mean(0) + (1 - smoothing) * mean
        std = smoothing * elite.std(0, unbiased=False) + (1 - smoothing) * std
    return res


_WORD = re.compile(r"[a-z]+")


def tokenize_words(text: str) -> list[str]:
    """Lower-cased alphabetic words of ``text``."""
    return _WORD.findall(text.lower())


class CooccurrenceCounts:
    """Word-context co-occurrence counts of a corpus, kept per distance 1..``max_window`` so that any
    window (with word2vec's linearly decaying weights) is assembled without re-reading the corpus."""

    def __init__(self, words: Sequence[str], vocab_size: int, max_window: int, keep: Iterable[str] = ()) -> None:
        if vocab_size < 2 or max_window < 1:
            raise ValueError(f"vocab_size must be >= 2 and max_window >= 1, got {vocab_size}, {max_window}")
        freq = Counter(words)
        extra = [w for w in keep if w in freq]
        top = [w for w, _ in freq.most_common(vocab_size)]
        self.vocab = list(dict.fromkeys(top + extra))
        self.index = {w: i for i, w in enumerate(self.vocab)}
        ids = torch.tensor([self.index.get(w, -1) for w in words])
        v = len(self.vocab)
        self.max_window = max_window
        self.by_distance = []  # each (V, V) float32: counts of (word at t, context at t + d)
        for d in range(1, max_window + 1):
            a, b = ids[:-d], ids[d:]
            ok = (a >= 0) & (b >= 0)
            flat = torch.bincount(a[ok] * v + b[ok], minlength=v * v).float().view(v, v)
            self.by_distance.append(flat + flat.T)  # both directions

    def matrix(self, window: int) -> Tensor:
        """(V, V) counts within ``window`` words, distance d weighted by (window - d + 1) / window."""
        if not 1 <= window <= self.max_window:
            raise ValueError(f"window must be in [1, {self.max_window}], got {window}")
        return sum(self.by_distance[d - 1] * ((window - d + 1) / window) for d in range(1, window + 1))


def sppmi_vectors(counts: CooccurrenceCounts, window: int, negatives: float, dim: int, alpha: float = 0.75) -> Tensor:
    """(V, dim) word vectors U_d Σ_d^{1/2} of max(PMI - log k, 0), the matrix SGNS with k
    negatives factorises implicitly (Levy & Goldberg, 2014); context counts smoothed by ``alpha``."""
    if negatives < 1 or not 0 < alpha <= 1 or dim < 1:
        raise ValueError(f"need negatives >= 1, 0 < alpha <= 1, dim >= 1; got {negatives}, {alpha}, {dim}")
    c = counts.matrix(window).double()
    total = c.sum()
    pw = c.sum(1, keepdim=True) / total
    ctx = c.sum(0, keepdim=True) ** alpha
    pc = ctx / ctx.sum()
    with torch.no_grad():
        pmi = torch.log((c / total).clamp(min=1e-30) / (pw * pc).clamp(min=1e-30))
        m = (pmi - math.log(negatives)).clamp(min=0).masked_fill(c == 0, 0.0).float()
    with torch.random.fork_rng():  # randomised SVD, made deterministic without touching the global RNG
        torch.manual_seed(0)
        u, s, _ = torch.svd_lowrank(m, q=min(dim, m.shape[0]), niter=3)
    return u * s.sqrt()


def word_similarity_score(vectors: Tensor, index: Mapping[str, int],
                          pairs: Iterable[tuple[str, str, float]]) -> tuple[float, int]:
    """Spearman correlation between cosine similarities and human scores over the covered pairs,
    and the number of pairs covered."""
    a, b, human = [], [], []
    for w1, w2, score in pairs:
        if w1 in index and w2 in index:
            a.append(index[w1]), b.append(index[w2]), human.append(float(score))
    if len(human) < 3:
        raise ValueError(f"only {len(human)} pairs are covered by the vocabulary; need >= 3")
    v = torch.nn.functional.normalize(vectors.double(), dim=1)
    cos = (v[a] * v[b]).sum(1)
    return float(spearmanr(cos.numpy(), human).statistic), len(human)


# ------------------------------------------------------------------------------------------------
# Explorer
# ------------------------------------------------------------------------------------------------
def prflash_explorer(model: torch.nn.Module, x: Tensor, y: Tensor, block_size: int, seed: int = 0):
    """ipywidgets: pick the budget and the family of p(Δ); see p(Δ), one sampled layout, and the
    model's loss on ``(x, y)`` with that sampling next to dense attention."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from ..widgets import redraw_on

    from ..train import lm_loss

    n_blocks = -(-x.shape[1] // block_size)
    dense = lm_loss(model, x, y)
    budget = W.FloatSlider(value=0.5, min=0.25, max=1.0, step=0.05, description="budget")
    kind = W.Dropdown(options=DISTANCE_KINDS, value="geometric", description="p(Δ)")

    def draw() -> None:
        p = keep_probabilities(n_blocks, budget.value, kind.value)
        gen = torch.Generator().manual_seed(seed)
        fn = PrFlashAttention(block_size, probs=p, generator=gen)
        loss = lm_loss(model, x, y, attn_fn=fn)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
        a1.bar(range(n_blocks), p.numpy(), color="C0")
        a1.set_xlabel("block distance Δ = r - c")
        a1.set_ylabel("keep probability p(Δ)")
        a1.set_title(f"{kind.value}: {expected_kept_fraction(p):.0%} of off-diagonal blocks kept", fontsize=10)
        lay = sample_block_layout(p, 1, torch.Generator().manual_seed(seed))[0]
        a2.imshow(lay.float().numpy(), cmap="Blues", vmin=0, vmax=1.15)
        a2.set_xlabel("key block c")
        a2.set_ylabel("query block r")
        a2.set_title(f"one sample; loss {loss:.3f} vs dense {dense:.3f} nats/byte", fontsize=10)

    return redraw_on([budget, kind], draw)
