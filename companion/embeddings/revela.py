"""Revela (Cai et al., 2025): a dense retriever learned only through a language model's in-batch attention.

A batch holds B text chunks. The retriever scores every chunk's query view against every chunk,
``A = softmax_j(cos(e^q_i, e^p_j) / tau)`` with the diagonal excluded (Eq. 1). The reference LM runs each
chunk alone once (pass 1) and keeps every layer's keys and values; in pass 2 each layer's causal
self-attention output of chunk i gets an added term, a mixture over the other chunks j weighted by
``A_ij`` of one full (non-causal) attention of chunk i's queries over chunk j's pass-1 keys/values,
divided by the attention-weighted value norm (Eq. 2; the official ``modeling_llama.py`` fork). The
loss is plain next-token cross-entropy, so the retriever's only gradient comes through ``A``.

The pieces reuse :class:`companion.nn.transformer.TinyLM` through its ``attn_fn`` hook: pass 1 records
``(k, v)`` per layer, pass 2 adds the cross-document term (:class:`InBatchAttention`).

:func:`fact_batch` generates the card's synthetic corpus: topics are random key->value dictionaries,
and the two chunks of a topic share half of their facts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.attention import attention
from ..nn.transformer import TinyEncoder, TinyLM, TransformerConfig

Tensor = torch.Tensor


# ------------------------------------------------------------------------------------- the corpus
@dataclass(frozen=True)
class FactCorpus:
    """Token layout of the synthetic corpus: keys ``[0, n_keys)``, values ``[n_keys, n_keys + n_values)``,
    then the separator ``;``. A chunk is ``facts`` facts ``k v ;`` from one topic."""

    n_keys: int = 256
    n_values: int = 256
    facts_per_topic: int = 16
    facts: int = 8  # per chunk
    shared: int = 4  # facts the two chunks of a topic have in common

    def __post_init__(self) -> None:
        if not (0 <= self.shared <= self.facts) or 2 * self.facts - self.shared > self.facts_per_topic:
            raise ValueError(f"need 0 <= shared <= facts and 2*facts - shared <= facts_per_topic, got "
                             f"facts={self.facts}, shared={self.shared}, facts_per_topic={self.facts_per_topic}")
        if self.facts_per_topic > self.n_keys:
            raise ValueError(f"facts_per_topic ({self.facts_per_topic}) must be <= n_keys ({self.n_keys})")

    @property
    def sep(self) -> int:
        return self.n_keys + self.n_values

    @property
    def vocab_size(self) -> int:
        return self.n_keys + self.n_values + 1

    @property
    def length(self) -> int:
        return 3 * self.facts


def fact_batch(corpus: FactCorpus, topics: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A batch of ``2 * topics`` chunks in random order: ``(tokens (B, L), partner (B,))``.

    Each topic is a fresh dictionary of ``facts_per_topic`` distinct keys with random values; its two
    chunks draw ``facts`` facts each, ``shared`` of them common, in random order. Keys recur across
    topics with other values, so a value is predictable only from the partner chunk. ``partner[i]``
    is the index of chunk i's partner (used for evaluation only, never for training).
    """
    if topics < 2:
        raise ValueError(f"topics must be >= 2, got {topics}")
    c = corpus
    keys = torch.rand(topics, c.n_keys, generator=generator).argsort(1)[:, :c.facts_per_topic]  # (T, F)
    values = c.n_keys + torch.randint(0, c.n_values, (topics, c.facts_per_topic), generator=generator)
    order = torch.rand(topics, c.facts_per_topic, generator=generator).argsort(1)  # which facts go where
    own = c.facts - c.shared
    pick_a = order[:, :c.facts]  # shared facts = order[:, :shared]
    pick_b = torch.cat([order[:, :c.shared], order[:, c.facts:c.facts + own]], 1)
    chunks = []
    for pick in (pick_a, pick_b):
        shuffle = torch.rand(topics, c.facts, generator=generator).argsort(1)
        pick = torch.gather(pick, 1, shuffle)  # (T, facts) fact ids in random order
        k, v = torch.gather(keys, 1, pick), torch.gather(values, 1, pick)
        sep = torch.full_like(k, c.sep)
        chunks.append(torch.stack([k, v, sep], 2).flatten(1))  # (T, 3 * facts)
    tokens = torch.cat(chunks)  # (2T, L): chunk t and chunk t + T are partners
    partner = torch.cat([torch.arange(topics) + topics, torch.arange(topics)])
    perm = torch.randperm(2 * topics, generator=generator)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(2 * topics)
    return tokens[perm], inv[partner[perm]]


