"""One block-sparse flash-attention kernel for every mask in the book.

The anatomy of every op in :mod:`companion.kernels`:

1. **reference** -- :func:`reference`, i.e. :func:`companion.nn.attention.reference_attention`
   (explicit scores, mask, softmax); the one source of truth.
2. **mask description** -- :func:`describe_mask` turns a :class:`~companion.nn.masks.Mask` into a
   :class:`KernelMask`: either an *in-kernel predicate* (causal, sliding window, prefix-LM, key
   padding, segment ids, set ids and their conjunctions; eq. (7) of the chapter) or ``bits``:
   the element mask of every PARTIAL tile is read from memory (trees, block selection, any
   other composition, explicit boolean matrices).
3. **block plan** -- :func:`block_plan` classifies every ``(block_m, block_n)`` tile as EMPTY,
   PARTIAL or FULL (``Mask.block_layout``) and lists, per query block, its FULL and PARTIAL key
   blocks (per key block its query blocks, for the backward pass). Cached per mask and shape,
   so a mask reused across calls and layers is analysed once.
4. **kernels** -- ``_fwd_kernel`` (online softmax over the listed tiles, optionally split over
   the key axis for decoding), ``_bwd_dkdv_kernel`` and ``_bwd_dq_kernel`` (FlashAttention-2
   backward, recomputing the probabilities from the saved log-sum-exp).
5. **host wrapper + autograd** -- :func:`triton_attention` validates inputs and launches;
   ``_FlashAttention`` connects forward and backward.
6. **dispatch** -- :func:`attention` with ``impl="auto" | "triton" | "torch"``.

Shapes: ``q`` is ``(B, H, Nq, D)``, ``k``/``v`` are ``(B, Hkv, Nk, D)`` with ``Hkv`` dividing ``H``.
Query ``i`` sits at absolute position ``Nk - Nq + i`` (the masks' bottom-right convention). A
query that sees no key returns zeros. Scores are kept in base 2 inside the kernels
(``s = q·k · scale · log2(e)``, ``exp2``), so the saved log-sum-exp is ``log2`` of the softmax
denominator.
"""

from __future__ import annotations

import importlib
import math
import os
import weakref
from dataclasses import dataclass, field

import torch

from ..nn.attention import check_qkv, dense_mask_for, reference_attention
from ..nn.masks import (
    EMPTY, FULL, PARTIAL, AndMask, CausalMask, DenseMask, FullMask, KeyPaddingMask, LRUCache, Mask, PrefixLMMask,
    SegmentMask, SetMask, SlidingWindowMask, tensor_state,
)

Tensor = torch.Tensor
IMPLS = ("auto", "triton", "torch")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634
INSTALL_HINT = ("the Triton kernel needs the `triton` package, which is not importable here ({err}); "
                "install it with `pip install triton` (Linux; on macOS/Windows there are no wheels: "
                "use impl='torch' or impl='auto', which fall back to the PyTorch reference)")


NOT_RUN_WITHOUT_TRITON = ("triton is not importable on this machine (it ships wheels for Linux only), so the "
                          "Triton kernel was not run; the chapter used the PyTorch reference path instead")


class TritonUnavailableError(ImportError, RuntimeError):
    """``impl="triton"`` was asked for where ``triton`` cannot be imported."""


_TRITON: dict = {}


def triton_module():
    """The module holding the ``@triton.jit`` kernels, imported on first use.

    Raises :class:`TritonUnavailableError` (saying how to install Triton) where ``import triton`` fails,
    so ``import companion.kernels`` itself never needs Triton.
    """
    if "module" not in _TRITON:
        try:
            _TRITON["module"] = importlib.import_module(f"{__package__}._triton_kernels")
        except ImportError as err:
            raise TritonUnavailableError(INSTALL_HINT.format(err=err)) from err
    return _TRITON["module"]


def triton_available() -> bool:
    """True when the Triton kernels can be imported (not whether they can run on a device)."""
    try:
        triton_module()
    except TritonUnavailableError:
        return False
    return True


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


# ---------------------------------------------------------------------------------------------
# 1. reference
# ---------------------------------------------------------------------------------------------
def reference(q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None,
              scale: float | None = None) -> Tensor:
    """Masked softmax attention computed explicitly (eq. (1)); what every impl must equal."""
    return reference_attention(q, k, v, mask, scale=scale)


