"""Distilled Sentence Embedding (Barkan et al., AAAI 2020): a cross-encoder teacher distilled into a bi-encoder.

A siamese student encodes each sentence on its own; a pair head scores the two embeddings; training mixes the
task loss with a squared error to a cross-encoder teacher's logits. Read against the official code
(``microsoft/Distilled-Sentence-Embedding``: ``models/feature_extractors.py``, ``models/dse_siamese_classifier.py``,
``train/trainers/dse_trainer.py``, and ``pytorch_pretrained_bert/modeling.py``: :func:`concat_top_mean` is its
``BertSumConcatTopHiddenEmbeddingsPooler`` with ``use_cls=False``, ``divide_by_sqrt=False``; re-read 2026-12-04).

The method:

* :func:`concat_top_mean` -- eq. (1): mean over tokens ``t >= 1`` (``[CLS]`` excluded, ``[SEP]``
  kept, padding masked) of the concatenated states of the top ``k`` layers.
* :func:`pair_features` -- eq. (2): ``[u; v; u*v; |u-v|]`` (the "concat" head's input).
* :class:`PairHead` -- FC layers with ReLU between them on :func:`pair_features`.
* :func:`dse_loss` -- eq. (3): ``(1-a) L_task + a * mean_b ||z_b - t_b||^2`` (sum over logits); optional
  unlabelled rows (a transfer set scored by the teacher only: the card's optional variant, not the paper's).
* :class:`CrossEncoder` (teacher, ``[CLS] a [SEP] b [SEP]``) and :class:`SiameseStudent` on any encoder that
  :func:`layer_states` knows: the book's :class:`~companion.nn.transformer.TinyEncoder` or a ``transformers`` BERT.
* :func:`cross_encoder_scores` / :func:`bi_encoder_scores` -- scoring query-candidate pairs: one encoder pass per
  pair versus one per sentence (candidate embeddings cached) plus the head per pair.

The chapter's synthetic task: :func:`make_pairs` (a template grammar; two sentences are paraphrases iff they state
the same (agent, verb, object) triple, in either voice; hard negatives swap the roles or change one slot), :class:`WordVocab` (its
word-level tokenizer) and :func:`mlm_loss` (the masked-LM pre-training of the shared encoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from companion.nn.masks import KeyPaddingMask
from companion.nn.transformer import TinyEncoder


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
        return self._rest(self.fc[0](pair_features(u, v)))

    def _rest(self, x: Tensor) -> Tensor:
        """The layers after the first, on the first layer's pre-activation."""
        for layer in self.fc[1:]:
            x = layer(torch.relu(x))
        return x

    def score_pairs(self, u: Tensor, v: Tensor, pairs: Tensor, chunk: int = 4096) -> Tensor:
        """Logits (P, K) of the pairs ``(u[i], v[j])`` for the rows ``(i, j)`` of ``pairs`` (P, 2); ``u`` (Q, D),
        ``v`` (C, D).

        The same function as :meth:`forward`, computed with the first layer split by input block:
        ``W f = W_1 u + W_2 v + W_{34} [u*v; |u-v|]``, where ``W_1 u`` and ``W_2 v`` are computed once per
        sentence (part of the cache) and only the element-wise half runs per pair.
        """
        if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[1] or 4 * u.shape[1] != self.fc[0].in_features:
            raise ValueError(f"u and v must be (Q, D) and (C, D) with 4D = {self.fc[0].in_features}, "
                             f"got {tuple(u.shape)} and {tuple(v.shape)}")
        w1, w2, w34 = self.fc[0].weight.split([u.shape[1], u.shape[1], 2 * u.shape[1]], dim=1)
        a, b = u @ w1.T + self.fc[0].bias, v @ w2.T  # (Q, H), (C, H): per sentence
        out = []
        for s in range(0, len(pairs), chunk):
            i, j = pairs[s:s + chunk, 0], pairs[s:s + chunk, 1]
            ui, vj = u[i], v[j]
            out.append(self._rest(a[i] + b[j] + torch.cat([ui * vj, (ui - vj).abs()], dim=1) @ w34.T))
        return torch.cat(out)


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
        task = F.binary_cross_entropy_with_logits(student[rows, 0], labels[rows].to(student.dtype))
    if alpha == 0.0:
        return task
    distill = ((student - teacher) ** 2).sum(dim=1).mean()
    return (1 - alpha) * task + alpha * distill


