"""Unit tests of the deconstructed attention variants (companion.attention.deconstructing_attention)."""

import math

import pytest
import torch

from companion.attention import deconstructing_attention as da
from companion.nn import CausalMask, TinyLM, TransformerConfig, reference_attention


def cfg(**kw) -> TransformerConfig:
    base = dict(vocab_size=40, d_model=16, n_layers=4, n_heads=2, pos="learned", max_len=12, d_ff=32, embed_std=1.0)
    return TransformerConfig(**(base | kw))


def qkv(seed: int = 0, B: int = 2, H: int = 3, N: int = 7, D: int = 4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, D, generator=g, dtype=torch.float64) for _ in range(3)]


def test_layer_plan_uniform_and_hybrid_odd_layers():
    assert da.layer_plan("nonapx", "uniform", 3) == ("nonapx",) * 3
    assert da.layer_plan("mlp", "hybrid", 4) == ("mlp", "standard", "mlp", "standard")
    for bad in (("nope", "uniform", 2), ("mlp", "interleaved", 2), ("mlp", "hybrid", 0)):
        with pytest.raises(ValueError):
            da.layer_plan(*bad)


def test_standard_plan_is_the_tinylm():
    c = cfg()
    torch.manual_seed(0)
    model = da.DeconLM(c, ["standard"] * 4)
    ref = TinyLM(c)
    ref.load_state_dict(model.state_dict())
    x = torch.randint(0, 40, (3, 9))
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


def test_variants_are_parameter_matched():
    c = cfg(d_model=48, n_heads=4)
    n_std = sum(p.numel() for p in da.DeconLM(c, ["standard"] * 4).parameters())
    for v in ("approx", "nonapx", "rndembqk"):
        assert sum(p.numel() for p in da.DeconLM(c, [v] * 4).parameters()) == n_std
    n_mlp = sum(p.numel() for p in da.DeconLM(c, ["mlp"] * 4).parameters())
    assert abs(n_mlp - n_std) <= 0.01 * n_std  # 3·d·round(4d/3) vs 4d² per layer
    assert da.GatedMLPMixer(c).down.in_features * 3 * 48 == 4 * 48 * 48  # 4d/3 is an integer here


def test_softmax_weights_match_reference_attention():
    q, k, v = qkv()
    want, w = reference_attention(q, k, v, CausalMask(), return_weights=True)
    torch.testing.assert_close(da.softmax_weights(q, k, CausalMask()), w)
    torch.testing.assert_close(da.softmax_weights(q, k, CausalMask()) @ v, want)


def test_taylor_features_give_the_taylor_kernel_exactly():
    q, k, _ = qkv(1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    got = da.taylor_features(q) @ da.taylor_features(k).transpose(-1, -2)
    torch.testing.assert_close(got, 1 + s + s * s / 2)
    assert da.taylor_features(q).shape[-1] == 1 + 4 + 16


def test_taylor_linear_equals_quadratic_and_weights_are_a_distribution():
    q, k, v = qkv(2)
    w = da.taylor_weights(q, k, CausalMask())
    assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)))
    assert (w.triu(1) == 0).all()
    torch.testing.assert_close(da.taylor_attention(q, k, v, CausalMask(), linear=True),
                               da.taylor_attention(q, k, v, CausalMask()))


def test_nonapx_rows_share_one_key_score_and_linear_scan_matches():
    q, k, v = qkv(3)
    w = da.nonapx_weights(q, k, CausalMask())  # (B, H, N, N)
    s = da.nonapx_scores(q, k)
    N = q.shape[2]
    for i in range(N):  # row i is softmax of the key scores s_0..s_i
        torch.testing.assert_close(w[..., i, : i + 1], torch.softmax(s[..., : i + 1], -1))
    # the ratio of two keys' weights is the same in every row that sees both (key-only score)
    torch.testing.assert_close(w[..., 3:, 1] / w[..., 3:, 2], (s[..., 1] - s[..., 2]).exp()[..., None].expand(-1, -1, N - 3))
    torch.testing.assert_close(da.nonapx_attention(q, k, v, CausalMask(), linear=True),
                               da.nonapx_attention(q, k, v, CausalMask()))


