"""Attention masks as composable objects.

A mask answers one question: may query position ``q`` attend to key position ``k`` (in batch
row ``b``, head ``h``)? Every mask in the book -- causal, prefix-LM, sliding window, segment
(document packing), set-based prompting, key padding -- is a subclass of :class:`Mask` that

* evaluates a vectorised predicate ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor``
  (the FlexAttention convention; all four arguments are broadcastable integer tensors),
* carries the per-sequence tensors it needs in :attr:`Mask.tensors` (segment ids, prefix
  lengths, ...), so a kernel can evaluate the same predicate,
* composes with ``&``, ``|`` and ``~``,
* renders itself as a boolean matrix with :meth:`Mask.dense` (used by the reference attention
  and by tests) and as a block layout with :meth:`Mask.block_layout` (used by block-sparse
  kernels; closed-form in O(R·C) for the position and per-sequence masks, refined tile by tile
  where a composition is ambiguous; cached on the mask, keyed by its values).

Caches never outlive the values they were built from: every cache is keyed by
:meth:`Mask.state_key` (the mask's scalars and the identity and in-place version counter of every
tensor it holds), so changing ``mask.ids`` in place makes the next call recompute. The per-position
tensors are also copied when a mask is built, so changing the caller's own tensor afterwards does
not change the mask.

Positions: query ``i`` of ``nq`` queries sits at absolute position ``q_offset + i``. The default
``q_offset = nk - nq`` aligns the queries with the *end* of the keys, which is what decoding
against a KV cache needs (one new query at position ``nk - 1``) and equals ``0`` when
``nq == nk``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, Iterable

import torch

Tensor = torch.Tensor

# Block layout codes: a (query block, key block) tile is skipped, computed with the element
# mask, or computed without looking at the mask.
EMPTY, PARTIAL, FULL = 0, 1, 2
_UNSURE = 3  # internal: a tile whose class a closed form cannot decide; refined by evaluating it


def _as_long(x: Tensor | Iterable[int] | int, name: str, ndim: tuple[int, ...]) -> Tensor:
    """``x`` as an int64 tensor the mask owns (a copy: the caller may change its tensor afterwards)."""
    t = torch.as_tensor(x)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must hold integers, got dtype {t.dtype}")
    if t.ndim not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dims, got shape {tuple(t.shape)}")
    return t.detach().to(torch.long, copy=True)


class LRUCache:
    """A bounded least-recently-used map. ``put(key, value, keep)`` also holds ``keep`` (the tensors
    whose ``id`` is part of the key) so an id cannot be reused while its entry lives."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict = OrderedDict()

    def get(self, key: Hashable | None, default=None):
        if key is None or key not in self._data:
            return default
        self._data.move_to_end(key)
        return self._data[key][0]

    def put(self, key: Hashable | None, value, keep: tuple = ()) -> None:
        if key is None:  # uncacheable (e.g. inference-mode tensors have no version counter)
            return
        self._data[key] = (value, keep)
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key) -> bool:
        return key is not None and key in self._data

    def clear(self) -> None:
        self._data.clear()


def tensor_state(t: Tensor) -> tuple | None:
    """``(id, in-place version)`` of a tensor, or None where PyTorch keeps no version (inference mode)."""
    try:
        return (id(t), t._version)
    except RuntimeError:  # inference tensors do not track in-place updates: never cache on them
        return None


_SCALARS = (int, float, str, bool, type(None))


