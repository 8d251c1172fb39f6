"""Exact tests of Token Prepending (companion.embeddings.token_prepending) on a tiny random Llama."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from companion.embeddings import token_prepending as tp  # noqa: E402


@pytest.fixture(scope="module")
def model(tiny_llama):
    return tiny_llama(n_layers=4, max_positions=256)


@pytest.fixture(scope="module")
def pst() -> torch.Tensor:
    return torch.randn(32, generator=torch.Generator().manual_seed(0))


def test_vanilla_prompt_is_the_tp_prompt_without_the_pst_token(model, tok, pst):
    v = tp.build_batch(model, tok, ["a cat sat"], pst=None)
    t = tp.build_batch(model, tok, ["a cat sat"], pst=pst)
    p = int(t.pst_index[0])
    assert t.inputs_embeds.shape[1] == v.inputs_embeds.shape[1] + 1
    assert torch.equal(t.inputs_embeds[0, p], pst)
    assert torch.equal(torch.cat([t.inputs_embeds[0, :p], t.inputs_embeds[0, p + 1:]]), v.inputs_embeds[0])
    assert int(v.pst_index[0]) == -1


def test_left_padding_puts_every_last_token_in_the_last_column(model, tok, pst):
    b = tp.build_batch(model, tok, ["a", "a much longer sentence"], pst=pst)
    assert bool(b.attention_mask[:, -1].all())
    short = int(b.attention_mask[0].sum())
    assert torch.equal(b.position_ids[0, -short:], torch.arange(short))
    assert int(b.pst_index[0]) == b.inputs_embeds.shape[1] - short + 1 + len(tok(tp.PROMPT_PREFIX)["input_ids"])


def test_the_pst_slot_holds_the_previous_layers_last_state_exactly_in_start_to_end(model, tok, pst):
    b = tp.build_batch(model, tok, ["the dog barked", "hi"], pst=pst)
    seen: dict[int, torch.Tensor] = {}
    layers = tp.layers_of(model)
    hooks = [layers[i].register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0].clone()))
             for i in range(4)]
    try:
        with tp.token_prepending(model, b.pst_index, 1, 3):  # registered after: runs after our hooks
            h = tp.hidden_states(model, b, mode="pst")  # mode pst: no second TP hook inside
    finally:
        for hd in hooks:
            hd.remove()
    rows = torch.arange(2)
    for i in range(4):
        got = seen[i][rows, b.pst_index]
        if i in (1, 2):  # our hook ran before TP's: it sees the layer input before the copy
            assert torch.equal(h[i][:, -1], seen[i][:, -1])
        else:
            assert not torch.equal(got, seen[i][:, -1])
    # the copy itself: run TP and compare the PST column of layer 2's input with its last column
    captured = {}
    with tp.token_prepending(model, b.pst_index, 1, 3):
        hd = layers[2].register_forward_pre_hook(lambda m, a: captured.__setitem__("x", a[0].clone()))
        try:
            model.model(inputs_embeds=b.inputs_embeds, attention_mask=b.attention_mask, position_ids=b.position_ids)
        finally:
            hd.remove()
    x = captured["x"]
    assert torch.equal(x[rows, b.pst_index], x[:, -1])


def test_layers_before_start_are_bit_identical_to_the_pst_ablation(model, tok, pst):
    b = tp.build_batch(model, tok, ["one two three"], pst=pst)
    h_tp = tp.hidden_states(model, b, mode="tp", start=2, end=4)
    h_pst = tp.hidden_states(model, b, mode="pst")
    assert torch.equal(h_tp[:3], h_pst[:3])  # inputs of layers 0..2: the first copy happens at layer 2
    assert not torch.equal(h_tp[3], h_pst[3])


@pytest.mark.parametrize("start", [0, 1, 2])
def test_causal_invariance_holds_without_tp_and_breaks_with_it(model, tok, pst, start):
    a, b = "the cat sat on the mat", "the cat sat on the hat"
    for mode in ("vanilla", "pst"):
        d, first = tp.state_change(model, tok, a, b, mode=mode, pst=pst)
        edit = d.shape[1] - len(tok(' mat." means in one word:"')["input_ids"]) - 1
        assert bool((d[:, :edit] == 0).all()), mode  # nothing before the edit moves, at any layer
    d, first = tp.state_change(model, tok, a, b, mode="tp", start=start, end=4, pst=pst)
    # the copy into layer s's input carries the edit only if layer s-1 has already mixed the sentence into
    # the last token; at s = 0 the last state is the embedding of the closing quote, the same for a and b
    seen = start + 1 if start > 0 else 2
    assert bool((d[:seen, first] == 0).all())  # before: untouched
    assert float(d[seen, first]) > 0  # after: the first sentence token has seen the last word


def test_embed_matches_a_single_prompt_forward_and_keeps_the_input_order(model, tok, pst):
    texts = ["a long sentence about dogs", "cats", "a medium one"]
    e = tp.embed(model, tok, texts, mode="tp", start=1, end=3, pst=pst, batch_size=2)
    assert e.shape == (5, 3, 32)
    for i, t in enumerate(texts):
        alone = tp.hidden_states(model, tp.build_batch(model, tok, [t], pst=pst), mode="tp", start=1, end=3)
        torch.testing.assert_close(e[:, i], alone[:, 0, -1], atol=1e-5, rtol=1e-4)


def test_arguments_are_checked(model, tok, pst):
    b = tp.build_batch(model, tok, ["x"], pst=pst)
    with pytest.raises(ValueError, match="start"):
        with tp.token_prepending(model, b.pst_index, 3, 3):
            pass
    with pytest.raises(ValueError, match="pst_index"):
        with tp.token_prepending(model, torch.tensor([-1]), 0, 1):
            pass
    with pytest.raises(ValueError, match="pst must be"):
        tp.build_batch(model, tok, ["x"], pst=torch.zeros(3))
    with pytest.raises(ValueError, match="mode"):
        tp.embed(model, tok, ["x"], mode="bogus")
    with pytest.raises(ValueError, match="needs pst"):
        tp.embed(model, tok, ["x"], mode="tp")
    with pytest.raises(ValueError, match="same number of tokens"):
        tp.state_change(model, tok, "a", "abc", mode="vanilla")
    assert tp.clean_sentence('he said "hi"?') == "he said 'hi'."
