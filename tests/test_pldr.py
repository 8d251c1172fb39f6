"""PLDR-LLM: G = I is SDPA, the caches are exact, the G-cache makes the model causal again."""

import pytest
import torch
import torch.nn.functional as F

from companion.attention import pldr
from companion.nn import CausalMask, TransformerConfig, apply_rope


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return pldr.pldr_lm(TransformerConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, pos="none"),
                        n_res=2, a_ff=16).eval()


def test_identity_metric_is_scaled_dot_product_attention():
    model = _model()
    pldr.set_g_cache(model, "identity")
    layer = model.blocks[0].attn
    x, pos = torch.randn(2, 12, 32), torch.arange(12)
    with torch.no_grad():
        ours = layer(x, CausalMask(), pos)
        q, k, v = layer.qkv(x).view(2, 12, 3, 4, 8).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, pos), apply_rope(k, pos)
        ref = layer.out_proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 12, 32))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_deductive_outputs_shapes_and_signs():
    layer = _model().blocks[0].attn
    q = torch.randn(3, 4, 10, 8)
    out = layer.deductive(q)
    assert set(out) == {"A0", "A", "A_LM", "A_P", "G"}
    assert all(t.shape == (3, 4, 8, 8) for t in out.values())
    assert bool((out["A_LM"] > 0).all())  # iSwiGLU >= 0, plus 1e-9
    assert bool((pldr.iswiglu(torch.linspace(-5, 5, 101)) >= 0).all())


def test_g_cache_from_the_same_input_reproduces_full_plga():
    model, x = _model(), torch.randint(0, 40, (1, 16))
    full = model(x)
    pldr.set_g_cache(model, pldr.capture_g(model, x))
    torch.testing.assert_close(model(x), full, rtol=0, atol=1e-6)


def test_kv_cache_generation_is_exact_for_a_fixed_g():
    model = _model(1)
    prompt = torch.randint(0, 40, (1, 6))
    pldr.set_g_cache(model, pldr.capture_g(model, prompt))
    cached = pldr.generate(model, prompt, 20, cache=True)
    assert torch.equal(cached, pldr.generate(model, prompt, 20, cache=False))


def test_cached_decoding_runs_the_shared_path_and_caches_the_prompt_g():
    model = _model(3)
    prompt, rest = torch.randint(0, 40, (1, 6)), torch.randint(0, 40, (1, 3))
    with torch.no_grad():
        logits, past = model.forward_cached(prompt)
        g_prompt = pldr.capture_g(model, prompt)
        assert len(past) == len(model.blocks) and all(len(entry) == 3 for entry in past)  # (k, v, G)
        for (k, v, g), g_ref in zip(past, g_prompt):
            assert k.shape[2] == v.shape[2] == 6
            torch.testing.assert_close(g, g_ref)
        torch.testing.assert_close(logits, model(prompt), rtol=1e-5, atol=1e-5)  # prompt pass = full PLGA
        step, past2 = model.forward_cached(rest, past)
        assert past2[0][0].shape[2] == 9 and past2[0][2] is past[0][2]  # G is the prompt's, reused
        pldr.set_g_cache(model, g_prompt)  # with that G fixed, the uncached model gives the same logits
        torch.testing.assert_close(step, model(torch.cat([prompt, rest], 1))[:, 6:], rtol=1e-5, atol=1e-5)


def test_full_plga_leaks_from_the_future_and_the_g_cache_does_not():
    model, x = _model(2), torch.randint(0, 40, (1, 16))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % 40
    with torch.no_grad():
        assert (model(x) - model(y))[0, :-1].abs().max() > 0  # the Gram matrix runs over all positions
        pldr.set_g_cache(model, pldr.capture_g(model, x))
        assert torch.equal(model(x)[0, :-1], model(y)[0, :-1])


def test_g_invariance_is_zero_for_identical_inputs():
    model, x = _model(), torch.randint(0, 40, (1, 16))
    assert max(pldr.g_invariance(model, x.repeat(3, 1))) < 1e-6
    assert min(pldr.g_invariance(model, torch.randint(0, 40, (4, 16)))) > 0


def test_argument_errors():
    with pytest.raises(ValueError, match="cfg.pos"):
        pldr.pldr_lm(TransformerConfig(vocab_size=10, d_model=16, n_heads=2))
    model = _model()
    with pytest.raises(ValueError, match="one G per layer"):
        pldr.set_g_cache(model, [torch.eye(8).expand(4, 8, 8)])
    with pytest.raises(ValueError, match="shape"):
        pldr.set_g_cache(model, [torch.eye(4)] * 2)
    with pytest.raises(ValueError, match="prompt"):
        pldr.generate(model, torch.zeros(2, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="B >= 2"):
        pldr.g_invariance(model, torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="attn_fn"):
        model(torch.zeros(1, 4, dtype=torch.long), attn_fn=lambda *a, **k: None)


def test_generate_restores_the_training_mode():
    from companion.attention import pldr

    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, pos="none")
    model = pldr.pldr_lm(cfg, n_res=1, a_ff=8)
    model.train()
    for cache in (False, True):
        pldr.generate(model, torch.zeros(1, 3, dtype=torch.long), 2, cache=cache)
        assert model.training
