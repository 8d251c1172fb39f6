import math

import pytest
import torch
import torch.nn.functional as F

from companion.nn import (
    CausalMask, DenseMask, LearnedPositions, SinusoidalPositions, SlidingWindowMask, alibi_bias, alibi_slopes,
    apply_rope, attention, reference_attention, set_based, sinusoidal_table,
)


def qkv(B=2, H=4, Hkv=2, nq=7, nk=7, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, nq, D, generator=g), torch.randn(B, Hkv, nk, D, generator=g),
            torch.randn(B, Hkv, nk, D, generator=g))


def test_reference_equals_sdpa_causal_and_gqa():
    q, k, v = qkv()
    k4, v4 = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    expected = F.scaled_dot_product_attention(q, k4, v4, is_causal=True)
    torch.testing.assert_close(reference_attention(q, k, v, CausalMask()), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention(q, k, v, CausalMask()), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask", [None, SlidingWindowMask(2), set_based(torch.tensor([-1, 0, 0, 1, 1, 2, -1]))])
def test_both_paths_agree_with_bias(mask):
    q, k, v = qkv()
    bias = alibi_bias(4, torch.arange(7), torch.arange(7))
    a = reference_attention(q, k, v, mask, bias=bias)
    b = attention(q, k, v, mask, bias=bias)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_weights_rows_sum_to_one_and_respect_mask():
    q, k, v = qkv(nq=3, nk=7)
    out, w = reference_attention(q, k, v, CausalMask(), return_weights=True)
    assert w.shape == (2, 4, 3, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 3))
    assert (w[..., 0, 5:] == 0).all()  # first query sits at position 4 (decode alignment)


def test_fully_masked_rows_are_zero_without_nan_in_grad():
    q, k, v = qkv(nq=4, nk=4)
    q.requires_grad_(True)
    keep = torch.ones(4, 4, dtype=torch.bool)
    keep[2] = False
    for fn in (reference_attention, attention):
        out = fn(q, k, v, DenseMask(keep))
        assert (out[:, :, 2] == 0).all() and torch.isfinite(out).all()
        out.sum().backward()
        assert torch.isfinite(q.grad).all()
        q.grad = None


def test_shape_and_dtype_errors_name_the_argument():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="q must have shape"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match="share a dtype"):
        attention(q.double(), k, v)
    with pytest.raises(ValueError, match="must divide"):
        attention(q, k[:, :1].repeat(1, 3, 1, 1), v[:, :1].repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="head dim"):
        attention(q, k[..., :4], v[..., :4])
    with pytest.raises(ValueError, match="mask must cover"):
        attention(q, k, v, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="bias must have shape"):
        attention(q, k, v, bias=torch.zeros(1, 1, 7, 6))


def test_sinusoidal_matches_formula():
    t = sinusoidal_table(10, 8)
    assert math.isclose(t[3, 2].item(), math.sin(3 / 10000 ** (2 / 8)), rel_tol=1e-5)
    assert math.isclose(t[3, 3].item(), math.cos(3 / 10000 ** (2 / 8)), rel_tol=1e-5)
    torch.testing.assert_close(SinusoidalPositions(8)(torch.arange(10)), t)


def test_learned_positions_refuse_to_extrapolate():
    lp = LearnedPositions(4, 6)
    assert lp(torch.arange(4)).shape == (4, 6)
    with pytest.raises(ValueError, match="cannot extrapolate"):
        lp(torch.arange(5))


def test_rope_is_relative_and_norm_preserving():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)
    def score(pq, pk):
        return (apply_rope(q, torch.tensor([pq])) * apply_rope(k, torch.tensor([pk]))).sum().item()
    assert math.isclose(score(5, 2), score(103, 100), rel_tol=1e-4, abs_tol=1e-5)
    assert math.isclose(apply_rope(q, torch.tensor([37])).norm().item(), q.norm().item(), rel_tol=1e-5)
    with pytest.raises(ValueError, match="N=1"):
        apply_rope(q, torch.arange(2))


def test_rope_matches_hugging_face_llama():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, rotate_half  # noqa: F401
    from companion.nn import rope_cos_sin

    x = torch.randn(2, 3, 5, 8)
    pos = torch.arange(5).repeat(2, 1)
    cos, sin = rope_cos_sin(pos, 8)
    hf, _ = apply_rotary_pos_emb(x, x, cos, sin)
    torch.testing.assert_close(apply_rope(x, pos), hf)


def test_alibi_slopes_and_bias():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    assert len(alibi_slopes(6)) == 6
    b = alibi_bias(2, torch.arange(3), torch.arange(3))
    assert b.shape == (1, 2, 3, 3) and b[0, 0, 2, 0].item() == pytest.approx(-2 * 2.0 ** -4)


def test_attention_with_lse_and_merge_partials_are_exact():
    from companion.nn.attention import attention_with_lse, merge_partials

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 10, 8, generator=g, dtype=torch.float64).unbind(0)
    keep = CausalMask().dense(10, 10)[0]
    scores = (q @ k.transpose(-1, -2) / 8 ** 0.5).masked_fill(~keep, float("-inf"))
    want = torch.softmax(scores, -1) @ v
    outs, lses = zip(*(attention_with_lse(q, k[:, :, lo:hi], v[:, :, lo:hi], keep[None, None, :, lo:hi])
                       for lo, hi in ((0, 3), (3, 7), (7, 10))))
    o, lse = merge_partials(outs, lses)
    assert torch.allclose(o, want, atol=1e-12)
    assert torch.allclose(lse, torch.logsumexp(scores, -1), atol=1e-12)
    # the first query sees no key of the later shards: o = 0, lse = -inf, and merging never gives NaN
    assert torch.isinf(lses[1][..., 0]).all() and (outs[1][..., 0, :] == 0).all()
    o2, lse2 = merge_partials([outs[1][..., :1, :]], [lses[1][..., :1]])
    assert (o2 == 0).all() and torch.isinf(lse2).all()
    with pytest.raises(ValueError, match="equal length"):
        merge_partials(outs, lses[:2])


def test_apply_rope_takes_fractional_positions():
    x = torch.randn(1, 2, 5, 8, dtype=torch.float64)
    assert torch.allclose(apply_rope(x, torch.arange(5)), apply_rope(x, torch.arange(5).double()), atol=1e-6)
    half = apply_rope(apply_rope(x, torch.full((5,), 0.5, dtype=torch.float64)), torch.full((5,), 0.5, dtype=torch.float64))
    assert torch.allclose(half, apply_rope(x, torch.ones(5, dtype=torch.float64)), atol=1e-12)  # rotations compose
    inv = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    assert torch.allclose(apply_rope(x, torch.arange(5), inv_freq=inv / 2), apply_rope(x, torch.arange(5).double() / 2))


def test_redraw_on_draws_once_and_on_every_change():
    import ipywidgets as W

    from companion.widgets import redraw_on

    calls = []
    s = W.IntSlider(value=1)
    redraw_on([s], lambda: calls.append(s.value))
    s.value = 3
    assert calls == [1, 3]
    with pytest.raises(ValueError, match="controls"):
        redraw_on([], lambda: None)
