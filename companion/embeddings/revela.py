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
and the two chunks of a topic share half of their facts (optionally with keys in domains and the
shared facts last, so the query half has no key in common with the partner).
:func:`article_chunks` / :func:`chunk_batch` do the same for real text (partner = another chunk of
the same article). ``prev_keys`` (:func:`previous_token_keys`) gives a from-scratch one-layer LM the
previous-token keys a pretrained LM has; :meth:`RevelaModel.oracle_loss` is the LM warm-up with
one-hot partner weights.
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
    domains: bool = False  # a topic's keys are one whole domain of facts_per_topic consecutive keys
    shared_last: bool = False  # each chunk lists its own facts first and the shared ones last

    def __post_init__(self) -> None:
        if not (0 <= self.shared <= self.facts) or 2 * self.facts - self.shared > self.facts_per_topic:
            raise ValueError(f"need 0 <= shared <= facts and 2*facts - shared <= facts_per_topic, got "
                             f"facts={self.facts}, shared={self.shared}, facts_per_topic={self.facts_per_topic}")
        if self.facts_per_topic > self.n_keys:
            raise ValueError(f"facts_per_topic ({self.facts_per_topic}) must be <= n_keys ({self.n_keys})")
        if self.domains and self.n_keys % self.facts_per_topic:
            raise ValueError(f"with domains, facts_per_topic ({self.facts_per_topic}) must divide n_keys ({self.n_keys})")

    @property
    def n_domains(self) -> int:
        return self.n_keys // self.facts_per_topic

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

    With ``corpus.domains`` a topic's keys are all the keys of one domain (``facts_per_topic``
    consecutive key ids), the topics of a batch come from distinct domains, and with
    ``corpus.shared_last`` each chunk lists its own facts before the shared ones: when
    ``shared = facts / 2`` the first half of a chunk (the retriever's query) then has no token in
    common with its partner, which only the domain of its keys gives away.
    """
    if topics < 2:
        raise ValueError(f"topics must be >= 2, got {topics}")
    c = corpus
    if c.domains:
        if topics > c.n_domains:
            raise ValueError(f"topics ({topics}) must be <= the number of key domains ({c.n_domains})")
        dom = torch.randperm(c.n_domains, generator=generator)[:topics]  # distinct domains (T,)
        within = torch.rand(topics, c.facts_per_topic, generator=generator).argsort(1)
        keys = dom[:, None] * c.facts_per_topic + within  # (T, F): the whole domain, permuted
    else:
        keys = torch.rand(topics, c.n_keys, generator=generator).argsort(1)[:, :c.facts_per_topic]  # (T, F)
    values = c.n_keys + torch.randint(0, c.n_values, (topics, c.facts_per_topic), generator=generator)
    order = torch.rand(topics, c.facts_per_topic, generator=generator).argsort(1)  # which facts go where
    own = c.facts - c.shared
    pick_a = order[:, :c.facts]  # shared facts = order[:, :shared]
    pick_b = torch.cat([order[:, :c.shared], order[:, c.facts:c.facts + own]], 1)
    chunks = []
    for pick in (pick_a, pick_b):
        if c.shared_last:  # own facts (in random order), then the shared ones (in random order)
            own_part = pick[:, c.shared:]  # both picks hold the shared facts first
            s_own = torch.rand(topics, own, generator=generator).argsort(1)
            s_sh = torch.rand(topics, c.shared, generator=generator).argsort(1)
            pick = torch.cat([torch.gather(own_part, 1, s_own), torch.gather(pick[:, :c.shared], 1, s_sh)], 1)
        else:
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


def unpaired(tokens: Tensor, partner: Tensor) -> Tensor:
    """One chunk of every topic of a :func:`fact_batch` (B/2, L): a batch in which no chunk has its partner.

    The batch-composition control: the pipeline is unchanged, but there is nothing to copy.
    """
    if tokens.ndim != 2 or partner.shape != (tokens.shape[0],):
        raise ValueError(f"tokens must be (B, L) and partner (B,), got {tuple(tokens.shape)}, {tuple(partner.shape)}")
    return tokens[torch.arange(len(partner), device=partner.device) < partner]


def value_positions(tokens: Tensor, corpus: FactCorpus) -> Tensor:
    """Bool (B, L): positions that hold a value token (the "fact" tokens the LM can only copy)."""
    return (tokens >= corpus.n_keys) & (tokens < corpus.sep)


@dataclass(frozen=True)
class TextChunks:
    """Real text cut into equal chunks: ``pools[a]`` (n_a, length) holds the chunks of article a."""

    pools: tuple[Tensor, ...]
    vocab_size: int
    length: int

    @property
    def chunks(self) -> int:
        return sum(len(p) for p in self.pools)


def article_chunks(texts: list[str], encode, vocab_size: int, length: int = 32, min_chunks: int = 4) -> TextChunks:
    """Token ids of each text cut into non-overlapping ``length``-token chunks (the tail dropped);
    texts with fewer than ``min_chunks`` chunks are skipped. ``encode``: str -> list of ids."""
    if length < 2 or min_chunks < 2:
        raise ValueError(f"need length >= 2 and min_chunks >= 2, got {length}, {min_chunks}")
    pools = []
    for text in texts:
        ids = torch.tensor(encode(text), dtype=torch.long)
        n = len(ids) // length
        if n >= min_chunks:
            pools.append(ids[: n * length].view(n, length))
    if len(pools) < 2:
        raise ValueError(f"fewer than 2 texts have >= {min_chunks} chunks of {length} tokens")
    return TextChunks(tuple(pools), vocab_size, length)


def chunk_batch(corpus: TextChunks, topics: int, generator: torch.Generator,
                articles: list[int] | None = None) -> tuple[Tensor, Tensor]:
    """Two random chunks of each of ``topics`` random articles (from ``articles``, default all):
    ``(tokens (2T, L), partner (2T,))``; a chunk's partner is the other chunk of its article."""
    pool = list(range(len(corpus.pools))) if articles is None else list(articles)
    if not (2 <= topics <= len(pool)):
        raise ValueError(f"topics must lie in [2, {len(pool)}], got {topics}")
    pick = torch.randperm(len(pool), generator=generator)[:topics].tolist()
    rows = []
    for a in pick:
        chunks = corpus.pools[pool[a]]
        rows.append(chunks[torch.randperm(len(chunks), generator=generator)[:2]])
    t = torch.stack(rows)  # (T, 2, L)
    partner = torch.cat([torch.arange(topics) + topics, torch.arange(topics)])
    return torch.cat([t[:, 0], t[:, 1]]), partner


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


def previous_token_keys(k: Tensor) -> Tensor:
    """Shift keys one position to the right: position t's key is the key of token t-1 (zeros at t=0).

    A hard-wired previous-token key (the "smeared key" of Olsson et al. with weight 1): a
    one-layer attention can then find "the token after k" by matching a query for k.
    """
    if k.ndim != 4:
        raise ValueError(f"k must have shape (B, H, L, D), got {tuple(k.shape)}")
    return torch.cat([torch.zeros_like(k[:, :, :1]), k[:, :, :-1]], 2)


class InBatchAttention:
    """An ``attn_fn`` for :class:`TinyLM`: records pass-1 keys/values, or adds the cross-document term.

    Use ``record()`` before pass 1 and ``mix(weights)`` before pass 2; each call of the LM's layers
    consumes one layer's entry in order. ``plain()`` runs the chunk's own causal attention only (the
    plain-LM arm, through the same code so that ``prev_keys`` applies to every arm).
    """

    def __init__(self, v_norm: bool = True, prev_keys: bool = False) -> None:
        self.v_norm, self.prev_keys = v_norm, prev_keys
        self.cache: list[tuple[Tensor, Tensor]] = []
        self.weights: Tensor | None = None
        self.recording = False
        self.layer = 0

    def plain(self) -> "InBatchAttention":
        self.cache, self.weights, self.recording, self.layer = [], None, False, 0
        return self

    def record(self) -> "InBatchAttention":
        self.cache, self.weights, self.recording, self.layer = [], None, True, 0
        return self

    def mix(self, weights: Tensor) -> "InBatchAttention":
        if not self.cache:
            raise RuntimeError("run pass 1 with record() before mix()")
        self.weights, self.recording, self.layer = weights, False, 0
        return self

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, mask=None) -> Tensor:
        if self.prev_keys:
            k = previous_token_keys(k)
        out = attention(q, k, v, mask)  # (B, H, L, D): the chunk's own causal attention
        if self.weights is None:
            if self.recording:
                self.cache.append((k, v))  # kept with their graph: the LM learns through both passes
            return out
        k1, v1 = self.cache[self.layer]
        self.layer += 1
        return out + cross_document_term(q, k1, v1, self.weights, self.v_norm)


