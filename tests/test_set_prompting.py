"""Exact tests of set-based prompting (companion.structure.set_prompting) on a tiny random Llama."""

from __future__ import annotations

import itertools

import pytest
import torch

transformers = pytest.importorskip("transformers")

from companion.nn.masks import set_based  # noqa: E402
from companion.structure import set_prompting as sp  # noqa: E402


@pytest.fixture(scope="module")
def model(tiny_llama):
    return tiny_llama()


OPTIONS = ["ab", "cde", "f", "ghij"]


def all_prompts(tok, options=OPTIONS, prefix="xyz", suffix="qq"):
    return [sp.build_prompt(tok, prefix, options, suffix, order=o)
            for o in itertools.permutations(range(len(options)))]


# -- prompt layout, mask and positions (the card's formulas) ----------------------------------

def test_prompt_layout_mask_and_positions_match_the_formula(tok):
    # prefix "xy" + BOS = 3 tokens; options of 2, 3, 1 tokens in order (1, 0, 2); suffix of 2.
    p = sp.build_prompt(tok, "xy", ["ab", "cde", "f"], "qq", order=(1, 0, 2))
    assert p.n_prefix == 3 and len(p) == 3 + 3 + 2 + 1 + 2
    assert p.input_ids[0] == tok.bos_token_id and (p.input_ids[1:] != tok.bos_token_id).all()
    assert p.set_ids.tolist() == [-1, -1, -1, 1, 1, 1, 0, 0, 2, -1, -1]
    # eq. (2): prefix 0..2, every element restarts at n_A = 3, suffix at 3 + max |B_i| = 6
    assert p.position_ids("set").tolist() == [0, 1, 2, 3, 4, 5, 3, 4, 3, 6, 7]
    assert p.position_ids("normal").tolist() == list(range(11))
    assert p.position_ids("mask_only").tolist() == list(range(11))
    # eq. (1): M[q, k] = [k <= q] and not (both in the set and in different elements)
    seg = p.set_ids
    expected = torch.tensor([[k <= q and not (seg[q] >= 0 and seg[k] >= 0 and seg[q] != seg[k])
                              for k in range(11)] for q in range(11)])
    assert torch.equal(p.mask("set").dense(11)[0], expected)
    assert torch.equal(p.mask("mask_only").dense(11)[0], expected)
    assert torch.equal(p.mask("normal").dense(11)[0], torch.ones(11, 11, dtype=torch.bool).tril())
    assert torch.equal(p.mask("set").dense(11), set_based(p.set_ids).dense(11))


def test_set_position_ids_edge_cases():
    assert sp.set_position_ids(torch.tensor([-1, -1])).tolist() == [0, 1]  # no set
    assert sp.set_position_ids(torch.tensor([0, 0, 1, -1])).tolist() == [0, 1, 0, 2]  # empty prefix
    assert sp.set_position_ids(torch.tensor([-1, 3, 3, 5])).tolist() == [0, 1, 2, 1]  # empty suffix, any ids


def test_options_are_tokenised_separately(tok):
    p, q = (sp.build_prompt(tok, "x", ["ab", "c"], "", order=o) for o in ((0, 1), (1, 0)))
    for opt in (0, 1):
        assert torch.equal(p.input_ids[p.set_ids == opt], q.input_ids[q.set_ids == opt])


# -- order invariance through the Hugging Face model -----------------------------------------

def test_set_based_logits_are_invariant_to_all_orderings(model, tok):
    logits = sp.next_token_logits(model, all_prompts(tok), "set")  # (24, V)
    assert (logits - logits[:1]).abs().max() < 1e-5
    assert (logits.argmax(-1) == logits[0].argmax()).all()


@pytest.mark.parametrize("mode", ["normal", "mask_only"])
def test_normal_and_mask_only_prompting_depend_on_the_order(model, tok, mode):
    logits = sp.next_token_logits(model, all_prompts(tok), mode)
    assert (logits - logits[:1]).abs().max() > 1e-4


def test_three_option_invariance_and_shared_prefix_is_exact(model, tok):
    prompts = all_prompts(tok, ["ab", "cde", "f"])
    shared = sp.next_token_logits(model, prompts, "set", share_prefix=True)
    full = sp.next_token_logits(model, prompts, "set", share_prefix=False)
    assert (shared - full).abs().max() < 1e-5
    assert (shared - shared[:1]).abs().max() < 1e-5


