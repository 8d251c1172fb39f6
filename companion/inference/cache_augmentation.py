"""Differentiable cache augmentation (Liu et al., 2025): a coprocessor writes latents into a frozen decoder's cache.

A frozen decoder :math:`\\theta` reads a prefix :math:`x` and keeps its per-layer key/value cache.
A *coprocessor* :math:`f_\\phi` -- a trainable copy of the decoder -- starts from that cache,
appends :math:`N_L` trainable soft tokens and returns their last hidden states, the latents
:math:`z` (chapter eq. 1). The decoder appends :math:`z` to its cache as if they were
ordinary input embeddings and continues decoding; only :math:`\\phi` is trained, with the
loss of the :math:`N_A` tokens that follow the augmentation point (chapter eq. 2).

Training uses many augmentation points per sequence in one pass: the prefix is run once,
and for each split point :math:`p_j` a block of latent slots (and ahead tokens) is packed after it
under the mask :class:`AugmentationMask` (chapter eq. 3). The pieces:

* :func:`packed_layout`, :class:`AugmentationMask` -- which slot sees what, and at which position;
* :func:`companion.nn.transformer.run_blocks_cached` -- the book's one cached pass through a
  :class:`~companion.nn.TinyLM`'s blocks (embeddings in, hidden states and keys/values out);
* :class:`Coprocessor`, :class:`PauseTokens` -- two latent writers (the method and its baseline);
  :class:`ZeroWriter`, :class:`RepeatWriter` -- parameter-free controls (zeros; a repeat of the
  last prefix embeddings) that shift positions like a writer but add no content;
* :class:`CacheAugmentedLM` -- frozen decoder + optional writer: ahead logits for training and
  evaluation, and plain decoder logits when the coprocessor is off.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.masks import CausalMask, Mask
from ..nn.transformer import TinyLM, run_blocks_cached

Tensor = torch.Tensor
KVCache = list[tuple[Tensor, Tensor]]  # per layer: (k, v), each (B, Hkv, T, Dh), RoPE already applied


# ---------------------------------------------------------------------------------------------
# The structured mask of the efficient training pass
# ---------------------------------------------------------------------------------------------
class AugmentationMask(Mask):
    """Prefix tokens attend causally; a slot of block ``j`` sees the prefix up to ``p_j`` and its own block.

    ``group[b, t]`` is ``-1`` for an original (prefix) token and ``j`` for a slot of block ``j``;
    ``split[b, t]`` is the last prefix position that ``t`` may see: ``t`` itself for a prefix
    token, ``p_j`` for a slot of block ``j``. Visible (chapter eq. 3):
    ``(group[k] < 0 and k <= split[q]) or (group[k] == group[q] >= 0 and k <= q)``.
    """

    def __init__(self, group: Tensor, split: Tensor) -> None:
        super().__init__()
        group, split = torch.as_tensor(group), torch.as_tensor(split)
        for name, t in (("group", group), ("split", split)):
            if t.ndim != 2 or t.is_floating_point() or t.dtype == torch.bool:
                raise ValueError(f"{name} must be an integer tensor of shape (B, N), got {t.dtype} {tuple(t.shape)}")
        if group.shape != split.shape:
            raise ValueError(f"group and split must have the same shape, got {tuple(group.shape)} and {tuple(split.shape)}")
        self.group, self.split = group.long(), split.long()

    @property
    def tensors(self) -> dict[str, Tensor]:
        return {"group": self.group, "split": self.split}

    def mask_mod(self, b, h, q_idx, kv_idx):
        g, s = self.group.to(q_idx.device), self.split.to(q_idx.device)
        row = b if g.shape[0] > 1 else torch.zeros_like(b)
        gq, gk = g[row, q_idx], g[row, kv_idx]
        prefix = (gk < 0) & (kv_idx <= s[row, q_idx])
        own = (gq >= 0) & (gk == gq) & (kv_idx <= q_idx)
        return prefix | own

    def __repr__(self) -> str:
        return f"AugmentationMask(shape {tuple(self.group.shape)})"


def random_splits(batch: int, n_splits: int, low: int, high: int,
                  generator: torch.Generator | None = None) -> Tensor:
    """``n_splits`` distinct augmentation points per row, sorted, drawn uniformly from ``[low, high)``: (batch, n_splits)."""
    if batch < 1 or n_splits < 1:
        raise ValueError(f"batch and n_splits must be >= 1, got {batch}, {n_splits}")
    if not 0 <= low <= high - n_splits:
        raise ValueError(f"[low, high) = [{low}, {high}) must hold at least n_splits = {n_splits} positions")
    draws = torch.stack([torch.randperm(high - low, generator=generator)[:n_splits] for _ in range(batch)])
    return draws.sort(dim=1).values + low


def packed_layout(splits: Tensor, prefix_len: int, block_len: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(group, split, position_ids)`` for a prefix of ``prefix_len`` tokens followed by one block per split.

    ``splits`` (B, N_B): augmentation points, strictly increasing in ``[0, prefix_len)``.
    Block ``j`` holds ``block_len`` slots at the positions they have at inference,
    ``p_j + 1, ..., p_j + block_len``. ``group`` and ``split`` (B, prefix_len + N_B * block_len)
    feed :class:`AugmentationMask`; ``position_ids`` (B, N_B * block_len) covers the slots only.
    """
    if not isinstance(splits, torch.Tensor) or splits.ndim != 2 or splits.is_floating_point():
        raise ValueError(f"splits must be an integer tensor of shape (B, N_B), got {getattr(splits, 'shape', splits)!r}")
    if block_len < 1 or prefix_len < 1:
        raise ValueError(f"prefix_len and block_len must be >= 1, got {prefix_len}, {block_len}")
    if splits.numel() and (int(splits.min()) < 0 or int(splits.max()) >= prefix_len):
        raise ValueError(f"splits must lie in [0, {prefix_len}), got [{int(splits.min())}, {int(splits.max())}]")
    if splits.shape[1] > 1 and not bool((splits[:, 1:] > splits[:, :-1]).all()):
        raise ValueError("splits must be strictly increasing along each row")
    B, nb = splits.shape
    dev = splits.device
    slots = torch.arange(nb, device=dev).repeat_interleave(block_len)  # (N_B * L,): block of each slot
    group = torch.cat([torch.full((B, prefix_len), -1, device=dev), slots.expand(B, -1)], dim=1)
    slot_split = splits.repeat_interleave(block_len, dim=1)  # (B, N_B * L)
    split = torch.cat([torch.arange(prefix_len, device=dev).expand(B, -1), slot_split], dim=1)
    offset = torch.arange(block_len, device=dev).repeat(nb)  # (N_B * L,)
    return group, split, slot_split + 1 + offset


