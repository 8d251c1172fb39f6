"""Exact tests for companion.embeddings.defsent_plus (no pretrained model: a tiny random transformers BERT)."""

import pytest
import torch

from companion.embeddings import defsent_plus as dp
from companion.models import cache_encoder_states


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    return BertModel(cfg).eval()


class ToyTokenizer:
    """Splits on spaces, one id per word (hash mod 46 + 4), [CLS]=1, [SEP]=2, pad=0."""

    pad_token_id = 0

    def __call__(self, texts, padding=False, truncation=False, max_length=32, return_tensors=None,
                 add_special_tokens=True):
        single = isinstance(texts, str)
        rows = [[4 + sum(map(ord, w)) % 46 for w in t.split()] for t in ([texts] if single else texts)]
        if add_special_tokens:
            rows = [[1] + r[: max_length - 2] + [2] for r in rows]
        if single and return_tensors is None:
            return {"input_ids": rows[0], "attention_mask": [1] * len(rows[0])}
        n = max(map(len, rows))
        ids = torch.tensor([r + [0] * (n - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


TEXTS = ["a small dog", "the large red house by the river", "to run fast", "an animal that barks loudly at night"]


def test_cached_bottom_plus_top_equals_full_encoder():
    enc, tok = tiny_bert(), ToyTokenizer()
    cache = cache_encoder_states(enc, tok, TEXTS, upto=1, batch_size=3)
    head = dp.DefSentHead(enc, 2, torch.randn(5, 16))
    idx = torch.arange(len(TEXTS))
    h, m, _ = cache[idx]
    got = head.embed(h, m)
    b = tok(TEXTS, padding=True, return_tensors="pt")
    full = enc(**b).last_hidden_state
    want = dp.mean_pool(full, b["attention_mask"])
    assert torch.allclose(got, want, atol=1e-5)
    # the training representation is the encoder's pooler applied to the masked mean (TrainEncoder.py, mean path)
    assert torch.allclose(head.sentence(h, m), enc.pooler(want.unsqueeze(1)), atol=1e-5)


def test_target_is_frozen_and_tied():
    enc = tiny_bert()
    target = torch.randn(7, 16)
    head = dp.DefSentHead(enc, 1, target)
    assert "target" not in dict(head.named_parameters())
    h, m = torch.randn(3, 4, 16), torch.ones(3, 4, dtype=torch.long)
    assert torch.allclose(head(h, m), head.sentence(h, m) @ target.T)
    before = head.target.clone()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    for _ in range(3):
        loss = dp.entry_loss(head, h, m, torch.tensor([0, 3, 6]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(head.target, before)


def test_entry_matrix_is_segment_mean():
    emb = torch.arange(12.0).reshape(4, 3)
    got = dp.entry_matrix(emb, torch.tensor([1, 0, 1, 1]), 2)
    assert torch.allclose(got[0], emb[1])
    assert torch.allclose(got[1], emb[[0, 2, 3]].mean(0))
    with pytest.raises(ValueError, match="every entry"):
        dp.entry_matrix(emb, torch.tensor([0, 0, 0, 0]), 2)


def test_fast_ica_whitens_and_rotates():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64) + 3
    out, ica = dp.fast_ica(x, scale=100.0, max_iter=100, seed=1)
    assert torch.allclose(ica.unmixing @ ica.unmixing.T, torch.eye(8, dtype=torch.float64), atol=1e-8)
    cov = torch.cov(out.T, correction=0) / 100.0 ** 2
    assert torch.allclose(cov, torch.eye(8, dtype=torch.float64), atol=1e-8)
    assert out.mean(0).abs().max() < 1e-8
    white = ica.whiten_only(x)
    assert torch.allclose(out @ out.T, white @ white.T, rtol=1e-6, atol=1e-4)  # a rotation: same dot products
    assert torch.allclose(ica.transform(x), out, atol=1e-8)  # new rows go through the same frozen map


def test_fast_ica_recovers_independent_sources():
    g = torch.Generator().manual_seed(0)
    s = torch.stack([torch.rand(2000, generator=g) * 2 - 1, torch.sign(torch.randn(2000, generator=g)),
                     torch.rand(2000, generator=g) ** 3]).T.double()  # non-Gaussian, independent
    x = s @ torch.tensor([[1.0, 0.5, 0.2], [0.3, 1.0, 0.4], [0.6, 0.1, 1.0]], dtype=torch.float64)
    out, ica = dp.fast_ica(x, scale=1.0, max_iter=500, tol=1e-8)
    assert ica.converged
    corr = torch.corrcoef(torch.cat([out.T, s.T]))[:3, 3:].abs()
    assert (corr.max(1).values > 0.99).all()


def test_anisotropy():
    assert dp.anisotropy(torch.ones(10, 4) + 1e-3 * torch.randn(10, 4)) > 0.99
    x = torch.randn(4000, 64, generator=torch.Generator().manual_seed(0))
    assert abs(dp.anisotropy(x, n=1000)) < 0.01
    e = torch.nn.functional.normalize(x[:50].double(), dim=-1)
    c = e @ e.T
    assert dp.anisotropy(x[:50], n=50) == pytest.approx(float((c.sum() - 50) / (50 * 49)))


def test_split_holds_out_queries():
    dic = dp.Dictionary(entries=("a b", "c d", "e", "f g", "h"),
                        definitions=(("x1", "x2", "x3"), ("y1", "y2"), ("z1",), ("w1", "w2"), ("v1", "v2")))
    sp = dp.split_dictionary(dic, n_train=2, n_heldout=2, seed=0)
    assert len(sp.entries) == 4 and all(" " in e for e in sp.entries[2:])
    for q, e in zip(sp.query_texts, sp.query_entry.tolist()):
        assert q not in sp.train_texts and q not in sp.target_texts  # never trained on, never averaged in
        assert (sp.target_entry == e).any()  # the held-out entry keeps a vector from its other definitions
        assert not (sp.train_entry == e).any()
    sp2 = dp.split_dictionary(dic, n_train=2, n_heldout=2, seed=0, train_heldout_rest=True)
    assert set(sp2.query_texts).isdisjoint(sp2.train_texts)
    assert set(sp2.train_entry.tolist()) == set(range(4))
    with pytest.raises(ValueError, match="n_heldout"):
        dp.split_dictionary(dic, n_train=1, n_heldout=4, seed=0)


def test_word_piece_targets_and_accuracy():
    tok = ToyTokenizer()
    ids = dp.word_piece_targets(tok, ["dog", "hot dog"])
    assert ids[0] >= 0 and ids[1] == -1
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.5], [0.7, 0.2]])
    assert dp.top1_accuracy(scores, torch.tensor([1, 0, 0])) == pytest.approx(2 / 3)  # a tie is a miss
    w = torch.randn(50, 16)
    rows = dp.mean_word_piece_rows(tok, ["dog", "hot dog"], w)
    assert torch.allclose(rows[0], w[ids[0]])
    assert torch.allclose(dp.rescale_rows(rows, 3.0).norm(dim=1).mean(), torch.tensor(3.0))


def test_fast_ica_leaves_degenerate_directions_at_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(800, 10, generator=g, dtype=torch.float64) @ torch.randn(10, 10, generator=g, dtype=torch.float64)
    x[:, 3] = 0.7  # a constant column, as all-MiniLM-L6-v2's last layer has
    x[:, 9] = -x[:, :9].sum(1)  # and one linear constraint, as LayerNorm outputs
    out, ica = dp.fast_ica(x, scale=10.0, max_iter=50)
    assert torch.isfinite(out).all() and ica.unmixing.shape == (8, 8)
    cov = torch.cov(out.T, correction=0) / 100.0
    assert torch.allclose(cov, torch.diag(torch.tensor([1.0] * 8 + [0.0] * 2, dtype=torch.float64)), atol=1e-8)
    white = ica.whiten_only(x)
    assert torch.allclose(out @ out.T, white @ white.T, rtol=1e-6, atol=1e-6)