def test_option_tokens_see_only_the_prefix_and_themselves(model, tok):
    # Under the set mask and positions, an option's last token has the same logits as a plain
    # forward pass over "prefix + that option": the 4-D mask and the position ids are really used.
    p = sp.build_prompt(tok, "xyz", OPTIONS, "qq", order=(2, 0, 3, 1))
    ids, keep, pos = sp.batch_inputs([p], ["set"])
    full = model(input_ids=ids, position_ids=pos, attention_mask=sp.additive_mask(keep)).logits[0]
    for opt, text in enumerate(OPTIONS):
        alone = sp.build_prompt(tok, "xyz", [text], "")
        ref = model(input_ids=alone.input_ids[None]).logits[0, -1]
        last = int((p.set_ids == opt).nonzero().max())
        assert (full[last] - ref).abs().max() < 1e-5
    # and a mask that hides nothing changes the logits: the model does not ignore the 4-D mask
    see_all = model(input_ids=ids, position_ids=pos, attention_mask=sp.additive_mask(torch.ones_like(keep))).logits[0]
    assert (see_all - full).abs().max() > 1e-3


def test_padded_batch_matches_single_prompts(model, tok):
    prompts = [sp.build_prompt(tok, "xyz", ["ab", "c"], "qq"),
               sp.build_prompt(tok, "w", OPTIONS, "q", order=(3, 1, 0, 2)),
               sp.build_prompt(tok, "xyz", ["ab", "cde"], "")]
    modes = ["set", "normal", "mask_only"]
    batched = sp.next_token_logits(model, prompts, modes, share_prefix=False)
    for p, m, row in zip(prompts, modes, batched):
        assert (sp.next_token_logits(model, [p], m) - row).abs().max() < 1e-5


def test_eager_attention_gives_the_same_logits(tok, tiny_llama):
    prompts = all_prompts(tok)[:3]
    sdpa, eager = tiny_llama(attn="sdpa"), tiny_llama(attn="eager")
    for mode in sp.MODES:
        diff = sp.next_token_logits(sdpa, prompts, mode) - sp.next_token_logits(eager, prompts, mode)
        assert diff.abs().max() < 1e-5


def test_greedy_generation_is_invariant_and_matches_a_full_recompute(model, tok):
    prompts = all_prompts(tok)
    outs = {tuple(sp.generate(model, p, "set", max_new_tokens=5)) for p in prompts[::5]}
    assert len(outs) == 1
    # the KV-cached loop equals recomputing the whole sequence with the grown mask each step
    p = prompts[7]
    ids, keep, pos = sp.batch_inputs([p], ["set"])
    new = []
    for _ in range(5):
        n = ids.shape[1]
        logits = model(input_ids=ids, position_ids=pos, attention_mask=sp.additive_mask(keep)).logits[0, -1]
        new.append(int(logits.argmax()))
        grown = torch.zeros(1, n + 1, n + 1, dtype=torch.bool)
        grown[:, :n, :n] = keep
        grown[:, n, :] = True  # the new token sees everything
        ids = torch.cat([ids, torch.tensor([[new[-1]]])], 1)
        pos = torch.cat([pos, pos.max().view(1, 1) + 1], 1)
        keep = grown
    assert tuple(new) in outs


# -- multiple-choice helpers -----------------------------------------------------------------

def test_orderings():
    assert len(sp.orderings(4, "all")) == 24 and len(set(sp.orderings(4, "all"))) == 24
    g = torch.Generator().manual_seed(0)
    cyc = sp.orderings(4, "cyclic", g)
    assert all(sorted(o) == [0, 1, 2, 3] for o in cyc)
    assert all(sorted(o[s] for o in cyc) == [0, 1, 2, 3] for s in range(4))  # each option visits each slot
    fwd, rev = sp.orderings(3, "reversed", g)
    assert rev == tuple(reversed(fwd))


def test_question_bank_is_valid_and_answers_are_distinct_tokens(tok):
    bank = sp.load_bank()
    assert len(bank) >= 40
    assert all(len(q.options) == 4 for q in bank)
    assert len({q.answer for q in bank}) == 4  # right answers are spread over the slots


def test_evaluate_and_summaries(model, tok):
    qs = [sp.Question("Which?", ("ab", "cd", "ef"), 1), sp.Question("What?", ("gh", "ij", "kl"), 0)]
    tmpl = sp.Template(prefix="Q:", option=" {option}", suffix=" {question} A:", answer_lead="")
    res = sp.evaluate(model, tok, qs, how="all", template=tmpl, progress=False)
    assert len(res) == 2 and res[0].option_logits["set"].shape == (6, 3)
    s = sp.summarize(res, "set")
    assert s["max_abs_diff"] < 1e-5 and s["flip_rate"] == 0.0
    # an order-invariant answer is right or wrong wherever the right option sits
    assert s["acc_by_slot"] == [s["accuracy"]] * 3
    with pytest.raises(ValueError, match="mode must be one of"):
        sp.summarize(res, "sets")
    assert all(torch.equal(r.choice["set"], r.choice["set"][:1].expand(6)) for r in res)
    # batching several questions per forward pass changes nothing
    one_by_one = sp.evaluate(model, tok, qs, how="all", template=tmpl, batch_size=1, progress=False)
    for a, b in zip(res, one_by_one):
        for m in sp.MODES:
            assert (a.option_logits[m] - b.option_logits[m]).abs().max() < 1e-5


