"""Revela: the synthetic fact corpus, the retriever weights, the cross-document attention term, gradient routing."""

from __future__ import annotations

import math

import pytest
import torch

from companion.embeddings import revela as rv

C = rv.FactCorpus()


def test_fact_batch_partners_share_exactly_the_shared_facts():
    tokens, partner = rv.fact_batch(C, 8, torch.Generator().manual_seed(0))
    assert tokens.shape == (16, C.length) and tokens.max() < C.vocab_size
    assert torch.equal(partner[partner], torch.arange(16)) and (partner != torch.arange(16)).all()
    assert (tokens[:, 2::3] == C.sep).all() and rv.value_positions(tokens, C)[:, 1::3].all()
    for i in range(16):
        mine = {(int(k), int(v)) for k, v in zip(tokens[i, 0::3], tokens[i, 1::3])}
        theirs = {(int(k), int(v)) for k, v in zip(tokens[partner[i], 0::3], tokens[partner[i], 1::3])}
        assert len(mine) == C.facts and len(mine & theirs) == C.shared
    again, _ = rv.fact_batch(C, 8, torch.Generator().manual_seed(0))
    assert torch.equal(tokens, again)
    with pytest.raises(ValueError, match="shared"):
        rv.FactCorpus(facts=8, shared=0, facts_per_topic=12)


def test_retrieval_weights_exclude_the_diagonal():
    s = torch.randn(5, 5)
    a = rv.retrieval_weights(s, 0.1)
    assert (a.diagonal() == 0).all()
    torch.testing.assert_close(a.sum(1), torch.ones(5))
    with pytest.raises(ValueError, match="tau"):
        rv.retrieval_weights(s, 0.0)
    with pytest.raises(ValueError, match="square"):
        rv.retrieval_weights(s[:4], 0.1)


def test_cross_document_term_one_hot_equals_one_attention_over_the_partner():
    torch.manual_seed(0)
    B, H, L, D = 4, 2, 6, 8
    q, k, v = (torch.randn(B, H, L, D) for _ in range(3))
    perm = torch.tensor([2, 3, 0, 1])
    onehot = torch.eye(B)[perm]
    out = rv.cross_document_term(q, k, v, onehot)
    p = (q @ k[perm].transpose(-1, -2) / math.sqrt(D)).softmax(-1)  # (B, H, L, L): doc i over doc perm[i]
    ref = (p @ v[perm]) / (p @ v[perm].norm(dim=-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(rv.cross_document_term(q, k, v, onehot, v_norm=False), p @ v[perm])
    # a mixture of two documents is the A-weighted sum of the two separate (per-pair) attentions
    mix = 0.3 * torch.eye(B)[perm] + 0.7 * torch.eye(B)[perm.flip(0)]
    torch.testing.assert_close(rv.cross_document_term(q, k, v, mix),
                               0.3 * out + 0.7 * rv.cross_document_term(q, k, v, torch.eye(B)[perm.flip(0)]))
    with pytest.raises(ValueError, match="weights"):
        rv.cross_document_term(q, k, v, torch.eye(3))


@pytest.mark.parametrize("arm", ["revela", "detached", "lm"])
def test_the_retriever_learns_only_through_the_attention_weights(arm):
    torch.manual_seed(0)
    m = rv.RevelaModel(C, arm)
    tokens, _ = rv.fact_batch(C, 4, torch.Generator().manual_seed(1))
    m.loss(tokens).backward()
    ret = [p.grad for p in m.retriever.parameters()]
    lm = [p.grad for p in m.lm.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in lm[:1])
    if arm == "revela":
        assert any(g is not None and g.abs().sum() > 0 for g in ret)
    else:
        assert all(g is None or g.abs().sum() == 0 for g in ret)


def test_plain_lm_pass_equals_zero_weights_mix():
    torch.manual_seed(0)
    m = rv.RevelaModel(C, "revela").eval()
    tokens, _ = rv.fact_batch(C, 4, torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = m.logits(tokens)
        zero = m.logits(tokens, torch.zeros(8, 8))
    torch.testing.assert_close(plain, zero)
    with pytest.raises(ValueError, match="arm"):
        rv.RevelaModel(C, "frozen")