# ---------------------------------------------------------------------------------------------------------------
# Teacher and student on an encoder
# ---------------------------------------------------------------------------------------------------------------

Batch = dict  # "input_ids" (B, N), "attention_mask" (B, N) (+ "token_type_ids" for a transformers BERT)
Tokenize = Callable[..., Batch]  # tokenize(texts, partners=None) -> Batch


def layer_states(encoder: nn.Module, batch: Batch) -> list[Tensor]:
    """Every hidden state (embeddings first, last layer last), each (B, N, D), of a right-padded ``batch``.

    ``encoder`` is a :class:`~companion.nn.transformer.TinyEncoder` (padding masked by a key-padding mask) or a
    ``transformers`` BERT (``output_hidden_states``).
    """
    if "input_ids" not in batch or "attention_mask" not in batch:
        raise ValueError(f"batch must hold input_ids and attention_mask, got keys {sorted(batch)}")
    if isinstance(encoder, TinyEncoder):
        lengths = batch["attention_mask"].sum(1)
        return encoder.hidden(batch["input_ids"], KeyPaddingMask(lengths), None, all_layers=True)
    return list(encoder(**batch, output_hidden_states=True).hidden_states)


class CrossEncoder(nn.Module):
    """The teacher: ``[CLS] a [SEP] b [SEP]`` through ``encoder``; on the last ``[CLS]`` state (``pool="cls"``,
    BERT's) or on the mean of the last states over the pair's tokens (``pool="mean"``) a BERT-style pooler
    (dense + tanh), dropout and FC(2) -> (B, 2) logits."""

    def __init__(self, encoder: nn.Module, dim: int, dropout: float = 0.1, pool: str = "cls") -> None:
        super().__init__()
        if dim < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dim must be >= 1 and dropout in [0, 1), got {dim}, {dropout}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.encoder = encoder
        self.pool = pool
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Dropout(dropout), nn.Linear(dim, 2))

    def forward(self, pair_batch: Batch) -> Tensor:
        """Tokenised pairs -> (B, 2) logits."""
        top = layer_states(self.encoder, pair_batch)[-1]  # (B, N, D)
        if self.pool == "cls":
            return self.head(top[:, 0])
        m = pair_batch["attention_mask"].to(top.dtype).unsqueeze(-1)  # (B, N, 1)
        return self.head((top * m).sum(1) / m.sum(1).clamp_min(1.0))


class SiameseStudent(nn.Module):
    """The DSE student: each sentence alone through ``encoder``, :func:`concat_top_mean` of the top ``num_top``
    states, :class:`PairHead` on the two embeddings."""

    def __init__(self, encoder: nn.Module, dim: int, num_top: int = 2, fc_dims: Sequence[int] = (512, 1)) -> None:
        super().__init__()
        if num_top < 1:
            raise ValueError(f"num_top must be >= 1, got {num_top}")
        self.encoder = encoder
        self.num_top = num_top
        self.head = PairHead(num_top * dim, fc_dims)

    def embed(self, batch: Batch) -> Tensor:
        """Tokenised sentences -> (B, num_top * D) sentence embeddings, eq. (1)."""
        return concat_top_mean(layer_states(self.encoder, batch), batch["attention_mask"], self.num_top)

    def forward(self, batch_a: Batch, batch_b: Batch) -> Tensor:
        """Two batches of sentences -> (B, K) pair logits."""
        return self.head(self.embed(batch_a), self.embed(batch_b))


def _pair_index(n_queries: int, n_candidates: int, pairs: Tensor | None) -> Tensor:
    if n_queries < 1 or n_candidates < 1:
        raise ValueError("queries and candidates must be non-empty")
    if pairs is None:
        return torch.cartesian_prod(torch.arange(n_queries), torch.arange(n_candidates))  # (Q*C, 2)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.is_floating_point():
        raise ValueError(f"pairs must be an integer tensor of shape (P, 2), got {tuple(pairs.shape)}")
    if bool((pairs < 0).any()) or int(pairs[:, 0].max()) >= n_queries or int(pairs[:, 1].max()) >= n_candidates:
        raise ValueError("pairs must index queries (column 0) and candidates (column 1)")
    return pairs


