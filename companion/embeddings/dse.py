"""Distilled Sentence Embedding (Barkan et al., AAAI 2020): the pieces of the student and of the experiment.

Groundwork for the chapter ``embeddings/distilled-sentence-embedding`` (not written yet: see the helper report of
2026-12-04 for why the CPU experiment below did not yet give a teacher worth distilling). A siamese student encodes
each sentence on its own; a pair head scores the two embeddings; training mixes the task loss with a squared error
to a cross-encoder teacher's logits. Read against the official code (``microsoft/Distilled-Sentence-Embedding``:
``models/feature_extractors.py``, ``models/dse_siamese_classifier.py``, ``train/trainers/dse_trainer.py``, and
``pytorch_pretrained_bert/modeling.py``: :func:`concat_top_mean` is its ``BertSumConcatTopHiddenEmbeddingsPooler``
with ``use_cls=False``, ``divide_by_sqrt=False``; re-read 2026-12-04).

* :func:`concat_top_mean` -- eq. (1): mean over tokens ``t >= 1`` (``[CLS]`` excluded, ``[SEP]``
  kept, padding masked) of the concatenated states of the top ``k`` layers.
* :func:`pair_features` -- eq. (2): ``[u; v; u*v; |u-v|]`` (the "concat" head's input).
* :class:`PairHead` -- FC layers with ReLU between them on :func:`pair_features`.
* :func:`dse_loss` -- eq. (3): ``(1-a) L_task + a * mean_b ||z_b - t_b||^2`` (sum over logits); optional
  unlabelled rows (a transfer set scored by the teacher only: the card's optional variant, not the paper's).

The experiment: :func:`corpus_sentences` (real sentences of the shipped Wikipedia sample and Lee news corpus),
:func:`paraphrase_pairs` (PAWS-style pairs: a thesaurus synonym edit vs the same edit plus a word swap, or a
random replacement), :func:`cache_states` / :func:`bottom_states` (the frozen lower layers of all-MiniLM-L6-v2 run
once), :class:`TopLayers`, :class:`CrossEncoder` (teacher) and :class:`SiameseStudent` (student) on those states.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn


def concat_top_mean(hidden_states: Sequence[Tensor], attention_mask: Tensor, num_top: int = 4) -> Tensor:
    """Eq. (1): ``(B, k*D)`` sentence embeddings from the last ``num_top`` of ``hidden_states`` (each (B, N, D)).

    Position 0 (``[CLS]``) is excluded; every other position with ``attention_mask == 1`` is averaged.
    """
    if num_top < 1 or num_top > len(hidden_states):
        raise ValueError(f"num_top must be in 1..{len(hidden_states)}, got {num_top}")
    top = torch.cat(list(hidden_states[-num_top:]), dim=-1)  # (B, N, k*D)
    if attention_mask.shape != top.shape[:2]:
        raise ValueError(f"attention_mask must have shape {tuple(top.shape[:2])} (B, N), "
                         f"got {tuple(attention_mask.shape)}")
    m = attention_mask.to(top.dtype).clone()
    m[:, 0] = 0  # no [CLS]
    m = m.unsqueeze(-1)  # (B, N, 1)
    return (top * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, k*D)


def pair_features(u: Tensor, v: Tensor) -> Tensor:
    """Eq. (2): ``[u; v; u*v; |u-v|]`` -> (B, 4D) for ``u``, ``v`` of shape (B, D)."""
    if u.ndim != 2 or u.shape != v.shape:
        raise ValueError(f"u and v must both have shape (B, D), got {tuple(u.shape)} and {tuple(v.shape)}")
    return torch.cat([u, v, u * v, (u - v).abs()], dim=1)


class PairHead(nn.Module):
    """The "concat" siamese head: :func:`pair_features`, then FC layers (``fc_dims``) with ReLU between."""

    def __init__(self, dim: int, fc_dims: Sequence[int] = (512, 1)) -> None:
        super().__init__()
        if dim < 1 or not fc_dims or any(d < 1 for d in fc_dims):
            raise ValueError(f"dim and every fc_dims entry must be >= 1 (at least one layer), got {dim}, {fc_dims}")
        sizes = [4 * dim, *fc_dims]
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        """(B, D), (B, D) -> (B, K) logits."""
        x = pair_features(u, v)
        for layer in self.fc[:-1]:
            x = torch.relu(layer(x))
        return self.fc[-1](x)


def binary_teacher_target(teacher_logits: Tensor) -> Tensor:
    """For binary tasks the teacher's two logits become one: ``t = t_1 - t_0`` -> (B, 1)."""
    if teacher_logits.ndim != 2 or teacher_logits.shape[1] != 2:
        raise ValueError(f"teacher_logits must have shape (B, 2), got {tuple(teacher_logits.shape)}")
    return (teacher_logits[:, 1] - teacher_logits[:, 0]).unsqueeze(1)


