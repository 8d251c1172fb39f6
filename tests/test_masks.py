import itertools

import pytest
import torch

from companion.nn import masks as M


def brute(pred, nq, nk, q_offset=None):
    q_offset = nk - nq if q_offset is None else q_offset
    return torch.tensor([[pred(q_offset + i, j) for j in range(nk)] for i in range(nq)])


@pytest.mark.parametrize("nq,nk", [(7, 7), (3, 9), (1, 5), (5, 5)])
def test_position_masks_match_brute_force(nq, nk):
    cases = [
        (M.CausalMask(), lambda q, k: k <= q),
        (M.SlidingWindowMask(3), lambda q, k: k <= q and q - k < 3),
        (M.PrefixLMMask(2), lambda q, k: k <= q or k < 2),
        (M.FullMask(), lambda q, k: True),
        (M.KeyPaddingMask(4), lambda q, k: k < 4),
    ]
    for mask, pred in cases:
        assert torch.equal(mask.dense(nq, nk)[0], brute(pred, nq, nk)), mask


def test_segment_and_set_masks():
    seg = torch.tensor([0, 0, 1, 1, 1, 2])
    d = M.segments(seg).dense(6)[0]
    assert torch.equal(d, brute(lambda q, k: k <= q and seg[q] == seg[k], 6, 6))
    sets = torch.tensor([-1, -1, 0, 0, 1, 1, 1, -1])
    d = M.set_based(sets).dense(8)[0]
    exp = brute(lambda q, k: k <= q and (sets[q] < 0 or sets[k] < 0 or sets[q] == sets[k]), 8, 8)
    assert torch.equal(d, exp)
    assert not d[4, 2] and d[7, 2] and d[4, 1]  # set elements blind to each other, suffix sees all


def test_per_row_tensors_give_batched_masks():
    m = M.PrefixLMMask(torch.tensor([0, 3]))
    d = m.dense(5)
    assert d.shape == (2, 5, 5)
    assert torch.equal(d[0], M.CausalMask().dense(5)[0])
    assert d[1, 0, 2] and not d[0, 0, 2]
    seg = M.SegmentMask(torch.tensor([[0, 0, 1], [0, 1, 1]]))
    assert seg.dense(3).shape == (2, 3, 3) and (M.CausalMask() & seg).batch_size == 2


def test_composition_algebra():
    c, w = M.CausalMask(), M.SlidingWindowMask(2)
    for nq, nk in [(6, 6), (2, 6)]:
        a, b = c.dense(nq, nk), w.dense(nq, nk)
        assert torch.equal((c & w).dense(nq, nk), a & b)
        assert torch.equal((c | w).dense(nq, nk), a | b)
        assert torch.equal((~c).dense(nq, nk), ~a)
    with pytest.raises(TypeError, match="only with masks"):
        M.AndMask(c, "causal")
    with pytest.raises(ValueError, match="different batch sizes"):
        M.PrefixLMMask(torch.tensor([1, 2])) & M.PrefixLMMask(torch.tensor([1, 2, 3]))


def test_decode_alignment_and_q_offset():
    # one query against 6 keys sits at position 5 and sees everything causally
    assert M.CausalMask().dense(1, 6).all()
    assert M.CausalMask().dense(2, 6, q_offset=0)[0].sum() == 3  # rows 0 and 1: 1 + 2 keys


def test_block_layout_classifies_tiles_and_is_cached():
    m = M.CausalMask()
    lay = m.block_layout(8, 8, 4, 4)
    assert lay.tolist() == [[[M.PARTIAL, M.EMPTY], [M.FULL, M.PARTIAL]]]
    assert m.block_layout(8, 8, 4, 4) is lay
    odd = M.CausalMask().block_layout(5, 5, 4, 4)  # the last tile holds only (4, 4): padding is ignored
    assert odd.tolist() == [[[M.PARTIAL, M.EMPTY], [M.FULL, M.FULL]]]
    dense = M.FullMask().block_layout(6, 6, 4, 4)
    assert (dense == M.FULL).all()


