"""EMPTY tiles are never read, forward and backward, and the GPU's tile shapes run correctly.

The poison test: every query row (Q, dO) and key row (K, V) that lies only in EMPTY tiles of the
plan is set to NaN. A kernel that loaded such a tile -- even one it then masked element-wise --
would multiply a zero probability by NaN (``p @ V``, ``pᵀ @ dO``, ``dO @ Vᵀ``) and turn the output
or a gradient NaN. Everything must stay finite and equal the reference on clean inputs.
"""

import pytest
import torch

from companion.kernels import block_plan, reference, triton_attention
from companion.kernels.attention import _default_blocks
from companion.nn import masks as M


def _rows_only_in_empty_tiles(layout: torch.Tensor, block: int, n: int, axis: int) -> torch.Tensor:
    """(B', n) bool: rows (axis=1: query tiles; axis=2: key tiles) all of whose tiles are EMPTY."""
    empty = (layout == M.EMPTY).all(dim=3 - axis)  # (B', R) or (B', C)
    return empty.repeat_interleave(block, dim=1)[:, :n]


def poisoned_inputs(mask, b, h, hkv, nq, nk, d, tiles, seed=0):
    """Clean q, k, v, dO and copies with NaN in every row the plans put only in EMPTY tiles."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(b, h, nq, d, generator=g), torch.randn(b, hkv, nk, d, generator=g), \
        torch.randn(b, hkv, nk, d, generator=g)
    do = torch.randn(b, h, nq, d, generator=g)
    qbad, kbad = torch.zeros(b, nq, dtype=torch.bool), torch.zeros(b, nk, dtype=torch.bool)
    qbad[:], kbad[:] = True, True
    for bm, bn in tiles:  # a row is poisoned only if it is in EMPTY tiles under every kernel's tiling
        lay = block_plan(mask, nq, nk, bm, bn).layout
        qbad &= _rows_only_in_empty_tiles(lay, bm, nq, 1).expand(b, nq)
        kbad &= _rows_only_in_empty_tiles(lay, bn, nk, 2).expand(b, nk)
    assert qbad.any() or kbad.any(), "the case must poison something"
    nan = float("nan")
    qp, dop = q.clone(), do.clone()
    kp, vp = k.clone(), v.clone()
    qp[qbad[:, None].expand(b, h, nq)] = nan
    dop[qbad[:, None].expand(b, h, nq)] = nan
    kp[kbad[:, None].expand(b, hkv, nk)] = nan
    vp[kbad[:, None].expand(b, hkv, nk)] = nan
    return (q, k, v, do), (qp, kp, vp, dop), (qbad, kbad)


def _nested_block_select(nq, chunk, block, seed):
    """Causal & retrieved blocks, where some query chunks retrieve nothing and some key blocks are never retrieved."""
    g = torch.Generator().manual_seed(seed)
    sel = torch.rand(-(-nq // chunk), -(-nq // block), generator=g) > 0.4
    sel[1] = False  # query chunk 1 sees nothing
    sel[:, 2] = False  # key block 2 is never retrieved
    return M.CausalMask() & M.BlockSelectMask(sel, chunk, block)


CASES = {
    # predicate path: batch row 0 sees nothing at all, row 1 only its first 40 keys
    "padding": (lambda: M.CausalMask() & M.KeyPaddingMask(torch.tensor([0, 40])), 70),
    # bit-tile path: holes in the middle of the plan
    "block_select": (lambda: _nested_block_select(96, 32, 32, seed=1), 96),
    # a window that hides whole key tiles from the late queries, and padded keys
    "window_and_padding": (lambda: M.SlidingWindowMask(20) & M.KeyPaddingMask(torch.tensor([64, 50])), 96),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_empty_tiles_are_never_read(name):
    make, n = CASES[name]
    mask = make()
    bm, bn = 16, 32
    clean, bad, (qbad, kbad) = poisoned_inputs(mask, 2, 2, 1, n, n, 16, [(bm, bn)])
    q, k, v, do = (t.requires_grad_() if i < 3 else t for i, t in enumerate(bad))
    out = triton_attention(q, k, v, mask, block_m=bm, block_n=bn)
    grads = torch.autograd.grad(out, (q, k, v), do)
    qc, kc, vc = (t.clone().requires_grad_() for t in clean[:3])
    ref = reference(qc, kc, vc, mask)
    ref_grads = torch.autograd.grad(ref, (qc, kc, vc), clean[3])
    for what, a, r in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads)):
        assert torch.isfinite(a).all(), f"{what}: NaN from a poisoned row, so an EMPTY tile was read"
        torch.testing.assert_close(a, r, atol=2e-5, rtol=2e-5, msg=lambda m: f"{what}: {m}")
    # decoding (split-KV) reads the same lists
    with torch.no_grad():
        for splits in (1, 3):
            o = triton_attention(bad[0][:, :, -4:], bad[1], bad[2], mask_tail(mask, n), block_m=bm, block_n=bn,
                                 num_splits=splits)
            assert torch.isfinite(o).all()


def mask_tail(mask, n):
    """The same mask for the last 4 queries only (bottom-right aligned): a DenseMask of its last rows."""
    return M.DenseMask(mask.dense(n)[:, -4:])


# ------------------------------------------------------------------------------------------------
# The tiles a GPU launches (128 x 64 forward, 64 x 128 or 32 x 128 dK/dV, 128 x 64 or 128 x 32 dQ,
# 16 x 128 decode), run by the interpreter at N ~ 200 -- CI otherwise only sees 16 x 32 and 32 x 32.
# ------------------------------------------------------------------------------------------------
GPU_MASKS = {
    "causal": M.CausalMask,
    "set_based": lambda: M.set_based(torch.tensor([-1] * 20 + [i // 40 for i in range(160)] + [-1] * 21)),
    "tree": lambda: M.TreeMask([-1, 0, 0, 1, 2, 3, -1, 6], start=193),
}


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("name", sorted(GPU_MASKS))
def test_gpu_tile_shapes_forward_and_backward(name, d):
    blocks = _default_blocks("cuda", 201, d)
    assert blocks.fwd == (128, 64) and blocks.dkdv == ((64, 128) if d <= 64 else (32, 128))
    mask = GPU_MASKS[name]()
    g = torch.Generator().manual_seed(d)
    n = 201
    q, k, v = (torch.randn(1, 2, n, d, generator=g).requires_grad_() for _ in range(3))
    do = torch.randn(1, 2, n, d, generator=g)
    out = triton_attention(q, k, v, mask, tiles="gpu")
    grads = torch.autograd.grad(out, (q, k, v), do)
    qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = reference(qr, kr, vr, mask)
    ref_grads = torch.autograd.grad(ref, (qr, kr, vr), do)
    for what, a, r in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads)):
        torch.testing.assert_close(a, r, atol=3e-5, rtol=3e-5, msg=lambda m: f"{what}: {m}")


def test_gpu_decode_tile_shape():
    assert _default_blocks("cuda", 1, 128).fwd == (16, 128)
    g = torch.Generator().manual_seed(0)
    nk = 300
    q, k, v = torch.randn(1, 4, 3, 128, generator=g), torch.randn(1, 2, nk, 128, generator=g), \
        torch.randn(1, 2, nk, 128, generator=g)
    for mask in (None, M.CausalMask(), M.TreeMask([-1, 0, 0], start=nk - 3)):
        ref = reference(q, k, v, mask)
        for splits in (1, 2):
            out = triton_attention(q, k, v, mask, tiles="gpu", num_splits=splits)
            torch.testing.assert_close(out, ref, atol=3e-5, rtol=3e-5)


def test_the_poison_catches_a_plan_that_visits_empty_tiles(monkeypatch):
    """Control: with every EMPTY tile turned PARTIAL (visited, masked element-wise) the NaNs do get through."""
    import importlib

    A = importlib.import_module("companion.kernels.attention")
    real = A.block_plan

    def visit_everything(mask, nq, nk, bm=64, bn=64, **kw):
        lay = real(mask, nq, nk, bm, bn).layout.clone()
        lay[lay == M.EMPTY] = M.PARTIAL
        return real(mask, nq, nk, bm, bn, layout=lay)

    mask = CASES["padding"][0]()
    _, bad, _ = poisoned_inputs(mask, 2, 2, 1, 70, 70, 16, [(16, 32)])
    monkeypatch.setattr(A, "block_plan", visit_everything)
    out = triton_attention(*bad[:3], mask, block_m=16, block_n=32)
    assert out.isnan().any()