@torch.no_grad()
def cross_encoder_scores(teacher: CrossEncoder, tokenize: Tokenize, queries: Sequence[str],
                         candidates: Sequence[str], pairs: Tensor | None = None, batch_size: int = 64) -> Tensor:
    """Teacher logits ``t_1 - t_0`` (P,) of the (query, candidate) ``pairs`` (P, 2) (default: all Q*C, row-major):
    one pass of the whole encoder per pair."""
    idx = _pair_index(len(queries), len(candidates), pairs)
    out = []
    for s in range(0, len(idx), batch_size):
        q, c = idx[s:s + batch_size, 0].tolist(), idx[s:s + batch_size, 1].tolist()
        batch = tokenize([queries[i] for i in q], [candidates[j] for j in c])
        out.append(binary_teacher_target(teacher(batch))[:, 0])
    return torch.cat(out)


@torch.no_grad()
def bi_encoder_scores(student: SiameseStudent, tokenize: Tokenize, queries: Sequence[str],
                      candidates: Sequence[str], pairs: Tensor | None = None, *, cache: bool = True,
                      batch_size: int = 64, chunk: int = 4096) -> Tensor:
    """Student logits (P,) of ``pairs`` (default: all Q*C, row-major).

    ``cache=True`` (DSE's point): every query and candidate is encoded once (Q + C passes), then the head runs on
    the pairs (:meth:`PairHead.score_pairs`: its first layer's per-sentence half is cached too). ``cache=False`` (the control): both sentences of every pair are encoded again (2P passes).
    """
    idx = _pair_index(len(queries), len(candidates), pairs)

    def embed(texts: Sequence[str]) -> Tensor:
        return torch.cat([student.embed(tokenize(list(texts[s:s + batch_size])))
                          for s in range(0, len(texts), batch_size)])

    if not cache:
        return torch.cat([student(tokenize([queries[i] for i in idx[s:s + batch_size, 0].tolist()]),
                                  tokenize([candidates[j] for j in idx[s:s + batch_size, 1].tolist()]))[:, 0]
                          for s in range(0, len(idx), batch_size)])
    u, v = embed(queries), embed(candidates)  # (Q, E), (C, E): the cached embeddings
    return student.head.score_pairs(u, v, idx.to(u.device), chunk)[:, 0]


