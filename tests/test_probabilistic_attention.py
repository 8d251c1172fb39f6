"""Unit tests of companion.attention.probabilistic_attention: PrFlashAttention block sampling (and
the Triton kernel on sampled layouts), staircase KV quantisation, the harmonic bias, Viterbi
sub-word segmentation and the cross-entropy method."""

import itertools
import math

import pytest
import torch

from companion.attention import probabilistic_attention as pa
from companion.kernels import block_plan, reference
from companion.nn import CausalMask, reference_attention
from companion.nn.masks import EMPTY


# ------------------------------------------------------------------------------------- PrFlash
@pytest.mark.parametrize("kind", pa.DISTANCE_KINDS)
@pytest.mark.parametrize("r,budget", [(8, 0.5), (5, 0.45), (3, 0.9), (16, 0.2)])
def test_keep_probabilities_meet_the_budget(kind, r, budget):
    p = pa.keep_probabilities(r, budget, kind)
    assert p.shape == (r,) and float(p[0]) == 1.0
    assert pa.expected_kept_fraction(p) == pytest.approx(budget, abs=1e-9)
    assert ((p >= 0) & (p <= 1)).all()
    assert (p[1:].diff() <= 1e-12).all()  # never increasing with the distance
    if kind == "uniform":
        assert torch.allclose(p[1:], torch.full((r - 1,), budget, dtype=torch.float64))


def test_keep_probabilities_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_blocks"):
        pa.keep_probabilities(1, 0.5)
    with pytest.raises(ValueError, match="budget"):
        pa.keep_probabilities(4, 0.0)
    with pytest.raises(ValueError, match="kind"):
        pa.keep_probabilities(4, 0.5, "linear")
    with pytest.raises(ValueError, match="neighbouring"):
        pa.keep_probabilities(8, 0.2, "geometric")


def test_sampled_layouts_are_causal_keep_the_diagonal_and_follow_p():
    p = pa.keep_probabilities(6, 0.4, "geometric")
    lay = pa.sample_block_layout(p, batch=4000, generator=torch.Generator().manual_seed(0))
    assert lay.shape == (4000, 6, 6)
    assert not lay.triu(1).any() and lay.diagonal(dim1=1, dim2=2).all()
    dist = pa.block_distance(6)
    for d in range(1, 6):
        freq = lay[:, dist == d].float().mean()
        assert float(freq) == pytest.approx(float(p[d]), abs=0.03)
    full = pa.sample_block_layout(torch.ones(4, dtype=torch.float64))
    assert torch.equal(full[0], torch.ones(4, 4, dtype=torch.bool).tril())
    with pytest.raises(ValueError, match="probs"):
        pa.sample_block_layout(torch.tensor([1.0, 1.5]))


def test_nearest_layout_keeps_the_nearest_blocks():
    lay = pa.nearest_block_layout(5, 0.5)  # 10 off-diagonal blocks -> 5 kept: 4 at distance 1, 1 at distance 2
    dist = pa.block_distance(5)
    assert int(lay[dist > 0].sum()) == 5 and lay[dist == 1].all() and int(lay[dist == 2].sum()) == 1
    assert bool(lay[4, 2])  # ties go to the latest query block


def test_prflash_mask_is_causal_and_blockwise():
    lay = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=torch.bool)
    dense = pa.prflash_mask(lay, 4).dense(12)[0]
    want = lay.repeat_interleave(4, 0).repeat_interleave(4, 1) & torch.ones(12, 12, dtype=torch.bool).tril()
    assert torch.equal(dense, want)
    with pytest.raises(ValueError, match="layout"):
        pa.prflash_mask(torch.ones(2, 3, dtype=torch.bool), 4)


def _qkv(b=2, h=4, hkv=1, n=96, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, n, d, generator=g), torch.randn(b, hkv, n, d, generator=g),
            torch.randn(b, hkv, n, d, generator=g))


