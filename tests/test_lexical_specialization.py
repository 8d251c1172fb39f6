"""Exact properties of companion.embeddings.lexical_specialization."""

import pytest
import torch
import torch.nn.functional as F

from companion.embeddings import lexical_specialization as ls

WORDS = ["mun", "trut", "snabb", "rask", "självständig", "обманывать", "quick", "fast"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    vocab = ls.CharVocab(WORDS)
    model = ls.CharWordEncoder(len(vocab), d_model=16, n_layers=1, n_heads=2).eval()
    return vocab, model


def test_clean_word():
    assert ls.clean_word("Stulle") == "stulle"
    assert ls.clean_word("ill-treatment") == "ill-treatment"
    assert ls.clean_word("kg") is None  # too short
    assert ls.clean_word("two words") is None
    assert ls.clean_word("-pre") is None
    with pytest.raises(ValueError, match="word"):
        ls.clean_word(3)


def test_encode_layout(setup):
    vocab, _ = setup
    ids, lengths = vocab.encode(["mun", "snabb"])
    assert ids.shape == (2, 7) and lengths.tolist() == [5, 7]
    assert ids[0, 0] == ls.CLS and ids[0, 4] == ls.SEP and (ids[0, 5:] == ls.PAD).all()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.encode(["xyz"])
    with pytest.raises(ValueError, match="words"):
        vocab.encode("mun")


def test_pooling_matches_manual_mean_and_ignores_padding(setup):
    vocab, model = setup
    ids, lengths = vocab.encode(["mun", "självständig"])
    with torch.no_grad():
        h = model(ids, lengths)
        v = model.embed(ids, lengths)
        alone = model.embed(*vocab.encode(["mun"]))
    assert torch.allclose(v[0], h[0, 1:4].mean(0), atol=1e-6)  # characters only: no [CLS], no [SEP]
    assert torch.allclose(v[1], h[1, 1:13].mean(0), atol=1e-6)
    assert torch.allclose(v[0], alone[0], atol=1e-5)


def _nt_xent_loop(z, labels, tau):
    zn = F.normalize(z, dim=-1)
    terms = []
    for a in range(len(z)):
        for p in range(len(z)):
            if a != p and labels[a] == labels[p]:
                s_ap = zn[a] @ zn[p] / tau
                s_an = torch.stack([zn[a] @ zn[n] / tau for n in range(len(z)) if labels[n] != labels[a]])
                terms.append(-(s_ap - torch.logsumexp(torch.cat([s_ap[None], s_an]), 0)))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("labels", [[0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 2, 2, 2]])
def test_nt_xent_equals_formula(labels):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(len(labels), 7, generator=g)
    lab = torch.tensor(labels)
    assert torch.isclose(ls.nt_xent(z, lab, 0.07), _nt_xent_loop(z, lab, 0.07), atol=1e-5)
    assert torch.isclose(ls.nt_xent(3.0 * z, lab, 0.5), _nt_xent_loop(z, lab, 0.5), atol=1e-5)  # scale-free


def test_nt_xent_arguments():
    with pytest.raises(ValueError, match="positive pair"):
        ls.nt_xent(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="tau"):
        ls.nt_xent(torch.randn(2, 4), torch.tensor([0, 0]), tau=0)
    with pytest.raises(ValueError, match="labels"):
        ls.nt_xent(torch.randn(2, 4), torch.tensor([0, 0, 1]))


def test_mask_characters_never_touches_specials():
    vocab = ls.CharVocab(WORDS)
    ids, lengths = vocab.encode(WORDS)
    g = torch.Generator().manual_seed(0)
    out, targets = ls.mask_characters(ids, lengths, len(vocab), 0.3, g)
    chosen = targets != -100
    assert (chosen.sum(1) >= 1).all()
    assert not chosen[:, 0].any() and not chosen[torch.arange(len(WORDS)), lengths - 1].any()
    assert (out[~chosen] == ids[~chosen]).all()
    assert (targets[chosen] == ids[chosen]).all()
    with pytest.raises(ValueError, match="rate"):
        ls.mask_characters(ids, lengths, len(vocab), 1.5)


def test_split_is_word_disjoint_and_excludes():
    letters = "abcdefghijklmnopqrst"
    names = [x + y + z for x in letters for y in letters for z in "xyz"][:400]  # 400 distinct 3-letter words
    pairs = [(names[i], names[i + 1]) for i in range(0, 399)] + [(names[i], names[i + 7]) for i in range(0, 390, 3)]
    excl = {names[0]}
    sp = ls.split_lexicon(pairs, "xx", test_frac=0.3, seed=0, exclude=excl)
    train_words = {w for p in sp.train for w in p}
    assert not train_words & set(sp.test_words)
    assert not train_words & excl
    assert set(sp.test_words) == {w for p in sp.test for w in p}
    assert sp.test and sp.train
    with pytest.raises(ValueError, match="test_frac"):
        ls.split_lexicon(pairs, "xx", test_frac=1.0)


def test_retrieval_perfect_and_reversed(setup):
    vocab, _ = setup

    class Fixed(torch.nn.Module):
        """Embeds a word by a fixed table: synonyms share a direction."""

        def __init__(self, table):
            super().__init__()
            self.table = table
            self.p = torch.nn.Parameter(torch.zeros(1))

        def embed(self, ids, lengths):
            words = ["".join(vocab.itos[i] for i in row[1: n - 1].tolist()) for row, n in zip(ids, lengths)]
            return torch.stack([self.table[w] for w in words])

    split = ls.LexiconSplit("xx", [], [("mun", "trut"), ("snabb", "rask"), ("quick", "fast")],
                            sorted(["mun", "trut", "snabb", "rask", "quick", "fast"]))
    e = torch.eye(3)
    good = {"mun": e[0], "trut": e[0] + 0.1 * e[1], "snabb": e[1], "rask": e[1] + 0.1 * e[2],
            "quick": e[2], "fast": e[2] + 0.1 * e[0]}
    r = ls.synonym_retrieval(Fixed(good), vocab, split)
    assert r["mrr"] == pytest.approx(1.0) and r["auc"] == pytest.approx(1.0)
    bad = {w: -v if w in ("trut", "rask", "fast") else v for w, v in good.items()}
    r = ls.synonym_retrieval(Fixed(bad), vocab, split)
    assert r["mrr"] == pytest.approx(1 / 5) and r["auc"] == pytest.approx(0.0)


def test_pair_sampler_labels_and_no_repeats():
    vocab = ls.CharVocab(WORDS + ["abcdefghijklmnopqrstuvwxyz"])
    pairs = {"a": [("mun", "trut"), ("snabb", "rask")], "b": [("quick", "fast"), ("abc", "def"), ("ghi", "jkl")]}
    s = ls.PairSampler(pairs, vocab, batch=3, seed=0)
    ids, lengths, labels = s(0)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    words = ["".join(vocab.itos[i] for i in row[1: n - 1].tolist()) for row, n in zip(ids, lengths)]
    assert len(set(words)) == len(words)
    assert all((words[2 * i], words[2 * i + 1]) in pairs["a"] + pairs["b"] for i in range(3))
    with pytest.raises(ValueError, match="batch"):
        ls.PairSampler(pairs, vocab, batch=1)


def test_masked_views_share_labels_and_shuffle_keeps_words():
    vocab = ls.CharVocab(WORDS)
    ids, lengths, labels = ls.MaskedViewSampler(WORDS, vocab, batch=4, seed=0)(0)
    assert ids.shape[0] == 8 and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert (lengths[0::2] == lengths[1::2]).all()  # two views of one word
    pairs = [("mun", "trut"), ("snabb", "rask"), ("quick", "fast"), ("trut", "mun")]
    sh = ls.shuffled_pairs(pairs, seed=3)
    assert [a for a, _ in sh] == [a for a, b in pairs if a in {x for x, _ in sh}]
    from collections import Counter

    assert not Counter(b for _, b in sh) - Counter(b for _, b in pairs)  # second words are a sub-multiset
    assert all(a != b for a, b in sh)
    with pytest.raises(ValueError, match="pairs"):
        ls.shuffled_pairs([])
