"""Unit tests of RoPE ABF / position interpolation: the decay bound and the context extensions."""

import math

import pytest
import torch

from companion.inference import rope_abf as ra
from companion.nn import TinyLM, TransformerConfig, apply_rope


def brute_force_bound(m: float, d: int, base: float) -> float:
    thetas = [base ** (-2 * k / d) for k in range(d // 2)]
    total, partial = 0.0, 0j
    for t in thetas:
        partial += complex(math.cos(m * t), math.sin(m * t))
        total += abs(partial)
    return total / (d // 2)


def test_inv_freq_and_wavelengths():
    th = ra.rope_inv_freq(8, 10000.0)
    assert th.dtype == torch.float64
    assert torch.allclose(th, torch.tensor([1.0, 0.1, 0.01, 0.001], dtype=torch.float64))
    assert torch.allclose(ra.wavelengths(8, 10000.0), 2 * math.pi / th)


@pytest.mark.parametrize("d,base", [(8, 10000.0), (32, 5e5), (64, 123.0)])
def test_decay_bound_matches_brute_force(d, base):
    ms = [0, 1, 7, 100, 2048.5]
    got = ra.decay_bound(ms, d, base)
    want = torch.tensor([brute_force_bound(m, d, base) for m in ms], dtype=torch.float64)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert float(got[0]) == pytest.approx((d / 2 + 1) / 2)
    assert float(ra.relative_decay(0, d, base)[0]) == pytest.approx(1.0)


def test_decay_bound_bounds_every_score():
    g = torch.Generator().manual_seed(0)
    d, base = 16, 10000.0
    theta = ra.rope_inv_freq(d, base)
    for _ in range(50):
        h = torch.complex(torch.randn(d // 2, generator=g, dtype=torch.float64),
                          torch.randn(d // 2, generator=g, dtype=torch.float64))
        diffs = torch.cat([h[1:] - h[:-1], -h[-1:]]).abs()  # h_{d/2} := 0
        for m in (0.0, 3.0, 50.0, 999.0):
            score = (h * torch.polar(torch.ones_like(theta), m * theta)).sum().abs()
            bound = diffs.max() * (d // 2) * ra.decay_bound(m, d, base)[0]
            assert score <= bound + 1e-9


def test_larger_base_decays_slower_card_numbers():
    r128 = ra.mean_relative_decay(512, 8192, 128, 5e5) / ra.mean_relative_decay(512, 8192, 128, 1e4)
    assert r128 == pytest.approx(1.49, abs=0.01)
    r32 = ra.mean_relative_decay(16, 256, 32, 5e5) / ra.mean_relative_decay(16, 256, 32, 1e4)
    assert r32 >= 1.2


def test_pi_bound_is_the_base_bound_at_scaled_distance():
    ms = torch.arange(0, 300, dtype=torch.float64)
    pi = ra.extension("pi", 1e4, 4)
    ang = ms[:, None] * pi.inv_freq(32)[None]
    bound_pi = torch.cumsum(torch.polar(torch.ones_like(ang), ang), 1).abs().mean(1)
    assert torch.allclose(bound_pi, ra.decay_bound(ms / 4, 32, 1e4))


def test_extension_variants():
    assert ra.extension("rope", 1e4, 4) == ra.RoPEScaling(1e4, 1.0)
    assert ra.extension("pi", 1e4, 4) == ra.RoPEScaling(1e4, 0.25)
    assert ra.extension("abf", 1e4, 4, abf_base=5e5) == ra.RoPEScaling(5e5, 1.0)
    # PI at position 4m is exactly plain RoPE at position m; ABF keeps the fastest pair (θ_0 = 1)
    assert torch.allclose(ra.extension("pi", 1e4, 4).angles(64, 16)[::4], ra.RoPEScaling(1e4).angles(16, 16))
    assert ra.RoPEScaling(5e5).inv_freq(16)[0] == ra.RoPEScaling(1e4).inv_freq(16)[0] == 1.0


@pytest.mark.parametrize("bad", [
    lambda: ra.extension("yarn", 1e4, 4), lambda: ra.extension("pi", 1e4, 0.5),
    lambda: ra.extension("abf", 1e4, 4), lambda: ra.extension("abf", 1e4, 4, abf_base=10.0),
    lambda: ra.RoPEScaling(1.0), lambda: ra.RoPEScaling(1e4, 2.0), lambda: ra.rope_inv_freq(7, 1e4),
    lambda: ra.mean_relative_decay(5, 2, 8, 1e4), lambda: ra.rope_correction(1e4, 5e5),
])
def test_invalid_arguments_raise(bad):
    with pytest.raises(ValueError):
        bad()


def test_correction_composes_with_the_model_rotation():
    # the extra rotation m (s θ' - θ) on top of the model's m θ is the target rotation m s θ'
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 10, 16, generator=g)
    target = ra.RoPEScaling(5e5, 0.5)
    pos = torch.arange(10, dtype=torch.float64)
    delta = target.inv_freq(16) - ra.rope_inv_freq(16, 1e4)
    composed = apply_rope(apply_rope(x, torch.arange(10), 1e4), pos, inv_freq=delta)
    direct = apply_rope(x, pos, inv_freq=target.inv_freq(16))
    assert torch.allclose(composed, direct, atol=1e-5)


def test_pi_at_position_4m_is_rope_at_m():
    x = torch.randn(1, 2, 8, 16, generator=torch.Generator().manual_seed(2))
    pi = ra.extension("pi", 1e4, 4)
    at_4m = apply_rope(x, 4 * torch.arange(8, dtype=torch.float64), inv_freq=pi.inv_freq(16))
    assert torch.allclose(at_4m, apply_rope(x, torch.arange(8), 1e4), atol=1e-5)


def _tiny(base: float) -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, rope_base=base))


def test_abf_correction_equals_a_model_built_with_the_new_base():
    old, new = _tiny(1e4), _tiny(5e5)
    new.load_state_dict(old.state_dict())
    idx = torch.randint(0, 64, (2, 40))
    fn = ra.rope_correction(1e4, ra.extension("abf", 1e4, 4, abf_base=5e5))
    assert torch.allclose(old(idx, attn_fn=fn), new(idx), atol=1e-4)
    assert not torch.allclose(old(idx), new(idx), atol=1e-4)


def test_identity_correction_changes_nothing():
    model = _tiny(1e4)
    idx = torch.randint(0, 64, (2, 30))
    fn = ra.rope_correction(1e4, ra.extension("rope", 1e4, 4))
    assert torch.allclose(model(idx, attn_fn=fn), model(idx), atol=1e-5)
