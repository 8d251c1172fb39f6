"""LexSemBridge (Zhan et al., 2025): a token-aware gate on a dense query embedding.

Read against the official code (``Jasaxion/LexSemBridge``: ``modeling/LexSemBridgeModeling.py``,
``train/trainer.py``, ``evaluate/eval.py``, ``README.md``; read 2026-12-04). The SLR variant
(statistical lexical representation) is built here:

* :func:`slr_lexical` -- the official dense path: ``l = scatter_reduce(amax)`` of ``scale`` at the query's
  token ids (special tokens ignored) -> (B, V), a binary bag of words times ``scale``;
* :func:`bag_ids` + :meth:`SLRBridge.logits` -- the same ``W l + b`` as an ``embedding_bag`` over the
  query's distinct token ids (the card's kernel opportunity: no (B, V) tensor);
* :class:`SLRBridge` -- ``g = softmax(W l + b)`` over the hidden dimensions (``linearlayer``);
* :func:`embed` -- a frozen ``transformers`` BERT (all-MiniLM-L6-v2 in the chapter) run once
  (:func:`companion.models.cache_encoder_states`), mean-pooled;
* :class:`QueryTower` -- a trainable linear adapter on the frozen mean-pooled query embedding and, with a bridge,
  ``q = normalize(g * h_q)`` (``encode_q`` with ``vocab_weight_fusion_q``; passages are never gated, as with
  ``vocab_weight_fusion_p=False``); ``modulate=False`` drops the gate: what the official evaluation does (the
  checkpoint holds the backbone only and ``evaluate/eval.py`` reloads it as a plain SentenceTransformer);
* :func:`passage_split`, :func:`keyword_query`, :func:`paraphrase_query` -- the chapter's data: passages of
  the shipped Wikipedia sample, keyword queries (the rarest words of a passage) and paraphrase queries
  (a sentence of the passage with thesaurus synonyms substituted); :func:`tfidf_matrix` the lexical reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import CachedStates, cache_encoder_states, mean_pool

_WORD = re.compile(r"[a-z]+")
STOP_WORDS = frozenset("""a an the this that these those he she it they we you i me him her them us his its their our
your my who whom whose which what as at by for from in into of on onto to with without about over under up down out off
and or but nor so yet if then than because while although is are was were be been being am has have had do does did
can could may might must shall should will would not no all any each both some such one two first also only very
there here when where how why after before during since until other more most many much""".split())
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


# ------------------------------------------------------------------------------------------- the method
def slr_lexical(input_ids: Tensor, attention_mask: Tensor, vocab_size: int, scale: Tensor | float = 1.0,
                ignore_ids: Sequence[int] = ()) -> Tensor:
    """The official SLR lexical vector (``slr_enhancement``): (B, N) ids -> (B, V), ``scale`` where a token occurs.

    ``l_w = max_t scale * m_t * 1[x_t = w]`` (``scatter_reduce_(..., reduce="amax")``), with ``m_t`` the attention
    mask times 0 at the ids in ``ignore_ids`` (``ignore_special_tokens``: ``[CLS]``, ``[PAD]``, ``[UNK]``).
    """
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids and attention_mask must both have shape (B, N), got "
                         f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        raise ValueError(f"input_ids must lie in [0, vocab_size={vocab_size})")
    keep = attention_mask.float()
    if len(ignore_ids):
        keep = keep * ~torch.isin(input_ids, torch.tensor(list(ignore_ids), device=input_ids.device))
    weights = keep * scale  # (B, N)
    out = torch.zeros(input_ids.shape[0], vocab_size, dtype=weights.dtype, device=input_ids.device)
    return out.scatter_reduce(1, input_ids, weights, reduce="amax")  # (B, V)


def bag_ids(input_ids: Tensor, attention_mask: Tensor, ignore_ids: Sequence[int] = ()) -> tuple[Tensor, Tensor]:
    """The distinct kept token ids of each row as ``embedding_bag`` input: (flat ids (M,), weights (M,) in {0, 1}).

    Row ``b`` owns positions ``b*N .. b*N+N-1``; repeated ids of a row and masked or ignored positions get weight 0,
    so ``sum_j weight_j W[id_j]`` is ``W`` times the binary bag of words.
    """
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids and attention_mask must both have shape (B, N), got "
                         f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
    keep = attention_mask.bool()
    if len(ignore_ids):
        keep &= ~torch.isin(input_ids, torch.tensor(list(ignore_ids), device=input_ids.device))
    ids = torch.where(keep, input_ids, -1)
    srt, _ = ids.sort(dim=1)  # (B, N), dropped positions (-1) first
    first = torch.ones_like(srt, dtype=torch.bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]
    w = (first & (srt >= 0)).float()
    return srt.clamp_min(0).flatten(), w.flatten()


class SLRBridge(nn.Module):
    """``g = softmax(W l + b)`` (B, d) from the SLR lexical vector ``l = scale * BoW(query)``.

    ``W`` (``linearlayer``: V -> d) is stored as an embedding table (V, d); ``scale`` is the official learnable scalar
    (init 1.0). ``lr_mult`` stores ``W``, ``b`` divided by ``lr_mult`` and multiplies them back in the forward pass:
    under Adam they then move ``lr_mult`` times faster than the rest of the model, a per-parameter learning rate that
    the book's one-schedule training loop keeps (``lr_mult=1``: the official single learning rate).
    """

    def __init__(self, vocab_size: int, dim: int, scale: float = 1.0, lr_mult: float = 1.0,
                 ignore_ids: Sequence[int] = ()) -> None:
        super().__init__()
        if vocab_size < 1 or dim < 1:
            raise ValueError(f"vocab_size and dim must be >= 1, got {vocab_size}, {dim}")
        if lr_mult <= 0:
            raise ValueError(f"lr_mult must be > 0, got {lr_mult}")
        ref = nn.Linear(vocab_size, dim)  # the official nn.Linear(vocab_size, hidden_size) and its default init
        self.lr_mult = float(lr_mult)
        self.weight = nn.Parameter(ref.weight.detach().T.contiguous() / self.lr_mult)  # (V, d)
        self.bias = nn.Parameter(ref.bias.detach() / self.lr_mult)  # (d,)
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.vocab_size, self.ignore_ids = vocab_size, tuple(int(i) for i in ignore_ids)

    def logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``W l + b`` (B, d) as an embedding bag over the distinct kept ids (no (B, V) tensor)."""
        flat, w = bag_ids(input_ids, attention_mask, self.ignore_ids)
        offsets = torch.arange(0, flat.numel(), input_ids.shape[1], device=flat.device)
        bag = F.embedding_bag(flat, self.weight, offsets, mode="sum", per_sample_weights=w)  # (B, d)
        return self.lr_mult * (self.scale * bag + self.bias)

    def dense_logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The same logits by the official dense path: ``linearlayer(slr_lexical(...))`` (for tests)."""
        lex = slr_lexical(input_ids, attention_mask, self.vocab_size, self.scale, self.ignore_ids)  # (B, V)
        return self.lr_mult * (lex @ self.weight + self.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The gate ``g`` (B, d): positive, each row sums to 1."""
        return torch.softmax(self.logits(input_ids, attention_mask), dim=-1)


