"""Context structurization (StruXGPT, Liu et al., 2024) at toy scale.

Structurization is an inference-time rewrite of the *context*, not of the reader: the sentences
of a passage are assigned to aspects (StruXGPT-v2 emits YAML with a scope, aspects and their
1-based, inclusive ``SentenceRange``), then the **same sentences, verbatim**, are printed again
under aspect headers. The reader is left untouched.

This module holds the pieces the chapter needs:

* a synthetic "report" generator whose facts about one entity are scattered over the context as
  two-sentence chains (``Ann car #17`` ... ``#17 red``), so reading the raw context needs grouping;
* the structure itself (:class:`Aspect`, :class:`Structure`), built from v2 output
  (:func:`structure_from_v2`) or from one aspect label per sentence (:func:`structure_from_labels`),
  always validated to cover every sentence exactly once;
* the two renderings of one report, raw and structured (:func:`render`), cut into reading units
  (:func:`units`): fixed-size chunks of the raw context, or one aspect block each;
* the fixed-capacity reader: a lexical retriever that fills a window of ``k`` units
  (:func:`retrieve`) and a small causal LM that answers from that window only (:func:`make_reader`);
* the "mini-StruXGPT": a small learned model that puts every sentence under an aspect
  (:class:`Linker`), trained on the generator's labels;
* views: evidence distances, an HTML rendering and an ipywidgets explorer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from companion.nn import TinyLM, TransformerConfig

Tensor = torch.Tensor
FORMATS = ("raw", "structured")

_NAMES = ("Ann", "Ben", "Cat", "Dan", "Eve", "Fay", "Gus", "Hal", "Ian", "Joy", "Kim", "Lee", "Max", "Ned",
          "Oli", "Pam", "Quy", "Ray", "Sam", "Tom", "Uma", "Val", "Wes", "Xia", "Yan", "Zoe", "Ada", "Bo",
          "Cy", "Di", "Ed", "Flo")
_RELATIONS = {  # relation -> its values (a value word tells which relation it answers)
    "car": ("red", "blue", "green", "black", "white", "grey", "pink", "gold"),
    "pet": ("cat", "dog", "owl", "fox", "eel", "yak", "ant", "bee"),
    "hat": ("tiny", "small", "big", "huge", "tall", "flat", "wide", "long"),
    "job": ("cook", "poet", "vet", "pilot", "judge", "nurse", "baker", "smith"),
}


# ---------------------------------------------------------------------------------------------
# Vocabulary and the report generator
# ---------------------------------------------------------------------------------------------

class ReportVocab:
    """Token ids of the toy reports: specials ``<pad> : ? Scope report``, entity names, items
    ``#0..``, relation words and, per relation, its value words."""

    SPECIALS = ("<pad>", ":", "?", "Scope", "report")

    def __init__(self, max_entities: int = 32, n_relations: int = 2, n_values: int = 8,
                 shared_values: bool = True) -> None:
        if not 1 <= max_entities <= len(_NAMES):
            raise ValueError(f"max_entities must lie in [1, {len(_NAMES)}], got {max_entities}")
        if not 1 <= n_relations <= len(_RELATIONS):
            raise ValueError(f"n_relations must lie in [1, {len(_RELATIONS)}], got {n_relations}")
        if not 2 <= n_values <= 8:
            raise ValueError(f"n_values must lie in [2, 8], got {n_values}")
        self.max_entities, self.n_relations, self.n_values = max_entities, n_relations, n_values
        # shared_values: every relation draws from one value list, so a value word does not say
        # which relation it answers and the reader must follow the chain "e r #i", "#i v"
        self.shared_values = bool(shared_values)
        self.max_items = max_entities * n_relations
        rels = list(_RELATIONS)[:n_relations]
        self.tokens: list[str] = list(self.SPECIALS) + list(_NAMES[:max_entities])
        self.tokens += [f"#{i}" for i in range(self.max_items)] + rels
        self.tokens += list(_RELATIONS[rels[0]][:n_values]) if self.shared_values else \
            [v for r in rels for v in _RELATIONS[r][:n_values]]
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.pad, self.colon, self.query = (self.index[t] for t in ("<pad>", ":", "?"))
        self._entity0 = len(self.SPECIALS)
        self._item0 = self._entity0 + max_entities
        self._relation0 = self._item0 + self.max_items
        self._value0 = self._relation0 + n_relations

    def __len__(self) -> int:
        return len(self.tokens)

    def entity(self, i: int) -> int:
        return self._entity0 + i

    def item(self, i: int) -> int:
        return self._item0 + i

    def relation(self, r: int) -> int:
        return self._relation0 + r

    def value(self, r: int, j: int) -> int:
        return self._value0 + (0 if self.shared_values else r * self.n_values) + j

    def is_entity(self, token: int) -> bool:
        return self._entity0 <= token < self._item0

    def entity_index(self, token: int) -> int:
        """Entity token id -> entity index (its aspect label)."""
        if not self.is_entity(token):
            raise ValueError(f"token {token} ({self.tokens[token]!r}) is not an entity")
        return token - self._entity0

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Token ids -> readable text (padding dropped)."""
        return " ".join(self.tokens[int(i)] for i in ids if int(i) != self.pad)


@dataclass(frozen=True)
class Report:
    """One synthetic report: sentences in raw (interleaved) order, their aspects and questions.

    ``labels[s]`` is the entity index sentence ``s`` is about: the aspect a perfect structurizer
    puts it under. ``questions[q] = (?, entity, relation)``; ``evidence[q]`` the two sentences
    that answer it; ``answers[q]`` the value token.
    """

    sentences: tuple[tuple[int, ...], ...]
    labels: tuple[int, ...]
    questions: tuple[tuple[int, int, int], ...]
    answers: tuple[int, ...]
    evidence: tuple[tuple[int, int], ...]

    @property
    def n_entities(self) -> int:
        return len(set(self.labels))


def make_report(n_entities: int, vocab: ReportVocab, rng: np.random.Generator, n_questions: int = 4) -> Report:
    """A report on ``n_entities`` entities, each with one two-sentence fact per relation, shuffled.

    For entity ``e`` and relation ``r``: ``e r i`` ("e's r is item i") and ``i v`` ("item i is
    v") with a fresh item ``i``. Question ``? e r`` asks for ``v``. The report asks
    ``min(n_questions, n_entities * n_relations)`` distinct questions.
    """
    if not 1 <= n_entities <= vocab.max_entities:
        raise ValueError(f"n_entities must lie in [1, {vocab.max_entities}], got {n_entities}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if n_questions < 1:
        raise ValueError(f"n_questions must be >= 1, got {n_questions}")
    R = vocab.n_relations
    ents = rng.choice(vocab.max_entities, n_entities, replace=False)
    items = rng.choice(vocab.max_items, n_entities * R, replace=False).reshape(n_entities, R)
    values = rng.integers(0, vocab.n_values, (n_entities, R))
    sentences, labels = [], []
    for k, e in enumerate(ents):
        for r in range(R):
            i = vocab.item(int(items[k, r]))
            sentences += [(vocab.entity(int(e)), vocab.relation(r), i), (i, vocab.value(r, int(values[k, r])))]
            labels += [int(e), int(e)]
    order = rng.permutation(len(sentences))
    where = np.argsort(order)  # where[j]: raw position of generated sentence j
    asked = rng.permutation(n_entities * R)[:n_questions]  # fact index = entity * R + relation
    return Report(
        sentences=tuple(sentences[j] for j in order), labels=tuple(labels[j] for j in order),
        questions=tuple((vocab.query, vocab.entity(int(ents[f // R])), vocab.relation(int(f % R))) for f in asked),
        answers=tuple(vocab.value(int(f % R), int(values[f // R, f % R])) for f in asked),
        evidence=tuple((int(where[2 * f]), int(where[2 * f + 1])) for f in asked))


def make_reports(n: int, n_entities: int | tuple[int, int], vocab: ReportVocab,
                 rng: np.random.Generator, n_questions: int = 4) -> list[Report]:
    """``n`` reports; ``n_entities`` is a number or an inclusive range ``(lo, hi)`` sampled per report."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    lo, hi = (n_entities, n_entities) if isinstance(n_entities, int) else n_entities
    if not 1 <= lo <= hi:
        raise ValueError(f"n_entities must be >= 1 or a range (lo, hi) with 1 <= lo <= hi, got {n_entities}")
    return [make_report(int(rng.integers(lo, hi + 1)), vocab, rng, n_questions) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# The structure: scope -> aspects -> sentences (chapter eqs. 1 and 2)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Aspect:
    """An aspect: a name, the (0-based) sentences directly under it, and nested sub-aspects."""

    name: str
    sentences: tuple[int, ...] = ()
    subaspects: tuple["Aspect", ...] = ()
    label: int | None = None  # the structurizer's label of this aspect (an entity index in the toy)

    def all_sentences(self) -> list[int]:
        """Every sentence under this aspect (its own and its sub-aspects'), in document order.

        A parent covering sentences 1..4 with a sub-aspect 2..3 prints 1, 2, 3, 4 -- the original
        order, as chapter eq. (strux-render) says and the official code prints a top-level range.
        """
        out = list(self.sentences)
        for sub in self.subaspects:
            out += sub.all_sentences()
        return sorted(out)


@dataclass(frozen=True)
class Structure:
    """StruXGPT's hierarchy: a scope and a list of aspects that partition the sentences."""

    scope: str
    aspects: tuple[Aspect, ...]

    def sentence_order(self) -> list[int]:
        """The sentences in the order the structured rendering prints them."""
        return [s for a in self.aspects for s in a.all_sentences()]


def validate_structure(structure: Structure, n_sentences: int) -> None:
    """Raise ``ValueError`` unless ``structure`` covers sentences ``0..n_sentences-1`` exactly once.

    A structurizer that drops or repeats a sentence silently changes the context; v2's
    sentence ranges exist to prevent exactly that.
    """
    if not isinstance(structure, Structure):
        raise ValueError(f"structure must be a Structure, got {type(structure).__name__}")
    seen = structure.sentence_order()
    outside = sorted({s for s in seen if not 0 <= s < n_sentences})
    if outside:
        raise ValueError(f"structure refers to sentences outside 0..{n_sentences - 1}: {outside}")
    counts = np.bincount(np.asarray(seen, dtype=np.int64), minlength=n_sentences)
    missing = np.flatnonzero(counts == 0).tolist()
    repeated = np.flatnonzero(counts > 1).tolist()
    if missing or repeated:
        raise ValueError(f"structure must cover every sentence exactly once; missing {missing}, repeated {repeated}")


def structure_from_v2(obj: Mapping, n_sentences: int) -> Structure:
    """Parse StruXGPT-v2 output (its YAML, loaded as a dict) into a validated :class:`Structure`.

    ``{"Scope": str, "Aspects": [{"AspectName": str, "SentenceRange": {"start": s, "end": e},
    "SubAspects": [...]}, ...]}`` with **1-based, inclusive** ranges; a sub-aspect's range must lie
    inside its parent's. Sentences of a parent that no sub-aspect claims stay under the parent.
    """
    if not isinstance(obj, Mapping) or "Scope" not in obj or "Aspects" not in obj:
        raise ValueError("obj must be a mapping with keys 'Scope' and 'Aspects'")

    def parse(a: Mapping, lo: int, hi: int) -> Aspect:
        if not isinstance(a, Mapping) or "AspectName" not in a or "SentenceRange" not in a:
            raise ValueError(f"every aspect needs 'AspectName' and 'SentenceRange', got {a!r}")
        start, end = int(a["SentenceRange"]["start"]), int(a["SentenceRange"]["end"])
        if not lo <= start <= end <= hi:
            raise ValueError(f"aspect {a['AspectName']!r}: SentenceRange {start}..{end} must satisfy "
                             f"{lo} <= start <= end <= {hi} (1-based, inclusive, inside its parent)")
        subs = tuple(parse(s, start, end) for s in a.get("SubAspects") or ())
        claimed = {s for sub in subs for s in sub.all_sentences()}
        own = tuple(s for s in range(start - 1, end) if s not in claimed)
        return Aspect(str(a["AspectName"]), own, subs)

    structure = Structure(str(obj["Scope"]), tuple(parse(a, 1, n_sentences) for a in obj["Aspects"]))
    validate_structure(structure, n_sentences)
    return structure


def structure_from_labels(labels: Sequence[int], names: Sequence[str] | None = None,
                          scope: str = "report") -> Structure:
    """One aspect per distinct label, in order of first appearance; sentences keep their order.

    This is v2's regrouping with a *set* of sentence numbers per aspect instead of one range,
    because the toy context interleaves aspects (see the chapter's Deviations box). ``names[l]``
    names the aspect of label ``l`` (default: the label itself).
    """
    labels = [int(x) for x in labels]
    groups: dict[int, list[int]] = {}
    for s, lab in enumerate(labels):
        groups.setdefault(lab, []).append(s)
    if names is not None and groups and (min(groups) < 0 or max(groups) >= len(names)):
        raise ValueError(f"names must have an entry for every label (labels {min(groups)}..{max(groups)}), "
                         f"got {len(names)} names")
    aspects = tuple(Aspect(names[lab] if names is not None else str(lab), tuple(ss), label=lab)
                    for lab, ss in groups.items())
    structure = Structure(scope, aspects)
    validate_structure(structure, len(labels))
    return structure


# ---------------------------------------------------------------------------------------------
# Rendering and reading units
# ---------------------------------------------------------------------------------------------

def _labels(report: Report, vocab: ReportVocab, labels: Sequence[int] | None) -> tuple[int, ...]:
    out = report.labels if labels is None else tuple(int(x) for x in labels)
    if len(out) != len(report.sentences):
        raise ValueError(f"labels must have one entry per sentence ({len(report.sentences)}), got {len(out)}")
    if out and not 0 <= min(out) <= max(out) < vocab.max_entities:
        raise ValueError(f"labels must be entity indices in [0, {vocab.max_entities}), got {min(out)}..{max(out)}")
    return out


def units(report: Report, vocab: ReportVocab, fmt: str = "raw", labels: Sequence[int] | None = None,
          chunk: int | None = None) -> list[tuple[list[int], list[int]]]:
    """The context cut into reading units: ``(tokens, sentence indices)`` per unit.

    ``raw``: consecutive chunks of ``chunk`` sentences (default ``2 * n_relations``, the size of
    one aspect). ``structured``: one unit per aspect, ``E : <its sentences verbatim>``, with the
    aspects from ``labels`` (one entity index per sentence; default: the generator's labels,
    i.e. the oracle structurizer).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    labels = _labels(report, vocab, labels)
    chunk = 2 * vocab.n_relations if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 sentence, got {chunk}")
    if fmt == "raw":
        groups = [list(range(i, min(i + chunk, len(report.sentences)))) for i in range(0, len(report.sentences), chunk)]
        return [([t for s in g for t in report.sentences[s]], g) for g in groups]
    out = []
    for a in structure_from_labels(labels, names=vocab.tokens[vocab.entity(0):vocab.entity(vocab.max_entities)]).aspects:
        ss = a.all_sentences()
        out.append(([vocab.entity(a.label), vocab.colon] + [t for s in ss for t in report.sentences[s]], ss))
    return out


def render(report: Report, vocab: ReportVocab, fmt: str = "raw",
           labels: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
    """The whole context as token ids, and per token the sentence it belongs to (-1 for headers).

    ``raw``: the sentences as given. ``structured``: ``Scope : report``, then every aspect block
    ``E : <its sentences verbatim>`` (same sentences, regrouped and labelled).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    labels = _labels(report, vocab, labels)
    ids: list[int] = []
    sent: list[int] = []
    if fmt == "structured":
        ids += [vocab.index["Scope"], vocab.colon, vocab.index["report"]]
        sent += [-1] * 3
    names = vocab.tokens[vocab.entity(0):vocab.entity(vocab.max_entities)]
    order = structure_from_labels(labels, names=names).aspects if fmt == "structured" else [None]
    for a in order:
        ss = range(len(report.sentences)) if a is None else a.all_sentences()
        if a is not None:
            ids += [vocab.entity(a.label), vocab.colon]
            sent += [-1, -1]
        for s in ss:
            ids += report.sentences[s]
            sent += [s] * len(report.sentences[s])
    return ids, sent


def retrieve(unit_tokens: Sequence[Sequence[int]], question: Sequence[int], k: int = 1) -> list[int]:
    """Indices of the ``k`` units sharing the most distinct tokens with ``question`` (chapter eq. 3).

    Ties go to the earlier unit. The question's first token (``?``) is ignored.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not unit_tokens:
        raise ValueError("unit_tokens must hold at least one unit")
    q = set(int(t) for t in question[1:])
    scores = [len(q & set(int(t) for t in u)) for u in unit_tokens]
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


# ---------------------------------------------------------------------------------------------
# The reader: a window of k retrieved units, then a small causal LM
# ---------------------------------------------------------------------------------------------

@dataclass
class ReaderBatch:
    """Windows + question ``ids (B, N)`` (right-padded), ``lengths (B,)``, ``answers (B,)`` and
    ``covered (B,)``: whether the window holds both evidence sentences."""

    ids: Tensor
    lengths: Tensor
    answers: Tensor
    covered: Tensor


def reader_batch(reports: Sequence[Report], vocab: ReportVocab, fmt: str | Sequence[str] = "raw",
                 labels: Sequence[Sequence[int]] | None = None, k: int | None = 1) -> ReaderBatch:
    """One row per question: the reader's window (``k`` retrieved units) followed by the question.

    ``fmt`` is one format or one per report; ``labels`` optional per-report aspect labels (a
    learned structurizer's output; default: the oracle). ``k=None``: no retrieval, the reader
    gets the **whole** context (every unit, in order).
    """
    if k is not None and k < 1:
        raise ValueError(f"k must be None (whole context) or >= 1, got {k}")
    fmts = [fmt] * len(reports) if isinstance(fmt, str) else list(fmt)
    if len(fmts) != len(reports):
        raise ValueError(f"fmt must be one format or one per report ({len(reports)}), got {len(fmts)}")
    if labels is not None and len(labels) != len(reports):
        raise ValueError(f"labels must have one entry per report ({len(reports)}), got {len(labels)}")
    seqs, answers, covered = [], [], []
    for b, (r, f) in enumerate(zip(reports, fmts)):
        us = units(r, vocab, f, None if labels is None else labels[b])
        for q, ans, ev in zip(r.questions, r.answers, r.evidence):
            picked = range(len(us)) if k is None else retrieve([u for u, _ in us], q, k)
            window = [t for i in picked for t in us[i][0]]
            inside = {s for i in picked for s in us[i][1]}
            seqs.append(window + list(q))
            answers.append(ans)
            covered.append(set(ev) <= inside)
    ids = nn.utils.rnn.pad_sequence([torch.as_tensor(q, dtype=torch.long) for q in seqs], batch_first=True,
                                    padding_value=vocab.pad)  # right-padded (B, N)
    return ReaderBatch(ids, torch.tensor([len(q) for q in seqs]), torch.tensor(answers), torch.tensor(covered))


def make_reader(vocab: ReportVocab, d_model: int = 64, n_layers: int = 2, n_heads: int = 4) -> TinyLM:
    """The fixed-capacity reader's language model: a causal :class:`~companion.nn.TinyLM` (RoPE)."""
    return TinyLM(TransformerConfig(vocab_size=len(vocab), d_model=d_model, n_layers=n_layers, n_heads=n_heads))


def answer_logits(model: TinyLM, batch: ReaderBatch) -> Tensor:
    """Logits ``(B, vocab)`` at every row's last token (right padding is invisible to a causal model)."""
    dev = next(model.parameters()).device
    logits = model(batch.ids.to(dev))  # (B, N, V)
    return logits[torch.arange(len(batch.lengths), device=dev), batch.lengths.to(dev) - 1]


def reader_loss(model: TinyLM, batch: ReaderBatch) -> Tensor:
    """Cross-entropy of the answer token."""
    logits = answer_logits(model, batch)
    return F.cross_entropy(logits, batch.answers.to(logits.device))


@torch.no_grad()
def reader_accuracy(model: TinyLM, batch: ReaderBatch) -> float:
    """Exact-match accuracy of the greedy answer token."""
    pred = answer_logits(model, batch).argmax(-1).cpu()
    return float((pred == batch.answers).float().mean())


# ---------------------------------------------------------------------------------------------
# The mini-StruXGPT: a learned model that puts every sentence under an aspect
# ---------------------------------------------------------------------------------------------

class Linker(nn.Module):
    """Scores sentence ``s`` against entity ``e`` as ``b_s^T W a_e`` (chapter eq. 4): ``b_s`` is the bag
    (sum) of the sentence's token embeddings, ``a_e`` the mean bag of the sentences that name
    ``e``. The aspect of ``s`` is the best-scoring entity of the report."""

    def __init__(self, vocab: ReportVocab, dim: int = 32) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.vocab = vocab
        self.embed = nn.Embedding(len(vocab), dim, padding_idx=vocab.pad)
        self.W = nn.Parameter(torch.zeros(dim, dim))

    def forward(self, report: Report) -> tuple[Tensor, list[int]]:
        """Logits ``(S, n_entities)`` of every sentence over the report's entities, and those entities."""
        ids = nn.utils.rnn.pad_sequence([torch.as_tensor(x, dtype=torch.long) for x in report.sentences],
                                        batch_first=True, padding_value=self.vocab.pad).to(self.W.device)  # (S, L)
        bags = self.embed(ids).sum(1)  # (S, dim)
        named = [next((self.vocab.entity_index(t) for t in s if self.vocab.is_entity(t)), -1)
                 for s in report.sentences]  # the person a sentence names, -1 if none
        ents = sorted(set(named) - {-1})
        anchors = torch.stack([bags[[i for i, e2 in enumerate(named) if e2 == e]].mean(0) for e in ents])  # (E, dim)
        return bags @ self.W @ anchors.T, ents  # (S, E)

    def loss(self, reports: Sequence[Report]) -> Tensor:
        """Mean cross-entropy of the true aspect of every sentence."""
        total = []
        for r in reports:
            logits, ents = self(r)
            target = torch.tensor([ents.index(lab) for lab in r.labels], device=logits.device)
            total.append(F.cross_entropy(logits, target))
        return torch.stack(total).mean()

    @torch.no_grad()
    def predict(self, report: Report) -> list[int]:
        """The aspect (entity index) of every sentence of ``report``."""
        logits, ents = self(report)
        return [ents[i] for i in logits.argmax(-1).tolist()]


def label_accuracy(pred: Sequence[Sequence[int]], reports: Sequence[Report]) -> float:
    """Fraction of sentences a structurizer puts under their true aspect."""
    if len(pred) != len(reports):
        raise ValueError(f"pred must have one entry per report ({len(reports)}), got {len(pred)}")
    hits = total = 0
    for p, r in zip(pred, reports):
        if len(p) != len(r.labels):
            raise ValueError(f"pred must have one label per sentence ({len(r.labels)}), got {len(p)}")
        hits += sum(int(a == b) for a, b in zip(p, r.labels))
        total += len(p)
    return hits / max(total, 1)


# ---------------------------------------------------------------------------------------------
# Looking at it: evidence distances, an HTML view and an explorer
# ---------------------------------------------------------------------------------------------

def evidence_distance(report: Report, vocab: ReportVocab, fmt: str = "raw",
                      labels: Sequence[int] | None = None) -> list[int]:
    """Per question, the number of tokens between the starts of its two evidence sentences."""
    _, sent = render(report, vocab, fmt, labels)
    start = {}
    for pos, s in enumerate(sent):
        start.setdefault(s, pos)
    return [abs(start[a] - start[b]) for a, b in report.evidence]


_COLOURS = ("#fde2e4", "#dbe7f6", "#e2f0cb", "#fff1c1", "#e8dff5", "#d7f3ef", "#fbe0c3", "#e5e5e5")


def context_html(report: Report, vocab: ReportVocab, fmt: str = "raw", labels: Sequence[int] | None = None,
                 question: int = 0) -> str:
    """HTML of the context: one background colour per true aspect, question ``question``'s
    evidence in bold, the units the reader's window holds (k=1) framed."""
    if not 0 <= question < len(report.questions):
        raise ValueError(f"question must lie in [0, {len(report.questions)}), got {question}")
    labels = _labels(report, vocab, labels)
    us = units(report, vocab, fmt, labels)
    picked = set(retrieve([u for u, _ in us], report.questions[question], 1))
    colour = {e: _COLOURS[i % len(_COLOURS)] for i, e in enumerate(dict.fromkeys(report.labels))}
    evidence = set(report.evidence[question])
    parts = []
    for i, (toks, ss) in enumerate(us):
        body = []
        if fmt == "structured":
            body.append(f"<b>{vocab.tokens[toks[0]]} :</b>")
        for s in ss:
            text = vocab.decode(report.sentences[s])
            text = f"<b>{text}</b>" if s in evidence else text
            body.append(f'<span style="background:{colour[report.labels[s]]};padding:1px 3px">{text}</span>')
        frame = "2px solid #c0392b" if i in picked else "1px dashed #bbb"
        parts.append(f'<div style="border:{frame};margin:2px;padding:2px">{" ".join(body)}</div>')
    q = vocab.decode(report.questions[question])
    answer = vocab.tokens[report.answers[question]]
    head = f"<div><b>{fmt}</b> &nbsp; question: <code>{q}</code> &rarr; <code>{answer}</code></div>"
    return head + "".join(parts)


def explorer(reader: TinyLM, linker: Linker, vocab: ReportVocab, seed: int = 0):
    """ipywidgets: pick the number of entities, a report and a question; see the raw and the
    structured context side by side (colour = true aspect, bold = evidence, red frame = the
    reader's window) and what the reader answers from each."""
    import ipywidgets as W

    n_ent = W.IntSlider(value=4, min=2, max=min(16, vocab.max_entities), description="entities")
    which = W.IntSlider(value=0, min=0, max=20, description="report")
    quest = W.IntSlider(value=0, min=0, max=3, description="question")
    learned = W.Checkbox(value=False, description="learned structurizer")
    out = W.HTML()

    def draw(*_):
        rng = np.random.default_rng([seed, n_ent.value, which.value])
        rep = make_report(n_ent.value, vocab, rng)
        quest.max = len(rep.questions) - 1
        labels = linker.predict(rep) if learned.value else None
        cells = []
        for fmt in FORMATS:
            lab = labels if fmt == "structured" else None
            batch = reader_batch([rep], vocab, fmt, None if lab is None else [lab])
            with torch.no_grad():
                said = answer_logits(reader, batch).argmax(-1)[quest.value].cpu()
            verdict = "correct" if int(said) == rep.answers[quest.value] else "wrong"
            cells.append(f'<td style="vertical-align:top;width:50%">{context_html(rep, vocab, fmt, lab, quest.value)}'
                         f"<div>reader says <code>{vocab.tokens[int(said)]}</code> ({verdict})</div></td>")
        out.value = f'<table style="width:100%"><tr>{"".join(cells)}</tr></table>'

    for w in (n_ent, which, quest, learned):
        w.observe(draw, names="value")
    draw()
    return W.VBox([W.HBox([n_ent, which]), W.HBox([quest, learned]), out])