def test_prflash_with_every_block_kept_is_dense_attention():
    q, k, v = _qkv()
    fn = pa.PrFlashAttention(16, probs=torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(fn(q, k, v, mask=CausalMask()), reference_attention(q, k, v, CausalMask()))
    assert fn.kept == fn.total == 2 * 21


def test_prflash_renormalises_over_the_kept_blocks():
    q, k, v = _qkv(b=1)
    lay = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 1]], dtype=torch.bool)
    out = pa.PrFlashAttention(32, layout=lay)(q, k, v, mask=CausalMask())
    # query 70 (block 2) sees keys 0..31 and 64..70 only, softmax over exactly those
    keys = torch.cat([torch.arange(32), torch.arange(64, 71)])
    s = q[0, :, 70] @ k[0, 0, keys].T / 4.0  # (H, n_keys)
    want = torch.softmax(s, -1) @ v[0, 0, keys]
    torch.testing.assert_close(out[0, :, 70], want)


def test_prflash_kernel_matches_reference_and_skips_the_dropped_tiles():
    q, k, v = _qkv(n=96)
    lay = pa.sample_block_layout(pa.keep_probabilities(3, 0.5, "uniform"), 2, torch.Generator().manual_seed(3))
    lay[0, 2, 0], lay[1, 2, 0] = False, True  # make the two rows differ
    mask = CausalMask() & pa.prflash_mask(lay, 32)
    got = pa.PrFlashAttention(32, layout=lay, impl="triton")(q, k, v, mask=CausalMask())
    torch.testing.assert_close(got, reference(q, k, v, mask), atol=2e-5, rtol=2e-5)
    plan = block_plan(mask, 96, 96, 32, 32)
    assert torch.equal(plan.layout != EMPTY, lay)  # the kernel visits exactly the kept blocks


def test_prflash_rejects_mismatched_sizes_and_bias():
    q, k, v = _qkv(n=96)
    fn = pa.PrFlashAttention(16, probs=torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="blocks"):
        fn(q, k, v)
    with pytest.raises(ValueError, match="bias"):
        pa.PrFlashAttention(16, probs=torch.ones(6, dtype=torch.float64))(q, k, v, bias=torch.zeros(1))
    with pytest.raises(ValueError, match="exactly one"):
        pa.PrFlashAttention(16)