# ---------------------------------------------------------------------------------------------
# 2. how the kernel sees a mask
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelMask:
    """The in-kernel form of a mask (eq. (7)).

    With ``bits=False`` a PARTIAL tile evaluates the predicate
    ``((causal & window & segment & set) | k < prefix_len[b]) & k < lengths[b]`` from the
    per-sequence tensors; with ``bits=True`` it reads the tile's bit mask from memory.
    """

    causal: bool = False
    window: int = 0  # 0: no window; else q - k < window
    prefix_len: Tensor | None = None  # (1 or B,) keys k < prefix_len[b] are visible to every query
    lengths: Tensor | None = None  # (1 or B,) keys k >= lengths[b] are hidden
    segment_ids: Tensor | None = None  # (1 or B, L) visible only within a segment
    set_ids: Tensor | None = None  # (1 or B, L) set elements blind to each other (-1: outside the set)
    bits: bool = False

    @property
    def core_empty(self) -> bool:
        """True when none of the AND-ed terms is present."""
        return not (self.causal or self.window or self.segment_ids is not None or self.set_ids is not None)

    def describe(self) -> str:
        """The predicate as a formula (for printing in the chapter)."""
        if self.bits:
            return "bit tiles: each PARTIAL tile reads its mask from memory"
        core = [t for t, on in (("k <= q", self.causal), (f"q - k < {self.window}", self.window),
                                ("seg[q] == seg[k]", self.segment_ids is not None),
                                ("set[q] < 0 | set[k] < 0 | set[q] == set[k]", self.set_ids is not None)) if on]
        out = " & ".join(f"({t})" for t in core) or "True"
        if self.prefix_len is not None:
            out = f"({out}) | (k < prefix_len[b])" if len(core) > 1 else f"{out} | (k < prefix_len[b])"
        if self.lengths is not None:
            out = f"({out}) & (k < lengths[b])"
        return out


_BITS = KernelMask(bits=True)


