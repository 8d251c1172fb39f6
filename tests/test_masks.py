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
