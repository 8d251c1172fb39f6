"""InfLLM: a training-free context memory for long sequences.

Xiao et al., *InfLLM: Training-Free Long-Context Extrapolation for LLMs with an Efficient Context
Memory* (NeurIPS 2024, arXiv 2402.04617). Everything the chapter ``book/inference/infllm.md`` needs:

* :class:`InfLLMConfig` -- the sizes of the memory (local window, initial tokens, memory units,
  representative tokens, retrieved units, execution block).
* :func:`infllm_attention` -- one attention layer run as InfLLM: the sequence is processed in
  execution blocks; each block attends to its **local window** (RoPE re-based inside the window)
  and, through a second, **global** stage, to the **initial tokens**, the ``topk`` **memory units**
  whose **representative keys** best match the block's mean query, and the evicted tokens that do
  not fill a unit yet. Memory keys are stored without rotation and the global queries are rotated
  by the fixed distance ``n_local`` (eq. (4) of the chapter). The two stages are merged exactly
  by their log-sum-exp (eq. (5)). ``impl="triton"`` computes each execution block with the
  structured-attention kernel's decode path (:func:`companion.kernels.triton_attention`, ``Nq <= 16``).
  ``topk=0`` turns the memory off, which leaves StreamingLLM's sinks + sliding window.
* :class:`InfLLMAttention` / :func:`use_infllm` -- run a trained :class:`~companion.nn.TinyLM` with it.
* :func:`recall_batch` -- the associative-recall / needle task of the chapter.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from ..kernels import triton_attention
from ..nn.attention import merge_partials
from ..nn.masks import CausalMask
from ..nn.positions import apply_rope
from ..nn.transformer import MultiHeadAttention, TinyLM

Tensor = torch.Tensor
IMPLS = ("torch", "triton")


@dataclass(frozen=True)
class InfLLMConfig:
    """Sizes of InfLLM's context memory (the paper's Mistral setting in brackets).

    ``n_local`` local-window tokens (4096), ``n_init`` initial tokens (128), memory units of
    ``block_size`` tokens (128) with ``repr_topk`` representative tokens each (4), ``topk``
    units retrieved per execution block of ``exc_block_size`` queries (16, 512). ``topk=0``:
    no memory at all (StreamingLLM: initial tokens + window). ``memory_distance`` is the RoPE
    distance at which memory and initial tokens appear (None: ``n_local``, the paper's choice).
    """

    n_local: int = 32
    n_init: int = 4
    block_size: int = 16
    repr_topk: int = 4
    topk: int = 4
    exc_block_size: int = 16
    memory_distance: int | None = None

    def __post_init__(self) -> None:
        for name, low in (("n_local", 1), ("n_init", 0), ("block_size", 1), ("repr_topk", 1), ("topk", 0),
                          ("exc_block_size", 1)):
            val = getattr(self, name)
            if not isinstance(val, int) or val < low:
                raise ValueError(f"{name} must be an int >= {low}, got {val!r}")
        if self.exc_block_size > self.n_local:
            raise ValueError(f"exc_block_size ({self.exc_block_size}) must be <= n_local ({self.n_local})")
        if self.repr_topk > self.block_size:
            raise ValueError(f"repr_topk ({self.repr_topk}) must be <= block_size ({self.block_size})")
        if self.memory_distance is not None and (not isinstance(self.memory_distance, int) or self.memory_distance < 0):
            raise ValueError(f"memory_distance must be None or an int >= 0, got {self.memory_distance!r}")

    @property
    def distance(self) -> int:
        """The RoPE distance of every memory / initial token from its query (eq. (4))."""
        return self.n_local if self.memory_distance is None else self.memory_distance


def streaming_config(n_sink: int, window: int, exc_block_size: int = 16) -> InfLLMConfig:
    """StreamingLLM (attention sinks + sliding window) as an InfLLM without memory units."""
    return InfLLMConfig(n_local=window, n_init=n_sink, topk=0, exc_block_size=min(exc_block_size, window))


@dataclass
class MemoryStats:
    """What one :func:`infllm_attention` call did, per execution block (chunk)."""

    n_keys: int  # sequence length
    chunk_starts: list[int] = field(default_factory=list)
    attended: list[int] = field(default_factory=list)  # keys the chunk's last query attends to
    selected: list[Tensor] = field(default_factory=list)  # (B, n_selected) unit ids per chunk
    n_units: list[int] = field(default_factory=list)  # units in memory at each chunk

    @property
    def attended_fraction(self) -> float:
        """Keys attended by the last query over the keys it could see (the paper's sparsity)."""
        return self.attended[-1] / self.n_keys if self.attended else 0.0


def merge_by_lse(o1: Tensor, lse1: Tensor, o2: Tensor, lse2: Tensor) -> tuple[Tensor, Tensor]:
    """Merge two partial softmax attentions over disjoint key sets (eq. (5)).

    ``o`` is ``(..., D)``, ``lse`` is ``(...)`` (natural log of each softmax denominator, ``-inf``
    when a stage saw no key). Returns the attention over the union and its log-sum-exp.
    """
    if o1.shape != o2.shape or lse1.shape != lse2.shape or o1.shape[:-1] != lse1.shape:
        raise ValueError(f"o1/o2 must share a shape (..., D) and lse1/lse2 its prefix, got {tuple(o1.shape)}, "
                         f"{tuple(o2.shape)}, {tuple(lse1.shape)}, {tuple(lse2.shape)}")
    return merge_partials([o1, o2], [lse1, lse2])  # the book's one log-sum-exp merge (companion.nn.attention)


def _scores(q: Tensor, k: Tensor, keep: Tensor, scale: float) -> Tensor:
    """Masked scaled scores (B, H, Nq, Nk); ``-inf`` where ``keep`` is False."""
    return (torch.matmul(q, k.transpose(-1, -2)) * scale).masked_fill(~keep, float("-inf"))


def _stage(q: Tensor, k: Tensor, v: Tensor, keep: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """One masked softmax stage: output (B, H, Nq, D), log-sum-exp (B, H, Nq), scores (B, H, Nq, Nk)."""
    s = _scores(q, k, keep, scale)
    lse = torch.logsumexp(s, dim=-1)  # (B, H, Nq); -inf where nothing is visible
    p = torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)[..., None])
    return torch.matmul(p, v), lse, s


def representative_keys(keys: Tensor, scores: Tensor, repr_topk: int) -> Tensor:
    """Representative key of each memory unit (eq. (2)): mean of its ``repr_topk`` most-attended keys.

    ``keys`` (B, H, U, block, D) unrotated, ``scores`` (B, H, U, block) accumulated local
    attention; returns (B, H, U, D).
    """
    if keys.ndim != 5 or scores.shape != keys.shape[:-1]:
        raise ValueError(f"keys must be (B, H, U, block, D) and scores (B, H, U, block), got "
                         f"{tuple(keys.shape)} and {tuple(scores.shape)}")
    if not 1 <= repr_topk <= keys.shape[3]:
        raise ValueError(f"repr_topk must be in [1, {keys.shape[3]}], got {repr_topk}")
    top = scores.topk(repr_topk, dim=-1).indices  # (B, H, U, r)
    picked = keys.gather(3, top[..., None].expand(*top.shape, keys.shape[-1]))  # (B, H, U, r, D)
    return picked.mean(3)


def infllm_attention(q: Tensor, k: Tensor, v: Tensor, cfg: InfLLMConfig, *, rope_base: float = 10000.0,
                     impl: str = "torch", num_splits: int | None = None,
                     stats: MemoryStats | None = None) -> Tensor:
    """Causal attention of a RoPE layer run with InfLLM's context memory -> (B, H, N, D).

    ``q`` (B, H, N, D) and ``k``, ``v`` (B, Hkv, N, D) come **unrotated**; RoPE is applied here
    (re-based in the local window, one fixed distance ``cfg.distance`` for the global stage). With
    ``N <= n_local`` nothing is evicted and the result equals full causal attention.
    ``impl="triton"`` runs each execution block through the kernel's decode path
    (``num_splits`` key splits merged by log-sum-exp); ``stats`` collects what was retrieved.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not isinstance(cfg, InfLLMConfig):
        raise ValueError(f"cfg must be an InfLLMConfig, got {type(cfg).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            raise ValueError(f"{name} must be a tensor of shape (B, H, N, D), got {getattr(t, 'shape', t)!r}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:] or q.shape[1] % k.shape[1]:
        raise ValueError(f"k, v must be (B, Hkv, N, D) with Hkv dividing H of q {tuple(q.shape)}, got "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    B, H, N, D = q.shape
    rep = H // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)  # (B, H, N, D): GQA expanded
    E, W, bs = cfg.exc_block_size, cfg.n_local, cfg.block_size
    scale = 1.0 / math.sqrt(D)
    dev = q.device
    # global queries: rotated by one angle, so every (unrotated) memory key sits cfg.distance away, eq. (4)
    q_glb = apply_rope(q, torch.full((N,), cfg.distance, device=dev), rope_base)
    score = torch.zeros(B, H, N, device=dev, dtype=torch.float32)  # accumulated local attention per key
    reps = torch.zeros(B, H, 0, D, device=dev, dtype=q.dtype)  # representative keys of the formed units
    out = torch.empty_like(q)
    for s in range(0, N, E):
        e = min(s + E, N)
        qpos = torch.arange(s, e, device=dev)
        lo = max(0, s - W + 1)  # keys below lo are outside every query's window
        # local stage: the window, RoPE positions re-based to start at lo
        kpos = torch.arange(lo, e, device=dev)
        q_loc = apply_rope(q[:, :, s:e], qpos - lo, rope_base)
        k_loc = apply_rope(k[:, :, lo:e], kpos - lo, rope_base)
        d_loc = qpos[:, None] - kpos[None, :]  # (Nq, Nl) distances
        keep_loc = (d_loc >= 0) & (d_loc < W)
        # memory units: complete blocks (after the initial tokens) that left every window
        n_units = max(0, (lo - cfg.n_init) // bs) if cfg.topk else 0
        if n_units > reps.shape[2]:
            first, end = cfg.n_init + reps.shape[2] * bs, cfg.n_init + n_units * bs
            blk = k[:, :, first:end].reshape(B, H, -1, bs, D)
            new = representative_keys(blk, score[:, :, first:end].reshape(B, H, -1, bs), cfg.repr_topk)
            reps = torch.cat([reps, new], dim=2)  # (B, H, U, D)
        g_idx = [torch.arange(0, min(cfg.n_init, max(0, e - W)), device=dev).expand(B, -1)]  # initial tokens
        selected = torch.zeros(B, 0, dtype=torch.long, device=dev)
        if n_units:
            q_mean = q_glb[:, :, s:e].mean(2)  # (B, H, D): one retrieval per execution block, eq. (3)
            unit_score = torch.einsum("bhd,bhud->bu", q_mean, reps[:, :, :n_units])  # summed over heads
            selected = unit_score.topk(min(cfg.topk, n_units), dim=-1).indices.sort(-1).values  # (B, k)
            offs = torch.arange(bs, device=dev)
            g_idx.append((cfg.n_init + selected[..., None] * bs + offs).flatten(1))
        if cfg.topk:  # evicted tokens that do not fill a unit yet (the "global remainder")
            g_idx.append(torch.arange(cfg.n_init + n_units * bs, max(cfg.n_init, e - W), device=dev).expand(B, -1))
        g_idx = torch.cat(g_idx, dim=1)  # (B, G)
        gather = g_idx[:, None, :, None].expand(B, H, -1, D)
        k_glb, v_glb = k.gather(2, gather), v.gather(2, gather)  # (B, H, G, D), keys unrotated
        keep_glb = (qpos[None, :, None] - g_idx[:, None, :] >= W)[:, None]  # (B, 1, Nq, G): outside the window
        if impl == "triton":  # both stages through the kernel's decode path, each with its log-sum-exp
            o_loc, lse_loc = _kernel_stage(q_loc, k_loc, v[:, :, lo:e], keep_loc, scale, num_splits)
            o_glb, lse_glb = _kernel_stage(q_glb[:, :, s:e], k_glb, v_glb, keep_glb, scale, num_splits)
            s_loc = _scores(q_loc, k_loc, keep_loc, scale)  # only the representative-key statistics need them
        else:
            o_loc, lse_loc, s_loc = _stage(q_loc, k_loc, v[:, :, lo:e], keep_loc, scale)
            o_glb, lse_glb, _ = _stage(q_glb[:, :, s:e], k_glb, v_glb, keep_glb, scale)
        o, lse = merge_by_lse(o_loc, lse_loc, o_glb, lse_glb)  # eq. (5); lse also feeds the scores below
        out[:, :, s:e] = o
        # probability mass each window key received (merged softmax), summed over the chunk's queries
        score[:, :, lo:e] += torch.exp(s_loc - lse[..., None]).sum(2).float()
        if stats is not None:
            stats.chunk_starts.append(s)
            stats.attended.append(int(keep_loc[-1].sum()) + int(keep_glb[0, 0, -1].sum()))
            stats.selected.append(selected.cpu())
            stats.n_units.append(n_units)
    return out


def _kernel_stage(q: Tensor, k: Tensor, v: Tensor, keep: Tensor, scale: float,
                  num_splits: int | None) -> tuple[Tensor, Tensor]:
    """One stage of an execution block through the kernel (decode path, Nq <= 16): what
    :func:`_stage` computes, without the scores. ``keep`` is (Nq, Nk) or (B, 1, Nq, Nk)."""
    B, _, nq, _ = q.shape
    nk = k.shape[2]
    mask = keep.expand(B, 1, nq, nk)[:, 0]  # (B, Nq, Nk)
    if nk < nq:  # the kernel aligns queries to the last keys: pad with keys nobody sees (also when Nk = 0)
        pad = nq - nk
        k, v = (torch.cat([t, t.new_zeros(*t.shape[:2], pad, t.shape[3])], dim=2) for t in (k, v))
        mask = torch.cat([mask, mask.new_zeros(B, nq, pad)], dim=2)
    return triton_attention(q, k, v, mask, scale=scale, num_splits=num_splits, return_lse=True)


WINDOW, INITIAL, RETRIEVED, REMAINDER = 1, 2, 3, 4  # codes of :func:`attended_keys`
KEY_KINDS = {0: "not read", WINDOW: "local window", INITIAL: "initial tokens", RETRIEVED: "retrieved units",
             REMAINDER: "evicted, not yet a unit"}


def attended_keys(stats: MemoryStats, cfg: InfLLMConfig, row: int = 0) -> Tensor:
    """What the last query of every execution block read: ``(n_chunks, N)`` int8 of the codes in ``KEY_KINDS``.

    Rebuilt from ``stats`` (one :func:`infllm_attention` call) for batch row ``row``.
    """
    if not isinstance(stats, MemoryStats) or not stats.chunk_starts:
        raise ValueError("stats must be a MemoryStats filled by infllm_attention")
    if not 0 <= row < stats.selected[0].shape[0]:
        raise ValueError(f"row must be in [0, {stats.selected[0].shape[0]}), got {row}")
    n, W, bs = stats.n_keys, cfg.n_local, cfg.block_size
    out = torch.zeros(len(stats.chunk_starts), n, dtype=torch.int8)
    for c, (s, n_units, sel) in enumerate(zip(stats.chunk_starts, stats.n_units, stats.selected)):
        p = min(s + cfg.exc_block_size, n) - 1  # the chunk's last query
        far = max(0, p - W + 1)  # keys below this are outside its window
        out[c, far:p + 1] = WINDOW
        if cfg.topk:
            out[c, cfg.n_init + n_units * bs:far] = REMAINDER
        for u in sel[row].tolist():
            out[c, cfg.n_init + u * bs:cfg.n_init + (u + 1) * bs] = RETRIEVED
        out[c, :min(cfg.n_init, far)] = INITIAL
    return out


def memory_explorer(maps: dict[str, Tensor], needle: int, exc_block_size: int):
    """ipywidgets explorer: pick a method/layer and an execution block, see which keys its last query reads.

    ``maps`` holds :func:`attended_keys` outputs (same shape); ``needle`` is the needle's key position.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    if not maps:
        raise ValueError("maps must hold at least one attended_keys map")
    n_chunks, n = next(iter(maps.values())).shape
    cmap = ListedColormap(["#f2f2f2", "#4c72b0", "#dd8452", "#55a868", "#c44e52"])

    def show(method: str, chunk: int) -> None:
        m = maps[method]
        fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(10, 3.6), height_ratios=(3, 1), sharex=True)
        ax0.imshow(m, aspect="auto", cmap=cmap, vmin=0, vmax=4, interpolation="nearest")
        ax0.axhline(chunk, color="k", lw=0.8)
        ax0.axvline(needle, color="m", ls=":", lw=1)
        ax0.set_ylabel("execution block")
        ax0.set_title(f"{method}: keys read by the last query of each block (magenta: needle)")
        ax1.imshow(m[chunk:chunk + 1], aspect="auto", cmap=cmap, vmin=0, vmax=4, interpolation="nearest")
        ax1.axvline(needle, color="m", ls=":", lw=1)
        ax1.set_yticks([])
        ax1.set_xlabel(f"key position (tokens); block {chunk} = queries {chunk * exc_block_size}.."
                       f"{min(n, (chunk + 1) * exc_block_size) - 1}")
        handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(5)]
        fig.legend(handles, list(KEY_KINDS.values()), loc="lower center", ncol=5, fontsize=8,
                   bbox_to_anchor=(0.5, -0.08))
        plt.show()

    return W.interactive(show, method=W.Dropdown(options=list(maps), description="method"),
                         chunk=W.IntSlider(value=n_chunks - 1, min=0, max=n_chunks - 1, description="block"))


