"""Unit tests of companion.structure.setrec (SETRec's set identifiers, sparse mask, simultaneous generation)."""

import pandas as pd
import pytest
import torch

from companion.kernels import attention as kernel_attention
from companion.structure import setrec as sr


def tiny_model(n_sem: int = 2, n_items: int = 12, seed: int = 0) -> sr.SetRec:
    torch.manual_seed(seed)
    cfg = sr.SetRecConfig(n_items=n_items, text_dim=8, n_sem=n_sem, d_model=16, n_layers=2, n_heads=2, ae_hidden=16)
    return sr.SetRec(cfg, torch.randn(n_items + 1, 8)).eval()


def test_mask_matches_definition():
    L, T, Q = 3, 3, 3
    m = sr.setrec_mask(L, T, Q).dense(L * T + Q)[0]
    g = sr.item_groups(L, T, Q)
    n = len(g)
    for u in range(n):
        for v in range(n):
            expected = (v <= u and g[u] != g[v]) or u == v
            assert bool(m[u, v]) == expected, (u, v)


def test_layout_positions():
    mask, pos = sr.layout(2, 3, 3, "set")
    assert pos.tolist() == [0, 0, 0, 1, 1, 1, 2, 3, 4]  # queries at sequential positions after the history
    _, pos_seq = sr.layout(2, 3, 3, "sequential")
    assert pos_seq.tolist() == list(range(9))
    with pytest.raises(ValueError, match="kind"):
        sr.layout(2, 3, 3, "ordered")


def test_order_invariance_within_items_exact():
    model = tiny_model()
    hist = torch.randint(1, 13, (4, 5))
    tokens = model.item_tokens(hist)  # (B, L, T, d)
    perm = torch.stack([torch.randperm(3) for _ in range(5)])  # a different permutation per item
    shuffled = torch.stack([tokens[:, t, perm[t]] for t in range(5)], dim=1)
    with torch.no_grad():
        a, b = model.encode(tokens), model.encode(shuffled)
        c, d = model.encode(tokens, "sequential"), model.encode(shuffled, "sequential")
    assert (a - b).abs().max() < 1e-5
    assert (c - d).abs().max() > 1e-3


def test_simultaneous_equals_one_by_one_and_counts_calls():
    model = tiny_model()
    hist = torch.randint(0, 13, (3, 4))
    with torch.no_grad(), sr.CallCounter(model) as one:
        h = model(hist)
    with torch.no_grad(), sr.CallCounter(model) as seq:
        h_seq, n = sr.decode_one_by_one(model, hist)
    assert one.calls == 1 and seq.calls == n == 3
    assert torch.allclose(h, h_seq, atol=1e-5)


def test_padding_is_masked():
    # the tokens of left-padding items must not reach the queries: changing the padding row changes nothing
    model = tiny_model()
    hist = torch.tensor([[0, 0, 3, 5], [0, 2, 7, 1], [4, 6, 8, 9]])
    assert sr.left_padding(hist).tolist() == [2, 1, 0]
    with torch.no_grad():
        h = model(hist)
        model.text_emb[0] += 5.0  # the padding item's semantic tokens
        model.cf.weight[0] += 5.0  # and its CF token
        h2 = model(hist)
        h_seq, _ = sr.decode_one_by_one(model, hist)
    assert torch.equal(h, h2)
    assert torch.allclose(h2, h_seq, atol=1e-5)
    # a history without padding is unaffected by the padding rule
    assert torch.equal(model(hist[2:]), h[2:]) or torch.allclose(model(hist[2:]), h[2:], atol=1e-6)


def test_kernel_path_matches_sdpa():
    model = tiny_model()
    hist = torch.randint(1, 13, (2, 3))
    with torch.no_grad():
        ref = model(hist)
        out = model(hist, attn_fn=lambda q, k, v, mask: kernel_attention(q, k, v, mask=mask, impl="triton"))
    assert torch.allclose(ref, out, atol=1e-4)


def test_cf_only_and_loss_and_combine():
    cf = tiny_model(n_sem=0)
    assert cf.cfg.n_tokens == 1 and cf.all_tokens().shape == (13, 1, 16)
    model = tiny_model()
    hist, tgt = torch.randint(0, 13, (4, 3)), torch.randint(1, 13, (4,))
    allowed = torch.ones(13, dtype=torch.bool)
    allowed[0] = False
    loss = model.loss(hist, tgt, allowed=allowed)
    loss.backward()
    assert torch.isfinite(loss) and model.encoder[0].weight.grad is not None
    s = torch.randn(2, 3, 13)
    assert torch.allclose(model.combine(s, 0.0), s[:, 0])
    assert torch.allclose(model.combine(s, 1.0), s[:, 1:].sum(1))
    with pytest.raises(ValueError, match="beta"):
        model.combine(s, 1.5)
    with pytest.raises(ValueError, match="n_sem"):
        sr.SetRecConfig(n_items=3, n_sem=-1)
    with pytest.raises(ValueError, match="text_emb"):
        sr.SetRec(sr.SetRecConfig(n_items=3, text_dim=8), torch.zeros(3, 8))


