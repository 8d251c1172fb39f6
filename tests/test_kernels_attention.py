"""The block-sparse attention kernel against the reference, through the Triton interpreter on CPU.

Shapes are small and irregular (non-powers of two, Nq != Nk, GQA, ragged last tiles) and the
tiles are small (16 x 32) so that every test visits EMPTY, PARTIAL and FULL tiles.
"""

import pytest
import torch

from companion.kernels import attention, block_plan, describe_mask, reference, triton_attention
from companion.nn import masks as M

BM, BN = 16, 32


def _qkv(b, h, hkv, nq, nk, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=g).to(dtype).requires_grad_()
    k = torch.randn(b, hkv, nk, d, generator=g).to(dtype).requires_grad_()
    v = torch.randn(b, hkv, nk, d, generator=g).to(dtype).requires_grad_()
    do = torch.randn(b, h, nq, d, generator=g).to(dtype)
    return q, k, v, do


def _check(mask, b=2, h=2, hkv=1, nq=37, nk=37, d=20, dtype=torch.float32, tol=2e-5):
    """Forward and all three gradients of the kernel equal the fp32 reference."""
    q, k, v, do = _qkv(b, h, hkv, nq, nk, d, dtype)
    out = triton_attention(q, k, v, mask, block_m=BM, block_n=BN)
    grads = torch.autograd.grad(out, (q, k, v), do)
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = reference(qf, kf, vf, mask)
    ref_grads = torch.autograd.grad(ref, (qf, kf, vf), do.float())
    assert out.dtype == dtype and out.shape == q.shape
    for name, a, r in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads)):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a.float(), r, atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")