def _chunk(per_tile: int) -> int:
    """Tiles evaluated at once so that one chunk holds about 2^22 elements."""
    return max(1, (1 << 22) // max(per_tile, 1))


def _bounds(nq: int, nk: int, bq: int, bk: int, q_offset: int, device=None) -> tuple[Tensor, ...]:
    """First/last query position of every query tile ``(R, 1)`` and key position of every key tile ``(1, C)``."""
    r = torch.arange(-(-nq // bq), device=device)
    c = torch.arange(-(-nk // bk), device=device)
    q0 = q_offset + r * bq
    q1 = q_offset + torch.clamp((r + 1) * bq, max=nq) - 1
    k0 = c * bk
    k1 = torch.clamp((c + 1) * bk, max=nk) - 1
    return q0[:, None], q1[:, None], k0[None, :], k1[None, :]


def _codes(any_: Tensor, all_: Tensor, unsure: Tensor | None = None) -> Tensor:
    """int8 EMPTY / PARTIAL / FULL (/ unsure) from "some pair visible" and "every pair visible" (3-D)."""
    any_, all_ = torch.broadcast_tensors(any_, all_)
    out = torch.full(any_.shape, PARTIAL, dtype=torch.int8, device=any_.device)
    out[~any_] = EMPTY
    out[all_] = FULL
    if unsure is not None:
        out[unsure.expand(out.shape) & any_ & ~all_] = _UNSURE
    return out if out.ndim == 3 else out.unsqueeze(0)


def _block_stats(ids: Tensor, n: int, block: int, start: int, keep: Tensor | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Per tile of ``block`` positions from ``start`` (``n`` positions): min and max of ``ids`` where
    ``keep`` (default: everywhere), and whether any position was kept. ids: (B, L) -> (B, tiles)."""
    nb = -(-n // block)
    pos = start + torch.arange(nb * block, device=ids.device)
    inside = (pos < start + n)
    vals = ids[:, pos.clamp(max=ids.shape[1] - 1)]  # (B, nb*block)
    ok = inside[None].expand_as(vals) if keep is None else (keep[:, pos.clamp(max=ids.shape[1] - 1)] & inside[None])
    big = torch.iinfo(torch.long).max
    lo = torch.where(ok, vals, big).view(-1, nb, block).amin(-1)
    hi = torch.where(ok, vals, -big).view(-1, nb, block).amax(-1)
    return lo, hi, ok.view(-1, nb, block).any(-1)


def _sorted_rows(ids: Tensor, keep: Tensor | None = None) -> bool:
    """True when ``ids`` (the kept entries) are non-decreasing along every row."""
    for row in range(ids.shape[0]):
        v = ids[row] if keep is None else ids[row][keep[row]]
        if v.numel() > 1 and bool((v[1:] < v[:-1]).any()):
            return False
    return True
LAYOUT_CACHE_SIZE = 8  # layouts kept per mask (each distinct (nq, nk, tile shape, q_offset) is one)


class Mask:
    """Base class: a boolean predicate over (batch, head, query position, key position)."""

    def __init__(self) -> None:
        self._layout_cache = LRUCache(LAYOUT_CACHE_SIZE)

    # -- cache keys ------------------------------------------------------------------------
    def state_key(self) -> tuple | None:
        """A hashable key of everything the predicate reads, or None when it cannot be cached.

        Built from the mask's type, its scalar attributes, the ``(id, version)`` of every tensor
        attribute (PyTorch bumps a tensor's version on every in-place change, views included) and,
        for compositions, the keys of the parts. A cache keyed by it cannot return a result
        computed from values the mask no longer holds.
        """
        out: list = [type(self)]
        for name, v in sorted(vars(self).items()):
            if name.startswith("_layout_cache"):
                continue
            if isinstance(v, Tensor):
                st = tensor_state(v)
                if st is None:
                    return None
                out.append((name, st))
            elif isinstance(v, _SCALARS):
                out.append((name, v))
            elif isinstance(v, tuple) and all(isinstance(p, Mask) for p in v):
                keys = tuple(p.state_key() for p in v)
                if any(k is None for k in keys):
                    return None
                out.append((name, keys))
            else:
                out.append((name, id(v)))  # other attribute types: by identity only
        return tuple(out)

    def state_tensors(self) -> tuple[Tensor, ...]:
        """Every tensor :meth:`state_key` refers to (held by caches so their ids stay unique)."""
        out: list[Tensor] = []
        for v in vars(self).values():
            if isinstance(v, Tensor):
                out.append(v)
            elif isinstance(v, tuple):
                for p in v:
                    if isinstance(p, Mask):
                        out.extend(p.state_tensors())
        return tuple(out)

    # -- the predicate -------------------------------------------------------------------
    def mask_mod(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        """True where query ``q_idx`` may attend to key ``kv_idx``. Arguments broadcast."""
        raise NotImplementedError

    @property
    def tensors(self) -> dict[str, Tensor]:
        """Per-sequence tensors the predicate reads (empty for position-only masks)."""
        return {}

    @property
    def batch_size(self) -> int:
        """Number of batch rows the mask describes; 1 means "the same for every row"."""
        sizes = [t.shape[0] for t in self.tensors.values() if t.ndim == 2]
        return max(sizes, default=1)

    @property
    def min_length(self) -> int:
        """The smallest sequence length the per-sequence tensors cover (0: no constraint)."""
        lengths = [t.shape[-1] for t in self.tensors.values() if t.ndim >= 1 and t.shape[-1] > 0 and self._is_positional(t)]
        return min(lengths, default=0)

    def _is_positional(self, t: Tensor) -> bool:  # overridden by masks with per-row scalars
        return True

    # -- composition -----------------------------------------------------------------------
    def __and__(self, other: "Mask") -> "Mask":
        return AndMask(self, other)

    def __or__(self, other: "Mask") -> "Mask":
        return OrMask(self, other)

    def __invert__(self) -> "Mask":
        return NotMask(self)

    # -- materialisation -------------------------------------------------------------------
    def dense(self, nq: int, nk: int | None = None, *, q_offset: int | None = None,
              device: torch.device | str | None = None) -> Tensor:
        """Boolean matrix of shape ``(batch_size, nq, nk)``: True = may attend.

        ``q_offset`` is the absolute position of the first query (default ``nk - nq``).
        """
        nk = nq if nk is None else nk
        q_offset = self._check_cover(nq, nk, q_offset)
        dev = device if device is not None else self._device()
        bsz = self.batch_size
        b = torch.arange(bsz, device=dev).view(bsz, 1, 1)
        h = torch.zeros(1, 1, 1, dtype=torch.long, device=dev)
        q = (q_offset + torch.arange(nq, device=dev)).view(1, nq, 1)
        k = torch.arange(nk, device=dev).view(1, 1, nk)
        out = self.mask_mod(b, h, q, k)
        return out.expand(bsz, nq, nk).to(torch.bool)

    def block_layout(self, nq: int, nk: int | None = None, block_q: int = 64, block_k: int = 64,
                     *, q_offset: int | None = None) -> Tensor:
        """Tile classification ``(batch_size, ceil(nq/block_q), ceil(nk/block_k))`` int8.

        Each entry is :data:`EMPTY` (no visible pair: skip the tile), :data:`FULL` (every pair
        visible: no element mask needed) or :data:`PARTIAL`. Cached per argument tuple and
        :meth:`state_key`, so a mask reused across layers and calls is analysed once, and a mask
        whose tensors changed in place is analysed again.
        """
        nk = nq if nk is None else nk
        if block_q < 1 or block_k < 1:
            raise ValueError(f"block_q and block_k must be >= 1, got {block_q}, {block_k}")
        if not isinstance(getattr(self, "_layout_cache", None), LRUCache):  # a subclass that skipped __init__
            self._layout_cache = LRUCache(LAYOUT_CACHE_SIZE)
        state = self.state_key()
        key = None if state is None else (nq, nk, block_q, block_k, q_offset, state)
        layout = self._layout_cache.get(key)
        if layout is None:
            layout = self._compute_layout(nq, nk, block_q, block_k, q_offset)
            self._layout_cache.put(key, layout, self.state_tensors())
        return layout

    def _compute_layout(self, nq: int, nk: int, block_q: int, block_k: int, q_offset: int | None) -> Tensor:
        """Closed-form tile codes where the mask has them, the unsure tiles evaluated; else a dense render."""
        q_offset = self._check_cover(nq, nk, q_offset)
        codes = self.tile_codes(nq, nk, block_q, block_k, q_offset)
        if codes is None:
            return self.dense_block_layout(nq, nk, block_q, block_k, q_offset=q_offset)
        codes = codes.expand(self.batch_size, *codes.shape[1:]).clone() if codes.shape[0] == 1 else codes.clone()
        unsure = (codes == _UNSURE).any(0).nonzero()  # (T, 2) tiles some batch row cannot decide
        for lo in range(0, unsure.shape[0], _chunk(self.batch_size * block_q * block_k)):
            r, c = unsure[lo:lo + _chunk(self.batch_size * block_q * block_k)].unbind(1)
            vis, valid = self.tile_visibility(None, r, c, block_q, block_k, nq, nk, q_offset)  # (B, T, bq, bk)
            seen, size = vis.sum((2, 3)), valid.sum((1, 2))[None]
            code = torch.full_like(seen, PARTIAL, dtype=torch.int8)
            code[seen == 0] = EMPTY
            code[seen == size] = FULL
            codes[:, r, c] = code.to(codes.device)
        return codes

    def dense_block_layout(self, nq: int, nk: int | None = None, block_q: int = 64, block_k: int = 64,
                           *, q_offset: int | None = None) -> Tensor:
        """:meth:`block_layout` by rendering the whole mask densely (O(nq·nk)); the fallback and the check."""
        nk = nq if nk is None else nk
        d = self.dense(nq, nk, q_offset=q_offset)  # (B, nq, nk)
        bsz = d.shape[0]
        nbq, nbk = -(-nq // block_q), -(-nk // block_k)
        padded = torch.zeros(bsz, nbq * block_q, nbk * block_k, dtype=torch.int32, device=d.device)
        valid = torch.zeros_like(padded)
        padded[:, :nq, :nk] = d.int()
        valid[:, :nq, :nk] = 1
        tiles = padded.view(bsz, nbq, block_q, nbk, block_k).sum(dim=(2, 4))
        sizes = valid.view(bsz, nbq, block_q, nbk, block_k).sum(dim=(2, 4))
        layout = torch.full_like(tiles, PARTIAL, dtype=torch.int8)
        layout[tiles == 0] = EMPTY
        layout[(tiles == sizes) & (sizes > 0)] = FULL
        return layout

    def _check_cover(self, nq: int, nk: int, q_offset: int | None) -> int:
        """Check the sizes and that the mask's tensors cover them; return ``q_offset`` (default ``nk - nq``)."""
        if nq < 0 or nk < 0:
            raise ValueError(f"nq and nk must be >= 0, got nq={nq}, nk={nk}")
        q_offset = nk - nq if q_offset is None else q_offset
        if q_offset < 0:
            raise ValueError(f"q_offset must be >= 0 (got {q_offset}); pass it when nq > nk")
        need = max(q_offset + nq, nk)
        if self.min_length and need > self.min_length:
            raise ValueError(
                f"mask tensors cover {self.min_length} positions but the attention needs {need} "
                f"(nq={nq}, nk={nk}, q_offset={q_offset})"
            )
        return q_offset

    # -- closed-form tile classification ----------------------------------------------------
    def tile_codes(self, nq: int, nk: int, block_q: int, block_k: int, q_offset: int) -> Tensor | None:
        """``(1 or B, R, C)`` int8 tile codes in O(R·C) without rendering the mask, or None (no closed form).

        Codes are EMPTY / PARTIAL / FULL where decided, and an internal "unsure" code where only
        evaluating the tile can tell (then :meth:`block_layout` evaluates just those tiles).
        """
        return None

    def tile_visibility(self, b: Tensor | None, r: Tensor, c: Tensor, block_q: int, block_k: int, nq: int, nk: int,
                        q_offset: int) -> tuple[Tensor, Tensor]:
        """The mask on tiles ``(r[t], c[t])``: ``(visible, valid)`` bool, positions past the ends invalid.

        ``b`` is each tile's batch row ``(T,)`` -> ``(T, block_q, block_k)``; None -> every row, ``(B, T, bq, bk)``.
        Evaluated on the mask's device; costs ``T · block_q · block_k``, not ``nq · nk``.
        """
        dev = self._device()
        r, c = r.to(dev).long(), c.to(dev).long()
        qi = r[:, None, None] * block_q + torch.arange(block_q, device=dev)[None, :, None]  # (T, bq, 1)
        ki = c[:, None, None] * block_k + torch.arange(block_k, device=dev)[None, None, :]  # (T, 1, bk)
        valid = (qi < nq) & (ki < nk)  # (T, bq, bk)
        q = q_offset + qi.clamp(max=max(nq - 1, 0))
        k = ki.clamp(max=max(nk - 1, 0))
        h = torch.zeros(1, dtype=torch.long, device=dev)
        if b is None:
            bb = torch.arange(self.batch_size, device=dev).view(-1, 1, 1, 1)
            vis = self.mask_mod(bb, h, q[None], k[None])
            vis = vis.expand(self.batch_size, *valid.shape) & valid
            return vis, valid
        vis = self.mask_mod(b.to(dev).long().view(-1, 1, 1), h, q, k) & valid
        return vis, valid

    def _device(self) -> torch.device:
        for t in self.tensors.values():
            return t.device
        return torch.device("cpu")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FullMask(Mask):
    """Every query sees every key (bidirectional attention)."""

    def mask_mod(self, b, h, q_idx, kv_idx):
        return torch.ones_like(q_idx - kv_idx, dtype=torch.bool)

    def tile_codes(self, nq, nk, block_q, block_k, q_offset):
        q0, q1, k0, k1 = _bounds(nq, nk, block_q, block_k, q_offset)
        return _codes(torch.ones_like(q0 <= k0), torch.ones_like(q0 <= k0))


class CausalMask(Mask):
    """Query at position ``q`` sees keys at positions ``k <= q``."""

    def mask_mod(self, b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    def tile_codes(self, nq, nk, block_q, block_k, q_offset):
        q0, q1, k0, k1 = _bounds(nq, nk, block_q, block_k, q_offset)
        return _codes(k0 <= q1, k1 <= q0)


class SlidingWindowMask(Mask):
    """Causal attention over the last ``window`` positions, the query included: ``q - window < k <= q``."""

    def __init__(self, window: int) -> None:
        super().__init__()
        if int(window) < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = int(window)

    def mask_mod(self, b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < self.window)

    def tile_codes(self, nq, nk, block_q, block_k, q_offset):
        # q - k takes every integer in [q0 - k1, q1 - k0] on a tile; visible: 0 <= q - k < window
        q0, q1, k0, k1 = _bounds(nq, nk, block_q, block_k, q_offset)
        return _codes((q1 - k0 >= 0) & (q0 - k1 < self.window), (q0 - k1 >= 0) & (q1 - k0 < self.window))

    def __repr__(self) -> str:
        return f"SlidingWindowMask(window={self.window})"


class _PerRowScalars(Mask):
    """Helper base for masks with one integer per batch row (e.g. prefix lengths)."""

    def _is_positional(self, t: Tensor) -> bool:
        return False

    @property
    def batch_size(self) -> int:
        return max((t.shape[0] for t in self.tensors.values()), default=1)


class PrefixLMMask(_PerRowScalars):
    """Prefix-LM: keys in the prefix (``k < prefix_len``) are visible to all queries, the rest causally.

    ``prefix_len`` is an int (same for every row) or a tensor of shape ``(B,)``.
    """

    def __init__(self, prefix_len: int | Tensor) -> None:
        super().__init__()
        p = _as_long(prefix_len, "prefix_len", (0, 1)).reshape(-1)
        if (p < 0).any():
            raise ValueError(f"prefix_len must be >= 0, got {p.tolist()}")
        self.prefix_len = p  # (B,) or (1,)

    @property
    def tensors(self) -> dict[str, Tensor]:
        return {"prefix_len": self.prefix_len}

    def mask_mod(self, b, h, q_idx, kv_idx):
        p = self.prefix_len.to(q_idx.device)[b if self.prefix_len.numel() > 1 else torch.zeros_like(b)]
        return (kv_idx <= q_idx) | (kv_idx < p)

    def tile_codes(self, nq, nk, block_q, block_k, q_offset):
        q0, q1, k0, k1 = _bounds(nq, nk, block_q, block_k, q_offset)
        p = self.prefix_len.cpu().view(-1, 1, 1)  # (B, 1, 1)
        return _codes((k0 <= q1) | (k0 < p), (k1 < p) | (k1 <= q0))

    def __repr__(self) -> str:
        return f"PrefixLMMask(prefix_len={self.prefix_len.tolist()})"


class KeyPaddingMask(_PerRowScalars):
    """Keys at positions ``k >= lengths[b]`` (right padding) are invisible."""

    def __init__(self, lengths: int | Tensor) -> None:
        super().__init__()
        n = _as_long(lengths, "lengths", (0, 1)).reshape(-1)
        if (n < 0).any():
            raise ValueError(f"lengths must be >= 0, got {n.tolist()}")
        self.lengths = n

    @property
    def tensors(self) -> dict[str, Tensor]:
        return {"lengths": self.lengths}

    def mask_mod(self, b, h, q_idx, kv_idx):
        n = self.lengths.to(kv_idx.device)[b if self.lengths.numel() > 1 else torch.zeros_like(b)]
        return kv_idx < n

    def tile_codes(self, nq, nk, block_q, block_k, q_offset):
        q0, q1, k0, k1 = _bounds(nq, nk, block_q, block_k, q_offset)
        n = self.lengths.cpu().view(-1, 1, 1)  # (B, 1, 1)
        return _codes((k0 < n) & (q0 == q0), (k1 < n) & (q0 == q0))

    def __repr__(self) -> str:
        return f"KeyPaddingMask(lengths={self.lengths.tolist()})"


class _PerPosition(Mask):
    """Helper base for masks with one integer per position: ids of shape ``(N,)`` or ``(B, N)``."""

    def __init__(self, ids: Tensor | Iterable[int], name: str) -> None:
        super().__init__()
        t = _as_long(ids, name, (1, 2))
        self.ids = t if t.ndim == 2 else t.unsqueeze(0)  # (B, N)
        self._name = name

    @property
    def tensors(self) -> dict[str, Tensor]:
        return {self._name: self.ids}

    def _lookup(self, b: Tensor, pos: Tensor) -> Tensor:
        ids = self.ids.to(pos.device)
        row = b if ids.shape[0] > 1 else torch.zeros_like(b)
        return ids[row, pos]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name}: shape {tuple(self.ids.shape)})"


class SegmentMask(_PerPosition):
    """Document/packing mask: a query sees only keys of its own segment (``seg[q] == seg[k]``).

    Combine with :class:`CausalMask` for packed causal LM training.
    """

    def __init__(self, segment_ids: Tensor | Iterable[int]) -> None:
        super().__init__(segment_ids, "segment_ids")

    def mask_mod(self, b, h, q_idx, kv_idx):
        return self._lookup(b, q_idx) == self._lookup(b, kv_idx)

    def tile_codes(self, nq, nk, block_q, block_k, q_offset):
        ids = self.ids.cpu()
        qlo, qhi, _ = _block_stats(ids, nq, block_q, q_offset)  # (B, R)
        klo, khi, _ = _block_stats(ids, nk, block_k, 0)  # (B, C)
        qlo, qhi, klo, khi = qlo[:, :, None], qhi[:, :, None], klo[:, None, :], khi[:, None, :]
        overlap = (qlo <= khi) & (klo <= qhi)
        every = (qlo == qhi) & (klo == khi) & (qlo == klo)
        # sorted ids (packed documents): overlapping value ranges share an id, so the tile is decided
        return _codes(overlap, every, None if _sorted_rows(ids) else torch.ones_like(overlap))


class SetMask(_PerPosition):
    """Set-based prompting mask: tokens of two *different* set elements never see each other.

    ``set_ids[t]`` is the index of the set element holding token ``t``, or ``-1`` for tokens
    outside the set (prefix, suffix). Visible: ``s[q] < 0 or s[k] < 0 or s[q] == s[k]``.
    The paper's mask is ``CausalMask() & SetMask(set_ids)``.
    """

    def __init__(self, set_ids: Tensor | Iterable[int]) -> None:
        super().__init__(set_ids, "set_ids")

    def mask_mod(self, b, h, q_idx, kv_idx):
        sq, sk = self._lookup(b, q_idx), self._lookup(b, kv_idx)
        return (sq < 0) | (sk < 0) | (sq == sk)

    def tile_codes(self, nq, nk, block_q, block_k, q_offset):
        ids = self.ids.cpu()
        member = ids >= 0
        qlo, qhi, q_any = _block_stats(ids, nq, block_q, q_offset, member)  # over set members only
        klo, khi, k_any = _block_stats(ids, nk, block_k, 0, member)
        _, _, q_out = _block_stats(ids, nq, block_q, q_offset, ~member)  # a token outside the set
        _, _, k_out = _block_stats(ids, nk, block_k, 0, ~member)
        qlo, qhi, q_any, q_out = qlo[:, :, None], qhi[:, :, None], q_any[:, :, None], q_out[:, :, None]
        klo, khi, k_any, k_out = klo[:, None, :], khi[:, None, :], k_any[:, None, :], k_out[:, None, :]
        overlap = q_any & k_any & (qlo <= khi) & (klo <= qhi)
        some = q_out | k_out | overlap
        every = ~q_any | ~k_any | ((qlo == qhi) & (klo == khi) & (qlo == klo))
        unsure = None if _sorted_rows(ids, member) else (~q_out & ~k_out & overlap)
        return _codes(some, every, unsure)


class DenseMask(Mask):
    """An explicit boolean matrix ``(nq, nk)`` or ``(B, nq, nk)``: True = may attend.

    Row ``i`` is the query at absolute position ``max(nk - nq, 0) + i`` (bottom-right aligned, like
    every mask here), column ``j`` the key at position ``j``; so ``DenseMask(m).dense(nq, nk)``
    returns ``m`` itself.
    """

    def __init__(self, matrix: Tensor) -> None:
        super().__init__()
        m = torch.as_tensor(matrix)  # not copied (it may be large): caches follow its version counter
        if m.dtype != torch.bool:
            raise ValueError(f"matrix must be a bool tensor, got dtype {m.dtype}")
        if m.ndim not in (2, 3):
            raise ValueError(f"matrix must have shape (nq, nk) or (B, nq, nk), got {tuple(m.shape)}")
        self.matrix = m if m.ndim == 3 else m.unsqueeze(0)  # (B, nq, nk)
        self.row_offset = max(self.matrix.shape[-1] - self.matrix.shape[-2], 0)

    @property
    def tensors(self) -> dict[str, Tensor]:
        return {"matrix": self.matrix}

    @property
    def batch_size(self) -> int:
        return self.matrix.shape[0]

    @property
    def min_length(self) -> int:
        return 0

    def mask_mod(self, b, h, q_idx, kv_idx):
        m = self.matrix.to(q_idx.device)
        nq, nk = m.shape[-2:]
        rows = q_idx - self.row_offset
        if (rows < 0).any() or (rows >= nq).any() or (kv_idx >= nk).any():
            raise ValueError(f"DenseMask covers query positions {self.row_offset}..{self.row_offset + nq - 1} "
                             f"and {nk} keys; asked for positions outside that")
        row = b if m.shape[0] > 1 else torch.zeros_like(b)
        return m[row, rows, kv_idx]


class _Composite(Mask):
    def __init__(self, *parts: Mask) -> None:
        super().__init__()
        for p in parts:
            if not isinstance(p, Mask):
                raise TypeError(f"masks compose only with masks, got {type(p).__name__}")
        self.parts = parts
        sizes = {p.batch_size for p in parts} - {1}
        if len(sizes) > 1:
            raise ValueError(f"cannot combine masks with different batch sizes {sorted(sizes)}")

    @property
    def tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for i, p in enumerate(self.parts):
            out.update({f"{i}.{k}": v for k, v in p.tensors.items()})
        return out

    @property
    def batch_size(self) -> int:
        return max(p.batch_size for p in self.parts)

    @property
    def min_length(self) -> int:
        return min((p.min_length for p in self.parts if p.min_length), default=0)

    def __repr__(self) -> str:
        sep = {AndMask: " & ", OrMask: " | "}.get(type(self), ", ")
        return "(" + sep.join(map(repr, self.parts)) + ")"


class AndMask(_Composite):
    """Visible where every part is visible."""

    def tile_codes(self, nq, nk, block_q, block_k, q_offset):
        parts = [p.tile_codes(nq, nk, block_q, block_k, q_offset) for p in self.parts]
        if any(c is None for c in parts):
            return None
        parts = torch.broadcast_tensors(*parts)
        stack = torch.stack(parts)  # (P, B, R, C)
        not_full = (stack != FULL).sum(0)
        single = torch.where(stack == FULL, -1, stack.to(torch.int16)).max(0).values  # the one non-FULL code
        out = torch.where(not_full == 0, FULL, torch.where(not_full == 1, single, _UNSURE))
        out[(stack == EMPTY).any(0)] = EMPTY  # one EMPTY part decides
        return out.to(torch.int8)

    def mask_mod(self, b, h, q_idx, kv_idx):
        out = self.parts[0].mask_mod(b, h, q_idx, kv_idx)
        for p in self.parts[1:]:
            out = out & p.mask_mod(b, h, q_idx, kv_idx)
        return out


class OrMask(_Composite):
    """Visible where any part is visible."""

    def tile_codes(self, nq, nk, block_q, block_k, q_offset):
        parts = [p.tile_codes(nq, nk, block_q, block_k, q_offset) for p in self.parts]
        if any(c is None for c in parts):
            return None
        stack = torch.stack(torch.broadcast_tensors(*parts))  # (P, B, R, C)
        not_empty = (stack != EMPTY).sum(0)
        single = torch.where(stack == EMPTY, -1, stack.to(torch.int16)).max(0).values  # the one non-EMPTY code
        out = torch.where(not_empty == 0, EMPTY, torch.where(not_empty == 1, single, _UNSURE))
        out[(stack == FULL).any(0)] = FULL  # one FULL part decides
        return out.to(torch.int8)

    def mask_mod(self, b, h, q_idx, kv_idx):
        out = self.parts[0].mask_mod(b, h, q_idx, kv_idx)
        for p in self.parts[1:]:
            out = out | p.mask_mod(b, h, q_idx, kv_idx)
        return out


class NotMask(_Composite):
    """Visible where the part is hidden."""

    def tile_codes(self, nq, nk, block_q, block_k, q_offset):
        c = self.parts[0].tile_codes(nq, nk, block_q, block_k, q_offset)
        if c is None:
            return None
        out = c.clone()
        out[c == EMPTY] = FULL
        out[c == FULL] = EMPTY
        return out

    def mask_mod(self, b, h, q_idx, kv_idx):
        return ~self.parts[0].mask_mod(b, h, q_idx, kv_idx)

    def __repr__(self) -> str:
        return f"~{self.parts[0]!r}"


def causal() -> CausalMask:
    """Shorthand for :class:`CausalMask`."""
    return CausalMask()


def prefix_lm(prefix_len: int | Tensor) -> PrefixLMMask:
    """Shorthand for :class:`PrefixLMMask`."""
    return PrefixLMMask(prefix_len)


def sliding_window(window: int) -> SlidingWindowMask:
    """Shorthand for :class:`SlidingWindowMask`."""
    return SlidingWindowMask(window)


def segments(segment_ids: Tensor | Iterable[int], causal_too: bool = True) -> Mask:
    """Packed-document mask; causal within each segment unless ``causal_too=False``."""
    m = SegmentMask(segment_ids)
    return CausalMask() & m if causal_too else m


def set_based(set_ids: Tensor | Iterable[int]) -> Mask:
    """The set-based prompting mask: causal, and set elements blind to each other."""
    return CausalMask() & SetMask(set_ids)


class TreeMask(Mask):
    """Speculative-decoding tree: draft node ``i`` sees the context and its own ancestors only.

    The ``T`` nodes sit at absolute positions ``start .. start + T - 1`` after a shared context
    (positions ``< start``, attended causally). ``parents[i]`` is the node index of node ``i``'s
    parent, or ``-1`` for a node that hangs directly off the context; parents precede their
    children (``parents[i] < i``). ``parents`` has shape ``(T,)`` or ``(B, T)``. Positions after
    the tree (``>= start + T``) see everything before them. Visible:
    ``k <= q and (k or q outside the tree, or node(k) is node(q) or an ancestor of it)``.
    """

    def __init__(self, parents: Tensor | Iterable[int], start: int) -> None:
        super().__init__()
        p = _as_long(parents, "parents", (1, 2))
        p = p if p.ndim == 2 else p.unsqueeze(0)  # (B, T)
        idx = torch.arange(p.shape[-1])
        if p.numel() and ((p < -1).any() or (p >= idx).any()):
            raise ValueError(f"parents[i] must lie in [-1, i) (parents before children), got {p.tolist()}")
        if int(start) < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.parents = p
        self.start = int(start)
        # ancestors[b, i, j]: node j is node i or one of its ancestors; one pointer hop per step.
        bsz, t = p.shape
        anc = torch.eye(t, dtype=torch.bool).expand(bsz, t, t).clone()  # (B, T, T)
        cur = p.clone()
        for _ in range(t):
            live = cur >= 0
            if not live.any():
                break
            b, i = live.nonzero(as_tuple=True)
            anc[b, i, cur[b, i]] = True
            cur = torch.where(live, p.gather(1, cur.clamp_min(0)), cur)
        self.ancestors = anc

    @property
    def tensors(self) -> dict[str, Tensor]:
        return {"parents": self.parents}

    def _is_positional(self, t: Tensor) -> bool:  # node indices, not absolute positions
        return False

    def mask_mod(self, b, h, q_idx, kv_idx):
        anc = self.ancestors.to(q_idx.device)
        t = anc.shape[-1]
        qi, ki = q_idx - self.start, kv_idx - self.start
        q_in, k_in = (qi >= 0) & (qi < t), (ki >= 0) & (ki < t)
        row = b if anc.shape[0] > 1 else torch.zeros_like(b)
        related = anc[row, qi.clamp(0, max(t - 1, 0)), ki.clamp(0, max(t - 1, 0))] if t else torch.zeros_like(q_in)
        return (kv_idx <= q_idx) & (~(q_in & k_in) | related)

    def tile_codes(self, nq, nk, block_q, block_k, q_offset):
        # causal outside the tree's square of positions; tiles meeting it in both axes are evaluated
        q0, q1, k0, k1 = _bounds(nq, nk, block_q, block_k, q_offset)
        lo, hi = self.start, self.start + self.parents.shape[-1] - 1
        square = (q1 >= lo) & (q0 <= hi) & (k1 >= lo) & (k0 <= hi)
        out = _codes(k0 <= q1, k1 <= q0)
        out[square.expand(out.shape) & (out != EMPTY)] = _UNSURE  # even causally FULL tiles: the tree hides pairs
        return out

    def __repr__(self) -> str:
        return f"TreeMask(nodes={self.parents.shape[-1]}, start={self.start})"


class BlockSelectMask(Mask):
    """Block retrieval / block sampling: query chunk ``c`` sees key block ``j`` iff ``selected[c, j]``.

    ``selected`` is a bool tensor ``(n_chunks, n_blocks)`` or ``(B, n_chunks, n_blocks)``;
    query position ``q`` belongs to chunk ``q // chunk_size`` and key position ``k`` to block
    ``k // block_size``. InfLLM's retrieved memory units and PrFlashAttention's sampled blocks
    are both this mask (usually ``&``-ed with :class:`CausalMask` and ``|``-ed with a window).
    """

    def __init__(self, selected: Tensor, chunk_size: int, block_size: int) -> None:
        super().__init__()
        s = torch.as_tensor(selected).detach().clone()  # small; the mask owns its copy
        if s.dtype != torch.bool:
            raise ValueError(f"selected must be a bool tensor, got dtype {s.dtype}")
        if s.ndim not in (2, 3):
            raise ValueError(f"selected must have shape (n_chunks, n_blocks) or (B, n_chunks, n_blocks), "
                             f"got {tuple(s.shape)}")
        if int(chunk_size) < 1 or int(block_size) < 1:
            raise ValueError(f"chunk_size and block_size must be >= 1, got {chunk_size}, {block_size}")
        self.selected = s if s.ndim == 3 else s.unsqueeze(0)  # (B, C, J)
        self.chunk_size, self.block_size = int(chunk_size), int(block_size)

    @property
    def tensors(self) -> dict[str, Tensor]:
        return {"selected": self.selected}

    @property
    def batch_size(self) -> int:
        return self.selected.shape[0]

    @property
    def min_length(self) -> int:
        return max(1, min(self.selected.shape[1] * self.chunk_size, self.selected.shape[2] * self.block_size))

    def mask_mod(self, b, h, q_idx, kv_idx):
        s = self.selected.to(q_idx.device)
        row = b if s.shape[0] > 1 else torch.zeros_like(b)
        return s[row, q_idx // self.chunk_size, kv_idx // self.block_size]

    def tile_codes(self, nq, nk, block_q, block_k, q_offset):
        # count the selected (chunk, block) cells under each tile with a 2-D prefix sum
        q0, q1, k0, k1 = _bounds(nq, nk, block_q, block_k, q_offset)
        sel = self.selected.cpu().long()
        s = torch.zeros(sel.shape[0], sel.shape[1] + 1, sel.shape[2] + 1, dtype=torch.long)
        s[:, 1:, 1:] = sel.cumsum(1).cumsum(2)
        c0, c1 = (q0 // self.chunk_size).clamp(max=sel.shape[1] - 1), (q1 // self.chunk_size).clamp(max=sel.shape[1] - 1)
        j0, j1 = (k0 // self.block_size).clamp(max=sel.shape[2] - 1), (k1 // self.block_size).clamp(max=sel.shape[2] - 1)
        cnt = s[:, c1 + 1, j1 + 1] - s[:, c0, j1 + 1] - s[:, c1 + 1, j0] + s[:, c0, j0]  # (B, R, C)
        return _codes(cnt > 0, cnt == (c1 - c0 + 1) * (j1 - j0 + 1))

    def __repr__(self) -> str:
        return (f"BlockSelectMask(chunks={self.selected.shape[1]}x{self.chunk_size}, "
                f"blocks={self.selected.shape[2]}x{self.block_size})")