def test_rank_metrics():
    scores = torch.tensor([[0.0, 3.0, 2.0, 1.0], [0.0, 1.0, 2.0, 3.0]])
    cand = torch.tensor([False, True, True, True])
    m = sr.rank_metrics(scores, torch.tensor([1, 1]), cand, k=1)
    assert m["recall@1"] == pytest.approx(0.5) and m["ndcg@1"] == pytest.approx(0.5)
    m2 = sr.rank_metrics(scores, torch.tensor([1, 1]), cand, k=3)
    assert m2["recall@3"] == 1.0 and m2["ndcg@3"] == pytest.approx((1 + 1 / 2) / 2)
    with pytest.raises(ValueError, match="candidates"):
        sr.rank_metrics(scores, torch.tensor([0, 1]), cand)


def test_split_keeps_cold_items_out_of_training():
    rows = [(u, i, 5, 10 * u + t) for u in range(1, 4) for t, i in enumerate(range(1, 11))]
    ratings = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame({"item_id": range(1, 11), "title": [f"m{i}" for i in range(1, 11)],
                          "genres": [("Drama",)] * 10})
    data = sr.split_movielens(ratings, items, cold_frac=0.3, history_len=4)
    cold = data.cold
    assert int(cold.sum()) == 3 and not cold[0]
    assert not cold[data.examples[0]].any() and not cold[data.examples[1]].any()
    for hist, _ in (data.valid, data.test, data.cold_valid, data.cold_test):
        assert not cold[hist].any()
    assert cold[data.cold_test[1]].all()
    assert data.test[1].tolist() == [10, 10, 10] and data.valid[1].tolist() == [9, 9, 9]
    assert data.texts[1] == "m1: Drama"
    with pytest.raises(ValueError, match="cold_frac"):
        sr.split_movielens(ratings, items, cold_frac=1.0)


def test_frozen_cf_embeddings():
    torch.manual_seed(0)
    cfg = sr.SetRecConfig(n_items=5, text_dim=8, n_sem=1, d_model=16, n_layers=1, n_heads=2, ae_hidden=8)
    cf = torch.randn(6, 4)
    model = sr.SetRec(cfg, torch.randn(6, 8), cf_emb=cf)
    model.loss(torch.randint(0, 6, (2, 3)), torch.randint(1, 6, (2,))).backward()
    assert torch.equal(model.cf[0].weight, cf) and model.cf[0].weight.grad is None
    assert model.cf[1].weight.grad is not None
    with pytest.raises(ValueError, match="cf_emb"):
        sr.SetRec(cfg, torch.randn(6, 8), cf_emb=torch.randn(5, 4))


def test_semantic_ids_are_unique_and_residual_kmeans_reduces_error():
    x = torch.randn(60, 8, generator=torch.Generator().manual_seed(0))
    ids = sr.semantic_ids(x, n_levels=2, n_codes=4, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (60, 3) and len(torch.unique(ids, dim=0)) == 60
    assert int(ids[:, :2].max()) < 4
    with pytest.raises(ValueError, match="n_codes"):
        sr.residual_kmeans(x, 2, 0)


def test_token_seq_beam_search_equals_exhaustive_scoring():
    """A beam as wide as the catalogue returns every candidate, ranked by its exact log-probability."""
    torch.manual_seed(0)
    n = 30
    codes = torch.cat([torch.zeros(1, 3, dtype=torch.long),
                       sr.semantic_ids(torch.randn(n, 8), 2, 4, generator=torch.Generator().manual_seed(0))])
    m = sr.TokenSeqRec(codes, d_model=16, n_layers=2, n_heads=2).eval()
    hist = torch.randint(0, n + 1, (2, 5))
    hist[0, :2] = sr.PAD
    cand = torch.ones(n + 1, dtype=torch.bool)
    cand[0], cand[5:12] = False, False
    top, score = m.beam_search(hist, cand, beam=500)
    with torch.no_grad():
        for b in range(2):
            got = {i: float(v) for i, v in zip(top[b].tolist(), score[b].tolist()) if i >= 0}
            assert sorted(got) == cand.nonzero().flatten().tolist()  # exactly the candidates
            for i, v in got.items():
                tg = m.item_token_ids(torch.tensor([i]))
                lg = m._logits(hist[b:b + 1], tg[:, :-1])
                exact = sum(float(lg[0, l, o:o + s].log_softmax(-1)[tg[0, l] - o])
                            for l, (o, s) in enumerate(zip(m.offsets, m.sizes)))
                assert abs(exact - v) < 1e-4


def test_token_seq_loss_trains_and_checks_arguments():
    codes = torch.cat([torch.zeros(1, 2, dtype=torch.long), torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])])
    m = sr.TokenSeqRec(codes, d_model=16, n_layers=1, n_heads=2)
    loss = m.loss(torch.tensor([[0, 1, 2], [3, 4, 1]]), torch.tensor([3, 2]))
    loss.backward()
    assert torch.isfinite(loss) and m.lm.embed.weight.grad is not None
    with pytest.raises(ValueError, match="candidates"):
        m.beam_search(torch.tensor([[1, 2]]), torch.ones(3, dtype=torch.bool))