def _min_rows(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None or b is None:
        return a if b is None else b
    return torch.minimum(a, b)  # (1 or B,) broadcasts


def _and(a: KernelMask, b: KernelMask) -> KernelMask:
    """Conjunction of two in-kernel masks, or ``_BITS`` when eq. (7) cannot express it."""
    if a.bits or b.bits:
        return _BITS
    if (a.prefix_len is not None and (b.prefix_len is not None or not b.core_empty)) or \
            (b.prefix_len is not None and not a.core_empty):
        return _BITS  # (core_a | prefix) & core_b is not of the form (core | prefix)
    if (a.segment_ids is not None and b.segment_ids is not None) or (a.set_ids is not None and b.set_ids is not None):
        return _BITS
    windows = [w for w in (a.window, b.window) if w]
    return KernelMask(
        causal=a.causal or b.causal, window=min(windows, default=0),
        prefix_len=a.prefix_len if a.prefix_len is not None else b.prefix_len,
        lengths=_min_rows(a.lengths, b.lengths),
        segment_ids=a.segment_ids if a.segment_ids is not None else b.segment_ids,
        set_ids=a.set_ids if a.set_ids is not None else b.set_ids,
    )


def describe_mask(mask: Mask | None) -> KernelMask:
    """Compile a mask into its in-kernel form (predicate flags + tensors, or bit-mask tiles)."""
    if mask is None or type(mask) is FullMask:
        return KernelMask()
    if not isinstance(mask, Mask):
        raise ValueError(f"mask must be a companion.nn.masks.Mask or None, got {type(mask).__name__}")
    kind = type(mask)
    if kind is CausalMask:
        return KernelMask(causal=True)
    if kind is SlidingWindowMask:
        return KernelMask(causal=True, window=mask.window)
    if kind is PrefixLMMask:
        return KernelMask(causal=True, prefix_len=mask.prefix_len)
    if kind is KeyPaddingMask:
        return KernelMask(lengths=mask.lengths)
    if kind is SegmentMask:
        return KernelMask(segment_ids=mask.ids)
    if kind is SetMask:
        return KernelMask(set_ids=mask.ids)
    if kind is AndMask:
        out = KernelMask()
        for part in mask.parts:
            out = _and(out, describe_mask(part))
        return out
    return _BITS  # OrMask, NotMask, DenseMask, TreeMask, BlockSelectMask, user subclasses


# ---------------------------------------------------------------------------------------------
# 3. block plan: which tiles to visit
# ---------------------------------------------------------------------------------------------
@dataclass
class TileLists:
    """Per row of a tile grid: its FULL and PARTIAL columns (and the PARTIAL tiles' bit-mask ids)."""

    full_cnt: Tensor  # (Bm, R) int32
    full_idx: Tensor  # (Bm, R, C) int32, the first full_cnt entries are valid
    part_cnt: Tensor  # (Bm, R) int32
    part_idx: Tensor  # (Bm, R, C) int32
    part_tile: Tensor  # (Bm, R, C) int32 index into BlockPlan.bits
    order: Tensor  # (R,) int32: rows by decreasing tile count (summed over the batch), the launch order

    def to(self, device: torch.device) -> "TileLists":
        return TileLists(*(t.to(device) for t in (self.full_cnt, self.full_idx, self.part_cnt, self.part_idx,
                                                  self.part_tile, self.order)))


@dataclass
class BlockPlan:
    """The block-sparse schedule of one mask for one ``(Nq, Nk, block_m, block_n)``."""

    nq: int
    nk: int
    block_m: int
    block_n: int
    layout: Tensor  # (Bm, ceil(Nq/block_m), ceil(Nk/block_n)) int8: EMPTY / PARTIAL / FULL
    rows: TileLists  # per query block (forward, dQ)
    cols: TileLists  # per key block (dK, dV)
    bits: Tensor | None  # (T, block_m, block_n // 32) int32: element masks of the PARTIAL tiles
    _device_copies: dict = field(default_factory=dict, repr=False)

    def fraction(self, code: int) -> float:
        """Share of tiles with layout ``code`` (EMPTY, PARTIAL or FULL)."""
        return float((self.layout == code).float().mean()) if self.layout.numel() else 0.0

    @property
    def skipped(self) -> float:
        """Share of tiles the kernel never touches (EMPTY)."""
        return self.fraction(EMPTY)

    def on(self, device: torch.device) -> tuple[TileLists, TileLists, Tensor | None]:
        """The row lists, column lists and bits on ``device`` (copied once, then cached)."""
        key = str(device)
        if key not in self._device_copies:
            bits = self.bits.to(device) if self.bits is not None else None
            self._device_copies[key] = (self.rows.to(device), self.cols.to(device), bits)
        return self._device_copies[key]


def _tile_lists(layout: Tensor, tile_id: Tensor) -> TileLists:
    """(Bm, R, C) layout -> per-row lists of FULL and PARTIAL columns, in column order."""
    full, part = layout == FULL, layout == PARTIAL
    full_idx = torch.argsort((~full).int(), dim=-1, stable=True).int()
    part_idx = torch.argsort((~part).int(), dim=-1, stable=True).int()
    part_tile = tile_id.gather(-1, part_idx.long())
    work = (full | part).sum(-1).sum(0)  # (R,) tiles per row over the batch
    order = torch.argsort(-work, stable=True).int()  # longest first: causal's last query blocks lead
    return TileLists(full.sum(-1).int().contiguous(), full_idx.contiguous(), part.sum(-1).int().contiguous(),
                     part_idx.contiguous(), part_tile.int().contiguous(), order.contiguous())


def _pack_bits(tiles: Tensor) -> Tensor:
    """(T, BM, BN) bool -> (T, BM, BN // 32) int32, bit j of word w = column 32 w + j."""
    t, bm, bn = tiles.shape
    shifts = torch.arange(32, dtype=torch.int64, device=tiles.device)
    words = (tiles.view(t, bm, bn // 32, 32).long() << shifts).sum(-1)  # in [0, 2^32)
    return torch.where(words >= 2**31, words - 2**32, words).int()


PLANS_PER_MASK = 8  # LRU bound of the plans kept per mask object (decode steps: one per length)
_PLANS: "weakref.WeakKeyDictionary[Mask, LRUCache]" = weakref.WeakKeyDictionary()
_NO_MASK = FullMask()  # key for mask=None


def _cache_for(table: "weakref.WeakKeyDictionary[Mask, LRUCache]", owner: Mask, size: int) -> LRUCache:
    cache = table.get(owner)
    if cache is None:
        cache = table[owner] = LRUCache(size)
    return cache


def block_plan(mask: Mask | None, nq: int, nk: int, block_m: int = 64, block_n: int = 64, *,
               layout: Tensor | None = None) -> BlockPlan:
    """The tile schedule of ``mask`` for ``nq`` queries and ``nk`` keys.

    Cached on the mask, keyed by the shape and :meth:`~companion.nn.masks.Mask.state_key` (so a
    mask whose tensors were changed in place gets a new plan), at most ``PLANS_PER_MASK`` per mask.
    ``layout`` (``(1 or B, ceil(nq/block_m), ceil(nk/block_n))`` int8 EMPTY/PARTIAL/FULL) skips the
    layout computation for callers that already know it; it must never call a tile with a visible
    pair EMPTY (PARTIAL is always safe). A tile crossing the end of the keys is never FULL, so FULL
    tiles need no bounds checks.
    """
    for name, val in (("nq", nq), ("nk", nk)):
        if not isinstance(val, int) or val < 0:
            raise ValueError(f"{name} must be an int >= 0, got {val!r}")
    _check_blocks(block_m, block_n)
    owner = _NO_MASK if mask is None else mask
    if not isinstance(owner, Mask):
        raise ValueError(f"mask must be a companion.nn.masks.Mask or None, got {type(mask).__name__}")
    nbq, nbk = -(-nq // block_m), -(-nk // block_n)
    if layout is not None:
        if not isinstance(layout, torch.Tensor) or layout.dtype != torch.int8 or layout.ndim != 3 \
                or layout.shape[1:] != (nbq, nbk) or layout.shape[0] not in (1, owner.batch_size):
            raise ValueError(f"layout must be an int8 tensor (1 or {owner.batch_size}, {nbq}, {nbk}), "
                             f"got {getattr(layout, 'dtype', type(layout))} {tuple(getattr(layout, 'shape', ()))}")
        if ((layout < EMPTY) | (layout > FULL)).any():
            raise ValueError("layout entries must be EMPTY (0), PARTIAL (1) or FULL (2)")
        return _build_plan(mask, nq, nk, block_m, block_n, layout.cpu().clone())
    state = owner.state_key()
    key = None if state is None else (nq, nk, block_m, block_n, state)
    cache = _cache_for(_PLANS, owner, PLANS_PER_MASK)
    plan = cache.get(key)
    if plan is None:
        if mask is None:
            lay = torch.full((1, nbq, nbk), FULL, dtype=torch.int8)
        else:
            lay = owner.block_layout(nq, nk, block_m, block_n).cpu().clone()
        plan = _build_plan(mask, nq, nk, block_m, block_n, lay)
        cache.put(key, plan, owner.state_tensors())
    return plan


def rows_in_empty_tiles(mask: Mask | None, nq: int, nk: int, tiles: list[tuple[int, int]]
                        ) -> tuple[Tensor, Tensor]:
    """Query rows ``(Bm, nq)`` and key rows ``(Bm, nk)`` (bool) that lie only in EMPTY tiles under every
    tile shape in ``tiles``: the rows the kernel must never load (the chapter's NaN-poison check)."""
    qrows = torch.ones(1, nq, dtype=torch.bool)
    krows = torch.ones(1, nk, dtype=torch.bool)
    for bm, bn in tiles:
        empty = block_plan(mask, nq, nk, bm, bn).layout == EMPTY  # (Bm, R, C)
        qrows = qrows & empty.all(2).repeat_interleave(bm, dim=1)[:, :nq]
        krows = krows & empty.all(1).repeat_interleave(bn, dim=1)[:, :nk]
    return qrows, krows


def tile_shapes(device: torch.device | str, nq: int, head_dim: int) -> dict[str, tuple[int, int]]:
    """The ``(block_m, block_n)`` tiles of the forward, dK/dV and dQ kernels on ``device``."""
    b = _default_blocks(device, nq, head_dim)
    return {"fwd": b.fwd, "dkdv": b.dkdv, "dq": b.dq}


def _build_plan(mask: Mask | None, nq: int, nk: int, block_m: int, block_n: int, layout: Tensor) -> BlockPlan:
    """Tile lists (and bit tiles, for masks without an in-kernel predicate) from a layout."""
    owner = _NO_MASK if mask is None else mask
    nbq, nbk = layout.shape[1:]
    if nk % block_n and nbk:
        last = layout[..., -1]
        last[last == FULL] = PARTIAL
    part = layout == PARTIAL
    tile_id = torch.full(layout.shape, -1, dtype=torch.int32)
    tile_id[part] = torch.arange(int(part.sum()), dtype=torch.int32)
    bits = None
    if mask is not None and describe_mask(owner).bits:
        # only the PARTIAL tiles are evaluated (on the mask's device), never the whole mask
        b, r, c = part.nonzero().unbind(1)  # in the order of tile_id
        words = []
        step = max(1, (1 << 22) // (block_m * block_n))
        for lo in range(0, b.numel(), step):
            vis, _ = owner.tile_visibility(b[lo:lo + step], r[lo:lo + step], c[lo:lo + step], block_m, block_n,
                                           nq, nk, nk - nq)  # (T, BM, BN), False past the ends
            words.append(_pack_bits(vis).cpu())
        bits = (torch.cat(words) if words else torch.zeros(0, block_m, block_n // 32, dtype=torch.int32)).contiguous()
    return BlockPlan(nq, nk, block_m, block_n, layout, _tile_lists(layout, tile_id),
                     _tile_lists(layout.transpose(1, 2), tile_id.transpose(1, 2)), bits)


# ---------------------------------------------------------------------------------------------
# 5. host wrapper and autograd
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Blocks:
    fwd: tuple[int, int]
    dkdv: tuple[int, int]
    dq: tuple[int, int]


def _check_blocks(block_m: int, block_n: int) -> None:
    for name, val, low in (("block_m", block_m, 16), ("block_n", block_n, 32)):
        if not isinstance(val, int) or val < low or val & (val - 1):
            raise ValueError(f"{name} must be a power of two >= {low}, got {val!r}")


def _default_blocks(device: torch.device | str, nq: int, head_dim: int = 64) -> _Blocks:
    """Tile sizes per kernel, chosen per head dim (each kernel's plan follows its own tile shape).

    On a GPU the register budget decides: the dK/dV program holds two ``(BLOCK_N, D)`` fp32
    accumulators plus its K and V tiles, so at ``D = 128`` it takes ``32 x 128`` (Triton's
    tutorial) rather than ``64 x 128`` (128 KB of accumulators: spills). On CPU the interpreter
    pays per tile element: small tiles.
    """
    if torch.device(device).type == "cuda":
        decode = (16, 128) if head_dim <= 128 else (16, 64)
        if head_dim <= 64:
            return _Blocks(fwd=decode if nq <= 16 else (128, 64), dkdv=(64, 128), dq=(128, 64))
        if head_dim <= 128:
            return _Blocks(fwd=decode if nq <= 16 else (128, 64), dkdv=(32, 128), dq=(128, 32))
        return _Blocks(fwd=decode if nq <= 16 else (64, 32), dkdv=(32, 64), dq=(64, 32))
    return _Blocks(fwd=(16, 32) if nq <= 16 else (32, 32), dkdv=(32, 32), dq=(32, 32))


# (num_warps, num_stages) tried by the autotuner, and the one fixed choice used when it is off.
_TUNE_SPACE = ((4, 2), (4, 3), (8, 2), (8, 3), (8, 4))
_TUNED: dict[str, object] = {}
_SETTINGS = {"autotune": os.environ.get("COMPANION_AUTOTUNE", "0") == "1"}


def set_autotune(on: bool) -> bool:
    """Turn Triton autotuning of warps/stages on or off (default off, or ``COMPANION_AUTOTUNE=1``).

    Off, every launch uses :func:`fixed_config` -- one configuration per kernel, dtype and head
    dim -- so a fresh GPU compiles each kernel once per mask kind instead of once per candidate
    (5x fewer compiles). Returns the previous setting.
    """
    prev = _SETTINGS["autotune"]
    _SETTINGS["autotune"] = bool(on)
    return prev


def fixed_config(name: str, dtype: torch.dtype, head_dim: int) -> dict:
    """``num_warps`` / ``num_stages`` of kernel ``name`` ("fwd", "dkdv", "dq") without autotuning."""
    big = head_dim > 64
    if name == "fwd":
        warps, stages = (8, 3) if big else (4, 3)
    else:
        warps, stages = (8, 2) if big else (4, 2)
    if dtype == torch.float32:  # twice the bytes per tile: fewer pipeline stages fit in shared memory
        stages = 2
    return dict(num_warps=warps, num_stages=stages)


def _launch(name: str, grid: tuple, args: tuple, meta: dict, dtype: torch.dtype) -> None:
    """Launch kernel ``name``: interpreted, autotuned over warps/stages, or with its fixed config.

    The tuning key leaves out the lengths, so decoding with a growing KV cache tunes once per
    tile shape and mask kind, not once per step.
    """
    tk = triton_module()
    kernel = {"fwd": tk._fwd_kernel, "dkdv": tk._bwd_dkdv_kernel, "dq": tk._bwd_dq_kernel}[name]
    if os.environ.get("TRITON_INTERPRET") == "1":
        kernel[grid](*args, **meta)
        return
    if not _SETTINGS["autotune"]:
        kernel[grid](*args, **meta, **fixed_config(name, dtype, meta["HEAD_DIM"]))
        return
    if name not in _TUNED:
        import triton

        key = ["HEAD_DIM", "BLOCK_M", "BLOCK_N", "CAUSAL", "WINDOW", "PREFIX", "LENGTHS", "SEGMENT", "SET", "BITS"]
        configs = [triton.Config({}, num_warps=w, num_stages=st) for w, st in _TUNE_SPACE]
        _TUNED[name] = triton.autotune(configs=configs, key=key)(kernel)
    _TUNED[name][grid](*args, **meta)


@dataclass
class _MaskArgs:
    """Kernel arguments of a KernelMask on one device."""

    flags: dict
    tensors: tuple
    window: int
    pos_len: int


_MASK_ARGS: "weakref.WeakKeyDictionary[Mask, LRUCache]" = weakref.WeakKeyDictionary()


def _mask_args(mask: Mask | None, device: torch.device) -> _MaskArgs:
    """The mask's kernel arguments on ``device``, cached on the mask by device and state key."""
    owner = _NO_MASK if mask is None else mask
    state = owner.state_key()
    key = None if state is None else (str(device), state)
    cache = _cache_for(_MASK_ARGS, owner, 4)
    hit = cache.get(key)
    if hit is not None:
        return hit
    km = describe_mask(mask)
    dummy = torch.zeros(1, dtype=torch.int32, device=device)

    def rows(t: Tensor | None) -> tuple[Tensor, int]:
        if t is None:
            return dummy, 0
        t = t.to(device=device, dtype=torch.int32, copy=True).contiguous()  # our own copy, never the mask's
        return t, (0 if t.shape[0] == 1 else (t.shape[1] if t.ndim == 2 else 1))

    pref, pref_sb = rows(km.prefix_len)
    lens, lens_sb = rows(km.lengths)
    segs, segs_sb = rows(km.segment_ids)
    sets, sets_sb = rows(km.set_ids)
    pos = [t.shape[-1] for t in (km.segment_ids, km.set_ids) if t is not None]
    out = _MaskArgs(
        flags=dict(CAUSAL=km.causal, WINDOW=bool(km.window), PREFIX=km.prefix_len is not None,
                   LENGTHS=km.lengths is not None, SEGMENT=km.segment_ids is not None, SET=km.set_ids is not None,
                   BITS=km.bits),
        tensors=(pref, pref_sb, lens, lens_sb, segs, segs_sb, sets, sets_sb),
        window=km.window, pos_len=min(pos, default=0))
    cache.put(key, out, owner.state_tensors())
    return out


def _dot_flags(dtype: torch.dtype) -> dict:
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    prec = "tf32" if dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32 else "ieee"
    upcast = interpreted and dtype == torch.bfloat16  # Triton 3.9's interpreter multiplies bf16 bit patterns
    return dict(DOT_F32=upcast, DOT_PREC="ieee" if upcast else prec)


def _lists_args(lists: TileLists) -> tuple:
    bm, r = lists.full_cnt.shape
    c = lists.full_idx.shape[-1]
    return (lists.full_cnt, lists.full_idx, lists.part_cnt, lists.part_idx, lists.part_tile, lists.order,
            0 if bm == 1 else 1, r, max(c, 1))


def _forward(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None, scale: float, blocks: _Blocks,
             n_splits: int) -> tuple[Tensor, Tensor]:
    """Launch the forward kernel; returns ``O (B, H, Nq, D)`` and log2-sum-exp ``(B, H, Nq)`` fp32."""
    B, H, nq, D = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    bm, bn = blocks.fwd
    plan = block_plan(mask, nq, nk, bm, bn)
    rows, _, bits = plan.on(q.device)
    ma = _mask_args(mask, q.device)
    nbq = -(-nq // bm)
    n_splits = max(1, min(n_splits, rows.full_idx.shape[-1] or 1))
    if n_splits == 1:
        o = torch.empty_like(q)
        lse = torch.empty(B, H, 1, nq, device=q.device, dtype=torch.float32)
        so = (o.stride(0), o.stride(1), 0, o.stride(2))
    else:
        o = torch.empty(B, H, n_splits, nq, D, device=q.device, dtype=torch.float32)
        lse = torch.empty(B, H, n_splits, nq, device=q.device, dtype=torch.float32)
        so = (o.stride(0), o.stride(1), o.stride(2), o.stride(3))
    if nbq and B * H:
        _launch("fwd", (nbq, B * H, n_splits), (
            q, k, v, o, lse, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), *so, lse.stride(0), lse.stride(1), lse.stride(2),
            *_lists_args(rows), ma.window, *ma.tensors, ma.pos_len, bits if bits is not None else ma.tensors[0],
            H, H // hkv, nq, nk, nk - nq, scale * LOG2E, n_splits),
            dict(HEAD_DIM=D, BLOCK_D=max(16, _next_pow2(D)), BLOCK_M=bm, BLOCK_N=bn, **ma.flags,
                 **_dot_flags(q.dtype)), q.dtype)
    if n_splits == 1:
        return o, lse[:, :, 0]
    # split-KV decoding: merge the partial softmaxes by their log-sum-exp (eq. (12))
    top = lse.amax(dim=2, keepdim=True)  # (B, H, 1, Nq)
    w = torch.exp2(lse - torch.where(torch.isinf(top), torch.zeros_like(top), top))  # (B, H, S, Nq)
    denom = w.sum(2)  # (B, H, Nq)
    out = (w.unsqueeze(-1) * o).sum(2) / denom.clamp_min(1e-30).unsqueeze(-1)
    lse_all = torch.where(denom > 0, top[:, :, 0] + torch.log2(denom.clamp_min(1e-30)),
                          torch.full_like(denom, float("-inf")))
    return out.to(q.dtype), lse_all


def _backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, mask: Mask | None,
              scale: float, blocks: _Blocks) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the two backward kernels; returns dQ, dK, dV."""
    B, H, nq, D = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    do = do.contiguous()
    lse = lse.contiguous()
    delta = torch.empty(B, H, nq, device=q.device, dtype=torch.float32)  # written by the dQ kernel, eq. (9)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    ma = _mask_args(mask, q.device)
    common = dict(HEAD_DIM=D, BLOCK_D=max(16, _next_pow2(D)), **ma.flags, **_dot_flags(q.dtype))
    # dQ first: its prologue computes delta = rowsum(dO * O) for every query row, which dK/dV then reads
    bm, bn = blocks.dq
    plan = block_plan(mask, nq, nk, bm, bn)
    rows, _, bits = plan.on(q.device)
    nbq = -(-nq // bm)
    if nbq and B * H:
        _launch("dq", (nbq, B * H), (
            q, k, v, do, o, lse, delta, dq, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
            k.stride(2), v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
            o.stride(0), o.stride(1), o.stride(2), lse.stride(0), lse.stride(1), dq.stride(0), dq.stride(1),
            dq.stride(2), *_lists_args(rows), ma.window, *ma.tensors, ma.pos_len,
            bits if bits is not None else ma.tensors[0], H, H // hkv, nq, nk, nk - nq, scale * LOG2E, scale),
            dict(BLOCK_M=bm, BLOCK_N=bn, **common), q.dtype)
    bm, bn = blocks.dkdv
    plan = block_plan(mask, nq, nk, bm, bn)
    _, cols, bits = plan.on(q.device)
    nbk = -(-nk // bn)
    if nbk and B * hkv:
        _launch("dkdv", (nbk, B * hkv), (
            q, k, v, do, lse, delta, dk, dv, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
            k.stride(2), v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
            lse.stride(0), lse.stride(1), dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1),
            dv.stride(2), *_lists_args(cols), ma.window, *ma.tensors, ma.pos_len,
            bits if bits is not None else ma.tensors[0], hkv, H // hkv, nq, nk, nk - nq, scale * LOG2E, scale),
            dict(BLOCK_M=bm, BLOCK_N=bn, **common), q.dtype)
    return dq, dk, dv


class _FlashAttention(torch.autograd.Function):
    """Autograd glue: forward kernel, then the two backward kernels from the saved log-sum-exp."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, mask: Mask | None, scale: float, blocks: _Blocks) -> Tensor:
        o, lse = _forward(q, k, v, mask, scale, blocks, n_splits=1)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.mask, ctx.scale, ctx.blocks = mask, scale, blocks
        return o

    @staticmethod
    def backward(ctx, do: Tensor):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(do, q, k, v, o, lse, ctx.mask, ctx.scale, ctx.blocks)
        return dq, dk, dv, None, None, None


_TENSOR_MASKS = LRUCache(8)  # bool tensor (id, version) + shapes -> its DenseMask


def _as_mask(mask: Mask | Tensor | None, q: Tensor, k: Tensor) -> Mask | None:
    """Validate ``mask`` against q/k; a bool tensor becomes a (cached) DenseMask over these queries."""
    B, nq, nk = q.shape[0], q.shape[2], k.shape[2]
    if mask is None:
        return None
    if isinstance(mask, Mask):
        if mask.batch_size not in (1, B):
            raise ValueError(f"mask describes {mask.batch_size} batch rows; expected 1 or B={B}")
        return mask
    if isinstance(mask, torch.Tensor):
        # keyed by the tensor's identity *and* in-place version: changing it in place gives a new mask
        state = tensor_state(mask)
        key = None if state is None else (state, tuple(mask.shape), mask.dtype, B, nq, nk)
        hit = _TENSOR_MASKS.get(key)
        if hit is not None:
            return hit
        keep = dense_mask_for(mask, q, k)[:, 0]  # (1 or B, Nq, Nk), validated
        dm = DenseMask(keep)  # stays on its device: the layout and bit tiles are computed there
        _TENSOR_MASKS.put(key, dm, (mask,))
        return dm
    raise ValueError(f"mask must be a companion.nn.masks.Mask, a bool tensor or None, got {type(mask).__name__}")


def _interpreter_ready() -> bool:
    """True when Triton runs kernels in its interpreter, its own jit library (tl.zeros, ...) included."""
    return triton_module().interpreter_ready()


def _default_splits(q: Tensor, nk: int, block_n: int) -> int:
    """Split-KV factor for decoding: enough programs to fill the GPU (1 on CPU)."""
    if q.device.type != "cuda":
        return 1
    programs = q.shape[0] * q.shape[1] * -(-q.shape[2] // 16)
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    return max(1, min(-(-nk // block_n), -(-2 * sms // max(programs, 1))))


def triton_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None,
                     scale: float | None = None, *, block_m: int | None = None, block_n: int | None = None,
                     num_splits: int | None = None, tiles: str | None = None,
                     return_lse: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """The Triton kernel (on CPU through the interpreter): forward, backward, split-KV decoding.

    ``tiles="gpu"`` or ``"cpu"`` picks that device's tile table (default: the tensors' device; tests
    run the GPU tiles in the interpreter); ``block_m``/``block_n`` override the tile sizes of all
    three kernels; ``num_splits`` splits
    the key axis of the forward pass into that many programs merged by log-sum-exp (used when
    no gradient is needed; default: enough to fill the GPU when ``Nq <= 16``, else 1).
    ``return_lse=True`` (inference only) also returns the natural log-sum-exp of each row's scaled
    scores, ``(B, H, Nq)`` fp32 (``-inf`` for a row that sees no key, whose output is 0), so partial
    attentions over disjoint key sets merge exactly with :func:`companion.nn.attention.merge_partials`.
    """
    check_qkv(q, k, v)
    if q.dtype not in DTYPES:
        raise ValueError(f"q, k, v must be float16, bfloat16 or float32 for impl='triton', got {q.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    triton_module()  # raises TritonUnavailableError, saying how to install triton, where it is missing
    if q.device.type != "cuda" and not _interpreter_ready():
        raise ValueError("impl='triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is first "
                         "imported (transformers' model classes import it): import companion.kernels first")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"num_splits must be an int >= 1, got {num_splits!r}")
    m = _as_mask(mask, q, k)
    nq, nk, D = q.shape[2], k.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if tiles not in (None, "gpu", "cpu"):
        raise ValueError(f"tiles must be None, 'gpu' or 'cpu', got {tiles!r}")
    blocks = _default_blocks({"gpu": "cuda", "cpu": "cpu", None: q.device}[tiles], nq, D)
    if block_m is not None or block_n is not None:
        pair = (block_m or blocks.fwd[0], block_n or blocks.fwd[1])
        _check_blocks(*pair)
        blocks = _Blocks(pair, pair, pair)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if needs_grad:
        if return_lse:
            raise ValueError("return_lse=True is for inference: call it under torch.no_grad() or on tensors "
                             "that do not require grad")
        return _FlashAttention.apply(q, k, v, m, scale, blocks)
    splits = num_splits if num_splits is not None else (
        _default_splits(q, nk, blocks.fwd[1]) if nq <= 16 else 1)
    o, lse2 = _forward(q, k, v, m, scale, blocks, n_splits=splits)
    return (o, lse2 / LOG2E) if return_lse else o  # the kernel's log2-sum-exp -> natural log


# ---------------------------------------------------------------------------------------------
# 6. dispatch
# ---------------------------------------------------------------------------------------------
def attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None, scale: float | None = None,
              impl: str = "auto") -> Tensor:
    """Masked attention ``softmax(q kᵀ · scale, mask) v`` -> ``(B, H, Nq, D)``.

    ``impl="triton"`` runs the block-sparse kernel (CPU: Triton interpreter; raises
    :class:`TritonUnavailableError` where triton is not installed), ``"torch"`` the reference,
    ``"auto"`` the kernel for CUDA tensors when triton is importable and the reference elsewhere.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = "triton" if isinstance(q, torch.Tensor) and q.is_cuda and triton_available() else "torch"
    if impl == "torch":
        return reference(q, k, v, mask, scale)
    return triton_attention(q, k, v, mask, scale)


def __getattr__(name: str):
    """The jit kernels (``_fwd_kernel``, ``_visible``, ...) still resolve here, imported on first use."""
    if name.startswith("_") and not name.startswith("__"):
        mod = triton_module()
        if hasattr(mod, name):
            return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["IMPLS", "BlockPlan", "KernelMask", "TileLists", "TritonUnavailableError", "attention", "block_plan",
           "describe_mask", "fixed_config", "reference", "rows_in_empty_tiles", "set_autotune", "tile_shapes",
           "triton_attention", "triton_available", "triton_module", "NOT_RUN_WITHOUT_TRITON"]
