"""Exact properties of companion.embeddings.lexsembridge (no model download: a tiny random BERT where needed)."""

import pytest
import torch

from companion.embeddings import lexsembridge as lsb


def _ids():
    ids = torch.tensor([[101, 7, 9, 7, 102, 0], [101, 5, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    return ids, mask


def test_slr_lexical_is_scaled_bag_of_words_without_ignored_ids():
    ids, mask = _ids()
    lex = lsb.slr_lexical(ids, mask, 200, scale=2.0, ignore_ids=(101, 0, 100))
    assert lex[0].nonzero().flatten().tolist() == [7, 9, 102]
    assert lex[1].nonzero().flatten().tolist() == [5, 102]
    assert float(lex.max()) == 2.0


def test_bag_ids_marks_each_distinct_kept_id_once():
    ids, mask = _ids()
    flat, w = lsb.bag_ids(ids, mask, ignore_ids=(101,))
    rows = flat.view(2, -1)
    kept = [sorted(rows[b][w.view(2, -1)[b] > 0].tolist()) for b in range(2)]
    assert kept == [[7, 9, 102], [5, 102]]


def test_embedding_bag_equals_official_dense_path_and_gate_is_a_distribution():
    torch.manual_seed(0)
    br = lsb.SLRBridge(200, 16, scale=1.5, lr_mult=3.0, ignore_ids=(101, 0, 100))
    with torch.no_grad():
        br.weight.normal_()
    ids, mask = _ids()
    assert torch.allclose(br.logits(ids, mask), br.dense_logits(ids, mask), atol=1e-5)
    g = br(ids, mask)
    assert (g > 0).all() and torch.allclose(g.sum(1), torch.ones(2))


def test_lr_mult_keeps_the_initial_function():
    torch.manual_seed(0)
    a = lsb.SLRBridge(50, 8, lr_mult=1.0)
    torch.manual_seed(0)
    b = lsb.SLRBridge(50, 8, lr_mult=10.0)
    ids, mask = _ids()
    ids = ids % 50
    assert torch.allclose(a.logits(ids, mask), b.logits(ids, mask), atol=1e-6)


def test_query_tower_zero_bridge_equals_dense_and_unmapped_tokens_are_ignored():
    vocab = torch.full((200,), -1, dtype=torch.long)
    vocab[[5, 7, 9, 102]] = torch.arange(4)
    t = lsb.QueryTower(16, True, vocab, ignore_ids=(101, 0))
    ids, mask = _ids()
    emb = torch.randn(2, 16)
    with torch.no_grad():
        t.bridge.weight.zero_()
        t.bridge.bias.zero_()
        assert torch.allclose(t(emb, ids, mask), t(emb, ids, mask, modulate=False), atol=1e-6)
        assert torch.allclose(t(emb, ids, mask, modulate=False), torch.nn.functional.normalize(emb, dim=-1), atol=1e-6)
        t.bridge.weight.normal_()
        ids2 = ids.clone()
        ids2[0, 3] = 150  # an id without a bridge row: left out of the bag, like a masked position
        mask2 = mask.clone()
        mask2[0, 3] = 0
        assert torch.allclose(t.gate(ids2, mask), t.gate(ids2, mask2))
        assert torch.allclose(t.gate(ids, mask), t.gate(ids2, mask))  # the repeated 7 was already in the bag
    with pytest.raises(ValueError, match="emb"):
        t(torch.randn(3, 16), ids, mask)
    with pytest.raises(ValueError, match="bridge"):
        lsb.QueryTower(16, False, vocab).gate(ids, mask)


def test_argument_checks():
    ids, mask = _ids()
    with pytest.raises(ValueError, match="input_ids"):
        lsb.slr_lexical(ids, mask[:, :3], 200)
    with pytest.raises(ValueError, match="vocab_size"):
        lsb.slr_lexical(ids, mask, 50)
    with pytest.raises(ValueError, match="lr_mult"):
        lsb.SLRBridge(10, 4, lr_mult=0)
    with pytest.raises(ValueError, match="p must"):
        lsb.paraphrase_query("a b", {}, p=1.5)
    with pytest.raises(ValueError, match="min_words"):
        lsb.passage_split(["x"], min_words=5, max_words=2)


def test_passages_keywords_paraphrases():
    text = ("Alpha beta gamma delta epsilon zeta eta theta. Iota kappa lambda mu nu xi omicron pi rho.\n"
            "Sigma tau upsilon phi chi psi omega alpha beta. Gamma delta kappa lambda mu nu xi omicron.")
    ps = lsb.passage_split([text], min_words=8, max_words=20, sentence_words=(6, 40))
    assert len(ps) == 4 and all(p.article == 0 for p in ps)
    df = lsb.document_frequency(ps)
    kw = lsb.keyword_query(ps[0], df, k=2, min_df=2, generator=torch.Generator().manual_seed(0))
    assert kw is not None and len(kw) == 2 and all(df[w] >= 2 for w in kw) and lsb.contains_all(ps[0], kw)
    assert lsb.keyword_query(ps[0], df, k=2, min_df=5) is None
    q = lsb.paraphrase_query("The Big dog ran.", {"big": "large", "ran": "sprinted"}, p=1.0)
    assert q == "the large dog sprinted"
    assert len(lsb.paraphrase_query("a b c d e f", {}, max_words=3).split()) == 3


def test_tfidf_retrieves_exact_copies():
    ps = [lsb.Passage(0, ("red apples grow on trees.",)), lsb.Passage(1, ("blue whales swim in oceans.",))]
    idf = lsb.idf_weights(ps)
    t = lsb.tfidf_matrix([p.text for p in ps], idf)
    assert torch.allclose(t @ t.T, torch.eye(2), atol=1e-6)


def test_cached_states_equal_the_full_encoder():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32)
    torch.manual_seed(0)
    enc = transformers.BertModel(cfg).eval()

    class Tok:
        pad_token_id = 0

        def __call__(self, texts, padding, truncation, max_length, return_tensors):
            rows = [[101 % 120] + [3 + len(w) for w in t.split()][:max_length - 1] for t in texts]
            n = max(map(len, rows))
            ids = torch.tensor([r + [0] * (n - len(r)) for r in rows])
            return {"input_ids": ids, "attention_mask": (torch.arange(n)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()}

    texts = ["a bb ccc", "dddd e", "ff ggg hhhh iiiii jj"]
    c = lsb.embed(enc, Tok(), texts, max_length=16)
    b = Tok()(texts, True, True, 16, "pt")
    with torch.no_grad():
        full = enc(**b).last_hidden_state
    m = b["attention_mask"][..., None].float()
    ref = (full * m).sum(1) / m.sum(1)
    assert torch.allclose(c.states, ref, atol=1e-5)
    assert torch.equal(c.ids, b["input_ids"])