# ------------------------------------------------------------------------------------- the model
class RevelaModel(nn.Module):
    """Retriever + reference LM trained together by the LM loss of pass 2 (Eqs. 1-3).

    ``arm``: ``"revela"`` (gradient through A), ``"detached"`` (A computed but detached: the retriever
    gets no gradient), ``"lm"`` (no in-batch attention: a plain LM). ``arm`` is a plain attribute:
    :func:`copy.deepcopy` a model and set it to branch the arms from one warm-started checkpoint.
    """

    ARMS = ("revela", "detached", "lm")

    def __init__(self, corpus: FactCorpus | TextChunks, arm: str = "revela", d_model: int = 64, lm_layers: int = 2,
                 retriever_layers: int = 1, n_heads: int = 4, tau: float = 0.05, v_norm: bool = True,
                 prev_keys: bool = False) -> None:
        super().__init__()
        if arm not in self.ARMS:
            raise ValueError(f"arm must be one of {self.ARMS}, got {arm!r}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.corpus, self.arm, self.tau = corpus, arm, tau
        self.retriever = Retriever(corpus.vocab_size, d_model, retriever_layers, n_heads, max_len=corpus.length)
        self.lm = TinyLM(TransformerConfig(vocab_size=corpus.vocab_size, d_model=d_model, n_layers=lm_layers,
                                           n_heads=n_heads, pos="rope", max_len=corpus.length))
        self.inbatch = InBatchAttention(v_norm, prev_keys)

    def weights(self, tokens: Tensor) -> Tensor:
        """The retriever's A (B, B) for a batch; the query view is the first half of each chunk."""
        return retrieval_weights(self.retriever.scores(tokens, tokens.shape[1] // 2), self.tau)

    def logits(self, tokens: Tensor, weights: Tensor | None = None) -> Tensor:
        """Pass 1 (record) and pass 2 (mix with ``weights``); with ``weights=None`` a plain LM pass."""
        if weights is None:
            return self.lm(tokens, attn_fn=self.inbatch.plain())
        self.lm(tokens, attn_fn=self.inbatch.record())  # pass 1: every chunk alone
        out = self.lm(tokens, attn_fn=self.inbatch.mix(weights))  # pass 2: with the other chunks
        self.inbatch.plain()  # drop the cache
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

    def oracle_loss(self, tokens: Tensor, partner: Tensor) -> Tensor:
        """LM loss of pass 2 with A = the one-hot partner matrix (the LM warm-up; the retriever is unused)."""
        if partner.shape != (tokens.shape[0],):
            raise ValueError(f"partner must have shape ({tokens.shape[0]},), got {tuple(partner.shape)}")
        weights = torch.eye(len(tokens), device=tokens.device)[partner]
        logits = self.logits(tokens[:, :-1], weights)
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def training_loss(model: RevelaModel, tokens: Tensor) -> Tensor:
    """For :func:`companion.train.train`: the model's own LM loss on a batch of chunks."""
    return model.loss(tokens)


def partner_ranks(scores: Tensor, partner: Tensor) -> Tensor:
    """Rank (1 = best) of each query's partner among the other chunks, from scores (B, B); self excluded."""
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1] or partner.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (B, B) and partner (B,), got {tuple(scores.shape)}, {tuple(partner.shape)}")
    s = scores.masked_fill(torch.eye(len(scores), dtype=torch.bool, device=scores.device), float("-inf"))
    return (s > s.gather(1, partner[:, None])).sum(1) + 1


@torch.no_grad()
def evaluate(model: RevelaModel, batches: list[tuple[Tensor, Tensor]], lm: bool = True) -> dict[str, float]:
    """Top-1 and MRR of partner retrieval (first-half query, self excluded), and, with ``lm``, the LM
    cross-entropy on value tokens (every token for :class:`TextChunks`) with the retriever's weights (``"revela"``, ``"detached"``) or
    without in-batch attention (``"lm"``), and with the oracle partner weights (``"oracle CE"``).
    """
    ranks, ce_sum, ce_or, ce_n = [], 0.0, 0.0, 0
    for tokens, partner in batches:
        ranks.append(partner_ranks(model.retriever.scores(tokens, tokens.shape[1] // 2), partner))
        if not lm:
            continue
        if isinstance(model.corpus, FactCorpus):
            keep = value_positions(tokens[:, 1:], model.corpus).flatten()
        else:  # real text: every token
            keep = torch.ones(tokens[:, 1:].numel(), dtype=torch.bool)
        w = None if model.arm == "lm" else model.weights(tokens)
        for name, weights in (("model", w), ("oracle", torch.eye(len(tokens))[partner])):
            logits = model.logits(tokens[:, :-1], weights)
            ce = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")[keep]
            if name == "model":
                ce_sum += float(ce.sum())
                ce_n += int(keep.sum())
            else:
                ce_or += float(ce.sum())
    r = torch.cat(ranks).float()
    out = {"top1": float((r == 1).float().mean()), "MRR": float((1 / r).mean())}
    if lm:
        out |= {"value CE": ce_sum / ce_n, "oracle CE": ce_or / ce_n}
    return out