def dse_loss(student: Tensor, labels: Tensor, teacher: Tensor, alpha: float = 0.5,
             labelled: Tensor | None = None) -> Tensor:
    """Eq. (3) for a binary task: ``(1-alpha) BCE(student, labels) + alpha mean_b ||student_b - teacher_b||^2``.

    ``student`` and ``teacher`` are (B, 1) logits, ``labels`` (B,) in {0, 1}. ``alpha = 0`` is the
    siamese baseline without distillation. ``labelled`` (B,) bool marks the rows that have a label: the task
    term averages over those only (transfer pairs scored by the teacher alone carry only the distillation
    term; the paper's training set is all labelled, the default).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if student.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(f"student and teacher must both be (B, K), "
                         f"got {tuple(student.shape)} and {tuple(teacher.shape)}")
    if labels.shape != student.shape[:1]:
        raise ValueError(f"labels must have shape ({student.shape[0]},), got {tuple(labels.shape)}")
    if labelled is not None and (labelled.shape != labels.shape or labelled.dtype != torch.bool):
        raise ValueError(f"labelled must be a bool tensor of shape {tuple(labels.shape)}, "
                         f"got {labelled.dtype} {tuple(labelled.shape)}")
    rows = slice(None) if labelled is None else labelled
    if labelled is not None and not bool(labelled.any()):
        task = student.sum() * 0.0
    else:
        task = nn.functional.binary_cross_entropy_with_logits(student[rows, 0], labels[rows].to(student.dtype))
    if alpha == 0.0:
        return task
    distill = ((student - teacher) ** 2).sum(dim=1).mean()
    return (1 - alpha) * task + alpha * distill


# ---------------------------------------------------------------------------------------------------------------
# The chapter's experiment: a PAWS-style paraphrase task from real Wikipedia sentences, a cross-encoder teacher and
# a siamese student on the real all-MiniLM-L6-v2, with the encoder's lower layers frozen (their states cached once).
# ---------------------------------------------------------------------------------------------------------------

_WORD = re.compile(r"^[a-z]+$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
STOP_WORDS = frozenset("""a an the this that these those he she it they we you i me him her them us his its their our
your my who whom whose which what as at by for from in into of on onto to with without about over under up down out off
and or but nor so yet if then than because while although is are was were be been being am has have had do does did
can could may might must shall should will would not no all any each both some such one two first also only very
there here when where how why after before during since until""".split())  # never edited
KINDS = ("synonym", "synonym+swap", "replacement")  # what was done to the first sentence (label 1, 0, 0)


def corpus_sentences(min_words: int = 6, max_words: int = 14) -> list[str]:
    """Distinct sentences of ``min_words..max_words`` whitespace words from two real English corpora shipped
    offline: the Wikipedia sample (106 articles) and the Lee background news corpus (300 ABC articles)."""
    if not 1 <= min_words <= max_words:
        raise ValueError(f"min_words and max_words must satisfy 1 <= min_words <= max_words, got {min_words}, {max_words}")
    from companion.data import lee_corpus, wikipedia_sample

    docs = [a.text for a in wikipedia_sample()] + lee_corpus("background")
    out, seen = [], set()
    for doc in docs:
        for s in _SENTENCE_END.split(doc.replace("\n", " ")):
            s = " ".join(s.split())
            if min_words <= len(s.split()) <= max_words and s not in seen and s[-1] in ".!?":
                seen.add(s)
                out.append(s)
    return out


@dataclass(frozen=True)
class Pair:
    """A sentence pair: ``b`` is ``a`` edited (see :data:`KINDS`); ``label`` 1 = same meaning."""

    a: str
    b: str
    label: int
    kind: str


def _lexicon(thesaurus: dict, stop: frozenset[str]) -> tuple[dict[str, str], dict[str, list[str]], dict[str, str]]:
    """(word -> first-sense POS, POS -> words, word -> a one-word first-sense synonym that is itself a headword);
    words in ``stop`` are left out (function words such as "he" or "as" are thesaurus nouns: helium, arsenic)."""
    pos = {w: s[0].pos for w, s in thesaurus.items() if _WORD.match(w) and w not in stop}
    by_pos: dict[str, list[str]] = {}
    for w, p in pos.items():
        by_pos.setdefault(p, []).append(w)
    syn = {}
    for w in pos:
        for cand in thesaurus[w][0].synonyms:
            if _WORD.match(cand) and cand != w and pos.get(cand) == pos[w]:
                syn[w] = cand
                break
    return pos, by_pos, syn


def paraphrase_pairs(sentences: Sequence[str], thesaurus: dict, generator: torch.Generator,
                     stop: Sequence[str] = STOP_WORDS) -> list[Pair]:
    """Two pairs per usable sentence ``a``: a paraphrase and a non-paraphrase with almost the same words.

    * ``synonym`` (label 1): one word replaced by a one-word synonym from the thesaurus's first sense;
    * ``synonym+swap`` (label 0): the same synonym edit, and two other words of the same part of speech exchanged
      ("the dog chased the cat" -> "the cat chased the dog": the bag of words of the paraphrase, another meaning);
    * ``replacement`` (label 0): one word replaced by a random headword of the same part of speech.

    Each sentence gives its ``synonym`` pair and, with probability 1/2 each, one of the two negatives, so
    every first sentence occurs once with each label. A sentence is usable when it has a word with a synonym
    and two other distinct words (lowercase thesaurus headwords) with the same first-sense part of speech; words in ``stop`` are never edited.
    """
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    pos, by_pos, syn = _lexicon(thesaurus, frozenset(stop))

    def pick(n: int) -> int:
        return int(torch.randint(n, (1,), generator=generator))

    out = []
    for s in sentences:
        words = s.split()
        subst = [i for i, w in enumerate(words) if w in syn]
        if not subst:
            continue
        i = subst[pick(len(subst))]
        content = [j for j, w in enumerate(words) if j != i and w in pos]
        pairs = [(j, k) for j in content for k in content
                 if j < k and words[j] != words[k] and pos[words[j]] == pos[words[k]]]
        if not pairs:
            continue
        paraphrase = list(words)
        paraphrase[i] = syn[words[i]]
        out.append(Pair(s, " ".join(paraphrase), 1, "synonym"))
        if pick(2) == 0:
            j, k = pairs[pick(len(pairs))]
            swapped = list(paraphrase)
            swapped[j], swapped[k] = swapped[k], swapped[j]
            out.append(Pair(s, " ".join(swapped), 0, "synonym+swap"))
        else:
            pool = by_pos[pos[words[i]]]
            while True:
                w = pool[pick(len(pool))]
                if w != words[i] and w not in thesaurus[words[i]][0].synonyms:
                    break
            replaced = list(words)
            replaced[i] = w
            out.append(Pair(s, " ".join(replaced), 0, "replacement"))
    return out


def additive_mask(attention_mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, N) 0/1 mask -> (B, 1, 1, N) additive attention mask (0 where attended, a large negative elsewhere)."""
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must have shape (B, N), got {tuple(attention_mask.shape)}")
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def bottom_states(encoder: nn.Module, batch: dict, upto: int) -> Tensor:
    """The hidden states after the first ``upto`` layers of a BERT ``encoder`` (transformers ``BertModel``): (B, N, D).

    ``upto = 0`` gives the embedding output; ``batch`` holds ``input_ids``, ``attention_mask`` (and optionally
    ``token_type_ids``) as the tokenizer returns them.
    """
    layers = encoder.encoder.layer
    if not 0 <= upto <= len(layers):
        raise ValueError(f"upto must be in 0..{len(layers)}, got {upto}")
    h = encoder.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
    mask = additive_mask(batch["attention_mask"], h.dtype)
    for layer in layers[:upto]:
        h = layer(h, attention_mask=mask)
    return h


