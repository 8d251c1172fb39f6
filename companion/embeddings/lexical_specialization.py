"""Lexical specialization of a multilingual encoder (Green, Ponzetto & Glavaš, ACL 2023: "BabelBERT").

The paper takes a multilingual transformer (mBERT, XLM-R), feeds every word *in isolation* as
``[CLS] w [SEP]``, represents it by the mean of its last-layer sub-word states **without** the two
special tokens, and fine-tunes the whole encoder with NT-Xent on synonym pairs from BabelNet synsets
(every word sharing a synset label is a positive). Here the encoder is a small character-level
transformer pre-trained in the chapter by masked-character modelling on word lists of six languages,
and the constraints are the LibreOffice thesauri of :func:`companion.data.synonym_pairs`.

Pieces:

* :class:`CharVocab` -- characters -> ids with ``[PAD] [MASK] [CLS] [SEP]``; :meth:`CharVocab.encode`.
* :class:`CharWordEncoder` -- :class:`~companion.nn.transformer.TinyEncoder` + an MLM head; :meth:`embed`
  pools as the official ``mean_pooling`` (``word_iso``): mean over the characters, ``[CLS]``/``[SEP]`` out.
* :func:`mlm_loss` -- masked-character modelling (the encoder's "pre-training").
* :func:`nt_xent` -- NT-Xent with labels (``pytorch_metric_learning.losses.NTXentLoss``, cosine, tau).
* :func:`split_lexicon` -- word-disjoint train / test split of one language's synonym pairs.
* :func:`synonym_mrr` -- BLI-style retrieval MRR of held-out synonyms among held-out words.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.transformer import TinyEncoder, TransformerConfig

Tensor = torch.Tensor
SPECIALS = ("[PAD]", "[MASK]", "[CLS]", "[SEP]")
PAD, MASK, CLS, SEP = range(4)


def clean_word(word: str, max_chars: int = 14) -> str | None:
    """Lower-case ``word``; ``None`` unless it is 3..``max_chars`` letters (a hyphen allowed inside).

    The official code drops words whose tokenisation is too short (length >= 3 check) and matches
    lower-cased forms; single words only (the thesauri also list phrases).
    """
    if not isinstance(word, str):
        raise ValueError(f"word must be a str, got {type(word).__name__}")
    w = word.strip().lower()
    if not 3 <= len(w) <= max_chars or not w.replace("-", "").isalpha() or w[0] == "-" or w[-1] == "-":
        return None
    return w


class CharVocab:
    """Character vocabulary: ids 0..3 are ``[PAD] [MASK] [CLS] [SEP]``, then one id per character."""

    def __init__(self, words: Iterable[str]) -> None:
        chars = sorted({c for w in words for c in w})
        if not chars:
            raise ValueError("words must contain at least one character")
        self.itos = list(SPECIALS) + chars
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, words: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``[CLS] w [SEP]`` per word, right-padded: ids (B, N) and lengths (B,) counting both specials."""
        if isinstance(words, str) or not len(words):
            raise ValueError("words must be a non-empty sequence of str")
        n = max(len(w) for w in words) + 2
        ids = torch.full((len(words), n), PAD, dtype=torch.long)
        for b, w in enumerate(words):
            try:
                ids[b, : len(w) + 2] = torch.tensor([CLS] + [self.stoi[c] for c in w] + [SEP])
            except KeyError as e:
                raise ValueError(f"words[{b}]={w!r} has a character outside the vocabulary: {e}") from None
        lengths = torch.tensor([len(w) + 2 for w in words])
        return ids, lengths


