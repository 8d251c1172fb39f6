"""Exact tests of CodeGen2's objectives (companion.alignment.codegen2): the span-corruption format,
the infill test, the mixture batches and the Prefix-LM mask through the book's kernel."""

from __future__ import annotations

import functools
import random
import re

import pytest
import torch

from companion import kernels
from companion.alignment import codegen2 as CG
from companion.nn.masks import PrefixLMMask
from companion.nn.transformer import TinyLM, TransformerConfig


def undo_corruption(ids: list[int]) -> str:
    """Rebuild the file from CodeGen2's format: put every span back at its sentinel."""
    sep = ids.index(CG.SEP)
    head, tail = ids[: sep - 1], ids[sep + 1:]
    assert ids[sep - 1] == CG.EOS
    spans, i = {}, 0
    while i < len(tail):
        m, j = tail[i], tail.index(CG.EOM, i)
        spans[m] = tail[i + 1: j]
        i = j + 1
    out = []
    for t in head:
        out += spans[t] if t in (CG.M1, CG.M2) else [t]
    return CG.decode(out)


@pytest.mark.parametrize("seed", range(20))
def test_span_corruption_is_lossless_and_sentinels_are_ordered(seed):
    rng = random.Random(seed)
    prog = CG.make_program(rng)
    ids = CG.span_corrupt(prog, rng)
    assert undo_corruption(ids) == prog
    sentinels = [t for t in ids[: ids.index(CG.SEP)] if t in (CG.M1, CG.M2)]
    assert sentinels == [CG.M1, CG.M2][: len(sentinels)] and sentinels
    assert ids.count(CG.EOM) == len(sentinels)


@pytest.mark.parametrize("which", ["any", "printed"])
def test_definition_infill_hides_a_name_only_the_suffix_reveals(which):
    for seed in range(30):
        rng = random.Random(seed)
        prog = CG.make_program(rng)
        it = CG.definition_infill(prog, rng, which)
        assert it.prefix + it.answer + it.suffix == prog
        assert re.fullmatch(r"v\d+", it.answer)
        assert not re.search(rf"\b{it.answer}\b", it.prefix) and re.search(rf"\b{it.answer}\b", it.suffix)
    assert CG.infill_prompt(it)[-3:] == [CG.EOS, CG.SEP, CG.M1]


def test_mixture_batch_targets_and_prefixes():
    rng = random.Random(0)
    progs = [CG.make_program(rng) for _ in range(16)]
    b = CG.mixture_batch(progs, random.Random(1), p_corrupt=0.5)
    assert b.x.shape == b.y.shape and int(b.prefix_len.abs().sum()) == 0
    keep = b.y != -100
    assert torch.equal(b.y[:, :-1][keep[:, :-1]], b.x[:, 1:][keep[:, :-1]])  # next-token targets
    p = CG.mixture_batch(progs, random.Random(1), p_corrupt=1.0, prefix_lm=True)
    for i in range(len(progs)):
        row = p.x[i].tolist()
        assert int(p.prefix_len[i]) == row.index(CG.SEP) + 1
        assert bool((p.y[i, : int(p.prefix_len[i]) - 1] == -100).all())
    with pytest.raises(ValueError, match="p_corrupt"):
        CG.mixture_batch(progs, rng, p_corrupt=1.5)


def test_prefix_lm_tinylm_through_the_kernel_matches_the_reference():
    if not kernels.triton_available():
        pytest.skip("triton is not importable")
    torch.manual_seed(0)
    model = TinyLM(TransformerConfig(vocab_size=CG.VOCAB, d_model=32, n_layers=1, n_heads=2)).eval()
    x = torch.randint(0, 256, (3, 21))
    mask = PrefixLMMask(torch.tensor([0, 7, 21]))
    with torch.no_grad():
        ref = model(x, mask=mask)
        out = model(x, mask=mask, attn_fn=functools.partial(kernels.attention, impl="triton"))
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_evaluations_run_and_stop():
    torch.manual_seed(0)
    model = TinyLM(TransformerConfig(vocab_size=CG.VOCAB, d_model=32, n_layers=1, n_heads=2)).eval()
    rng = random.Random(0)
    progs = [CG.make_program(rng) for _ in range(4)]
    items = [CG.definition_infill(p, rng) for p in progs]
    fills = CG.infill(model, items, max_new=3)
    assert len(fills) == 4 and all(len(f.encode()) <= 3 for f in fills)
    assert 0.0 <= CG.exact_match(CG.prefix_only_fill(model, items, max_new=3), items) <= 1.0
    assert CG.l2r_loss(model, progs) > 0
    assert CG.l2r_loss(model, progs, prefix_lm=True) > 0
    with pytest.raises(ValueError, match="preds"):
        CG.exact_match([], items)


def test_encode_decode_roundtrip_and_errors():
    s = "v1=2\nprint(v1)\n"
    assert CG.decode(CG.encode(s) + [CG.EOM]) == s + "<eom>"
    with pytest.raises(TypeError, match="text"):
        CG.encode(b"x")
    with pytest.raises(ValueError, match="which"):
        CG.definition_infill(s, random.Random(0), "first")