def value_positions(tokens: Tensor, corpus: FactCorpus) -> Tensor:
    """Bool (B, L): positions that hold a value token (the "fact" tokens the LM can only copy)."""
    return (tokens >= corpus.n_keys) & (tokens < corpus.sep)


# ------------------------------------------------------------------------------------- the retriever
class Retriever(nn.Module):
    """Embedding + transformer encoder, mean-pooled and L2-normalised; scores queries against chunks."""

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 1, n_heads: int = 4,
                 max_len: int = 64) -> None:
        super().__init__()
        self.encoder = TinyEncoder(TransformerConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers,
                                                     n_heads=n_heads, pos="rope", max_len=max_len))

    def embed(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.encoder(tokens).mean(1), dim=-1)  # (B, d)

    def scores(self, tokens: Tensor, query_len: int) -> Tensor:
        """Cosine ``S_ij`` between chunk i's first ``query_len`` tokens and the whole chunk j: (B, B)."""
        if not (0 < query_len <= tokens.shape[1]):
            raise ValueError(f"query_len must lie in (0, {tokens.shape[1]}], got {query_len}")
        return self.embed(tokens[:, :query_len]) @ self.embed(tokens).T


def retrieval_weights(scores: Tensor, tau: float, exclude_diagonal: bool = True) -> Tensor:
    """Eq. 1: ``A = softmax_j(S / tau)``, with ``A_ii = 0`` (the diagonal set to -inf before the softmax)."""
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be a square (B, B) matrix, got {tuple(scores.shape)}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    s = scores / tau
    if exclude_diagonal:
        s = s.masked_fill(torch.eye(s.shape[0], dtype=torch.bool, device=s.device), float("-inf"))
    return s.softmax(-1)


# ------------------------------------------------------------------------------------- in-batch attention
def cross_document_term(q: Tensor, k: Tensor, v: Tensor, weights: Tensor, v_norm: bool = True,
                        eps: float = 1e-6) -> Tensor:
    """Eq. 2's added term: ``sum_j A_ij softmax(q_i k_j^T / sqrt(d)) v_j / (softmax(...) ||v_j||)``.

    ``q``: (B, H, L, D) queries of pass 2; ``k``, ``v``: (B, H, L, D) pass-1 keys/values of every chunk;
    ``weights``: (B, B) retriever weights A. One softmax per document pair (i, j), over all of j's
    tokens (no causal mask: j is another document). Returns (B, H, L, D).
    """
    if q.ndim != 4 or k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"q, k, v must be (B, H, L, D) with matching B, H, D, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B = q.shape[0]
    if weights.shape != (B, B):
        raise ValueError(f"weights must have shape ({B}, {B}), got {tuple(weights.shape)}")
    p = torch.einsum("ihld,jhmd->ijhlm", q, k).div(math.sqrt(q.shape[-1])).softmax(-1)  # (B, B, H, L, L)
    out = torch.einsum("ijhlm,jhmd->ijhld", p, v)  # (B, B, H, L, D)
    if v_norm:
        norm = torch.einsum("ijhlm,jhm->ijhl", p, v.norm(dim=-1))  # (B, B, H, L)
        out = out / (norm[..., None] + eps)
    return torch.einsum("ij,ijhld->ihld", weights.to(out.dtype), out)  # (B, H, L, D)


class InBatchAttention:
    """An ``attn_fn`` for :class:`TinyLM`: records pass-1 keys/values, or adds the cross-document term.

    Use ``record()`` before pass 1 and ``mix(weights)`` before pass 2; each call of the LM's layers
    consumes one layer's entry in order.
    """

    def __init__(self, v_norm: bool = True) -> None:
        self.v_norm = v_norm
        self.cache: list[tuple[Tensor, Tensor]] = []
        self.weights: Tensor | None = None
        self.layer = 0

    def record(self) -> "InBatchAttention":
        self.cache, self.weights, self.layer = [], None, 0
        return self

    def mix(self, weights: Tensor) -> "InBatchAttention":
        if not self.cache:
            raise RuntimeError("run pass 1 with record() before mix()")
        self.weights, self.layer = weights, 0
        return self

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, mask=None) -> Tensor:
        out = attention(q, k, v, mask)  # (B, H, L, D): the chunk's own causal attention
        if self.weights is None:
            self.cache.append((k, v))  # kept with their graph: the LM learns through both passes
            return out
        k1, v1 = self.cache[self.layer]
        self.layer += 1
        return out + cross_document_term(q, k1, v1, self.weights, self.v_norm)