# ------------------------------------------------------------------------------------- SAQ
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantize_error_is_at_most_half_a_step(bits):
    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(bits)) * 3
    qt = pa.quantize(x, bits, 16)
    assert qt.codes.dtype == torch.uint8 and int(qt.codes.max()) <= 2**bits - 1
    err = (pa.dequantize(qt) - x).reshape(3, 5, 2, 16).abs().amax(-1, keepdim=True)
    step = qt.scale.float()
    assert (err <= step / 2 + 2e-3 * x.abs().max()).all()  # + fp16 rounding of scale and minimum
    assert qt.n_bits == x.numel() * bits + 2 * 16 * (x.numel() // 16)


def test_quantize_constant_groups_and_bad_arguments():
    x = torch.full((2, 8), 1.25)
    assert torch.equal(pa.fake_quantize(x, 2, 4), x)
    with pytest.raises(ValueError, match="bits"):
        pa.quantize(x, 9, 4)
    with pytest.raises(ValueError, match="multiple of group_size"):
        pa.quantize(x, 4, 3)
    with pytest.raises(ValueError, match="floating-point"):
        pa.quantize(torch.ones(2, 8, dtype=torch.long), 4, 4)


def test_staircase_levels_and_bit_accounting():
    st = pa.Staircase((8, 4, 2), (2, 3), group_size=16)
    age = torch.arange(8)
    assert st.level(age).tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    assert st.bits_per_value(age).tolist() == [10, 10, 6, 6, 6, 4, 4, 4]  # + 2 * 16 / 16 for scale and minimum
    assert st.cache_bits(8) == pytest.approx(50 / 8)
    pairs = sum(float(st.bits_per_value(torch.arange(i + 1)).sum()) for i in range(8)) / 36
    assert st.scoring_bits(8) == pytest.approx(pairs)
    assert pa.Staircase((3,), group_size=16).cache_bits(5) == 5.0
    with pytest.raises(ValueError, match="widths"):
        pa.Staircase((8, 4), ())
    with pytest.raises(ValueError, match="increase"):
        pa.Staircase((2, 4), (3,))


def _decode_with_staircase_cache(q, k, v, st):
    """Token-by-token decoding with an explicit cache that demotes tokens when they change stair."""
    b, h, n, d = q.shape
    rep = h // k.shape[1]
    cache_k, cache_v, stair, outs = [], [], [], []
    for i in range(n):
        for j in range(len(cache_k)):  # age every cached token by one step; demote at a stair edge
            new = int(st.level(torch.tensor(i - j)))
            while stair[j] < new:
                stair[j] += 1
                cache_k[j] = pa.fake_quantize(cache_k[j], st.bits[stair[j]], st.group_size)
                cache_v[j] = pa.fake_quantize(cache_v[j], st.bits[stair[j]], st.group_size)
        cache_k.append(pa.fake_quantize(k[:, :, i], st.bits[0], st.group_size))
        cache_v.append(pa.fake_quantize(v[:, :, i], st.bits[0], st.group_size))
        stair.append(0)
        kk = torch.stack(cache_k, 2).repeat_interleave(rep, 1)  # (B, H, i+1, D)
        vv = torch.stack(cache_v, 2).repeat_interleave(rep, 1)
        w = torch.softmax(q[:, :, i:i + 1] @ kk.transpose(-1, -2) / math.sqrt(d), -1)
        outs.append(w @ vv)
    return torch.cat(outs, 2)


@pytest.mark.parametrize("st", [pa.Staircase((8, 4, 2), (3, 4), group_size=8), pa.Staircase((3,), group_size=8)])
def test_saq_attention_equals_decoding_with_a_staircase_cache(st):
    q, k, v = _qkv(b=2, h=4, hkv=1, n=20, d=16, seed=5)
    torch.testing.assert_close(pa.saq_attention(q, k, v, st), _decode_with_staircase_cache(q, k, v, st),
                               atol=1e-5, rtol=1e-5)


def test_saq_with_8_bits_is_close_to_exact_attention():
    q, k, v = _qkv(n=24)
    got = pa.SAQAttention(pa.Staircase((8,), group_size=16))(q, k, v, mask=CausalMask())
    torch.testing.assert_close(got, reference_attention(q, k, v, CausalMask()), atol=3e-2, rtol=0)
    with pytest.raises(ValueError, match="causal"):
        pa.saq_attention(q, k, v, pa.Staircase((8,), group_size=16),
                         mask=pa.prflash_mask(torch.eye(2, dtype=torch.bool), 12))


# ------------------------------------------------------------------------------------- harmonic
def test_harmonic_numbers_and_bias():
    h = pa.harmonic_numbers(200)
    assert float(h[0]) == 0.0 and float(h[1]) == 1.0 and float(h[4]) == pytest.approx(25 / 12)
    big = torch.arange(100, 200, dtype=torch.float64)
    approx = big.log() + 0.5772156649 + 1 / (2 * big)
    assert torch.allclose(h[100:].double(), approx, atol=1e-5)  # H_n ~ ln n + γ + 1/(2n)
    bias = pa.harmonic_bias(4, 3, 5)  # queries at positions 2, 3, 4
    slopes = torch.tensor([2 ** (-2.0), 2 ** (-4.0), 2 ** (-6.0), 2 ** (-8.0)])
    assert bias.shape == (1, 4, 3, 5)
    assert float(bias[0, 1, 2, 1]) == pytest.approx(-float(slopes[1]) * float(h[3]))
    assert float(bias[0, 0, 0, 2]) == 0.0 and float(bias[0, 0, 0, 4]) == 0.0


def test_harmonic_attention_equals_reference_with_the_bias():
    q, k, v = _qkv(n=12, hkv=2)
    want = reference_attention(q, k, v, CausalMask(), bias=pa.harmonic_bias(4, 12))
    torch.testing.assert_close(pa.harmonic_attention(q, k, v, mask=CausalMask()), want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------- sub-words
def test_viterbi_is_the_best_segmentation():
    vocab = ["a", "b", "c", "ab", "bc", "abc", "ca"]
    logp = {t: math.log(p) for t, p in zip(vocab, [0.2, 0.1, 0.1, 0.15, 0.2, 0.05, 0.2])}
    for word in ["abc", "abcab", "cabca", "bcabcc"]:
        best = -math.inf
        for cuts in itertools.product([0, 1], repeat=len(word) - 1):  # every segmentation
            pieces, start = [], 0
            for i, c in enumerate(cuts, 1):
                if c:
                    pieces.append(word[start:i])
                    start = i
            pieces.append(word[start:])
            if all(p in logp for p in pieces):
                best = max(best, sum(logp[p] for p in pieces))
        pieces, score = pa.viterbi_segment(word, logp, 3)
        assert "".join(pieces) == word and score == pytest.approx(best)
    with pytest.raises(ValueError, match="cannot be segmented"):
        pa.viterbi_segment("abd", logp, 3)


def test_hard_em_never_lowers_the_training_likelihood():
    words = {"abcab": 5, "cab": 3, "abc": 7, "bca": 2}
    vocab = ["a", "b", "c", "ab", "bc", "ca"]
    logp, hist = pa.fit_unigram(words, vocab, {t: 1.0 for t in vocab}, iters=4)
    assert all(b <= a + 1e-12 for a, b in zip(hist, hist[1:]))
    assert sum(math.exp(x) for x in logp.values()) == pytest.approx(1.0)
    score = pa.corpus_score({"ab": 2}, lambda w: ["a", "b"], {"a": math.log(0.5), "b": math.log(0.25)})
    assert score == {"nats_per_char": pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2), "tokens_per_char": 1.0}


# ------------------------------------------------------------------------------------- CEM, word vectors
def test_cem_finds_the_maximum_of_a_quadratic():
    target = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    res = pa.cross_entropy_method(lambda x: -float(((x - target) ** 2).sum()), [-3, -3, -3], [3, 3, 3],
                                  n_samples=40, iters=15, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(res.best_x, target, atol=0.1)
    assert float(res.stds[-1].max()) < float(res.stds[0].max()) / 5
    assert len(res.scores) == 15 and res.samples[0].shape == (40, 3)
    with pytest.raises(ValueError, match="upper"):
        pa.cross_entropy_method(lambda x: 0.0, [0, 1], [1, 0])


def test_cooccurrence_counts_and_similarity_score():
    words = "a b a c a b".split()
    cc = pa.CooccurrenceCounts(words, vocab_size=3, max_window=2)
    i = cc.index
    m1 = cc.matrix(1)
    assert float(m1[i["a"], i["b"]]) == 3 and float(m1[i["b"], i["a"]]) == 3 and float(m1[i["a"], i["a"]]) == 0
    m2 = cc.matrix(2)  # distance-2 pairs weigh 1/2: (a, a) twice, (b, c) and (c, b) once each; counted both ways
    assert float(m2[i["a"], i["a"]]) == 2 and float(m2[i["b"], i["c"]]) == 1 and float(m2[i["a"], i["b"]]) == 3
    vecs = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
    idx = {"w": 0, "x": 1, "y": 2, "z": 3}
    rho, n = pa.word_similarity_score(vecs, idx, [("w", "x", 9.0), ("w", "y", 1.0), ("w", "z", 5.0), ("q", "w", 3.0)])
    assert n == 3 and rho == pytest.approx(1.0)
    v = pa.sppmi_vectors(pa.CooccurrenceCounts("a b c a b d a c".split() * 5, 4, 2), 2, 1, 2)
    assert v.shape == (4, 2) and torch.isfinite(v).all()


def test_tile_codes_of_a_sampled_layout_give_the_plan_of_its_mask():
    from companion.kernels import block_plan

    R, blk = 8, 32
    lay = pa.sample_block_layout(pa.keep_probabilities(R, 0.5, "geometric"), 3, torch.Generator().manual_seed(0))
    codes = pa.prflash_tile_codes(lay)
    from_mask = block_plan(pa.prflash_mask(lay, blk), R * blk, R * blk, blk, blk)
    direct = block_plan(pa.prflash_mask(lay, blk), R * blk, R * blk, blk, blk, layout=codes)
    assert torch.equal(from_mask.layout, direct.layout) and torch.equal(from_mask.layout, codes)
    bad = lay.clone()
    bad[0, 2, 2] = False
    with pytest.raises(ValueError, match="diagonal"):
        pa.prflash_tile_codes(bad)