# -- argument validation ---------------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    (torch.tensor([[0, 1]]), "shape"),
    (torch.tensor([0.0, 1.0]), "integer"),
    (torch.tensor([-2, 0]), "-1"),
    (torch.tensor([0, -1, 1]), "contiguous block"),
    (torch.tensor([0, 1, 0]), "contiguous run"),
])
def test_set_ids_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        sp.set_position_ids(bad)


def test_argument_validation(model, tok):
    p = sp.build_prompt(tok, "x", ["a", "b"], "y")
    with pytest.raises(ValueError, match="mode"):
        sp.next_token_logits(model, [p], "sideways")
    with pytest.raises(ValueError, match="one per prompt"):
        sp.next_token_logits(model, [p, p], ["set"])
    with pytest.raises(ValueError, match="prompts"):
        sp.next_token_logits(model, [], "set")
    with pytest.raises(ValueError, match="identical prefixes"):
        sp.next_token_logits(model, [p, sp.build_prompt(tok, "z", ["a", "b"], "y")], "set")
    with pytest.raises(ValueError, match="model"):
        sp.next_token_logits(object(), [p], "set")
    with pytest.raises(ValueError, match="order"):
        sp.build_prompt(tok, "x", ["a", "b"], "y", order=(0, 0))
    with pytest.raises(ValueError, match="options"):
        sp.build_prompt(tok, "x", "ab", "y")
    with pytest.raises(ValueError, match="options"):
        sp.build_prompt(tok, "x", ["a", ""], "y")
    with pytest.raises(ValueError, match="keep"):
        sp.additive_mask(torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_new_tokens"):
        sp.generate(model, p, max_new_tokens=0)
    with pytest.raises(ValueError, match="how"):
        sp.orderings(3, "sorted")
    with pytest.raises(ValueError, match="answer"):
        sp.Question("q", ("a", "b"), 2)
    with pytest.raises(ValueError, match="first answer token"):
        sp.answer_token_ids(tok, sp.Question("q", ("ab", "ac"), 0), sp.Template(answer_lead=""))


def test_bank_prompts_with_the_real_smollm2_tokenizer():
    # The tokenizer only (no weights): every question's options start with distinct answer
    # tokens, BOS appears once, at the start, and each option keeps its tokens in every order.
    from companion import assets, models

    try:
        folder = models.prepare_lm("smollm2-135m")
    except assets.AssetMissingError as err:
        pytest.skip(str(err))
    real = transformers.AutoTokenizer.from_pretrained(folder)
    for q in sp.load_bank():
        sp.answer_token_ids(real, q)  # raises if two options share their first token
        fwd, rev = (sp.mcq_prompt(real, q, o) for o in ((0, 1, 2, 3), (3, 2, 1, 0)))
        assert (fwd.input_ids == real.bos_token_id).sum() == 1 and fwd.input_ids[0] == real.bos_token_id
        for opt in range(4):
            assert torch.equal(fwd.input_ids[fwd.set_ids == opt], rev.input_ids[rev.set_ids == opt])


def test_figure_and_explorer_run(model, tok):
    import matplotlib.pyplot as plt

    p = sp.build_prompt(tok, "xy", ["ab", "cde", "f"], "qq")
    axes = sp.plot_mask_and_positions(p)
    assert len(axes[0]) == 3 and axes[1][2].patches[-1].get_height() == 3 + 3 + 1  # last suffix token: n_A + max + 1
    plt.close("all")
    qs = [sp.Question("Which?", ("ab", "cd", "ef"), 1), sp.Question("What?", ("gh", "ij", "kl"), 0)]
    tmpl = sp.Template(prefix="Q:", option=" {option}", suffix=" {question} A:", answer_lead="")
    box = sp.explorer(model, tok, qs, tmpl)
    question, order = box.children[:2]
    assert len(order.options) == 6
    question.value = 1  # a new question refills the orderings and redraws
    order.value = order.options[3][1]
    plt.close("all")
    with pytest.raises(ValueError, match="questions"):
        sp.explorer(model, tok, [])