# ------------------------------------------------------------------------------------- the model
class RevelaModel(nn.Module):
    """Retriever + reference LM trained together by the LM loss of pass 2 (Eqs. 1-3).

    ``arm``: ``"revela"`` (gradient through A), ``"detached"`` (A computed but detached: the retriever
    gets no gradient), ``"lm"`` (no in-batch attention: a plain LM).
    """

    ARMS = ("revela", "detached", "lm")

    def __init__(self, corpus: FactCorpus, arm: str = "revela", d_model: int = 64, lm_layers: int = 2,
                 retriever_layers: int = 1, n_heads: int = 4, tau: float = 0.05, v_norm: bool = True) -> None:
        super().__init__()
        if arm not in self.ARMS:
            raise ValueError(f"arm must be one of {self.ARMS}, got {arm!r}")
        self.corpus, self.arm, self.tau = corpus, arm, tau
        self.retriever = Retriever(corpus.vocab_size, d_model, retriever_layers, n_heads, max_len=corpus.length)
        self.lm = TinyLM(TransformerConfig(vocab_size=corpus.vocab_size, d_model=d_model, n_layers=lm_layers,
                                           n_heads=n_heads, pos="rope", max_len=corpus.length))
        self.inbatch = InBatchAttention(v_norm)

    def weights(self, tokens: Tensor) -> Tensor:
        """The retriever's A (B, B) for a batch; the query view is the first half of each chunk."""
        return retrieval_weights(self.retriever.scores(tokens, tokens.shape[1] // 2), self.tau)

    def logits(self, tokens: Tensor, weights: Tensor | None = None) -> Tensor:
        """Pass 1 (record) and pass 2 (mix with ``weights``); with ``weights=None`` a plain LM pass."""
        if weights is None:
            return self.lm(tokens)
        self.lm(tokens, attn_fn=self.inbatch.record())  # pass 1: every chunk alone
        out = self.lm(tokens, attn_fn=self.inbatch.mix(weights))  # pass 2: with the other chunks
        self.inbatch.record()  # drop the cache
        return out

    def loss(self, tokens: Tensor) -> Tensor:
        """Next-token cross-entropy of pass 2 over every chunk token (the only training signal)."""
        weights = None
        if self.arm != "lm":
            weights = self.weights(tokens)
            if self.arm == "detached":
                weights = weights.detach()
        logits = self.logits(tokens[:, :-1], None if weights is None else weights)
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def training_loss(model: RevelaModel, tokens: Tensor) -> Tensor:
    """For :func:`companion.train.train`: the model's own LM loss on a batch of chunks."""
    return model.loss(tokens)


@torch.no_grad()
def evaluate(model: RevelaModel, batches: list[tuple[Tensor, Tensor]]) -> dict[str, float]:
    """Top-1 partner retrieval (first-half query, self excluded) and LM cross-entropy on value tokens.

    The LM is scored with the retriever's own weights (``"revela"``, ``"detached"``) or alone (``"lm"``).
    """
    hits, n, ce_sum, ce_n = 0, 0, 0.0, 0
    for tokens, partner in batches:
        s = model.retriever.scores(tokens, tokens.shape[1] // 2)
        s = s.masked_fill(torch.eye(len(s), dtype=torch.bool), float("-inf"))
        hits += int((s.argmax(1) == partner).sum())
        n += len(partner)
        w = None if model.arm == "lm" else model.weights(tokens)
        logits = model.logits(tokens[:, :-1], w)
        ce = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
        keep = value_positions(tokens[:, 1:], model.corpus).flatten()
        ce_sum += float(ce[keep].sum())
        ce_n += int(keep.sum())
    return {"top1": hits / n, "value CE": ce_sum / ce_n}