def test_dense_mask_and_errors():
    mat = torch.tensor([[True, False], [True, True]])
    assert torch.equal(M.DenseMask(mat).dense(2)[0], mat)
    batched = torch.rand(3, 2, 5) > 0.5  # decode-style: 2 queries at positions 3, 4 against 5 keys
    dm = M.DenseMask(batched)
    assert dm.batch_size == 3 and torch.equal(dm.dense(2, 5), batched)
    assert torch.equal((dm & M.CausalMask()).dense(2, 5), batched & M.CausalMask().dense(2, 5))
    with pytest.raises(ValueError, match="outside"):
        dm.dense(3, 5)
    with pytest.raises(ValueError, match="bool"):
        M.DenseMask(mat.int())
    with pytest.raises(ValueError, match="window"):
        M.SlidingWindowMask(0)
    with pytest.raises(ValueError, match="prefix_len"):
        M.PrefixLMMask(-1)
    with pytest.raises(ValueError, match="integers"):
        M.SetMask(torch.zeros(3))
    with pytest.raises(ValueError, match="cover 3 positions"):
        M.SegmentMask([0, 0, 1]).dense(5)
    with pytest.raises(ValueError, match="q_offset"):
        M.CausalMask().dense(4, 2)


def test_mask_mod_is_flexattention_style():
    m = M.set_based(torch.tensor([-1, 0, 1]))
    b, h = torch.tensor(0), torch.tensor(0)
    got = [[bool(m.mask_mod(b, h, torch.tensor(q), torch.tensor(k))) for k in range(3)] for q in range(3)]
    assert got == [[True, False, False], [True, True, False], [True, False, True]]
    assert set(itertools.chain(m.tensors)) == {"1.set_ids"}


def _layout_families():
    g = torch.Generator().manual_seed(0)
    seg = torch.tensor([0] * 3 + [1] * 20 + [2] + [3] * 13)
    sets = torch.tensor([-1] * 5 + [0] * 7 + [1] + [2] * 9 + [-1] * 15)
    items = torch.tensor([-(i + 1) for i in range(6)] + [i // 3 for i in range(24)] + [-(i + 10) for i in range(7)])
    sel = torch.rand(5, 5, generator=g) > 0.5
    return {
        "full": M.FullMask(), "causal": M.CausalMask(), "window": M.SlidingWindowMask(9),
        "prefix_per_row": M.PrefixLMMask(torch.tensor([4, 30])),
        "padding": M.CausalMask() & M.KeyPaddingMask(torch.tensor([0, 20])),
        "segments": M.segments(seg), "segments_unsorted": M.SegmentMask(seg[torch.randperm(37, generator=g)]),
        "set_based": M.set_based(sets), "set_unsorted": M.set_based(sets[torch.randperm(37, generator=g)]),
        "setrec_items": M.CausalMask() & (~M.SegmentMask(items) | M.SlidingWindowMask(1)),
        "block_select": M.CausalMask() & M.BlockSelectMask(sel, 8, 8),
        "tree": M.TreeMask([-1, 0, 0, 1, 2, -1], start=31),
        "infllm": M.SlidingWindowMask(6) | (M.CausalMask() & M.KeyPaddingMask(2)) | (
            M.CausalMask() & M.BlockSelectMask(sel, 8, 8)),
        "prefix_and_segments": M.PrefixLMMask(5) & M.SegmentMask(seg), "not_causal": ~M.CausalMask(),
        "batched_segments": M.CausalMask() & M.SegmentMask(torch.stack([seg, seg.flip(0)])),
    }


@pytest.mark.parametrize("name", sorted(_layout_families()))
def test_closed_form_layouts_equal_the_dense_render(name):
    """block_layout (closed forms + evaluating only the undecided tiles) == classifying the dense mask."""
    mask = _layout_families()[name]
    for (nq, nk), (bq, bk) in itertools.product([(37, 37), (11, 37), (1, 37), (6, 30)],
                                                [(4, 4), (16, 32), (8, 16), (64, 64), (1, 1)]):
        lay = mask.block_layout(nq, nk, bq, bk)
        assert torch.equal(lay, mask.dense_block_layout(nq, nk, bq, bk)), (name, nq, nk, bq, bk)


def test_closed_form_layouts_never_render_the_mask(monkeypatch):
    """Causal, window, prefix-LM, key padding, segment and set layouts cost O(R·C): no dense render at N=32k."""
    n = 32768
    seg = torch.arange(n) // 3000
    sets = torch.full((n,), -1)
    sets[2048:n - 2048] = torch.arange(n - 4096) * 8 // (n - 4096)

    def no_dense(*args, **kwargs):
        raise AssertionError("rendered densely")

    monkeypatch.setattr(M.Mask, "dense", no_dense)
    for mask in (M.CausalMask(), M.SlidingWindowMask(1024), M.PrefixLMMask(n // 4),
                 M.CausalMask() & M.KeyPaddingMask(torch.tensor([n, n // 2])), M.segments(seg), M.set_based(sets)):
        lay = mask.block_layout(n, n, 128, 64)
        assert lay.shape[1:] == (256, 512) and (lay == M.EMPTY).any()