SEG = torch.tensor([0] * 3 + [1] * 20 + [2] + [3] * 13)  # tiny and long segments, N = 37
SETS = torch.tensor([-1] * 5 + [0] * 7 + [1] + [2] * 9 + [-1] * 15)  # prefix, 3 elements (one of size 1), suffix
ITEMS = torch.tensor([-(i + 1) for i in range(6)] + [i // 3 for i in range(24)] + [-(i + 10) for i in range(7)])


def _infllm(nk=37, chunk=8, block=8, seed=1):
    """Window of 6 + 2 sink tokens + randomly retrieved key blocks per query chunk (InfLLM)."""
    g = torch.Generator().manual_seed(seed)
    sel = torch.rand(-(-nk // chunk), -(-nk // block), generator=g) > 0.5
    return M.SlidingWindowMask(6) | (M.CausalMask() & M.KeyPaddingMask(2)) | (
        M.CausalMask() & M.BlockSelectMask(sel, chunk, block))


FAMILIES = {
    "full": lambda: None,
    "causal": M.CausalMask,
    "sliding_window": lambda: M.SlidingWindowMask(9),
    "prefix_lm_per_row": lambda: M.PrefixLMMask(torch.tensor([4, 30])),
    "packed_segments": lambda: M.segments(SEG),
    "set_based": lambda: M.set_based(SETS),
    "padding_with_empty_rows": lambda: M.CausalMask() & M.KeyPaddingMask(torch.tensor([0, 20])),
    "setrec_items": lambda: M.CausalMask() & (~M.SegmentMask(ITEMS) | M.SlidingWindowMask(1)),
    "infllm_block_retrieval": _infllm,
    "prefix_and_segments": lambda: M.PrefixLMMask(5) & M.SegmentMask(SEG),
    "dense_bool_batched": lambda: torch.rand(2, 37, 37, generator=torch.Generator().manual_seed(3)) > 0.6,
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_kernel_matches_reference_forward_and_backward(family):
    _check(FAMILIES[family]())


def test_gqa_and_cross_lengths_with_tree_mask():
    # 11 draft-tree nodes verified against 40 cached tokens: Nq != Nk, one KV head for 3 query heads
    tree = M.TreeMask([-1, 0, 0, 1, 2, -1, 5, 5, 6, 3, 9], start=40)
    _check(tree, b=1, h=3, hkv=1, nq=11, nk=51, d=24)
    _check(M.CausalMask(), b=1, h=2, hkv=1, nq=9, nk=45, d=16)
    _check(None, b=1, h=2, hkv=1, nq=50, nk=20, d=16)  # more queries than keys is fine without a mask


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 4e-3), (torch.bfloat16, 4e-2)])
def test_half_precision(dtype, tol):
    _check(M.set_based(SETS), b=1, h=2, hkv=1, d=32, dtype=dtype, tol=tol)


@pytest.mark.parametrize("nq", [1, 4])
def test_decode_split_kv_matches_reference(nq):
    nk = 150
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 4, nq, 16, generator=g), torch.randn(1, 2, nk, 16, generator=g), \
        torch.randn(1, 2, nk, 16, generator=g)
    for mask in (_infllm(nk, chunk=16, block=32), M.TreeMask([-1, 0, 1, 0][:nq], start=nk - nq)):
        ref = reference(q, k, v, mask)
        for splits in (1, 3):
            out = triton_attention(q, k, v, mask, block_n=BN, num_splits=splits)
            torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("nq, splits", [(37, 1), (4, 1), (4, 3)])
def test_return_lse_is_the_log_sum_exp_of_the_reference(nq, splits):
    from companion.nn.attention import attention_with_lse

    nk = 150
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(2, 4, nq, 16, generator=g), torch.randn(2, 2, nk, 16, generator=g), \
        torch.randn(2, 2, nk, 16, generator=g)
    mask = M.CausalMask() & M.KeyPaddingMask(torch.tensor([0, 90]))  # batch row 0 sees no key at all
    out, lse = triton_attention(q, k, v, mask, block_m=BM, block_n=BN, num_splits=splits, return_lse=True)
    ref_out, ref_lse = attention_with_lse(q, k, v, mask)
    assert lse.shape == (2, 4, nq) and lse.dtype == torch.float32
    assert torch.isneginf(lse[0]).all() and torch.equal(out[0], torch.zeros_like(out[0]))
    torch.testing.assert_close(lse[1], ref_lse[1], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(out, ref_out, atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError, match="return_lse=True is for inference"):
        triton_attention(q.requires_grad_(), k, v, mask, return_lse=True)


def test_fully_masked_rows_are_zero_without_nan():
    mask = M.KeyPaddingMask(torch.tensor([0, 5]))  # row 0 sees nothing at all
    q, k, v, do = _qkv(2, 2, 2, 7, 9, 16)
    out = triton_attention(q, k, v, mask, block_m=BM, block_n=BN)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    grads = torch.autograd.grad(out, (q, k, v), do)
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.equal(grads[0][0], torch.zeros_like(grads[0][0]))
    for impl in ("torch", "triton"):
        assert not attention(q, k, v, mask, impl=impl).isnan().any()


def test_empty_inputs():
    q, k, v, _ = _qkv(1, 2, 1, 5, 0, 16)
    assert torch.equal(triton_attention(q, k, v), torch.zeros(1, 2, 5, 16))
    q, k, v, _ = _qkv(1, 2, 1, 0, 6, 16)
    assert triton_attention(q, k, v, M.CausalMask()).shape == (1, 2, 0, 16)


def test_dispatch():
    q, k, v, _ = _qkv(1, 2, 1, 20, 20, 16)
    mask = M.CausalMask()
    ref = reference(q, k, v, mask)
    assert torch.equal(attention(q, k, v, mask, impl="torch"), ref)
    assert torch.equal(attention(q, k, v, mask, impl="auto"), ref)  # CPU tensors: auto = reference
    torch.testing.assert_close(attention(q, k, v, mask, impl="triton"), ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(attention(q, k, v, mask, scale=0.3, impl="triton"),
                               reference(q, k, v, mask, scale=0.3), atol=2e-5, rtol=2e-5)


def test_bad_input_names_the_argument():
    q, k, v, _ = _qkv(2, 4, 2, 8, 8, 16)
    cases = [
        (lambda: attention(q[0], k, v, impl="triton"), "q must have shape"),
        (lambda: attention(q, k[:, :, :, :8], v[:, :, :, :8], impl="triton"), "head dim"),
        (lambda: attention(q, k[:, :1].expand(2, 3, 8, 16), v[:, :1].expand(2, 3, 8, 16), impl="triton"),
         "must divide q heads"),
        (lambda: attention(q, k.half(), v.half(), impl="triton"), "share a dtype"),
        (lambda: attention(q.double(), k.double(), v.double(), impl="triton"), "float16, bfloat16 or float32"),
        (lambda: attention(q, k, v, M.PrefixLMMask(torch.tensor([1, 2, 3])), impl="triton"), "expected 1 or B=2"),
        (lambda: attention(q, k, v, torch.ones(8, 9, dtype=torch.bool), impl="triton"), r"cover \(Nq, Nk\)"),
        (lambda: attention(q, k, v, torch.ones(8, 8), impl="triton"), "must be bool"),
        (lambda: attention(q, k, v, "causal", impl="triton"), "mask must be"),
        (lambda: attention(q, k, v, impl="cuda"), "impl must be one of"),
        (lambda: triton_attention(q, k, v, block_m=24), "block_m must be a power of two"),
        (lambda: triton_attention(q, k, v, block_n=16), "block_n must be a power of two >= 32"),
        (lambda: triton_attention(q, k, v, num_splits=0), "num_splits"),
        (lambda: triton_attention(q, k, v, scale=float("nan")), "scale"),
        (lambda: attention(q, k[:, :, :4], v[:, :, :4], M.CausalMask(), impl="triton"), "q_offset"),
    ]
    for fn, msg in cases:
        with pytest.raises(ValueError, match=msg):
            fn()


def test_describe_mask_compiles_families_to_predicates():
    assert describe_mask(None).core_empty and not describe_mask(None).bits
    assert describe_mask(M.CausalMask()).causal
    km = describe_mask(M.set_based(SETS) & M.KeyPaddingMask(30))
    assert km.causal and km.set_ids is not None and km.lengths is not None and not km.bits
    km = describe_mask(M.SlidingWindowMask(8) & M.SlidingWindowMask(5))
    assert km.window == 5
    assert describe_mask(M.PrefixLMMask(3) & M.KeyPaddingMask(9)).prefix_len is not None
    # not expressible as ((causal & window & segment & set) | prefix) & lengths: bit-mask tiles
    for mask in (M.PrefixLMMask(3) & M.SegmentMask(SEG), M.CausalMask() | M.SlidingWindowMask(2), ~M.CausalMask(),
                 M.SegmentMask(SEG) & M.SegmentMask(SEG), M.TreeMask([-1, 0], start=3), _infllm()):
        assert describe_mask(mask).bits, mask
    assert "set[q]" in describe_mask(M.set_based(SETS)).describe()


def test_block_plan_is_cached_and_consistent():
    mask = M.CausalMask()
    plan = block_plan(mask, 100, 100, 16, 32)
    assert block_plan(mask, 100, 100, 16, 32) is plan  # computed once per mask and shape
    lay = plan.layout[0]
    assert lay.shape == (7, 4)
    assert not (lay[:, -1] == M.FULL).any()  # the ragged last key block is never FULL
    dense = mask.dense(100)[0]
    for r in range(7):
        for c in range(4):
            tile = dense[16 * r:16 * r + 16, 32 * c:32 * c + 32]
            assert (lay[r, c] == M.EMPTY) == (not tile.any())
    rows = plan.rows
    assert torch.equal(rows.full_cnt[0], (lay == M.FULL).sum(1).int())
    def listed(lists, i, kind):
        cnt, idx = (lists.full_cnt, lists.full_idx) if kind == M.FULL else (lists.part_cnt, lists.part_idx)
        return idx[0, i, :cnt[0, i]].tolist()

    for kind in (M.FULL, M.PARTIAL):  # the lists hold exactly the FULL / PARTIAL tiles, in order
        for r in range(7):
            assert listed(rows, r, kind) == (lay[r] == kind).nonzero()[:, 0].tolist()
        for c in range(4):
            assert listed(plan.cols, c, kind) == (lay[:, c] == kind).nonzero()[:, 0].tolist()
    assert 0.3 < plan.skipped < 0.5


def test_bit_mask_tiles_reproduce_the_mask():
    mask = _infllm(nk=70)
    plan = block_plan(mask, 70, 70, 16, 32)
    dense = mask.dense(70)[0]
    part = (plan.layout[0] == M.PARTIAL).nonzero()
    assert plan.bits.shape == (len(part), 16, 1)
    for t, (r, c) in enumerate(part.tolist()):
        words = plan.bits[t, :, 0].long() & 0xFFFFFFFF
        bits = ((words[:, None] >> torch.arange(32)) & 1).bool()  # (16, 32)
        exp = torch.zeros(16, 32, dtype=torch.bool)
        blk = dense[16 * r:16 * r + 16, 32 * c:32 * c + 32]
        exp[:blk.shape[0], :blk.shape[1]] = blk
        assert torch.equal(bits, exp)


def test_tree_mask_semantics():
    tree = M.TreeMask(torch.tensor([-1, 0, 0, 1, -1]), start=3)
    d = tree.dense(5, 8)[0]  # the 5 nodes against 3 context tokens + themselves
    assert d[:, :3].all()  # every node sees the context
    assert torch.equal(d[:, 3:], torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [1, 1, 0, 1, 0],
                                               [0, 0, 0, 0, 1]], dtype=torch.bool))
    assert tree.batch_size == 1 and tree.min_length == 0
    with pytest.raises(ValueError, match="parents"):
        M.TreeMask([0, 0], start=0)  # a node cannot be its own parent
    with pytest.raises(ValueError, match="start"):
        M.TreeMask([-1], start=-1)


def test_block_select_mask_semantics():
    sel = torch.tensor([[True, False], [False, True]])
    m = M.BlockSelectMask(sel, chunk_size=2, block_size=2)
    d = m.dense(4)[0]
    assert torch.equal(d, torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool))
    assert M.BlockSelectMask(torch.stack([sel, ~sel]), 2, 2).dense(4).shape == (2, 4, 4)
    with pytest.raises(ValueError, match="cover"):
        m.dense(5)
    with pytest.raises(ValueError, match="bool"):
        M.BlockSelectMask(sel.int(), 2, 2)
    with pytest.raises(ValueError, match="chunk_size"):
        M.BlockSelectMask(sel, 0, 2)


def test_blocks_launch_longest_first():
    plan = block_plan(M.CausalMask(), 100, 100, 16, 32)
    work = ((plan.layout[0] != M.EMPTY).sum(1))  # tiles per query block
    assert plan.rows.order[0] == 6 and plan.cols.order[0] == 0  # causal: last query block, first key block
    assert (work[plan.rows.order.long()].diff() <= 0).all()
    assert sorted(plan.rows.order.tolist()) == list(range(7))