@dataclass
class Cached:
    """Frozen lower-layer states of a set of inputs, padded to one length: ``states`` (M, N, D), ``mask`` (M, N)."""

    states: Tensor
    mask: Tensor

    def __getitem__(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        mask = self.mask[idx]
        n = int(mask.sum(1).max())  # trim the batch to its longest input
        return self.states[idx, :n], mask[:, :n]


@torch.no_grad()
def cache_states(encoder: nn.Module, tokenizer, texts: Sequence[str], partners: Sequence[str] | None = None, *,
                 upto: int, batch_size: int = 64, max_length: int = 64) -> Cached:
    """:func:`bottom_states` of ``texts`` (or of the pairs ``[CLS] text [SEP] partner [SEP]``), run once, in batches
    of similar length."""
    if partners is not None and len(partners) != len(texts):
        raise ValueError(f"partners must have len(texts) = {len(texts)} entries, got {len(partners)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = [len(t) + (len(partners[i]) if partners is not None else 0) for i, t in enumerate(texts)]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    parts, masks, rows = [], [], []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        args = ([texts[i] for i in idx],) + (([partners[i] for i in idx],) if partners is not None else ())
        batch = tokenizer(*args, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        parts.append(bottom_states(encoder, batch, upto))
        masks.append(batch["attention_mask"])
        rows.extend(idx)
    n = max(m.shape[1] for m in masks)
    states = torch.zeros(len(texts), n, parts[0].shape[-1])
    mask = torch.zeros(len(texts), n, dtype=torch.long)
    at = torch.tensor(rows)
    off = 0
    for p, m in zip(parts, masks):
        states[at[off:off + len(p)], :p.shape[1]] = p
        mask[at[off:off + len(p)], :m.shape[1]] = m
        off += len(p)
    return Cached(states, mask)


class TopLayers(nn.Module):
    """Trainable copies of the last ``num_layers`` layers of a BERT ``encoder``; returns every state (input incl.)."""

    def __init__(self, encoder: nn.Module, num_layers: int) -> None:
        super().__init__()
        layers = encoder.encoder.layer
        if not 1 <= num_layers <= len(layers):
            raise ValueError(f"num_layers must be in 1..{len(layers)}, got {num_layers}")
        self.layers = nn.ModuleList(copy.deepcopy(layer) for layer in layers[len(layers) - num_layers:])
        self.layers.requires_grad_(True)  # trainable even when the encoder they come from is frozen

    def forward(self, h: Tensor, attention_mask: Tensor) -> list[Tensor]:
        """(B, N, D) states after the frozen layers, (B, N) mask -> [h, h_1, ..., h_top], each (B, N, D)."""
        mask = additive_mask(attention_mask, h.dtype)
        out = [h]
        for layer in self.layers:
            out.append(layer(out[-1], attention_mask=mask))
        return out


class CrossEncoder(nn.Module):
    """The teacher: ``[CLS] a [SEP] b [SEP]`` through the top layers, BERT's pooler on ``[CLS]``, dropout, FC(2)."""

    def __init__(self, encoder: nn.Module, num_layers: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.top = TopLayers(encoder, num_layers)
        dim = encoder.config.hidden_size
        self.pooler = copy.deepcopy(encoder.pooler) if getattr(encoder, "pooler", None) is not None else None
        if self.pooler is not None:
            self.pooler.requires_grad_(True)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, 2)

    def forward(self, h: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, N, D), (B, N) -> (B, 2) logits."""
        top = self.top(h, attention_mask)[-1]
        pooled = self.pooler(top) if self.pooler is not None else top[:, 0]
        return self.fc(self.drop(pooled))


class SiameseStudent(nn.Module):
    """The DSE student: each sentence alone through the shared top layers, :func:`concat_top_mean` of the top
    ``num_top`` states (the frozen input state counts as one), :class:`PairHead` on the two embeddings."""

    def __init__(self, encoder: nn.Module, num_layers: int, num_top: int = 2, fc_dims: Sequence[int] = (512, 1)) -> None:
        super().__init__()
        if not 1 <= num_top <= num_layers + 1:
            raise ValueError(f"num_top must be in 1..num_layers+1 = {num_layers + 1}, got {num_top}")
        self.top = TopLayers(encoder, num_layers)
        self.num_top = num_top
        self.head = PairHead(num_top * encoder.config.hidden_size, fc_dims)

    def embed(self, h: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, N, D), (B, N) -> (B, num_top * D) sentence embeddings, eq. (1)."""
        return concat_top_mean(self.top(h, attention_mask), attention_mask, self.num_top)

    def forward(self, ha: Tensor, ma: Tensor, hb: Tensor, mb: Tensor) -> Tensor:
        """Two batches of sentences -> (B, K) pair logits."""
        return self.head(self.embed(ha, ma), self.embed(hb, mb))


def _encode(encoder: nn.Module, tokenizer, texts: Sequence[str], partners: Sequence[str] | None, upto: int,
            top: TopLayers, batch_size: int, max_length: int):
    """Tokenise, run the frozen bottom and the trainable top layers; yields (top states list, mask) per batch."""
    for s in range(0, len(texts), batch_size):
        args = (list(texts[s:s + batch_size]),) + ((list(partners[s:s + batch_size]),) if partners is not None else ())
        batch = tokenizer(*args, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        yield top(bottom_states(encoder, batch, upto), batch["attention_mask"]), batch["attention_mask"]


@torch.no_grad()
def cross_encoder_scores(encoder: nn.Module, teacher: CrossEncoder, tokenizer, queries: Sequence[str],
                         candidates: Sequence[str], *, upto: int, batch_size: int = 64, max_length: int = 64) -> Tensor:
    """(Q, C) teacher logits ``t_1 - t_0`` of every (query, candidate) pair: Q*C passes of the whole encoder."""
    if not queries or not candidates:
        raise ValueError("queries and candidates must be non-empty")
    a = [q for q in queries for _ in candidates]
    b = [c for _ in queries for c in candidates]
    out = []
    for states, mask in _encode(encoder, tokenizer, a, b, upto, teacher.top, batch_size, max_length):
        top = states[-1]
        pooled = teacher.pooler(top) if teacher.pooler is not None else top[:, 0]
        out.append(binary_teacher_target(teacher.fc(teacher.drop(pooled)))[:, 0])
    return torch.cat(out).view(len(queries), len(candidates))


@torch.no_grad()
def bi_encoder_scores(encoder: nn.Module, student: SiameseStudent, tokenizer, queries: Sequence[str],
                      candidates: Sequence[str], *, upto: int, batch_size: int = 64, max_length: int = 64,
                      chunk: int = 4096) -> Tensor:
    """(Q, C) student logits: each sentence encoded once (Q + C encoder passes), then the head on all Q*C pairs."""
    if not queries or not candidates:
        raise ValueError("queries and candidates must be non-empty")

    def embed(texts: Sequence[str]) -> Tensor:
        return torch.cat([concat_top_mean(states, mask, student.num_top)
                          for states, mask in _encode(encoder, tokenizer, texts, None, upto, student.top,
                                                      batch_size, max_length)])

    u, v = embed(queries), embed(candidates)  # (Q, E), (C, E): the cached embeddings
    qi = torch.arange(len(queries)).repeat_interleave(len(candidates))
    ci = torch.arange(len(candidates)).repeat(len(queries))
    out = [student.head(u[qi[s:s + chunk]], v[ci[s:s + chunk]])[:, 0] for s in range(0, len(qi), chunk)]
    return torch.cat(out).view(len(queries), len(candidates))
