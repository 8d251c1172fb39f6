"""Word-similarity sets, analogies, the Lee news corpus and a Wikipedia sample, read from the
test data that ships inside the ``gensim`` wheel (gensim itself is never imported)."""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .. import assets

TEST_DATA = "test/test_data/"
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


class WordPair(NamedTuple):
    word1: str
    word2: str
    score: float  # mean human rating, 0-10


class Analogy(NamedTuple):
    section: str  # e.g. "capital-common-countries", "gram3-comparative"
    a: str
    b: str
    c: str
    d: str  # a is to b as c is to d


def _pairs(asset: str, fname: str) -> list[WordPair]:
    text = assets.path(asset, TEST_DATA + fname).read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [WordPair(w1, w2, float(s)) for w1, w2, s in rows]


def wordsim353() -> list[WordPair]:
    """WordSim-353 (Finkelstein et al., 2002): 353 pairs rated for *relatedness*."""
    return _pairs("wordsim353", "wordsim353.tsv")


def simlex999() -> list[WordPair]:
    """SimLex-999 (Hill et al., 2015): 999 pairs rated for *similarity* (not relatedness)."""
    return _pairs("simlex999", "simlex999.txt")


def google_analogies() -> list[Analogy]:
    """The 19,544 analogy questions of Mikolov et al. (2013), in 14 sections (5 semantic, 9 syntactic)."""
    out, section = [], ""
    text = assets.path("google-analogies", TEST_DATA + "questions-words.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith(":"):
            section = line[1:].strip()
        elif line.strip():
            out.append(Analogy(section, *line.split()))
    return out


def lee_corpus(part: str = "background") -> list[str]:
    """Lee et al. (2005) news documents (Australian Broadcasting Corporation), one string each.

    ``part="background"``: 300 documents (59,890 words); ``part="test"``: the 50 documents
    whose pairwise similarities people judged (:func:`lee_similarity`).
    """
    files = {"background": "lee_background.cor", "test": "lee.cor"}
    if part not in files:
        raise ValueError(f"part must be one of {sorted(files)}, got {part!r}")
    text = assets.path("lee-corpus", TEST_DATA + files[part]).read_text(encoding="latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


def lee_similarity() -> np.ndarray:
    """Mean human similarity (0-1) of every pair of the 50 ``lee_corpus("test")`` documents: (50, 50),
    symmetric, ones on the diagonal."""
    text = assets.path("lee-corpus", TEST_DATA + "similarities0-1.txt").read_text(encoding="utf-8")
    upper = np.array([[float(x) for x in line.split()] for line in text.splitlines() if line.strip()])
    if upper.shape != (50, 50):
        raise ValueError(f"similarities0-1.txt should hold a 50 x 50 matrix, got {upper.shape}")
    upper = np.triu(upper)
    return upper + upper.T - np.diag(np.diag(upper))


def pang_lee_polarity() -> tuple[list[str], list[int]]:
    """The 200 movie-review sentences of gensim's Pang & Lee (2005) polarity sample, with labels
    (1 = positive, 0 = negative; 100 each, in file order: negatives first). The file is in fastText
    format (``__label__pos <tokenised, lower-cased sentence>``, latin-1)."""
    text = assets.path("pang-lee-polarity", TEST_DATA + "pang_lee_polarity.cor").read_text(encoding="latin-1")
    texts, labels = [], []
    for line in text.splitlines():
        if line.strip():
            tag, _, sentence = line.strip().partition(" ")
            if tag not in ("__label__pos", "__label__neg"):
                raise ValueError(f"pang_lee_polarity.cor: unexpected label {tag!r}")
            texts.append(sentence.strip())
            labels.append(int(tag == "__label__pos"))
    return texts, labels


# ------------------------------------------------------------------------------- Wikipedia
_DROP_SECTIONS = re.compile(r"^=+\s*(References|External links|See also|Further reading|Notes|Bibliography|"
                            r"Sources|Footnotes|Citations|Notes and references)\s*=+\s*$", re.M | re.I)
_DROP_TAGS = re.compile(r"<(ref|math|gallery|timeline|score|syntaxhighlight|source|chem|imagemap|hiero)"
                        r"\b[^>]*?(/>|>.*?</\1\s*>)", re.S | re.I)
_NAMESPACED = re.compile(r"^\s*:?\s*(File|Image|Category|Media|Wikipedia|Template|Help|Portal|Special|"
                         r"wikt|wiktionary|[a-z]{2,3}(-[a-z]+)?)\s*:", re.I)


def _innermost(pattern: str, repl, text: str) -> str:
    """Apply ``re.sub`` until nothing changes (nested [[links]] are rewritten innermost first)."""
    rx = re.compile(pattern)
    while True:
        new = rx.sub(repl, text)
        if new == text:
            return text
        text = new


def _drop_nested(text: str, open_: str, close: str) -> str:
    """Remove every ``open_ ... close`` span, counting nesting (``{{a|{{b}}}}``); single braces
    inside (``{|}``) do not count. A stray ``close`` is dropped; an unclosed span is cut at the end
    of its paragraph."""
    out, depth, pos, span_start = [], 0, 0, 0
    for m in re.finditer(re.escape(open_) + "|" + re.escape(close), text):
        if m.group() == open_:
            if depth == 0:
                out.append(text[pos:m.start()])
                span_start = m.start()
            depth += 1
        elif depth > 0:
            depth -= 1
            if depth == 0:
                pos = m.end()
        else:
            out.append(text[pos:m.start()])
            pos = m.end()
    if depth == 0:
        out.append(text[pos:])
    else:
        cut = text.find("\n\n", span_start)
        if cut >= 0:
            out.append(_drop_nested(text[cut:], open_, close))
    return "".join(out)


def _link(m: re.Match) -> str:
    inner = m.group(1)
    if _NAMESPACED.match(inner):
        return ""  # images, categories, interlanguage links
    return inner.split("|")[-1]


def strip_wiki_markup(text: str) -> str:
    """Plain text from MediaWiki markup: templates, tables, references, files, categories and the
    trailing reference sections removed; links replaced by their label; one paragraph a line."""
    text = html.unescape(text)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    m = _DROP_SECTIONS.search(text)
    text = text[:m.start()] if m else text
    text = _DROP_TAGS.sub("", text)
    text = re.sub(r"<ref\b[^>]*/>", "", text, flags=re.I)
    text = _drop_nested(text, "{{", "}}")  # templates
    text = _drop_nested(text, "{|", "|}")  # tables
    text = _innermost(r"\[\[([^\[\]]*)\]\]", _link, text)  # wiki links, innermost first
    text = _drop_nested(text, "[[", "]]")  # left over: files whose captions hold single brackets
    text = re.sub(r"\[(?:https?:)?//[^\s\]]+\s*([^\]]*)\]", r"\1", text)  # external links -> label
    text = re.sub(r"<[^>]+>", "", text)  # remaining tags (keep their content)
    text = re.sub(r"'{2,}", "", text)  # bold / italics
    text = re.sub(r"__[A-Z]+__", "", text)  # magic words (__TOC__)
    lines = []
    for line in text.splitlines():
        line = re.sub(r"^=+\s*(.*?)\s*=+$", r"\1", line.strip())  # headings -> their text
        line = re.sub(r"^[*#:;]+\s*", "", line)  # list / indent markers
        line = re.sub(r"\(\s*[,;]?\s*\)", "", line)  # brackets emptied by removed templates
        line = re.sub(r"\s+([,.;:])", r"\1", re.sub(r"[ \t]+", " ", line)).strip()
        if line and not line.startswith(("{", "}", "|", "!")) and re.search(r"[^\W\d_]", line):
            lines.append(line)
    return "\n".join(lines)


class Article(NamedTuple):
    title: str
    text: str


@lru_cache(maxsize=1)
def _wikipedia() -> tuple[Article, ...]:
    out = []
    with bz2.open(assets.path("wiki-sample", TEST_DATA + WIKI_FILE)) as fh:
        for _, el in ET.iterparse(fh):
            if el.tag.endswith("}page"):
                ns = el.find("{*}ns").text
                redirect = el.find("{*}redirect") is not None
                if ns == "0" and not redirect:
                    raw = el.find("{*}revision/{*}text").text or ""
                    out.append(Article(el.find("{*}title").text, strip_wiki_markup(raw)))
                el.clear()
    return tuple(out)


def wikipedia_sample() -> list[Article]:
    """The 106 articles (no redirects) of gensim's shortened 2016 English Wikipedia dump, as
    ``(title, text)`` with the markup stripped by :func:`strip_wiki_markup` (about 2 s, cached)."""
    return list(_wikipedia())