class InfLLMAttention(nn.Module):
    """Drop-in replacement of a :class:`~companion.nn.transformer.MultiHeadAttention` (RoPE) running InfLLM.

    Shares the wrapped module's projections; ``stats`` holds the last call's :class:`MemoryStats`.
    """

    def __init__(self, attn: MultiHeadAttention, cfg: InfLLMConfig, impl: str = "torch",
                 num_splits: int | None = None) -> None:
        super().__init__()
        if not isinstance(attn, MultiHeadAttention) or attn.pos != "rope":
            raise ValueError("attn must be a MultiHeadAttention with pos='rope'")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.inner, self.cfg, self.impl, self.num_splits = attn, cfg, impl, num_splits
        self.stats: MemoryStats | None = None

    def forward(self, x: Tensor, mask, position_ids: Tensor, attn_fn=None) -> Tensor:
        """(B, N, d) -> (B, N, d). InfLLM is causal and positions its keys itself, so ``position_ids`` is unused."""
        if mask is not None and type(mask) is not CausalMask:
            raise ValueError(f"mask must be None or a CausalMask (InfLLM is causal), got {type(mask).__name__}")
        a = self.inner
        B, N, _ = x.shape
        q, k, v = a.project(x)  # (B, H, N, Dh), (B, Hkv, N, Dh) x 2: the layer's own projections
        self.stats = MemoryStats(N)
        out = infllm_attention(q, k, v, self.cfg, rope_base=a.rope_base, impl=self.impl,
                               num_splits=self.num_splits, stats=self.stats)
        return a.out_proj(out.transpose(1, 2).reshape(B, N, -1))