def hf_tokenize(tokenizer, max_length: int = 64) -> Tokenize:
    """A ``transformers`` tokenizer as a :data:`Tokenize` (padded, truncated, PyTorch tensors)."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")

    def tokenize(texts: Sequence[str], partners: Sequence[str] | None = None) -> Batch:
        args = (list(texts),) + ((list(partners),) if partners is not None else ())
        return dict(tokenizer(*args, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))

    return tokenize


# ---------------------------------------------------------------------------------------------------------------
# The synthetic task: who did what to whom
# ---------------------------------------------------------------------------------------------------------------

ENTITIES = ("doctor", "lawyer", "child", "teacher", "student", "officer", "pilot", "farmer", "singer", "judge")
VERBS = ("helped", "watched", "called", "praised", "blamed", "followed")
ADJECTIVES = ("calm", "young", "tall", "tired", "happy", "grumpy", "quiet", "brave")
MODIFIERS = ("yesterday", "today", "again", "at noon", "in the park", "near the river", "after lunch", "last week")
DETERMINERS = ("the", "a")
NEGATIVES = ("role swap", "other agent", "other verb", "other object")  # kinds of label-0 pairs
KINDS = ("paraphrase",) + NEGATIVES
SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")  # ids 0, 1, 2, 3


@dataclass(frozen=True)
class Pair:
    """A sentence pair with its meaning triples; ``label`` 1 = same (agent, verb, object)."""

    a: str
    b: str
    label: int
    kind: str


def _pick(n: int, g: torch.Generator) -> int:
    return int(torch.randint(n, (1,), generator=g))


def realise(agent: int, verb: int, obj: int, generator: torch.Generator) -> str:
    """One random sentence stating (``agent``, ``verb``, ``obj``) (indices into :data:`ENTITIES`, :data:`VERBS`):
    active or passive voice, random determiners, optional adjectives and an optional trailing modifier."""
    if not (0 <= agent < len(ENTITIES) and 0 <= obj < len(ENTITIES) and 0 <= verb < len(VERBS)):
        raise ValueError(f"agent, obj must be in 0..{len(ENTITIES) - 1} and verb in 0..{len(VERBS) - 1}, "
                         f"got {agent}, {verb}, {obj}")
    g = generator

    def noun_phrase(e: int) -> list[str]:
        adj = [ADJECTIVES[_pick(len(ADJECTIVES), g)]] if _pick(3, g) == 0 else []
        return [DETERMINERS[_pick(2, g)], *adj, ENTITIES[e]]

    v = VERBS[verb]
    a_np, o_np = noun_phrase(agent), noun_phrase(obj)
    words = [*a_np, v, *o_np] if _pick(2, g) == 0 else [*o_np, "was", v, "by", *a_np]
    if _pick(2, g) == 0:
        words += MODIFIERS[_pick(len(MODIFIERS), g)].split()
    return " ".join(words)


def make_pairs(n: int, generator: torch.Generator, p_swap: float = 0.5) -> list[Pair]:
    """``n`` pairs, half paraphrases (the same triple, both sentences realised independently) and half not.

    A negative keeps the first sentence's triple but swaps agent and object (``"role swap"``, probability
    ``p_swap``: the same words can state it) or replaces one slot with another entity or verb (the rest evenly).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= p_swap <= 1.0:
        raise ValueError(f"p_swap must be in [0, 1], got {p_swap}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    g = generator

    def other(i: int, k: int, *avoid: int) -> int:
        while True:
            j = _pick(k, g)
            if j != i and j not in avoid:
                return j

    out = []
    for _ in range(n):
        a = _pick(len(ENTITIES), g)
        o = other(a, len(ENTITIES))
        v = _pick(len(VERBS), g)
        first = realise(a, v, o, g)
        if _pick(2, g) == 1:
            out.append(Pair(first, realise(a, v, o, g), 1, "paraphrase"))
            continue
        if float(torch.rand((), generator=g)) < p_swap:
            kind, triple = "role swap", (o, v, a)
        else:
            kind = NEGATIVES[1 + _pick(3, g)]
            triple = {"other agent": (other(a, len(ENTITIES), o), v, o), "other verb": (a, other(v, len(VERBS)), o),
                      "other object": (a, v, other(o, len(ENTITIES), a))}[kind]
        out.append(Pair(first, realise(*triple, g), 0, kind))
    return out


def grammar_words() -> list[str]:
    """Every word the grammar can produce, sorted."""
    words = set(ENTITIES) | set(VERBS) | set(ADJECTIVES) | set(DETERMINERS) | {"was", "by"}
    words |= {w for m in MODIFIERS for w in m.split()}
    return sorted(words)


class WordVocab:
    """Word-level tokenizer of the grammar: ``vocab(texts)`` -> ``[CLS] a [SEP]``, ``vocab(texts, partners)`` ->
    ``[CLS] a [SEP] b [SEP]``, right-padded with ``[PAD]`` (a :data:`Tokenize`)."""

    def __init__(self, words: Sequence[str] | None = None) -> None:
        self.itos = list(SPECIALS) + list(grammar_words() if words is None else words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("words must be distinct and must not repeat a special token")
        self.pad, self.cls, self.sep, self.mask = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.itos)

    def ids(self, text: str) -> list[int]:
        try:
            return [self.stoi[w] for w in text.split()]
        except KeyError as e:
            raise ValueError(f"text has a word outside the vocabulary: {e.args[0]!r}") from None

    def __call__(self, texts: Sequence[str], partners: Sequence[str] | None = None) -> Batch:
        if partners is not None and len(partners) != len(texts):
            raise ValueError(f"partners must have len(texts) = {len(texts)} entries, got {len(partners)}")
        rows = []
        for i, t in enumerate(texts):
            row = [self.cls, *self.ids(t), self.sep]
            if partners is not None:
                row += [*self.ids(partners[i]), self.sep]
            rows.append(row)
        n = max(len(r) for r in rows)
        ids = torch.tensor([r + [self.pad] * (n - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": (ids != self.pad).long()}


def mlm_loss(encoder: TinyEncoder, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Masked-LM cross-entropy of ``batch = (inputs, attention_mask, targets)`` (targets -100 where not masked),
    the output layer tied to the token embeddings."""
    inp, mask, tgt = batch
    h = layer_states(encoder, {"input_ids": inp, "attention_mask": mask})[-1]  # (B, N, D)
    logits = h @ encoder.embed.weight.T  # (B, N, V)
    return F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-100)