def _global_max_scan(s, v):
    """The former linear form: one shift by the sequence maximum for every row (unsafe)."""
    e = torch.exp(s - s.amax(-1, keepdim=True))[..., None]
    return torch.cumsum(e * v, dim=2) / torch.cumsum(e, dim=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nonapx_linear_form_is_safe_where_a_global_max_underflows(dtype):
    g = torch.Generator().manual_seed(4)
    B, H, N, D = 2, 3, 64, 8
    q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=torch.float64) for _ in range(3))
    s = da.nonapx_scores(q, k)
    # scores that climb along the sequence: early keys lie ~1000 below the global maximum
    ramp = torch.linspace(-500, 500, N, dtype=torch.float64)
    k = k * ((s + ramp) / s)[..., None]  # s_j -> s_j + ramp_j exactly (the score is linear in k_j)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    s = da.nonapx_scores(q, k)
    assert float(s.amax(-1).min() - s[..., 0].max()) > 800
    want = da.nonapx_attention(q, k, v, CausalMask())  # N×N softmax, per-row max: safe
    assert torch.isfinite(want).all()
    old = _global_max_scan(s, v)
    assert not torch.isfinite(old[..., 0, :]).all()  # the global-max form gives 0/0 in the first rows
    got = da.nonapx_attention(q, k, v, CausalMask(), linear=True)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(got[..., 0, :], v[..., 0, :], **tol)  # row 0 sees only key 0


def test_nonapx_scan_matches_the_quadratic_form_in_value_and_gradient():
    q, k, v = (t.requires_grad_() for t in qkv(5, N=9))
    gq = torch.autograd.grad(da.nonapx_attention(q, k, v, CausalMask()).square().sum(), (q, k, v))
    gl = torch.autograd.grad(da.nonapx_attention(q, k, v, CausalMask(), linear=True).square().sum(), (q, k, v))
    for a, b in zip(gq, gl):
        torch.testing.assert_close(a, b)
    q32, k32, v32 = (t.detach().float() for t in (q, k, v))
    torch.testing.assert_close(da.nonapx_attention(q32, k32, v32, CausalMask(), linear=True),
                               da.nonapx_attention(q32, k32, v32, CausalMask()))
    with pytest.raises(ValueError, match="s must"):
        da.nonapx_scan(v32, v32)
    with pytest.raises(ValueError, match="v must"):
        da.nonapx_scan(da.nonapx_scores(q32, k32), v32[:, :, :3])


def test_linear_forms_need_a_causal_mask():
    q, k, v = qkv()
    for fn in (da.taylor_attention, da.nonapx_attention):
        with pytest.raises(ValueError, match="CausalMask"):
            fn(q, k, v, None, linear=True)
    with pytest.raises(ValueError, match="q must"):
        da.taylor_weights(q[0], k)


def test_mlp_variant_does_not_mix_tokens():
    torch.manual_seed(0)
    model = da.DeconLM(cfg(), da.layer_plan("mlp", "uniform", 4))
    x = torch.randint(0, 40, (2, 10))
    y = x.clone()
    y[:, :5] = torch.randint(0, 40, (2, 5))  # change every other token
    y[:, 6:] = torch.randint(0, 40, (2, 4))
    torch.testing.assert_close(model(x)[:, 5], model(y)[:, 5])  # ... position 5 only sees itself (and its position)


