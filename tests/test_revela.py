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


def test_domain_corpus_query_half_shares_no_token_with_the_partner():
    c = rv.FactCorpus(n_keys=192, facts_per_topic=12, facts=6, shared=3, domains=True, shared_last=True)
    tokens, partner = rv.fact_batch(c, 8, torch.Generator().manual_seed(3))
    half = c.length // 2
    for i in range(16):
        j = int(partner[i])
        assert not set(tokens[i, :half:3].tolist()) & set(tokens[j, 0::3].tolist())  # no key in common
        assert {int(k) // 12 for k in tokens[i, 0::3]} == {int(k) // 12 for k in tokens[j, 0::3]}  # same domain
        mine = {(int(k), int(v)) for k, v in zip(tokens[i, half::3], tokens[i, half + 1::3])}
        theirs = {(int(k), int(v)) for k, v in zip(tokens[j, half::3], tokens[j, half + 1::3])}
        assert mine == theirs  # the shared facts are the second halves
    domains = {int(tokens[i, 0]) // 12 for i in range(16)}
    assert len(domains) == 8  # distinct domains per batch
    with pytest.raises(ValueError, match="domains"):
        rv.fact_batch(c, 17, torch.Generator().manual_seed(0))
    single = rv.unpaired(tokens, partner)
    assert single.shape == (8, c.length) and len({int(t[0]) // 12 for t in single}) == 8


def test_previous_token_keys_and_ranks():
    k = torch.arange(2 * 1 * 4 * 3, dtype=torch.float32).reshape(2, 1, 4, 3)
    s = rv.previous_token_keys(k)
    assert (s[:, :, 0] == 0).all() and torch.equal(s[:, :, 1:], k[:, :, :-1])
    scores = torch.tensor([[9.0, 1.0, 2.0], [0.0, 9.0, 1.0], [3.0, 2.0, 9.0]])
    assert rv.partner_ranks(scores, torch.tensor([2, 0, 1])).tolist() == [1, 2, 2]


def test_zero_weights_give_pass_one_bit_for_bit_and_oracle_loss_ignores_the_retriever():
    torch.manual_seed(0)
    m = rv.RevelaModel(C, "revela", lm_layers=1, v_norm=False, prev_keys=True).eval()
    tokens, partner = rv.fact_batch(C, 4, torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(m.logits(tokens), m.logits(tokens, torch.zeros(8, 8)))
    m.train()
    m.oracle_loss(tokens, partner).backward()
    assert all(p.grad is None for p in m.retriever.parameters())


def test_article_chunks_and_chunk_batch():
    texts = ["a" * 30, "b" * 100, "c" * 130]
    corpus = rv.article_chunks(texts, lambda t: [ord(ch) for ch in t], 256, length=10, min_chunks=4)
    assert [len(p) for p in corpus.pools] == [10, 13] and corpus.chunks == 23
    tokens, partner = rv.chunk_batch(corpus, 2, torch.Generator().manual_seed(0))
    assert tokens.shape == (4, 10)
    for i in range(4):
        assert tokens[i, 0] == tokens[partner[i], 0]  # same article
    with pytest.raises(ValueError, match="topics"):
        rv.chunk_batch(corpus, 3, torch.Generator().manual_seed(0))