class QueryTower(nn.Module):
    """Query head on a frozen dense encoder's pooled query embeddings ``e`` (B, d): a trainable linear adapter
    ``h_q = A e + c`` (initialised to the identity) and -- with ``bridge=True`` -- the LexSemBridge gate,
    ``q = normalize(g(x) * h_q)``; without it (or with ``modulate=False``) ``q = normalize(h_q)``.

    ``vocab`` maps tokenizer ids to bridge rows (a (V_tok,) long tensor, -1 for ids the bridge does not hold): the
    chapter keeps only the ids that occur in its training and test queries, which changes nothing for them (the
    other rows never get a gradient); a token without a row is left out of the bag of words.
    """

    def __init__(self, dim: int, bridge: bool, vocab: Tensor, scale: float = 1.0, lr_mult: float = 1.0,
                 ignore_ids: Sequence[int] = ()) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if vocab.ndim != 1 or vocab.is_floating_point() or int(vocab.max()) < 0:
            raise ValueError(f"vocab must be a 1-d integer tensor with at least one row >= 0, got {vocab!r}")
        self.adapter = nn.Linear(dim, dim)
        with torch.no_grad():
            self.adapter.weight.copy_(torch.eye(dim))
            self.adapter.bias.zero_()
        self.register_buffer("vocab", vocab.long(), persistent=False)
        rows = int(vocab.max()) + 1
        ignore = [int(vocab[i]) for i in ignore_ids if 0 <= i < len(vocab) and int(vocab[i]) >= 0]
        self.bridge = SLRBridge(rows, dim, scale, lr_mult, ignore) if bridge else None

    def gate(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """The LexSemBridge gate (B, d) of the queries ``input_ids`` (B, N)."""
        if self.bridge is None:
            raise ValueError("this tower has no bridge (bridge=False)")
        if input_ids.shape != mask.shape:
            raise ValueError(f"input_ids and mask must have one shape, got {tuple(input_ids.shape)}, {tuple(mask.shape)}")
        rows = self.vocab[input_ids]  # tokens the bridge holds no row for are left out of the bag
        return self.bridge(rows.clamp_min(0), mask * (rows >= 0))

    def forward(self, emb: Tensor, input_ids: Tensor, mask: Tensor, modulate: bool = True) -> Tensor:
        """Unit query embeddings (B, d) from the frozen pooled embeddings (B, d) and the queries' ids and mask (B, N)."""
        if emb.ndim != 2 or emb.shape[0] != input_ids.shape[0]:
            raise ValueError(f"emb must have shape (B, d) with B = {input_ids.shape[0]}, got {tuple(emb.shape)}")
        h = self.adapter(emb)
        if self.bridge is not None and modulate:
            h = self.gate(input_ids, mask) * h
        return F.normalize(h, dim=-1)


def embed(encoder: nn.Module, tokenizer, texts: Sequence[str], max_length: int = 64) -> CachedStates:
    """Frozen sentence embeddings of ``texts``: the mean-pooled last layer of a ``transformers`` BERT ``encoder``
    (not normalised) in ``states`` (M, d), with the token ids and mask (M, N) the bridge reads."""
    c = cache_encoder_states(encoder, tokenizer, texts, upto=len(encoder.encoder.layer), max_length=max_length)
    return CachedStates(mean_pool(c.states, c.mask), c.mask, c.ids)


# ------------------------------------------------------------------------------------------- the data
@dataclass(frozen=True)
class Passage:
    """A passage of consecutive sentences of one article."""

    article: int
    sentences: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def words(text: str) -> list[str]:
    """Lowercase alphabetic words of ``text``."""
    return _WORD.findall(text.lower())


def passage_split(articles: Sequence[str], min_words: int = 40, max_words: int = 90,
                  sentence_words: tuple[int, int] = (6, 40)) -> list[Passage]:
    """Cut each article (one string, paragraphs on lines) into passages of whole sentences of
    ``min_words..max_words`` words, within paragraphs; sentences outside ``sentence_words`` words are dropped
    (headings, list items, very long run-ons)."""
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    out = []
    for a, text in enumerate(articles):
        for para in text.split("\n"):
            cur: list[str] = []
            for s in _SENTENCE_END.split(para.strip()):
                n = len(s.split())
                if not sentence_words[0] <= n <= sentence_words[1] or s[-1:] not in ".!?":
                    cur = []  # a passage never jumps over a dropped sentence
                    continue
                if sum(len(x.split()) for x in cur) + n > max_words:
                    cur = []
                cur.append(s)
                if sum(len(x.split()) for x in cur) >= min_words:
                    out.append(Passage(a, tuple(cur)))
                    cur = []
    return out


def document_frequency(passages: Sequence[Passage]) -> dict[str, int]:
    """Number of passages each word occurs in."""
    df: dict[str, int] = {}
    for p in passages:
        for w in set(words(p.text)):
            df[w] = df.get(w, 0) + 1
    return df


def keyword_query(passage: Passage, df: dict[str, int], k: int = 3, min_df: int = 2, min_len: int = 4,
                  generator: torch.Generator | None = None) -> list[str] | None:
    """The ``k`` rarest words of ``passage`` (lowest document frequency ``df``, ties broken at random), each of which
    occurs in at least ``min_df`` passages (so no single keyword names its passage), in random order; ``None`` when
    the passage has fewer than ``k`` such words. Stop words and words shorter than ``min_len`` are never keywords."""
    if k < 1 or min_df < 1:
        raise ValueError(f"k and min_df must be >= 1, got {k}, {min_df}")
    g = generator or torch.Generator().manual_seed(0)
    cand = sorted({w for w in words(passage.text) if len(w) >= min_len and w not in STOP_WORDS
                   and df.get(w, 0) >= min_df})
    if len(cand) < k:
        return None
    tie = torch.rand(len(cand), generator=g).tolist()
    ranked = sorted(range(len(cand)), key=lambda i: (df[cand[i]], tie[i]))[:k]
    order = torch.randperm(k, generator=g).tolist()
    return [cand[ranked[i]] for i in order]


def paraphrase_query(sentence: str, synonyms: dict[str, str], p: float = 1.0, max_words: int | None = None,
                     generator: torch.Generator | None = None) -> str:
    """``sentence`` lowercased (punctuation dropped) with each word that has a one-word ``synonyms`` entry replaced
    with probability ``p``; with ``max_words``, a random window of that many consecutive words of the result."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    if max_words is not None and max_words < 1:
        raise ValueError(f"max_words must be >= 1 or None, got {max_words}")
    g = generator or torch.Generator().manual_seed(0)
    out = []
    for w in words(sentence):
        if w in synonyms and float(torch.rand((), generator=g)) < p:
            w = synonyms[w]
        out.append(w)
    if max_words is not None and len(out) > max_words:
        s0 = int(torch.randint(len(out) - max_words + 1, (1,), generator=g))
        out = out[s0:s0 + max_words]
    return " ".join(out)


def synonym_map(thesaurus: dict, stop: frozenset[str] = STOP_WORDS) -> dict[str, str]:
    """word -> the first one-word synonym of its first thesaurus sense that is itself a headword with the same
    part of speech (``companion.data.thesaurus``); words in ``stop`` get none (function words such as "he" or "as"
    are thesaurus nouns: helium, arsenic)."""
    pos = {w: s[0].pos for w, s in thesaurus.items() if _WORD.fullmatch(w) and w not in stop}
    out = {}
    for w, p in pos.items():
        for cand in thesaurus[w][0].synonyms:
            if _WORD.fullmatch(cand) and cand != w and pos.get(cand) == p:
                out[w] = cand
                break
    return out


def contains_all(passage: Passage, keywords: Sequence[str]) -> bool:
    """Does ``passage`` hold every word of ``keywords``?"""
    ws = set(words(passage.text))
    return all(k in ws for k in keywords)


def tfidf_matrix(texts: Sequence[str], idf: dict[str, float]) -> Tensor:
    """Unit TF-IDF vectors (M, |idf|) of ``texts`` over the words of ``idf`` (other words ignored): the lexical
    reference retriever (``q . p`` is the cosine of two bags of words weighted by ``idf``)."""
    index = {w: i for i, w in enumerate(idf)}
    out = torch.zeros(len(texts), len(index))
    for r, t in enumerate(texts):
        for w in words(t):
            if w in index:
                out[r, index[w]] += idf[w]
    return F.normalize(out, dim=-1)


def idf_weights(passages: Sequence[Passage]) -> dict[str, float]:
    """``log(1 + M / df)`` of every word of ``passages`` (M passages; :func:`document_frequency`)."""
    import math

    df = document_frequency(passages)
    return {w: math.log(1 + len(passages) / n) for w, n in sorted(df.items())}