def test_rndembqk_map_is_input_independent_but_trains():
    torch.manual_seed(0)
    model = da.DeconLM(cfg(), da.layer_plan("rndembqk", "hybrid", 4), seed=3)
    x1, x2 = torch.randint(0, 40, (2, 2, 10))
    m1, m2 = da.mixing_matrices(model, x1), da.mixing_matrices(model, x2)
    for layer in (0, 2):  # the rndembqk layers: one map (1, H, N, N) for every input
        assert m1[layer].shape == (1, 2, 10, 10)
        torch.testing.assert_close(m1[layer], m2[layer], rtol=0, atol=0)
    assert not torch.allclose(m1[1][0], m2[1][0])  # standard layers depend on the input
    model.blocks[0].mlp[0].weight.data.add_(torch.randn_like(model.blocks[0].mlp[0].weight))  # a lower layer changes -> layer 3's fixed X changes
    assert not torch.allclose(da.mixing_matrices(model, x1)[2], m1[2])
    assert model(x1).shape == (2, 10, 40)


def test_fixed_tokens_variant_and_argument_checks():
    torch.manual_seed(0)
    fixed = torch.arange(12) % 40
    model = da.DeconLM(cfg(), ["rndembqk"] * 4, fixed_tokens=fixed)
    torch.testing.assert_close(model.embed.fixed_input(5), model.embed.inner(fixed[:5]))
    with pytest.raises(ValueError, match="fixed_tokens"):
        da.DeconLM(cfg(), ["rndembqk"] * 4, fixed_tokens=torch.arange(3))
    with pytest.raises(ValueError, match="layers"):
        da.DeconLM(cfg(), ["standard"] * 3)
    with pytest.raises(ValueError, match="cfg.pos"):
        da.DeconLM(cfg(pos="alibi"), ["nonapx"] * 4)
    with pytest.raises(ValueError, match="attn_fn"):
        da.DeconLM(cfg(), ["mlp"] * 4)(torch.zeros(1, 3, dtype=torch.long), attn_fn=lambda *a, **k: None)


def test_mqar_batch_layout():
    g = torch.Generator().manual_seed(0)
    K, NV, P, Q = 6, 5, 4, 3
    x, y = da.mqar_batch(8, P, Q, K, NV, g)
    assert x.shape == y.shape == (8, P + 2 * Q - 1)
    assert int(x.max()) < da.mqar_vocab_size(K, NV)
    rec = x[:, :P] - K - NV
    keys, vals = rec // NV, rec % NV
    assert (keys.sort(-1).values.diff(dim=-1) > 0).all()  # distinct keys
    for b in range(8):
        table = dict(zip(keys[b].tolist(), vals[b].tolist()))
        for i in range(Q):
            pos = P + 2 * i
            assert y[b, pos] == K + table[int(x[b, pos])]
    assert int((y != da.IGNORE).sum()) == 8 * Q
    with pytest.raises(ValueError, match="n_pairs"):
        da.mqar_batch(2, 7, 1, K, NV, g)


def test_mqar_accuracy_of_a_perfect_lookup():
    g = torch.Generator().manual_seed(1)
    K, NV, P, Q = 4, 3, 3, 2
    x, y = da.mqar_batch(5, P, Q, K, NV, g)

    class Oracle(torch.nn.Module):
        def forward(self, idx):
            return torch.nn.functional.one_hot(y.clamp_min(0), da.mqar_vocab_size(K, NV)).float()

    assert da.mqar_accuracy(Oracle(), x, y) == 1.0


def test_rope_variants_rotate_like_standard_layers():
    c = cfg(pos="rope")
    torch.manual_seed(0)
    model = da.DeconLM(c, da.layer_plan("rndembqk", "hybrid", 4), seed=1)
    x1, x2 = torch.randint(0, 40, (2, 2, 10))
    m1, m2 = da.mixing_matrices(model, x1), da.mixing_matrices(model, x2)
    torch.testing.assert_close(m1[0], m2[0], rtol=0, atol=0)  # still one map for every input
    torch.manual_seed(0)
    nonapx = da.DeconLM(c, ["nonapx"] * 4)
    x = torch.randint(0, 40, (2, 10))
    out = nonapx(x)
    for m in nonapx.mixers():
        m.rotate = True  # RoPE on a query and key of the same position cancels in q_j·k_j
    torch.testing.assert_close(nonapx(x), out, rtol=1e-5, atol=1e-5)
