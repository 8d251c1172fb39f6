"""Tests of companion.attention.frozen_unicode: glyph rendering, the frozen PCA table, the frozen
LM, states and probes, and multiple-choice scoring."""

from __future__ import annotations

import pytest
import torch

from companion.attention import frozen_unicode as fu
from companion.nn import CausalMask, TransformerConfig


@pytest.fixture(scope="module")
def glyphs() -> tuple[list[str], torch.Tensor]:
    strings = fu.byte_token_strings()
    return strings, fu.render_glyphs(strings, 16)


def test_byte_token_strings_are_drawable_and_distinct():
    s = fu.byte_token_strings()
    assert len(s) == 256 and len(set(s)) == 256
    assert s[ord("a")] == "a" and s[0x20] == fu.SPACE_GLYPH and s[0x0A] == "0A" and s[0xE9] == "é"


def test_render_is_deterministic_binary_and_nonempty(glyphs):
    strings, img = glyphs
    assert img.shape == (256, 16, 16)
    assert set(img.unique().tolist()) <= {0.0, 1.0}
    assert (img.flatten(1).sum(1) > 0).all()  # every token draws something
    torch.testing.assert_close(fu.render_glyphs(strings[:40], 16), img[:40], rtol=0, atol=0)
    grey = fu.render_glyphs(["A"], 16, threshold=None)
    assert grey.min() >= 0 and grey.max() <= 1 and ((grey > 0) & (grey < 1)).any()  # anti-aliased edges


def test_pca_table_rows_are_unit_norm_and_deterministic(glyphs):
    _, img = glyphs
    e = fu.pca_embedding(img, 64)
    assert e.shape == (256, 64) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(256))
    torch.testing.assert_close(fu.pca_embedding(img, 64), e, rtol=0, atol=0)


def test_pca_axes_are_orthonormal_and_padded(glyphs):
    _, img = glyphs
    mean, axes = fu.pca_fit(img, 300)  # more axes than the rank (<= 255): the rest are zero
    assert mean.shape == (256,) and axes.shape == (300, 256)
    rank = int((axes.norm(dim=1) > 0.5).sum())
    assert rank <= 255 and (axes[rank:] == 0).all()
    torch.testing.assert_close(axes[:rank] @ axes[:rank].T, torch.eye(rank, dtype=torch.float64))


def test_full_pca_is_a_rotation_of_the_centred_bitmaps(glyphs):
    """With every component kept, PCA is centring + rotation: cosines equal those of the centred bitmaps."""
    _, img = glyphs
    x = img.flatten(1).double()
    x = torch.nn.functional.normalize(x - x.mean(0), dim=1)
    e = fu.pca_embedding(img, 256).double()  # 256 >= rank: the extra axes are zero
    torch.testing.assert_close(e @ e.T, x @ x.T, atol=1e-5, rtol=0)


def test_pixel_order_does_not_matter(glyphs):
    """The paper's "polar snake" flattening is a permutation of pixels: the table is unchanged."""
    _, img = glyphs
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(0))
    shuffled = img.flatten(1)[:, perm]
    torch.testing.assert_close(fu.pca_embedding(shuffled, 32), fu.pca_embedding(img, 32), atol=1e-5, rtol=0)


def test_visual_neighbours(glyphs):
    strings, img = glyphs
    e = fu.pca_embedding(img, 64)
    near = [strings[i] for i in fu.nearest_neighbours(e, ord("l"), 3)]
    assert "I" in near or "|" in near
    assert fu.nearest_neighbours(e, 5, 2, among=[5, 7, 9]) in ([7, 9], [9, 7])


def test_random_embedding():
    r = fu.random_embedding(10, 8, seed=3)
    torch.testing.assert_close(r.norm(dim=1), torch.ones(10))
    torch.testing.assert_close(r, fu.random_embedding(10, 8, seed=3), rtol=0, atol=0)


def test_build_lm_freezes_only_the_input_table():
    cfg = TransformerConfig(vocab_size=256, d_model=16, n_layers=1, n_heads=2, tie_embeddings=False)
    table = fu.random_embedding(256, 16)
    model = fu.build_lm(cfg, table)
    assert not model.embed.weight.requires_grad and model.lm_head.weight.requires_grad
    x = torch.randint(0, 256, (2, 8))
    model.loss(x, x).backward()
    assert model.embed.weight.grad is None and model.lm_head.weight.grad is not None
    torch.testing.assert_close(model.embed.weight, table, rtol=0, atol=0)
    assert fu.build_lm(cfg).embed.weight.requires_grad
    from_table = fu.build_lm(cfg, table, frozen=False)  # trainable, initialised from the table
    assert from_table.embed.weight.requires_grad and torch.equal(from_table.embed.weight.detach(), table)
    with pytest.raises(ValueError, match="frozen=False"):
        fu.build_lm(cfg, None, frozen=False)
    with pytest.raises(ValueError, match="tie_embeddings"):
        fu.build_lm(TransformerConfig(vocab_size=256, d_model=16, n_layers=1, n_heads=2), table)
    with pytest.raises(ValueError, match="table"):
        fu.build_lm(cfg, table[:, :8])


