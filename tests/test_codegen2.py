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
    """Rebuild the file from CodeGen2's format (the module's inverse)."""
    return CG.uncorrupt(ids)


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
    assert len(fills) == 4 and all(len(f) <= 3 for f in fills)  # <= 3 bytes, each at most one character
    assert 0.0 <= CG.exact_match(CG.prefix_only_fill(model, items), items) <= 1.0
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


@pytest.mark.parametrize("names", [CG.LETTERS, CG.V_NAMES])
def test_programs_over_any_name_pool(names):
    rng = random.Random(3)
    for _ in range(20):
        prog = CG.make_program(rng, names, (3, 5))
        defs = re.findall(r"^(\w+)=", prog, flags=re.M)
        assert set(defs) <= set(names) and len(set(defs)) == len(defs)
        it = CG.definition_infill(prog, rng, "printed")
        assert prog.rstrip().endswith(f"print({it.answer})")
    with pytest.raises(ValueError, match="names"):
        CG.make_program(rng, "abcdefgh")
    with pytest.raises(ValueError, match="n_stmts"):
        CG.make_program(rng, CG.LETTERS, (3, 40))


def test_uncorrupt_rejects_malformed_input():
    with pytest.raises(ValueError, match="<eos> <sep>"):
        CG.uncorrupt(CG.encode("x=1\n"))
    with pytest.raises(ValueError, match="no span"):
        CG.uncorrupt(CG.encode("x=") + [CG.M1, CG.EOS, CG.SEP])
    with pytest.raises(ValueError, match="p_ident"):
        CG.span_corrupt("x=1\n", random.Random(0), p_ident=2.0)


def test_span_corruption_roundtrips_on_real_code():
    from companion import data
    try:
        problems = data.humaneval()
    except Exception as e:  # the asset is optional for the unit tests
        pytest.skip(f"humaneval asset missing: {e}")
    rng = random.Random(0)
    for p in problems[:40]:
        src = p["prompt"] + p["canonical_solution"]
        assert CG.uncorrupt(CG.span_corrupt(src, rng)) == src


def test_causal_logits_do_not_see_the_future_and_prefix_lm_sees_its_prefix():
    torch.manual_seed(0)
    model = TinyLM(TransformerConfig(vocab_size=CG.VOCAB, d_model=32, n_layers=2, n_heads=2)).eval()
    x = torch.randint(0, 256, (2, 16))
    x2 = x.clone()
    x2[:, 9:] = torch.randint(0, 256, (2, 7))
    with torch.no_grad():
        a = model(x, attn_fn=CG.kernel_attention)
        b = model(x2, attn_fn=CG.kernel_attention)
        assert torch.equal(a[:, :9], b[:, :9]) and not torch.allclose(a[:, 9:], b[:, 9:])
        m = PrefixLMMask(12)
        pa, pb = model(x, mask=m, attn_fn=CG.kernel_attention), model(x2, mask=m, attn_fn=CG.kernel_attention)
        assert not torch.allclose(pa[:, :9], pb[:, :9])  # the prefix (up to 12) is read both ways


def test_span_nll_prefix_only_fill_and_helpers():
    torch.manual_seed(0)
    model = TinyLM(TransformerConfig(vocab_size=CG.VOCAB, d_model=32, n_layers=1, n_heads=2)).eval()
    rng = random.Random(0)
    progs = [CG.make_program(rng, CG.LETTERS, (3, 5)) for _ in range(6)]
    items = [CG.random_span_infill(p, rng, k) for p, k in zip(progs, [1, 2, 3, 1, 2, 3])]
    assert all(it.prefix + it.answer + it.suffix == p for it, p in zip(items, progs))
    fills = CG.prefix_only_fill(model, items)
    assert len(fills) == len(items) and all(isinstance(f, str) for f in fills)
    gen = CG.greedy(model, [CG.encode(it.prefix) for it in items], 3, lambda t: False)
    assert [len(g) for g in gen] == [3] * len(items)  # prefix-only fill: exactly the span's length
    for mode in ("infill", "prefix"):
        nll = CG.span_nll(model, items, mode)
        assert nll.shape == (6,) and bool((nll > 0).all())
    with pytest.raises(ValueError, match="mode"):
        CG.span_nll(model, items, "both")
    pc = CG.print_completion(progs[0])
    assert pc.prefix.endswith("print(") and pc.prefix + pc.answer + pc.suffix == progs[0]
    with pytest.raises(ValueError, match="length"):
        CG.random_span_infill("ab", rng, 5)


@pytest.mark.parametrize("arm", list(CG.ARMS))
def test_train_arm_runs_every_arm_and_evaluates(arm):
    model, hist = CG.train_arm(arm, steps=3, batch=4, lr=1e-3, seed=0, names=CG.LETTERS, n_stmts=(3, 4),
                               model_kw=dict(d_model=32, n_layers=1, n_heads=2), progress=False)
    assert len(hist.losses) == 3
    rng = random.Random(1)
    progs = [CG.make_program(rng, CG.LETTERS, (3, 4)) for _ in range(4)]
    out = CG.evaluate(model, arm, {"any": [CG.definition_infill(p, rng) for p in progs]}, progs)
    assert set(out) == {"em_any", "em_prefix_any", "l2r_ce", "l2r_em"}
    with pytest.raises(ValueError, match="arm"):
        CG.train_arm("t5", steps=1, batch=1, lr=1e-3, seed=0)
