"""Lexical resources: WordNet 3.0 and LibreOffice thesauri (processed subsets shipped in
``files/``), and word frequencies from the ``wordfreq`` package."""

from __future__ import annotations

import lzma
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, NamedTuple

from .. import assets

POS_ORDER = ("n", "v", "a", "s", "r")  # noun, verb, adjective, adjective satellite, adverb


@dataclass(frozen=True)
class Synset:
    """One WordNet synset. ``lemmas`` use spaces (``"domestic dog"``); ``hypernyms`` are names."""

    name: str  # NLTK-style: first lemma, pos, sense rank of that lemma -- "dog.n.01"
    pos: str  # one of POS_ORDER
    lexname: str  # lexicographer file (supersense), e.g. "noun.animal"
    lemmas: tuple[str, ...]
    hypernyms: tuple[str, ...]  # hypernyms and instance hypernyms
    definition: str


class WordNet:
    """Princeton WordNet 3.0 (Miller, 1995): synsets by name, and the synsets of a lemma."""

    def __init__(self, synsets: list[Synset], ranks: dict[str, list[tuple[int, int, str]]]) -> None:
        self._by_name = {s.name: s for s in synsets}
        self._ranks = ranks  # lemma (lower case) -> [(pos order, sense rank, synset name)]

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[Synset]:
        return iter(self._by_name.values())

    def synset(self, name: str) -> Synset:
        """The synset called ``name`` (e.g. ``"dog.n.01"``)."""
        if name not in self._by_name:
            raise ValueError(f"name must be a WordNet synset name like 'dog.n.01', got {name!r}")
        return self._by_name[name]

    def synsets(self, lemma: str, pos: str | None = None) -> list[Synset]:
        """The synsets of ``lemma`` (any case, spaces or underscores), most frequent sense first
        within each part of speech (nouns, verbs, adjectives, adverbs), like NLTK."""
        if pos is not None and pos not in POS_ORDER:
            raise ValueError(f"pos must be one of {POS_ORDER} or None, got {pos!r}")
        key = lemma.replace("_", " ").lower()
        found = [self._by_name[n] for _, _, n in sorted(self._ranks.get(key, []))]
        if pos is not None:
            found = [s for s in found if s.pos == pos or (pos == "a" and s.pos == "s")]
        return found

    def hypernym_closure(self, name: str) -> list[str]:
        """All (transitive) hypernyms of synset ``name``, nearest first, without repeats."""
        out, frontier, seen = [], [name], {name}
        while frontier:
            nxt = []
            for n in frontier:
                for h in self.synset(n).hypernyms:
                    if h not in seen:
                        seen.add(h)
                        out.append(h)
                        nxt.append(h)
            frontier = nxt
        return out


@lru_cache(maxsize=1)
def wordnet() -> WordNet:
    """WordNet 3.0: all 117,659 synsets with lemmas, hypernyms and definitions (about 1 s to load)."""
    raw = lzma.decompress(assets.path("wordnet-3.0", "files/wordnet/synsets.tsv.xz").read_bytes())
    synsets, ranks = [], {}
    for line in raw.decode("utf-8").splitlines()[1:]:
        pos, lexname, lemma_field, hyper_field, definition = line.split("\t")
        lemmas = [lr.rsplit(":", 1) for lr in lemma_field.split("|")]
        name = f"{lemmas[0][0].lower()}.{pos}.{int(lemmas[0][1]):02d}"
        synsets.append(Synset(name=name, pos=pos, lexname=lexname,
                              lemmas=tuple(w.replace("_", " ") for w, _ in lemmas),
                              hypernyms=tuple(hyper_field.split("|")) if hyper_field else (),
                              definition=definition))
        for w, r in lemmas:
            ranks.setdefault(w.replace("_", " ").lower(), []).append((POS_ORDER.index(pos), int(r), name))
    return WordNet(synsets, ranks)


class Sense(NamedTuple):
    """One sense of a thesaurus headword."""

    pos: str  # as the source labels it ("noun", "Nom", ...); may be empty
    synonyms: tuple[str, ...]
    antonyms: tuple[str, ...]  # English only


@lru_cache(maxsize=None)
def _thesaurus(lang: str) -> dict[str, tuple[Sense, ...]]:
    if lang not in assets.THESAURUS_LANGS:
        raise ValueError(f"lang must be one of {assets.THESAURUS_LANGS}, got {lang!r}")
    raw = lzma.decompress(assets.path("thesauri", f"files/thesaurus/{lang}.tsv.xz").read_bytes())
    out: dict[str, list[Sense]] = {}
    for line in raw.decode("utf-8").splitlines()[1:]:
        head, pos, syns, ants = line.split("\t")
        out.setdefault(head, []).append(Sense(pos, tuple(syns.split("|")) if syns else (),
                                              tuple(ants.split("|")) if ants else ()))
    return {h: tuple(s) for h, s in out.items()}


def thesaurus(lang: str = "en") -> dict[str, tuple[Sense, ...]]:
    """Synonym lists (LibreOffice thesaurus) of the 6,000 most frequent single-word headwords of
    ``lang`` (one of ``en de fr es ru sv``): headword -> its senses."""
    return dict(_thesaurus(lang))


def synonym_pairs(lang: str = "en", single_words: bool = True) -> list[tuple[str, str]]:
    """All (headword, synonym) pairs of :func:`thesaurus`, deduplicated, in file order.

    With ``single_words`` only synonyms without spaces are kept (handy for word-level models).
    """
    pairs, seen = [], set()
    for head, senses in _thesaurus(lang).items():
        for sense in senses:
            for syn in sense.synonyms:
                if (single_words and " " in syn) or (head, syn) in seen:
                    continue
                seen.add((head, syn))
                pairs.append((head, syn))
    return pairs


def word_frequencies(lang: str = "en", n: int = 10_000) -> dict[str, float]:
    """The ``n`` most frequent words of ``lang`` with their frequency (share of all tokens),
    most frequent first, from ``wordfreq`` (Speer, 2022; 42 languages)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    assets.locate("wordfreq")
    import wordfreq

    if lang not in wordfreq.available_languages():
        raise ValueError(f"lang must be one of {sorted(wordfreq.available_languages())}, got {lang!r}")
    return {w: wordfreq.word_frequency(w, lang) for w in wordfreq.top_n_list(lang, n)}
