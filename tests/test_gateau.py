"""Unit tests of companion.alignment.gateau (GATEAU: HMG + CAM data selection)."""

import math

import pytest
import torch

from companion.alignment import gateau as G
from companion.nn.masks import CausalMask, SlidingWindowMask


@pytest.fixture(scope="module")
def text():
    g = torch.Generator().manual_seed(0)
    return torch.randint(32, 127, (20_000,), generator=g)


@pytest.fixture(scope="module")
def pool(text):
    return G.make_pool(60, text, torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return G.make_model(d_model=32, n_layers=2, n_heads=2).eval()


def _record_starts(row, key, ctx):
    return [p for p in range(ctx - 1) if row[p] == G.REC and row[p + 1] == key]


def test_pool_layout(pool, text):
    n, N = pool.tokens.shape
    assert N == pool.ctx_len + 3 * 4 and len(pool) == n
    assert pool.resp.sum(1).eq(3 * G.N_ANS).all()
    for i in range(n):
        row, kind = pool.tokens[i], int(pool.kind[i])
        turns = row[pool.ctx_len:].view(3, 4)
        if (turns[:, 0] == G.CNT).all():  # text continuation: LOCAL only
            assert kind == G.LOCAL
            continue
        keys = turns[:, 1].tolist()
        assert len(set(keys)) == 3, "every turn asks a different key"
        for t, key in enumerate(keys):
            (start,) = _record_starts(row, key, pool.ctx_len)
            vals = row[start + 2: start + 2 + G.N_ANS]
            dist = pool.ctx_len - start
            if kind == G.FAR:
                assert dist >= 48 and torch.equal(turns[t, 2:], vals)
            elif kind == G.LOCAL:
                assert dist <= 12 and torch.equal(turns[t, 2:], vals)


def test_pool_kinds_and_errors(text):
    p = G.make_pool(300, text, torch.Generator().manual_seed(2))
    frac = torch.bincount(p.kind, minlength=3).float() / 300
    assert (frac - 1 / 3).abs().max() < 0.1
    assert (G.make_pool(20, text, torch.Generator().manual_seed(3), probs=(1, 0, 0)).kind == G.FAR).all()
    with pytest.raises(ValueError, match="probs"):
        G.make_pool(5, text, torch.Generator(), probs=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="n_turns"):
        G.make_pool(5, text, torch.Generator(), n_turns=4)
    with pytest.raises(ValueError, match="text"):
        G.make_pool(5, text.float(), torch.Generator())


def test_lm_targets_masks_prompt(pool):
    x, y = G.lm_targets(pool.tokens[:4], pool.resp[:4])
    assert x.shape == y.shape == (4, pool.tokens.shape[1] - 1)
    assert torch.equal(y[y != -100], pool.tokens[:4, 1:][pool.resp[:4, 1:]])
    with pytest.raises(ValueError, match="resp"):
        G.lm_targets(pool.tokens[:4], pool.resp[:3])


def test_response_nll_matches_manual_and_batching(pool, model):
    nll = G.response_nll(model, pool.tokens[:8], pool.resp[:8], batch=3)
    x, y = G.lm_targets(pool.tokens[:8], pool.resp[:8])
    with torch.no_grad():
        logp = torch.log_softmax(model(x), -1)
    for i in range(8):
        keep = y[i] != -100
        ref = -logp[i, keep].gather(-1, y[i, keep, None]).mean()
        assert math.isclose(float(nll[i]), float(ref.detach()), rel_tol=1e-5)
    ppl = G.response_ppl(model, pool.tokens[:8], pool.resp[:8])
    assert torch.allclose(ppl, nll.exp(), rtol=1e-5)


def test_window_model_ignores_far_tokens(pool, model):
    tok = pool.tokens[:6].clone()
    a = G.response_nll(model, tok, pool.resp[:6], SlidingWindowMask(24), G.kernel_attn())
    # a 2-layer model under a 24-token window sees 2 * 23 positions back from the first response row
    first_row = pool.ctx_len + 1
    tok[:, : first_row - 2 * 23] = G.REC
    b = G.response_nll(model, tok, pool.resp[:6], SlidingWindowMask(24), G.kernel_attn())
    c = G.response_nll(model, tok, pool.resp[:6], CausalMask(), G.kernel_attn())
    d = G.response_nll(model, pool.tokens[:6], pool.resp[:6], CausalMask(), G.kernel_attn())
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(c, d, atol=1e-4)


def test_hmg_follows_rank_py():
    """scale="ppl" is rank.py; scale="log" the same on log-perplexities."""
    short, long = torch.tensor([10.0, 20.0, 30.0, 5.0]), torch.tensor([1.0, 5.0, 29.0, 4.0])
    mm = lambda z: (z - z.min()) / (z.max() - z.min())  # noqa: E731
    ref = torch.softmax(mm(short) - mm(long), 0)
    h = G.hmg_scores(short, long, scale="ppl")
    assert torch.allclose(h, ref) and math.isclose(float(h.sum()), 1.0, rel_tol=1e-6)
    assert torch.allclose(G.hmg_scores(short, long), torch.softmax(mm(short.log()) - mm(long.log()), 0))
    with pytest.raises(ValueError, match="scale"):
        G.hmg_scores(short, long, scale="rank")
    with pytest.raises(ValueError):
        G.hmg_scores(short, long[:3])


def test_normalisations_and_scores():
    z = torch.tensor([3.0, 1.0, 2.0, 10.0])
    assert torch.allclose(G.ranks01(z), torch.tensor([2 / 3, 0.0, 1 / 3, 1.0]))
    assert torch.allclose(G.minmax(z), (z - 1) / 9)
    assert torch.equal(G.minmax(torch.ones(3)), torch.zeros(3))
    h, c = torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert torch.equal(G.select_top(G.gateau_scores(h, c, 1.0), 0.5), torch.tensor([2, 3]))
    assert torch.equal(G.select_top(G.gateau_scores(h, c, 0.0), 0.5), torch.tensor([0, 1]))
    assert torch.allclose(G.gateau_scores(h, c, 0.5, "official"), 0.5 * h + 0.5 * c)
    with pytest.raises(ValueError, match="alpha"):
        G.gateau_scores(h, c, 1.5)
    with pytest.raises(ValueError, match="norm"):
        G.gateau_scores(h, c, 0.5, "zscore")


def test_selection_helpers():
    g = torch.Generator().manual_seed(0)
    r = G.select_random(100, 0.3, g)
    assert r.numel() == 30 and r.unique().numel() == 30
    kind = torch.tensor([0, 0, 1, 2])
    assert G.precision_at(torch.tensor([0, 1, 2]), kind) == pytest.approx(2 / 3)
    assert G.auroc(torch.tensor([3.0, 2.0, 1.0, 0.0]), torch.tensor([True, True, False, False])) == 1.0
    assert G.auroc(torch.tensor([1.0, 1.0]), torch.tensor([True, False])) == 0.5
    with pytest.raises(ValueError, match="frac"):
        G.select_top(torch.ones(3), 0.0)


def test_cam_distributions(pool, model):
    imp = G.segment_importance(model, pool.subset(torch.arange(5)), seg_len=8)
    att = G.segment_attention(model, pool.subset(torch.arange(5)), seg_len=8, batch=2)
    J = pool.ctx_len // 8
    assert imp.shape == att.shape == (5, J)
    assert torch.allclose(imp.sum(1), torch.ones(5)) and torch.allclose(att.sum(1), torch.ones(5))
    assert all(blk.attn.last_weights is None and not blk.attn.keep_weights for blk in model.blocks)
    assert torch.allclose(G.cas_scores(imp, imp), torch.zeros(5), atol=1e-6)
    assert (G.cas_scores(imp, att) >= -1e-6).all()


def test_sft_snapshot_and_accuracy(pool):
    torch.manual_seed(0)
    m = G.make_model(d_model=32, n_layers=1, n_heads=2)
    hist, snap = G.sft(m, pool, steps=4, batch=4, snapshot_at=2, progress=False)
    assert len(hist.losses) == 4 and snap is not None and snap is not m
    acc = G.response_accuracy(m, pool)
    assert 0.0 <= acc <= 1.0
    with pytest.raises(ValueError, match="snapshot_at"):
        G.sft(m, pool, steps=2, snapshot_at=5, progress=False)
