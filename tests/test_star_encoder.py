"""Tests of companion.embeddings.star_encoder (multi-exit self-distillation, MoSE)."""

import math
import random
from collections import Counter

import pytest
import torch

from companion.embeddings import star_encoder as se
from companion.nn import TransformerConfig


def _model(n_layers=4, exits=(2, 4), seed=0):
    torch.manual_seed(seed)
    return se.MultiExitEncoder(TransformerConfig(vocab_size=len(se.VOCAB), d_model=16, n_layers=n_layers,
                                                 n_heads=2, d_ff=32), exits, dim=8)


def _batch(n=5, seed=0):
    split = se.RetrievalSplit(4, 2, seed)
    return split.train_batch(n, seed + 1)


def test_hard_negatives_keep_the_bag_of_tokens_and_change_the_program():
    rng = random.Random(0)
    for _ in range(50):
        p = se.random_program(rng)
        for q in se.hard_negatives(p, rng, 5):
            assert q != p
            assert Counter(se.code_text(q).split()) == Counter(se.code_text(p).split())
            if p[-1][0] == "reduce":
                assert q[-1] == p[-1]


def test_text_and_code_vocabularies_are_disjoint():
    rng = random.Random(1)
    p = se.random_program(rng)
    assert not set(se.tokenize(se.describe(p, rng), "text")) & set(se.tokenize(se.code_text(p), "code"))
    with pytest.raises(ValueError, match="side"):
        se.tokenize("map", "python")
    with pytest.raises(ValueError, match="vocabulary"):
        se.tokenize("banana", "text")


def test_held_out_programs_never_appear_in_training_batches():
    split = se.RetrievalSplit(32, 3, 0)
    dq, lq, dc, lc = split.train_batch(64, 5)
    codes = {" ".join(se.VOCAB[int(t)][2:] for t in row[:n]) for row, n in zip(dc, lc)}
    assert not codes & {se.code_text(p) for p in split.held_out}
    assert len(codes) == 64  # distinct programs


def test_exit_k_equals_the_truncated_model_and_ignores_deeper_blocks():
    m = _model(4, (2, 4)).eval()
    dq, lq, _, _ = _batch()
    full = m.encode(dq, lq)
    short = se.truncated(m, 2).encode(dq, lq)
    assert torch.equal(full[2], short[2])
    with torch.no_grad():  # perturbing deeper blocks leaves exit 2 unchanged
        for p in m.blocks[2:].parameters():
            p.add_(1.0)
    assert torch.equal(m.encode(dq, lq, [2])[2], full[2])
    assert not torch.allclose(m.encode(dq, lq, [4])[4], full[4])


def test_exit_loss_has_no_gradient_in_deeper_blocks():
    m = _model(4, (2, 4))
    se.multi_exit_loss(m, _batch(), {2: 1.0}).backward()
    assert all(p.grad is None or not p.grad.any() for p in m.blocks[2:].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.blocks[:2].parameters())


def test_padding_does_not_change_embeddings():
    m = _model().eval()
    dq, lq, _, _ = _batch()
    padded = torch.cat([dq, torch.zeros(dq.shape[0], 3, dtype=torch.long)], 1)
    a, b = m.encode(dq, lq), m.encode(padded, lq)
    for e in m.exits:
        torch.testing.assert_close(a[e], b[e], atol=1e-6, rtol=0)


def test_multi_exit_loss_equals_hand_computed_infonce():
    m = _model().eval()
    batch = _batch(3)
    w = se.exit_weights(m.exits, 4)
    assert w == {2: 0.5, 4: 1.0}
    got = float(se.multi_exit_loss(m, batch, w).detach())
    eq, ec = m.encode(batch[0], batch[1]), m.encode(batch[2], batch[3])
    want = 0.0
    for e in m.exits:
        s = float(m.heads[str(e)].scale())
        S = [[s * float(eq[e][i] @ ec[e][j]) for j in range(3)] for i in range(3)]
        rows = sum(-S[i][i] + math.log(sum(math.exp(x) for x in S[i])) for i in range(3)) / 3
        cols = sum(-S[i][i] + math.log(sum(math.exp(S[j][i]) for j in range(3))) for i in range(3)) / 3
        want += w[e] * 0.5 * (rows + cols)
    assert got == pytest.approx(want, abs=1e-5)


def test_mrr_and_recall_on_a_hand_example():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pool = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    # query 0: right = 0, best; query 1: right = 0, scores 0, 0.8, 1 -> rank 3
    assert se.mrr(q, pool, torch.tensor([0, 0])) == pytest.approx((1 + 1 / 3) / 2)
    assert se.recall_at_1(q, pool, torch.tensor([0, 2])) == 1.0
    # a tie counts against the query
    assert se.mrr(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0])) == 0.5


def test_last_only_weights_and_probe_touches_only_its_head():
    assert se.exit_weights((2, 4, 6), 6, "last") == {2: 0.0, 4: 0.0, 6: 1.0}
    assert se.exit_weights((2, 6), 6, "uniform") == {2: 1.0, 6: 1.0}
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith("heads.2.")}
    se.fit_probe(m, 2, se.RetrievalSplit(4, 2, 0), steps=3, batch=4, lr=1e-2, seed=0)
    after = m.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="exits"):
        _model(4, (5,))
    m = _model()
    with pytest.raises(ValueError, match="no head"):
        m.encode(*_batch()[:2], exits=[3])
    with pytest.raises(ValueError, match="lengths"):
        m.encode(torch.zeros(2, 3, dtype=torch.long), torch.tensor([3]))
    with pytest.raises(ValueError, match="scheme"):
        se.exit_weights((2,), 4, "cubic")
    with pytest.raises(ValueError, match="img and txt must both have shape"):
        se.clip_loss(torch.zeros(2, 3), torch.zeros(3, 3), 1.0)
    with pytest.raises(ValueError, match="k must be"):
        se.truncated(m, 3)