# ---------------------------------------------------------------------------------------------
# Latent writers
# ---------------------------------------------------------------------------------------------
def _soft_tokens(decoder: TinyLM, n_latents: int, init_ids: Tensor | None,
                 generator: torch.Generator | None) -> Tensor:
    """(N_L, d) initial soft tokens: the embeddings of ``init_ids`` (cycled) or of random tokens."""
    if n_latents < 1:
        raise ValueError(f"n_latents must be >= 1, got {n_latents}")
    vocab = decoder.cfg.vocab_size
    if init_ids is None:
        init_ids = torch.randint(0, vocab, (n_latents,), generator=generator)
    init_ids = torch.as_tensor(init_ids).long().reshape(-1)
    if init_ids.numel() == 0 or int(init_ids.min()) < 0 or int(init_ids.max()) >= vocab:
        raise ValueError(f"init_ids must be a non-empty list of token ids in [0, {vocab})")
    return decoder.embed.weight.detach()[init_ids.repeat(n_latents)[:n_latents]].clone()


class Coprocessor(nn.Module):
    """:math:`z = f_\\phi(K_\\theta(x), V_\\theta(x))`: a trainable copy of the decoder fed with soft tokens.

    Layer ``l`` of the copy lets the ``n_latents`` soft tokens of each block attend to the
    decoder's cached keys/values of layer ``l`` (up to the split point) and, causally, to each
    other (chapter eq. 1). The soft tokens start as copies of token embeddings (``init_ids``, or random ones)
    and the output LayerNorm gain at the embedding scale, so the latents look like inputs the
    decoder has seen.
    """

    def __init__(self, decoder: TinyLM, n_latents: int, init_ids: Tensor | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.n_latents = n_latents
        self.soft_tokens = nn.Parameter(_soft_tokens(decoder, n_latents, init_ids, generator))  # (N_L, d)
        self.blocks = copy.deepcopy(decoder.blocks).requires_grad_(True)
        self.ln_f = nn.LayerNorm(decoder.cfg.d_model)
        with torch.no_grad():  # latents start at the scale of the embeddings they stand in for
            self.ln_f.weight.fill_(float(self.soft_tokens.pow(2).mean().sqrt()))

    def forward(self, cache: KVCache, splits: Tensor) -> Tensor:
        """Latents (B, N_B, N_L, d) for the augmentation points ``splits`` (B, N_B)."""
        B, nb = splits.shape
        T = cache[0][0].shape[2]
        group, split, pos = packed_layout(splits, T, self.n_latents)
        x = self.soft_tokens.expand(B, nb, -1, -1).reshape(B, nb * self.n_latents, -1)
        h, _ = run_blocks_cached(self.blocks, x, pos, AugmentationMask(group, split), past=cache)
        return self.ln_f(h).view(B, nb, self.n_latents, -1)


class PauseTokens(nn.Module):
    """Baseline: ``n_latents`` trainable embeddings appended at every split point, no coprocessor."""

    def __init__(self, decoder: TinyLM, n_latents: int, init_ids: Tensor | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.n_latents = n_latents
        self.soft_tokens = nn.Parameter(_soft_tokens(decoder, n_latents, init_ids, generator))  # (N_L, d)

    def forward(self, cache: KVCache, splits: Tensor) -> Tensor:
        """The same embeddings for every split: (B, N_B, N_L, d); the cache is not read."""
        B, nb = splits.shape
        return self.soft_tokens.expand(B, nb, -1, -1)


class ZeroWriter(nn.Module):
    """Control: ``n_latents`` zero vectors at every split point (no parameters, no content).

    It shifts the positions of the following tokens by ``n_latents`` exactly as a trained writer
    does, so it separates the cost of the *insertion* from the value of the latents' content.
    """

    def __init__(self, n_latents: int, d_model: int) -> None:
        super().__init__()
        if n_latents < 1 or d_model < 1:
            raise ValueError(f"n_latents and d_model must be >= 1, got {n_latents}, {d_model}")
        self.n_latents, self.d_model = n_latents, d_model

    def forward(self, cache: KVCache, splits: Tensor) -> Tensor:
        """Zeros (B, N_B, N_L, d); the cache is not read."""
        B, nb = splits.shape
        return cache[0][0].new_zeros(B, nb, self.n_latents, self.d_model)


class RepeatWriter(nn.Module):
    """Control: the embeddings of the last ``n_latents`` prefix tokens up to each split, repeated.

    The decoder then reads, after the split, a copy of the tokens it just read: in-distribution
    inputs that carry no new information (no parameters). Needs the token ids: call
    :meth:`set_ids` before each forward (``CacheAugmentedLM`` does).
    """

    def __init__(self, decoder: TinyLM, n_latents: int) -> None:
        super().__init__()
        if n_latents < 1:
            raise ValueError(f"n_latents must be >= 1, got {n_latents}")
        self.n_latents = n_latents
        self.embed = decoder.embed
        self.ids: Tensor | None = None

    def set_ids(self, ids: Tensor) -> None:
        self.ids = ids

    def forward(self, cache: KVCache, splits: Tensor) -> Tensor:
        """Embeddings of tokens ``p_j - N_L + 1 .. p_j`` (clamped at 0): (B, N_B, N_L, d)."""
        if self.ids is None:
            raise RuntimeError("RepeatWriter needs the token ids: call set_ids(ids) first")
        take = (splits[..., None] - self.n_latents + 1 + torch.arange(self.n_latents, device=splits.device)).clamp_min(0)
        return self.embed(self.ids.gather(1, take.flatten(1)).view_as(take)).detach()  # (B, N_B, N_L, d)


# ---------------------------------------------------------------------------------------------
# Frozen decoder + writer
# ---------------------------------------------------------------------------------------------
class CacheAugmentedLM(nn.Module):
    """A frozen RoPE :class:`~companion.nn.TinyLM` whose cache a latent writer may extend.

    ``writer`` is a :class:`Coprocessor`, a :class:`PauseTokens` or ``None`` (the frozen decoder
    alone). The decoder's parameters get ``requires_grad=False``; gradients still flow *through*
    it into the writer.
    """

    def __init__(self, decoder: TinyLM, writer: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(decoder, TinyLM) or decoder.cfg.pos != "rope":
            raise ValueError("decoder must be a companion.nn.TinyLM with pos='rope'")
        self.decoder = decoder.requires_grad_(False).eval()
        self.writer = writer

    @property
    def n_latents(self) -> int:
        return 0 if self.writer is None else self.writer.n_latents

    def forward(self, ids: Tensor) -> Tensor:
        """The coprocessor off: exactly the untouched decoder's logits (B, T, V)."""
        return self.decoder(ids)

    @torch.no_grad()
    def prefix_cache(self, ids: Tensor) -> tuple[Tensor, KVCache]:
        """Decoder logits (B, T, V) on the prefix and its per-layer cache (no gradient needed)."""
        d = self.decoder
        h, cache = run_blocks_cached(d.blocks, d.embed(ids), torch.arange(ids.shape[1], device=ids.device), CausalMask())
        return d.lm_head(d.ln_f(h)), cache

    def ahead_logits(self, ids: Tensor, splits: Tensor, n_ahead: int) -> Tensor:
        """Logits (B, N_B, n_ahead, V) for the ``n_ahead`` tokens after each split, all splits in one pass.

        Block ``j`` = [latents of ``p_j`` (N_L), tokens ``p_j+1 .. p_j+n_ahead-1``] packed after the
        prefix with :class:`AugmentationMask`; ahead token ``i`` is predicted by the slot before it
        (the last latent for ``i = 1``, or the split token itself when there are no latents).
        """
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.is_floating_point():
            raise ValueError(f"ids must be an integer tensor of shape (B, T), got {getattr(ids, 'shape', ids)!r}")
        if splits.ndim != 2 or splits.shape[0] != ids.shape[0]:
            raise ValueError(f"splits must have shape (B={ids.shape[0]}, N_B), got {tuple(splits.shape)}")
        if n_ahead < 1:
            raise ValueError(f"n_ahead must be >= 1, got {n_ahead}")
        B, T = ids.shape
        if int(splits.max()) + n_ahead >= T:
            raise ValueError(f"every split p needs p + n_ahead < T = {T}; got max split {int(splits.max())} "
                             f"with n_ahead={n_ahead}")
        d, nl = self.decoder, self.n_latents
        prefix_logits, cache = self.prefix_cache(ids)
        take = splits[..., None] + 1 + torch.arange(n_ahead - 1, device=ids.device)  # (B, N_B, n_ahead - 1)
        ahead_in = d.embed(ids.gather(1, take.flatten(1)).view_as(take))  # (B, N_B, n_ahead - 1, d)
        if isinstance(self.writer, RepeatWriter):
            self.writer.set_ids(ids)
        blocks = ahead_in if self.writer is None else torch.cat([self.writer(cache, splits), ahead_in], dim=2)
        first = prefix_logits.gather(1, splits[..., None].expand(-1, -1, prefix_logits.shape[-1]))[:, :, None]
        L = blocks.shape[2]
        if L == 0:  # frozen decoder, one ahead token: the split token's own prediction (B, N_B, 1, V)
            return first
        group, split, pos = packed_layout(splits, T, L)
        h, _ = run_blocks_cached(d.blocks, blocks.flatten(1, 2), pos, AugmentationMask(group, split), past=cache)
        logits = d.lm_head(d.ln_f(h)).view(B, splits.shape[1], L, -1)  # (B, N_B, L, V)
        return torch.cat([first, logits], dim=2) if nl == 0 else logits[:, :, nl - 1:]


def ahead_targets(ids: Tensor, splits: Tensor, n_ahead: int) -> Tensor:
    """The ``n_ahead`` tokens after each split: (B, N_B, n_ahead)."""
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.is_floating_point():
        raise ValueError(f"ids must be an integer tensor of shape (B, T), got {getattr(ids, 'shape', ids)!r}")
    if not isinstance(splits, torch.Tensor) or splits.ndim != 2 or splits.shape[0] != ids.shape[0]:
        raise ValueError(f"splits must have shape (B={ids.shape[0]}, N_B), got {getattr(splits, 'shape', splits)!r}")
    if n_ahead < 1 or (splits.numel() and int(splits.max()) + n_ahead >= ids.shape[1]):
        raise ValueError(f"n_ahead must be >= 1 with max split + n_ahead < T = {ids.shape[1]}, got n_ahead={n_ahead}")
    take = splits[..., None] + 1 + torch.arange(n_ahead, device=ids.device)
    return ids.gather(1, take.flatten(1)).view_as(take)


def ahead_loss(model: CacheAugmentedLM, ids: Tensor, splits: Tensor, n_ahead: int) -> Tensor:
    """Chapter eq. 2: mean cross-entropy of the ``n_ahead`` tokens after every split."""
    logits = model.ahead_logits(ids, splits, n_ahead)
    return F.cross_entropy(logits.flatten(0, 2), ahead_targets(ids, splits, n_ahead).flatten())


@torch.no_grad()
def ahead_metrics(model: CacheAugmentedLM, ids: Tensor, splits: Tensor, n_ahead: int) -> tuple[Tensor, Tensor]:
    """Cross-entropy (nats) and accuracy per ahead position, each (n_ahead,), averaged over rows and splits."""
    logits = model.ahead_logits(ids, splits, n_ahead)  # (B, N_B, n_ahead, V)
    y = ahead_targets(ids, splits, n_ahead)
    ce = F.cross_entropy(logits.permute(0, 3, 1, 2), y, reduction="none")  # (B, N_B, n_ahead)
    acc = (logits.argmax(-1) == y).float()
    return ce.mean(dim=(0, 1)), acc.mean(dim=(0, 1))


# ---------------------------------------------------------------------------------------------
# A task where the latents must add computation: multi-hop pointer chasing
# ---------------------------------------------------------------------------------------------
def pointer_vocab(n_symbols: int, max_hops: int = 2) -> dict[str, int]:
    """Token ids of :func:`pointer_chase_batch`: one token per link ``a -> b`` (``a * n + b``), then the
    ``n`` symbols, then one query marker per hop count. Keys: ``sym0``, ``marker0`` (marker of
    ``k`` hops is ``marker0 + k``) and ``vocab_size``."""
    if n_symbols < 3 or max_hops < 1:
        raise ValueError(f"need n_symbols >= 3 and max_hops >= 1, got {n_symbols}, {max_hops}")
    sym0 = n_symbols * n_symbols
    return {"sym0": sym0, "marker0": sym0 + n_symbols - 1, "vocab_size": sym0 + n_symbols + max_hops}


def pointer_chase_batch(batch: int, n_symbols: int, n_queries: int, hops: int, generator: torch.Generator,
                        max_hops: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Sequences of ``n_symbols`` links of a random cyclic permutation ``f``, then ``n_queries`` questions.

    Layout: the links ``a->f(a)`` in random order (one token each), then per question the
    marker of ``hops``, a symbol ``x`` and the answer :math:`f^{hops}(x)`. Since ``f`` is one
    cycle, :math:`f^k(x) \\ne x` for ``0 < k < n_symbols``. Returns ``ids`` (B, T), next-token
    targets ``y`` (B, T; ``-100`` except at the ``x`` positions, whose target is the answer) and
    the positions of the ``x`` tokens (B, n_queries), the augmentation points.
    """
    if batch < 1 or n_queries < 1:
        raise ValueError(f"batch and n_queries must be >= 1, got {batch}, {n_queries}")
    if not 1 <= hops <= max_hops or hops >= n_symbols:
        raise ValueError(f"hops must lie in [1, max_hops={max_hops}] and below n_symbols, got {hops}")
    voc = pointer_vocab(n_symbols, max_hops)
    order = torch.rand(batch, n_symbols, generator=generator).argsort(-1)
    f = torch.empty_like(order).scatter_(1, order, order.roll(-1, 1))  # one cycle through all symbols
    listed = torch.rand(batch, n_symbols, generator=generator).argsort(-1)
    links = listed * n_symbols + f.gather(1, listed)  # (B, n): the token of link a -> f(a)
    xs = torch.randint(0, n_symbols, (batch, n_queries), generator=generator)
    ans = xs
    for _ in range(hops):
        ans = f.gather(1, ans)
    marker = torch.full_like(xs, voc["marker0"] + hops)
    questions = torch.stack([marker, xs + voc["sym0"], ans + voc["sym0"]], -1).flatten(1)  # (B, 3 n_queries)
    ids = torch.cat([links, questions], 1)
    at = n_symbols + 1 + 3 * torch.arange(n_queries)  # positions of the x tokens
    y = torch.full_like(ids, -100)
    y[:, at] = ans + voc["sym0"]
    return ids, y, at.expand(batch, -1).contiguous()