@contextmanager
def use_infllm(model: TinyLM, cfg: InfLLMConfig, impl: str = "torch",
               num_splits: int | None = None) -> Iterator[list[InfLLMAttention]]:
    """Temporarily run every attention layer of ``model`` with InfLLM; yields the wrappers (for stats)."""
    if not isinstance(model, TinyLM):
        raise ValueError(f"model must be a TinyLM, got {type(model).__name__}")
    originals = [blk.attn for blk in model.blocks]
    wrappers = [InfLLMAttention(a, cfg, impl, num_splits) for a in originals]
    try:
        for blk, w in zip(model.blocks, wrappers):
            blk.attn = w
        yield wrappers
    finally:
        for blk, a in zip(model.blocks, originals):
            blk.attn = a


# ----------------------------------------------------------------------------------------------
# The task: associative recall with filler (a needle in a haystack)
# ----------------------------------------------------------------------------------------------
N_FILLER, N_KEYS, N_VALUES = 16, 32, 32
KEY0 = N_FILLER
VALUE0 = KEY0 + N_KEYS
QUERY = VALUE0 + N_VALUES  # marks the question "QUERY key -> value"
VOCAB_SIZE = QUERY + 1
IGNORE = -100


def recall_batch(batch: int, length: int, n_pairs: int, n_queries: int, generator: torch.Generator,
                 depth: float | Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Sequences of random filler with ``n_pairs`` "key value" pairs, ending in ``n_queries`` questions.

    Each question is "QUERY key value" for a distinct pair; only the answers are targets. The
    pair asked first (the needle) sits at relative ``depth`` in [0, 1] of the haystack (random
    if None; a tensor gives one depth per row). Returns ``x`` (B, length), targets ``y`` (B, length,
    ``IGNORE`` except at the answers) and the needle's key position (B,).
    """
    if n_pairs < 1 or not 1 <= n_queries <= n_pairs or n_pairs > N_KEYS:
        raise ValueError(f"need 1 <= n_queries <= n_pairs <= {N_KEYS}, got n_pairs={n_pairs}, n_queries={n_queries}")
    hay = length + 1 - 3 * n_queries  # x and y come from length + 1 tokens
    if hay < 2 * n_pairs + 2:
        raise ValueError(f"length {length} is too short for {n_pairs} pairs and {n_queries} queries")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    g = generator
    seq = torch.randint(0, N_FILLER, (batch, length + 1), generator=g)
    keys = torch.rand(batch, N_KEYS, generator=g).argsort(-1)[:, :n_pairs] + KEY0  # distinct keys
    vals = torch.randint(VALUE0, VALUE0 + N_VALUES, (batch, n_pairs), generator=g)
    slots = (hay - 1) // 2  # pairs sit on even offsets, so they never overlap
    pos = 2 * torch.rand(batch, slots, generator=g).argsort(-1)[:, :n_pairs]  # (B, n_pairs)
    if depth is not None:
        d = torch.as_tensor(depth, dtype=torch.float32).expand(batch)
        if ((d < 0) | (d > 1)).any():
            raise ValueError("depth must lie in [0, 1]")
        needle = 2 * torch.round(d * (slots - 1)).long()
        clash = pos[:, 1:] == needle[:, None]
        pos[:, 1:] = torch.where(clash, pos[:, :1], pos[:, 1:])  # move a clashing distractor to the free slot
        pos[:, 0] = needle
    rows = torch.arange(batch)[:, None]
    seq[rows, pos], seq[rows, pos + 1] = keys, vals
    y = torch.full((batch, length + 1), IGNORE)
    for j in range(n_queries):
        at = hay + 3 * j
        seq[:, at], seq[:, at + 1], seq[:, at + 2] = QUERY, keys[:, j], vals[:, j]
        y[:, at + 2] = vals[:, j]
    return seq[:, :-1], y[:, 1:], pos[:, 0]


@torch.no_grad()
def answer_accuracy(model: TinyLM, x: Tensor, y: Tensor, batch: int = 32) -> Tensor:
    """Per-sequence accuracy on the answer targets of ``y`` (B,), greedy, in batches."""
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"x and y must both be (B, N), got {tuple(x.shape)} and {tuple(y.shape)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    accs = []
    for i in range(0, x.shape[0], batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        hit = (model(xb).argmax(-1) == yb) & (yb != IGNORE)
        accs.append(hit.sum(1).float() / (yb != IGNORE).sum(1).clamp_min(1))
    return torch.cat(accs)


__all__ = ["IGNORE", "IMPLS", "INITIAL", "KEY0", "KEY_KINDS", "N_FILLER", "N_KEYS", "N_VALUES", "QUERY", "REMAINDER",
           "RETRIEVED", "VALUE0", "VOCAB_SIZE", "WINDOW", "InfLLMAttention", "InfLLMConfig", "MemoryStats",
           "answer_accuracy", "attended_keys", "infllm_attention", "memory_explorer", "merge_by_lse", "recall_batch",
           "representative_keys", "streaming_config", "use_infllm"]
