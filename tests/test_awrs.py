"""Unit tests of companion.inference.awrs: the regex automaton, AWRS's exact law and unbiased
weights (by enumeration), the lazy/vectorised equivalence, and the enumerable toy."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from companion.inference import awrs as A


@pytest.mark.parametrize("pattern", [r"(a|b)*bb", r"(ab|ba)[a-c]{2,3}(ab|c)", r"a{2,3}b?|c+", r"[^a]b*", r"a.c?"])
def test_regex_dfa_matches_python_re_and_prefix_is_exact(pattern):
    dfa = A.RegexDFA(pattern)
    words = ["".join(w) for n in range(8) for w in itertools.product("abc", repeat=n)]
    full = [w for w in words if re.fullmatch(pattern, w)]
    for w in words:
        assert dfa.complete(w) == (w in full), w
    for w in (w for w in words if len(w) <= 3):  # every pattern's completions of these fit in 7 letters
        assert dfa.prefix(w) == any(u.startswith(w) for u in full), w


def test_regex_errors_name_the_argument():
    for bad in ["(ab", "a)", "*a", "a{3,1}", ""]:
        with pytest.raises(ValueError, match="pattern"):
            A.RegexDFA(bad)


def test_token_constraint_eos_uses_complete_and_counts_calls():
    c = A.TokenConstraint(A.RegexDFA("ab"), ["a", "b", "ab", None], eos_ids=[3])
    s = c.start()
    assert c.accepts(s, 0) and c.accepts(s, 2) and not c.accepts(s, 1) and not c.accepts(s, 3)
    s2 = c.advance(s, 2)
    assert c.accepts(s2, 3) and not c.accepts(s2, 0)
    assert c.calls == 6
    assert c.mask(s).tolist() == [True, False, True, False] and c.calls == 10
    with pytest.raises(ValueError, match="eos_ids"):
        A.TokenConstraint(A.RegexDFA("a"), ["a"], eos_ids=[5])


def _random_case(seed: int, v: int = 5):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(v, generator=g, dtype=torch.float64) + 0.05
    valid = torch.rand(v, generator=g) < 0.5
    valid[seed % v] = valid[(seed + 3) % v] = True
    return p, valid


@pytest.mark.parametrize("seed", range(5))
def test_exact_law_first_acceptance_is_q_and_weight_is_unbiased(seed):
    p, valid = _random_case(seed)
    dist, mean_w, mean_calls = A.awrs_exact(p, valid)
    q = p * valid / (p * valid).sum()
    assert float((dist - q).abs().max()) < 1e-12
    assert mean_w == pytest.approx(float(p[valid].sum()), rel=1e-12)  # E[Z_hat] = Z_t, exactly
    assert 1.0 <= mean_calls <= len(p)


@pytest.mark.parametrize("seed", range(8))
def test_exact_joint_proper_weighting(seed):
    # SMC needs E[Z_hat * 1{x = v}] = p_v c_v for every token v, not only E[Z_hat] = Z_t
    p, valid = _random_case(seed, v=6)
    joint = A.awrs_exact_joint(p, valid)
    assert torch.allclose(joint, p * valid, rtol=1e-12, atol=1e-15)
    assert float(joint.sum()) == pytest.approx(A.awrs_exact(p, valid)[1], rel=1e-12)


def test_lazy_awrs_equals_vectorised_draw_for_the_same_noise():
    p, valid = _random_case(7, v=9)
    logits = p.log()
    for s in range(30):
        r = A.awrs(logits, lambda v: bool(valid[v]), torch.Generator().manual_seed(s))
        d = A.awrs_batch(logits, valid, 1, torch.Generator().manual_seed(s))
        assert r.token == int(d.tokens[0]) and r.rejections == int(d.rejections[0]) and r.calls == int(d.calls[0])
        assert r.log_weight == pytest.approx(float(d.log_weights[0]), abs=1e-12)
        r1 = A.awrs(logits, lambda v: bool(valid[v]), torch.Generator().manual_seed(s), proper_weights=False)
        assert r1.token == r.token and r1.log_weight == 0.0 and r1.calls == r.round1_calls


def test_awrs_monte_carlo_mean_and_pruned_vocabulary():
    p, valid = _random_case(3, v=8)
    logits = p.log()
    d = A.awrs_batch(logits, valid, 40_000, torch.Generator().manual_seed(0))
    z = float(p[valid].sum() / p.sum())
    w = d.log_weights.exp()
    assert abs(float(w.mean()) - z) < 4 * float(w.std()) / math.sqrt(len(w))
    # pruning tokens the condition can never accept: log Z keeps their mass out of the estimate
    vocab = torch.ones(8, dtype=torch.bool)
    vocab[~valid] = False
    vocab[int((~valid).nonzero()[0])] = True
    ws = torch.tensor([math.exp(A.awrs(logits, lambda v: bool(valid[v]), torch.Generator().manual_seed(s),
                                       vocab_mask=vocab).log_weight) for s in range(600)])
    exact = A.awrs_exact(p * vocab, valid)[1] / float(p.sum())
    assert exact == pytest.approx(z, rel=1e-12)
    assert abs(float(ws.mean()) - z) < 4 * float(ws.std()) / math.sqrt(len(ws))


def test_no_valid_token_kills_the_particle():
    logits = torch.zeros(4)
    r = A.awrs(logits, lambda v: False, torch.Generator().manual_seed(0))
    assert r.token is None and r.log_weight == -math.inf and r.calls == 4
    d = A.awrs_batch(logits, torch.zeros(4, dtype=torch.bool), 3)
    assert d.tokens.tolist() == [-1] * 3 and bool((d.log_weights == -math.inf).all())


def test_argument_validation():
    with pytest.raises(ValueError, match="logits"):
        A.awrs(torch.zeros(2, 3), lambda v: True)
    with pytest.raises(ValueError, match="accept"):
        A.awrs(torch.zeros(3), None)
    with pytest.raises(ValueError, match="valid"):
        A.awrs_batch(torch.zeros(3), torch.ones(4, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="n_particles"):
        A.awrs_smc(lambda ctx: torch.zeros(2), A.TokenConstraint(A.RegexDFA("a"), ["a", None], [1]), 0)


def _toy():
    cons = A.TokenConstraint(A.RegexDFA("[ab]{0,2}bb"), ["a", "b", None], [2])
    lm = A.bigram_lm(torch.tensor([0.6, 0.3, 0.1]), torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.3, 0.2], [1, 1, 1.0]]), 2, 4)
    return cons, lm


def test_toy_enumeration_posterior_and_lcd():
    cons, lm = _toy()
    probs = A.enumerate_lm(lm, 2)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-9)
    pi = A.global_posterior(probs, cons)
    assert set(pi) == {x for x in probs if re.fullmatch("[ab]{0,2}bb", "".join("ab"[t] for t in x))}
    lcd, dead = A.lcd_distribution(lm, cons)
    assert dead == pytest.approx(0.0) and sum(lcd.values()) == pytest.approx(1.0)
    assert A.tv_distance(lcd, pi) > 0.05  # local normalisation is myopic
    # LCD's law is the product of local conditionals. "bb" by hand: EOS is invalid at the start;
    # after "b" both letters are viable; after "bb" only "b" ("bbbb") and EOS are
    assert lcd[(1, 1)] == pytest.approx((0.3 / 0.9) * (0.3 / 0.8) * (0.2 / 0.5))


def test_smc_evidence_is_unbiased_and_particles_are_valid():
    cons, lm = _toy()
    probs = A.enumerate_lm(lm, 2)
    z = sum(p for x, p in probs.items() if x in A.global_posterior(probs, cons))  # p(c(x) = 1)
    g = torch.Generator().manual_seed(0)
    est = []
    for _ in range(120):
        res = A.awrs_smc(lm, cons, 4, g, ess_threshold=0.0)  # no resampling: plain importance weights
        assert all(cons.dfa.complete("".join("ab"[t] for t in x)) for x, w in zip(res.sequences, res.log_weights)
                   if w > -math.inf)
        est.append(float(torch.tensor(res.log_weights).exp().mean()))
    est = torch.tensor(est)
    assert abs(float(est.mean()) - z) < 4 * float(est.std()) / math.sqrt(len(est))


def test_constrained_generate_with_a_tiny_hf_model_is_always_valid():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=6, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    cons = A.TokenConstraint(A.RegexDFA("[ab]{1,3}c"), ["a", "b", "ab", "c", None, None], eos_ids=[5])
    g = torch.Generator().manual_seed(0)
    for method in ("awrs", "mask"):
        for _ in range(3):
            out = A.constrained_generate(model, torch.tensor([4, 0]), cons, method, max_new_tokens=8, generator=g)
            assert out.complete and cons.dfa.complete(out.text), out
            if method == "mask":
                assert out.calls == [6] * len(out.calls)
            else:
                assert all(1 <= c <= 6 for c in out.calls) and math.isfinite(out.log_weight)
    with pytest.raises(ValueError, match="method"):
        A.constrained_generate(model, torch.tensor([4]), cons, "greedy")