class CharWordEncoder(nn.Module):
    """A character-level word encoder: TinyEncoder over ``[CLS] w [SEP]`` plus an MLM head."""

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2, n_heads: int = 4) -> None:
        super().__init__()
        # embed_std 1.0: the first layer is attention behind a LayerNorm, inputs at unit scale
        self.cfg = TransformerConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers,
                                     n_heads=n_heads, pos="rope", embed_std=1.0)
        self.encoder = TinyEncoder(self.cfg)
        self.mlm_head = nn.Linear(d_model, vocab_size)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """Last-layer states (B, N, d) of right-padded ``ids`` (B, N) with ``lengths`` (B,)."""
        return self.encoder(ids, lengths)

    def embed(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """Word vectors (B, d): mean of the character states, ``[CLS]`` (position 0) and ``[SEP]``
        (position ``length - 1``, right padding) excluded, as the official ``mean_pooling``."""
        if ids.ndim != 2 or lengths.shape != ids.shape[:1]:
            raise ValueError(f"ids must be (B, N) and lengths (B,), got {tuple(ids.shape)}, {tuple(lengths.shape)}")
        if int(lengths.min()) < 3:
            raise ValueError("every word needs at least one character between [CLS] and [SEP] (lengths >= 3)")
        h = self(ids, lengths)  # (B, N, d)
        pos = torch.arange(ids.shape[1], device=ids.device)[None]  # (1, N)
        keep = ((pos >= 1) & (pos < lengths[:, None] - 1)).to(h.dtype)  # (B, N): the characters only
        return (h * keep[..., None]).sum(1) / (lengths - 2)[:, None].to(h.dtype)


def mask_characters(ids: Tensor, lengths: Tensor, vocab_size: int, rate: float = 0.2,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT-style masking of characters (never the specials): at least one per word.

    Returns the corrupted ids and the targets (-100 where nothing is predicted). Of the chosen
    characters 80 % become ``[MASK]``, 10 % a random character, 10 % stay.
    """
    if not 0 < rate < 1:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    B, N = ids.shape
    pos = torch.arange(N)[None]
    is_char = (pos >= 1) & (pos < lengths[:, None] - 1)  # (B, N)
    score = torch.rand(B, N, generator=generator).masked_fill(~is_char, 2.0)
    chosen = (score < rate) & is_char
    first = score.argmin(1)  # guarantee one masked character per word
    chosen[torch.arange(B), first] = True
    targets = torch.where(chosen, ids, torch.full_like(ids, -100))
    u = torch.rand(B, N, generator=generator)
    if vocab_size <= len(SPECIALS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIALS)} special ids, got {vocab_size}")
    rnd = torch.randint(len(SPECIALS), vocab_size, (B, N), generator=generator)
    out = ids.clone()
    out[chosen & (u < 0.8)] = MASK
    swap = chosen & (u >= 0.8) & (u < 0.9)
    out[swap] = rnd[swap]
    return out, targets


def mlm_loss(model: CharWordEncoder, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Cross-entropy of the masked characters; ``batch`` = (corrupted ids, lengths, targets)."""
    ids, lengths, targets = batch
    logits = model.mlm_head(model(ids, lengths))  # (B, N, V)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def nt_xent(z: Tensor, labels: Tensor, tau: float = 0.07) -> Tensor:
    """NT-Xent with labels, as ``pytorch_metric_learning.losses.NTXentLoss`` with cosine similarity.

    ``z`` (M, d) word vectors, ``labels`` (M,) ints: every ordered pair (a, p), a != p, with equal
    labels is a positive, every n with a different label a negative of a. The loss averages over
    positive pairs ``-log(e^{s_ap} / (e^{s_ap} + sum_n e^{s_an}))`` with ``s = cos / tau``.
    """
    if z.ndim != 2 or labels.shape != z.shape[:1]:
        raise ValueError(f"z must be (M, d) and labels (M,), got {tuple(z.shape)} and {tuple(labels.shape)}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    s = F.normalize(z, dim=-1) @ F.normalize(z, dim=-1).T / tau  # (M, M)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    pos, neg = same & ~eye, ~same
    if not pos.any():
        raise ValueError("labels must contain at least one positive pair (two equal labels)")
    neg_lse = torch.logsumexp(s.masked_fill(~neg, float("-inf")), dim=1, keepdim=True)  # (M, 1)
    # -log(e^s_ap / (e^s_ap + sum_n e^s_an)) = log(1 + e^{lse_neg - s_ap})
    per_pair = F.softplus(neg_lse - s)  # (M, M), used at positive pairs only
    return per_pair[pos].mean()


def pair_loss(model: CharWordEncoder, batch: tuple[Tensor, Tensor, Tensor], tau: float = 0.07) -> Tensor:
    """NT-Xent of one batch of B pairs flattened to 2B words; ``batch`` = (ids, lengths, labels)."""
    ids, lengths, labels = batch
    return nt_xent(model.embed(ids, lengths), labels, tau)


@dataclass(frozen=True)
class LexiconSplit:
    """One language's synonym pairs split so that no test word occurs in a training pair."""

    lang: str
    train: list[tuple[str, str]]
    test: list[tuple[str, str]]
    test_words: list[str]  # the retrieval candidates: every word of a test pair


def split_lexicon(pairs: Sequence[tuple[str, str]], lang: str, test_frac: float = 0.2, seed: int = 0,
                  max_test_words: int | None = 1000, eligible: set[str] | None = None,
                  exclude: Iterable[str] = ()) -> LexiconSplit:
    """Word-disjoint split: a random ``test_frac`` of the (cleaned) words is held out; pairs with both
    words held out are test pairs, pairs with both words kept are training pairs, the rest is dropped
    (as the official code removes every validation word from the training constraints).

    ``max_test_words`` caps the candidate set (test pairs are subsampled until their words fit).
    ``eligible``: only these words may be held out (e.g. words the pre-training corpus knows).
    ``exclude``: words that must never occur in a training pair (e.g. SimLex-999's words).
    """
    if not 0 < test_frac < 1:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}")
    exclude = {w.lower() for w in exclude}
    clean = []
    for a, b in pairs:
        ca, cb = clean_word(a), clean_word(b)
        if ca and cb and ca != cb:
            clean.append((ca, cb))
    clean = sorted({tuple(sorted(p)) for p in clean})  # unordered, deduplicated
    if not clean:
        raise ValueError(f"pairs of {lang!r} hold no usable single-word pair")
    rng = random.Random(f"{lang}-{seed}")
    words = sorted({w for p in clean for w in p})
    pool = words if eligible is None else [w for w in words if w in eligible]
    held = set(rng.sample(pool, int(round(test_frac * len(pool)))))
    banned = held | exclude
    train = [p for p in clean if p[0] not in banned and p[1] not in banned]
    test = [p for p in clean if p[0] in held and p[1] in held]
    rng.shuffle(train)
    rng.shuffle(test)
    if max_test_words is not None:
        kept, seen = [], set()
        for a, b in test:
            new = {a, b} - seen
            if len(seen) + len(new) > max_test_words:
                continue
            kept.append((a, b))
            seen |= new
        test = kept
    test_words = sorted({w for p in test for w in p})
    return LexiconSplit(lang, train, test, test_words)


@torch.no_grad()
def embed_words(model: CharWordEncoder, vocab: CharVocab, words: Sequence[str], batch: int = 1024) -> Tensor:
    """Unit-norm word vectors (len(words), d), in eval mode."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(words), batch):
        ids, lengths = vocab.encode(words[i: i + batch])
        out.append(F.normalize(model.embed(ids.to(next(model.parameters()).device),
                                           lengths.to(next(model.parameters()).device)), dim=-1))
    model.train(was)
    return torch.cat(out)


@torch.no_grad()
def synonym_retrieval(model: CharWordEncoder, vocab: CharVocab, split: LexiconSplit) -> dict[str, float]:
    """Retrieval of held-out synonyms among all held-out words of the language (cosine, query excluded).

    Every word of a test pair is a query; its gold set is its synonyms among the test pairs.
    ``mrr``: mean reciprocal rank of the best-ranked gold synonym (the BLI metric of the paper).
    ``auc``: the chance that a gold synonym scores above a non-synonym candidate, averaged over queries
    (1 - normalised rank; 0.5 for a random encoder).
    """
    if not split.test:
        raise ValueError(f"split of {split.lang!r} has no test pairs")
    idx = {w: i for i, w in enumerate(split.test_words)}
    gold: dict[int, set[int]] = {}
    for a, b in split.test:
        gold.setdefault(idx[a], set()).add(idx[b])
        gold.setdefault(idx[b], set()).add(idx[a])
    e = embed_words(model, vocab, split.test_words)  # (V, d)
    sim = e @ e.T  # (V, V)
    q = torch.tensor(sorted(gold))
    g = torch.zeros(len(q), len(idx), dtype=torch.bool)
    for r, qi in enumerate(q.tolist()):
        g[r, list(gold[qi])] = True
    s = sim[q]  # (Q, V)
    self_ = torch.zeros_like(g)
    self_[torch.arange(len(q)), q] = True
    s = s.masked_fill(self_, float("-inf"))
    best_gold = s.masked_fill(~g, float("-inf")).max(1).values  # (Q,)
    rank = 1 + (s > best_gold[:, None]).sum(1)  # (Q,)
    # auc: for each (query, gold) entry, the share of non-gold, non-self candidates scored below the gold
    neg = ~g & ~self_  # (Q, V)
    rows, cols = g.nonzero(as_tuple=True)  # (P,), (P,)
    below = ((s[rows] < s[rows, cols][:, None]) & neg[rows]).sum(1).float() / neg[rows].sum(1)  # (P,)
    auc_q = torch.zeros(len(q)).index_add_(0, rows, below) / g.sum(1)  # (Q,)
    return {"mrr": float((1.0 / rank.float()).mean()), "auc": float(auc_q.mean())}


def synonym_mrr(model: CharWordEncoder, vocab: CharVocab, split: LexiconSplit) -> float:
    """The ``mrr`` of :func:`synonym_retrieval`."""
    return synonym_retrieval(model, vocab, split)["mrr"]


class PairSampler:
    """Batches of ``batch`` pairs drawn from several languages with ``p(lang) ∝ n_lang ** alpha``
    (the official ``get_sampler``, alpha = 0.5), no word twice in a batch; returns (ids, lengths, labels)
    with the two words of pair i labelled i (one synset per pair)."""

    def __init__(self, pairs_by_lang: dict[str, Sequence[tuple[str, str]]], vocab: CharVocab, batch: int = 128,
                 alpha: float = 0.5, seed: int = 0, device: str | torch.device = "cpu") -> None:
        self.device = device
        self.langs = [k for k, v in pairs_by_lang.items() if len(v)]
        if not self.langs:
            raise ValueError("pairs_by_lang must hold at least one non-empty language")
        if batch < 2:
            raise ValueError(f"batch must be >= 2, got {batch}")
        self.pairs = {k: list(pairs_by_lang[k]) for k in self.langs}
        w = torch.tensor([len(self.pairs[k]) ** alpha for k in self.langs], dtype=torch.float)
        self.p = w / w.sum()
        self.vocab, self.batch = vocab, batch
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        lang_of = torch.multinomial(self.p, 4 * self.batch, replacement=True, generator=self.g).tolist()
        words, seen = [], set()
        for li in lang_of:
            pool = self.pairs[self.langs[li]]
            a, b = pool[int(torch.randint(len(pool), (1,), generator=self.g))]
            if a in seen or b in seen:
                continue
            seen |= {a, b}
            words += [a, b]
            if len(words) == 2 * self.batch:
                break
        ids, lengths = self.vocab.encode(words)
        labels = torch.arange(len(words) // 2).repeat_interleave(2)
        return ids.to(self.device), lengths.to(self.device), labels.to(self.device)


class MaskedWordSampler:
    """Batches of ``batch`` words (uniform over ``words``) with masked characters for :func:`mlm_loss`."""

    def __init__(self, words: Sequence[str], vocab: CharVocab, batch: int = 256, rate: float = 0.2,
                 seed: int = 0, device: str | torch.device = "cpu") -> None:
        self.device = device
        if not len(words):
            raise ValueError("words must be non-empty")
        self.words, self.vocab, self.batch, self.rate = list(words), vocab, batch, rate
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        pick = torch.randint(len(self.words), (self.batch,), generator=self.g).tolist()
        ids, lengths = self.vocab.encode([self.words[i] for i in pick])
        corrupted, targets = mask_characters(ids, lengths, len(self.vocab), self.rate, self.g)
        return corrupted.to(self.device), lengths.to(self.device), targets.to(self.device)


class MaskedViewSampler:
    """A contrastive control without constraints: ``batch`` words, each as two independently masked
    views (``[MASK]`` / random characters as in :func:`mask_characters`) sharing a label, for
    :func:`pair_loss` -- the same loss and batch shape as :class:`PairSampler`, no synonyms."""

    def __init__(self, words: Sequence[str], vocab: CharVocab, batch: int = 128, rate: float = 0.2,
                 seed: int = 0, device: str | torch.device = "cpu") -> None:
        if not len(words) or batch < 2:
            raise ValueError(f"words must be non-empty and batch >= 2, got {len(words)} words, batch {batch}")
        self.words, self.vocab, self.batch, self.rate, self.device = list(words), vocab, batch, rate, device
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        pick = torch.randperm(len(self.words), generator=self.g)[: self.batch].tolist()
        ids, lengths = self.vocab.encode([self.words[i] for i in pick for _ in range(2)])
        corrupted, _ = mask_characters(ids, lengths, len(self.vocab), self.rate, self.g)
        labels = torch.arange(len(pick)).repeat_interleave(2)
        return corrupted.to(self.device), lengths.to(self.device), labels.to(self.device)


def shuffled_pairs(pairs: Sequence[tuple[str, str]], seed: int = 0) -> list[tuple[str, str]]:
    """The same words as ``pairs`` with the second words permuted: the synonymy is destroyed, the words,
    their frequencies in the constraints and the language mix are kept (pairs of a word with itself dropped)."""
    if not len(pairs):
        raise ValueError("pairs must be non-empty")
    g = random.Random(seed)
    second = [b for _, b in pairs]
    g.shuffle(second)
    return [(a, b) for (a, _), b in zip(pairs, second) if a != b]