def test_unigram_entropy_exact():
    assert fu.unigram_entropy(torch.tensor([0, 1, 2, 3]), 4) == pytest.approx(torch.log(torch.tensor(4.0)).item())
    assert fu.unigram_entropy(torch.tensor([2, 2, 2]), 4) == pytest.approx(0.0)


def test_layer_and_stream_states_match_the_model():
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=256, d_model=16, n_layers=2, n_heads=2, tie_embeddings=False)
    model = fu.build_lm(cfg, fu.random_embedding(256, 16))
    stream = torch.randint(0, 256, (37,))
    states = fu.layer_states(model, stream[None, :16])
    assert len(states) == 3
    torch.testing.assert_close(model.ln_f(states[-1]), model.hidden(stream[None, :16], CausalMask(), None))
    torch.testing.assert_close(model.lm_head(model.ln_f(states[-1])), model(stream[None, :16]))
    long = fu.stream_states(model, stream, 16)  # windows start at 0, 8, 16 and 21 (= 37 - 16)
    assert [s.shape for s in long] == [(37, 16)] * 3
    torch.testing.assert_close(long[-1][:16], states[-1][0])  # the first window entirely
    mid = fu.layer_states(model, stream[None, 16:32])[-1][0]
    torch.testing.assert_close(long[-1][24:32], mid[8:])  # then the second half of each window
    last = fu.layer_states(model, stream[None, 21:])[-1][0]
    torch.testing.assert_close(long[-1][32:], last[11:])  # the last one fills what is left


def test_word_end_offsets_are_byte_offsets():
    text = "Café au lait, s'il vous plaît."
    ends = fu.word_end_offsets(text, ["Café", "au", "lait", ","])
    raw = text.encode()
    assert [raw[e:e + 1] for e in ends[1:]] == [b"u", b"t", b","]
    assert raw[ends[0] - 1: ends[0] + 1] == "é".encode()
    with pytest.raises(ValueError, match="not found"):
        fu.word_end_offsets(text, ["lait", "Café"])


def test_linear_probe_separable_and_chance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] > 0).long()
    assert fu.linear_probe(x[:150], y[:150], x[150:], y[150:], 2) >= 0.95
    noise = torch.randint(0, 2, (200,), generator=g)
    assert fu.linear_probe(x[:150], noise[:150], x[150:], noise[150:], 2) <= 0.75
    with pytest.raises(ValueError, match="n_classes"):
        fu.linear_probe(x[:150], y[:150], x[150:], y[150:], 1)


def test_mc_items_and_scores_with_a_constant_model():
    stream = torch.tensor(list(b"the quick brown fox jumps over the lazy dog. " * 20))
    items = fu.mc_items(stream, 12, context=10, option=6, generator=torch.Generator().manual_seed(1))
    assert all(it.options.shape == (4, 6) and it.context.shape == (10,) for it in items)
    for it in items:  # the right option is the true continuation
        ctx = bytes(it.context.tolist() + it.options[it.answer].tolist())
        assert ctx in bytes(stream.tolist())
    assert len({it.answer for it in items}) > 1
    prompt = bytes(fu.mc_prompt(items[0]).tolist()).decode()
    assert prompt.endswith("Answer:") and "\nD) " in prompt

    class AlwaysA(torch.nn.Module):  # always predicts "A"; knows nothing else
        def forward(self, idx):
            out = torch.zeros(*idx.shape, 256)
            out[..., ord("A")] = 40.0
            return out

    s = fu.mc_scores(AlwaysA(), items)
    frac_a = sum(it.answer == 0 for it in items) / len(items)
    assert s["first_token_greedy"] == pytest.approx(frac_a)
    assert s["first_token_sampled"] == pytest.approx(frac_a, abs=1e-3)
    assert s["loglik"] == pytest.approx(frac_a)  # all options tie: the first (A) wins


def test_argument_validation():
    with pytest.raises(ValueError, match="strings"):
        fu.render_glyphs("abc")
    with pytest.raises(ValueError, match="size"):
        fu.render_glyphs(["a"], 2)
    with pytest.raises(ValueError, match="dim"):
        fu.pca_embedding(torch.zeros(3, 4), 0)
    with pytest.raises(ValueError, match="images"):
        fu.pca_embedding(torch.zeros(1, 4), 2)
    with pytest.raises(ValueError, match="query"):
        fu.nearest_neighbours(torch.eye(3), 5)
    with pytest.raises(ValueError, match="stream"):
        fu.unigram_entropy(torch.tensor([]), 3)


def test_collided_embedding_has_n_distinct_unit_rows():
    t = fu.collided_embedding(256, 8, 16, seed=0)
    assert t.shape == (256, 8) and torch.allclose(t.norm(dim=1), torch.ones(256))
    assert torch.unique(t, dim=0).shape[0] == 16 and torch.equal(t[3], t[19])
    with pytest.raises(ValueError, match="n_distinct"):
        fu.collided_embedding(256, 8, 0)
