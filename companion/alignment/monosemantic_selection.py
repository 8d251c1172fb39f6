"""Task-specific data selection with monosemantic (SAE) features: MONA
(Ma et al. 2025, arXiv 2503.15573).

Pipeline (numbers refer to the chapter's equations):

1. Token activations ``h_t`` of one late layer of a model, for every candidate and target sample
   (:func:`lm_activations` for a real LM; :func:`toy_samples` for the superposition toy).
2. A **TopK sparse autoencoder** -- the book's SAE, :class:`companion.interpretability.sae_circuits.
   SparseAutoencoder` with ``k`` set -- trained on the pool's tokens (:func:`train_topk_sae`);
   ``z_t = TopK(W_e (h_t - b) + b_e)`` (eq. mona-sae).
3. **Mean pooling** over a sample's tokens (eq. mona-pool, :func:`pool`), a **prototype** that is
   the mean of the target exemplars' embeddings, and the **generalised Jaccard** similarity
   ``sum min / sum max`` of each candidate with the prototype (eq. mona-jaccard, :func:`jaccard`).
4. The top-``k`` candidates are the selection (:func:`select_topk`).

Controls the chapter compares with, at the same budget ``k``: random selection, raw activations
with cosine (the paper's "polysemantic" embedding, its v1 method NAS), SAE features with cosine
(the paper's metric ablation), sum pooling (its length-bias ablation) and BM25 on token ids.
Outcomes are measured with labels held out of every scorer: :func:`precision_at_k`, and a
downstream proxy, the held-out target NLL of a unigram LM fit on the selection (:func:`unigram_nll`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..interpretability.sae_circuits import SparseAutoencoder, sae_loss
from ..train import train

Tensor = torch.Tensor

POOLINGS = ("mean", "sum")
SIMILARITIES = ("jaccard", "cosine")


# --------------------------------------------------------------------------------- token pools
@dataclass
class TokenPool:
    """Token-level activations of ``n`` samples, flattened: token ``t`` belongs to ``sample[t]``."""

    h: Tensor  # (T, d) token activations
    sample: Tensor  # (T,) int64, the sample each token belongs to, in 0..n-1
    tokens: Tensor  # (T,) int64 token ids (for BM25 and the unigram LM)
    task: Tensor  # (n,) int64 task labels -- held out of every scorer
    n: int

    def __post_init__(self) -> None:
        T = self.h.shape[0]
        if self.h.ndim != 2 or self.sample.shape != (T,) or self.tokens.shape != (T,):
            raise ValueError(f"h must be (T, d) with sample and tokens (T,), got {tuple(self.h.shape)}, "
                             f"{tuple(self.sample.shape)}, {tuple(self.tokens.shape)}")
        if self.task.shape != (self.n,):
            raise ValueError(f"task must be (n,) = ({self.n},), got {tuple(self.task.shape)}")

    @property
    def lengths(self) -> Tensor:
        """Tokens per sample: (n,)."""
        return torch.bincount(self.sample, minlength=self.n)

    def subset(self, idx: Tensor) -> "TokenPool":
        """The samples ``idx`` (in that order), renumbered 0..len(idx)-1."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        new_id = torch.full((self.n,), -1, dtype=torch.long)
        new_id[idx] = torch.arange(len(idx))
        keep = new_id[self.sample] >= 0
        order = torch.argsort(new_id[self.sample[keep]], stable=True)
        return TokenPool(self.h[keep][order], new_id[self.sample[keep]][order], self.tokens[keep][order],
                         self.task[idx], len(idx))


def concat_pools(pools: Sequence[TokenPool]) -> TokenPool:
    """One pool holding the samples of ``pools`` in order."""
    if not pools:
        raise ValueError("pools must hold at least one TokenPool")
    offsets, acc = [], 0
    for p in pools:
        offsets.append(acc)
        acc += p.n
    return TokenPool(torch.cat([p.h for p in pools]), torch.cat([p.sample + o for p, o in zip(pools, offsets)]),
                     torch.cat([p.tokens for p in pools]), torch.cat([p.task for p in pools]), acc)


# --------------------------------------------------------------------------------- stage A: the toy
@dataclass
class ToyWorld:
    """Ground truth of the superposition toy: ``n_concepts`` concepts as unit vectors in ``d`` dims."""

    dictionary: Tensor  # (n_concepts, d), unit rows: concept directions, n_concepts >> d
    concept_token: Tensor  # (n_concepts,) the token id that a token whose first concept is c shows
    n_tasks: int
    task_concepts: int
    n_generic: int
    n_rare: int
    vocab: int

    def task_range(self, task: int) -> range:
        """The concept indices owned by ``task``."""
        return range(task * self.task_concepts, (task + 1) * self.task_concepts)


def toy_world(d: int = 32, n_tasks: int = 8, task_concepts: int = 6, n_generic: int = 40, n_rare: int = 168,
              vocab: int = 48, generator: torch.Generator | None = None) -> ToyWorld:
    """Concepts ``[task 0 | task 1 | ... | generic | rare]`` with random unit directions in ``d`` dims.

    ``n_tasks * task_concepts + n_generic + n_rare`` concepts (card: 8 * 6 + 40 + 168 = 256) in
    ``d = 32`` dims: the space is in superposition. Token ids are a many-to-one map of concepts onto
    ``vocab`` ids, so the same id is shown for concepts of different tasks (polysemous tokens).
    """
    if min(d, n_tasks, task_concepts, vocab) < 1 or min(n_generic, n_rare) < 0:
        raise ValueError(f"need d, n_tasks, task_concepts, vocab >= 1 and n_generic, n_rare >= 0, got "
                         f"d={d}, n_tasks={n_tasks}, task_concepts={task_concepts}, vocab={vocab}, "
                         f"n_generic={n_generic}, n_rare={n_rare}")
    n = n_tasks * task_concepts + n_generic + n_rare
    dictionary = F.normalize(torch.randn(n, d, generator=generator), dim=-1)
    concept_token = torch.randint(0, vocab, (n,), generator=generator)
    return ToyWorld(dictionary, concept_token, n_tasks, task_concepts, n_generic, n_rare, vocab)


def toy_samples(world: ToyWorld, tasks: Tensor, min_len: int = 8, max_len: int = 40, p_task: float = 0.5,
                p_rare: float = 0.3, noise: float = 0.05, generator: torch.Generator | None = None) -> TokenPool:
    """One sample per entry of ``tasks`` (n,): a bag of ``min_len..max_len`` tokens.

    Each token activates 1-3 concepts; each concept is one of its task's own with probability
    ``p_task``, otherwise a generic concept shared by all tasks (card). With probability ``p_rare``
    a token also carries one rare concept. Activation: ``h_t = sum_c a_c D_c + noise``,
    ``a_c ~ U(0.5, 1.5)``. The token id is the id of the token's first concept.
    """
    tasks = torch.as_tensor(tasks, dtype=torch.long)
    if tasks.ndim != 1 or len(tasks) == 0 or int(tasks.min()) < 0 or int(tasks.max()) >= world.n_tasks:
        raise ValueError(f"tasks must be a non-empty 1-d tensor of ids in [0, {world.n_tasks}), got {tasks}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    if not (0 <= p_task <= 1 and 0 <= p_rare <= 1) or noise < 0:
        raise ValueError(f"need p_task, p_rare in [0, 1] and noise >= 0, got {p_task}, {p_rare}, {noise}")
    n = len(tasks)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=generator)
    sample = torch.repeat_interleave(torch.arange(n), lengths)  # (T,)
    T, C = len(sample), 3
    task_of_token = tasks[sample]
    n_active = torch.randint(1, C + 1, (T,), generator=generator)  # 1..3 concepts
    own = task_of_token[:, None] * world.task_concepts + torch.randint(0, world.task_concepts, (T, C),
                                                                      generator=generator)
    base = world.n_tasks * world.task_concepts
    generic = base + torch.randint(0, max(world.n_generic, 1), (T, C), generator=generator)
    from_task = torch.rand(T, C, generator=generator) < p_task
    if world.n_generic == 0:
        from_task[:] = True
    concepts = torch.where(from_task, own, generic)  # (T, C)
    amp = torch.empty(T, C).uniform_(0.5, 1.5, generator=generator)
    amp = amp * (torch.arange(C)[None] < n_active[:, None])  # drop the unused slots
    h = torch.einsum("tc,tcd->td", amp, world.dictionary[concepts])
    if world.n_rare:
        rare = base + world.n_generic + torch.randint(0, world.n_rare, (T,), generator=generator)
        has_rare = (torch.rand(T, generator=generator) < p_rare).float()
        h = h + (has_rare * torch.empty(T).uniform_(0.5, 1.5, generator=generator))[:, None] * world.dictionary[rare]
    h = h + noise * torch.randn(T, h.shape[1], generator=generator)
    return TokenPool(h, sample, world.concept_token[concepts[:, 0]], tasks.clone(), n)


COOCCURRENCE_PAIRS = torch.tensor([[[0, 1], [2, 3], [4, 5], [6, 7]],   # task 0
                                   [[0, 2], [1, 3], [4, 6], [5, 7]]])  # task 1: same concepts, other pairs


def cooccurrence_samples(tasks: Tensor, dictionary: Tensor, pairs: Tensor = COOCCURRENCE_PAIRS,
                         min_len: int = 8, max_len: int = 40, noise: float = 0.05,
                         generator: torch.Generator | None = None) -> TokenPool:
    """Tasks that use the **same concepts** and differ only in **which of them co-occur in a token**.

    Every token carries one pair of concepts of its task (``pairs`` (n_tasks, n_pairs, 2) indexes
    the first rows of ``dictionary`` (n_concepts, d)) plus one generic concept (any later row) with
    amplitude in [0.5, 1.5]. With the default pairs both tasks use concepts 0-7 equally often, so
    the mean of a sample's activations carries no task information (up to sampling noise): only a
    per-token nonlinearity that recognises the pairs, such as an SAE, can tell the tasks apart.
    """
    tasks = torch.as_tensor(tasks, dtype=torch.long)
    if pairs.ndim != 3 or pairs.shape[2] != 2:
        raise ValueError(f"pairs must be (n_tasks, n_pairs, 2), got {tuple(pairs.shape)}")
    n_pair_concepts = int(pairs.max()) + 1
    if dictionary.ndim != 2 or dictionary.shape[0] <= n_pair_concepts:
        raise ValueError(f"dictionary must be (n_concepts, d) with more than {n_pair_concepts} rows, "
                         f"got {tuple(dictionary.shape)}")
    if tasks.ndim != 1 or len(tasks) == 0 or int(tasks.min()) < 0 or int(tasks.max()) >= pairs.shape[0]:
        raise ValueError(f"tasks must be a non-empty 1-d tensor of ids in [0, {pairs.shape[0]})")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    n = len(tasks)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=generator)
    sample = torch.repeat_interleave(torch.arange(n), lengths)
    T = len(sample)
    pair = pairs[tasks[sample], torch.randint(0, pairs.shape[1], (T,), generator=generator)]  # (T, 2)
    generic = torch.randint(n_pair_concepts, dictionary.shape[0], (T,), generator=generator)
    amp = torch.empty(T, 1).uniform_(0.5, 1.5, generator=generator)
    h = dictionary[pair[:, 0]] + dictionary[pair[:, 1]] + amp * dictionary[generic]
    h = h + noise * torch.randn(T, dictionary.shape[1], generator=generator)
    return TokenPool(h, sample, generic, tasks.clone(), n)  # token id: the generic concept (no task signal)


# --------------------------------------------------------------------------------- stage B: a real LM
def lm_activations(model, tokenizer, texts: Sequence[str], layer: int = -2, max_tokens: int = 32,
                   batch_size: int = 16, skip_first: bool = True, template: str = "{text}") -> TokenPool:
    """Hidden states of ``texts`` after decoder layer ``layer`` (default: the penultimate) of a Hugging
    Face causal LM, one row per non-padding token. The forward stops at that layer.

    ``template`` wraps each text (e.g. a chat turn) before tokenisation; texts are truncated to
    ``max_tokens`` tokens. ``skip_first`` drops each sample's first position, whose activation is the
    attention sink (norm tens of times the others). ``task`` is left as zeros: the caller sets it.
    """
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty sequence of strings")
    if max_tokens < 2 or batch_size < 1:
        raise ValueError(f"need max_tokens >= 2 and batch_size >= 1, got {max_tokens}, {batch_size}")
    layers = model.model.layers
    if not -len(layers) <= layer < len(layers):
        raise ValueError(f"layer must index one of the {len(layers)} decoder layers, got {layer}")
    target = layers[layer]
    device = next(model.parameters()).device

    class _Stop(Exception):
        pass

    grabbed: list[Tensor] = []

    def hook(module, args, output):
        grabbed.append((output[0] if isinstance(output, tuple) else output).detach().float())
        raise _Stop

    hs, sample, toks = [], [], []
    handle = target.register_forward_hook(hook)
    try:
        for i in range(0, len(texts), batch_size):
            chunk = [template.format(text=t) for t in texts[i:i + batch_size]]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_tokens)
            enc = {k: v.to(device) for k, v in enc.items()}
            grabbed.clear()
            with torch.no_grad():
                try:
                    model.model(**enc)
                except _Stop:
                    pass
            h = grabbed[0].cpu()  # (B, N, d)
            mask = enc["attention_mask"].cpu().bool()
            if skip_first:  # first real token of each row (padding is on the right)
                mask[:, 0] = False
            rows = torch.arange(len(chunk))[:, None].expand_as(mask)
            hs.append(h[mask])
            sample.append(rows[mask] + i)
            toks.append(enc["input_ids"].cpu()[mask])
    finally:
        handle.remove()
    return TokenPool(torch.cat(hs), torch.cat(sample), torch.cat(toks), torch.zeros(len(texts), dtype=torch.long),
                     len(texts))


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def text_sources(per_source: int, generator: torch.Generator | None = None, min_words: int = 6) -> dict[str, list[str]]:
    """``per_source`` real texts from each of five sources of the book's offline data, shuffled:
    positive and negative movie-review sentences (Pang & Lee's polarity sample), news sentences (the
    Lee corpus), encyclopedia sentences (the Wikipedia sample) and code (HumanEval prompts)."""
    from ..data import humaneval, lee_corpus, pang_lee_polarity, wikipedia_sample

    if per_source < 1:
        raise ValueError(f"per_source must be >= 1, got {per_source}")
    reviews, polarity = pang_lee_polarity()  # texts, labels (1 = positive)
    news = [s for doc in lee_corpus() for s in _sentences(doc)[:2]]
    encyclopedia = [s for art in wikipedia_sample() for s in _sentences(art.text.split("\n\n")[0])[:3]
                    if "\n" not in s]  # prose sentences, not the lists of disambiguation pages
    code = [p["prompt"].strip() for p in humaneval()]
    out = {}
    for name, texts in (("positive review", [r for r, y in zip(reviews, polarity) if y == 1]),
                        ("negative review", [r for r, y in zip(reviews, polarity) if y == 0]),
                        ("news", news), ("encyclopedia", encyclopedia), ("code", code)):
        texts = [t for t in texts if len(t.split()) >= min_words]
        if len(texts) < per_source:
            raise ValueError(f"per_source={per_source} but source {name!r} has only {len(texts)} texts")
        order = torch.randperm(len(texts), generator=generator)[:per_source]
        out[name] = [texts[i] for i in order.tolist()]
    return out


# --------------------------------------------------------------------------------- the SAE
def train_topk_sae(x: Tensor, n_features: int, k: int, steps: int = 3000, batch: int = 256, lr: float = 1e-3,
                   seed: int = 0, progress: bool = True, desc: str = "TopK SAE") -> SparseAutoencoder:
    """A TopK SAE (the book's :class:`SparseAutoencoder` with ``k``) trained with MSE on token
    activations ``x`` (T, d): Adam, minibatches of ``batch`` tokens, ``steps`` steps, decoder atoms
    kept at unit norm. The tied bias starts at the data mean."""
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"x must be (tokens, d), got {tuple(x.shape)}")
    if steps < 1 or batch < 1 or lr <= 0:
        raise ValueError(f"need steps >= 1, batch >= 1, lr > 0, got {steps}, {batch}, {lr}")
    torch.manual_seed(seed)
    sae = SparseAutoencoder(x.shape[1], n_features, k=k).to(x.device)
    with torch.no_grad():
        sae.tied_bias.copy_(x.mean(0))
    g = torch.Generator(device="cpu").manual_seed(seed)
    T = x.shape[0]

    def batch_fn(step: int) -> Tensor:
        return x[torch.randint(0, T, (min(batch, T),), generator=g).to(x.device)]

    train(sae, lambda m, b: sae_loss(m, b, 0.0), batch_fn, steps=steps, lr=lr, warmup=min(100, steps // 10),
          clip=None, desc=desc, progress=progress)
    return sae.renormalise().eval()


def sae_codes(sae: SparseAutoencoder, x: Tensor, batch: int = 8192) -> Tensor:
    """Feature activations of every token: (T, F), non-negative, at most ``sae.k`` non-zero per row."""
    with torch.no_grad():
        return torch.cat([sae.encode(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


def explained_variance(sae: SparseAutoencoder, x: Tensor) -> float:
    """1 - ||x - x_hat||^2 / ||x - mean||^2 over the tokens ``x`` (T, d)."""
    with torch.no_grad():
        _, x_hat = sae(x)
        return float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


# --------------------------------------------------------------------------------- selection
def pool(x: Tensor, sample: Tensor, n: int, how: str = "mean") -> Tensor:
    """Per-sample mean (eq. mona-pool) or sum of token rows ``x`` (T, D): (n, D)."""
    if how not in POOLINGS:
        raise ValueError(f"how must be one of {POOLINGS}, got {how!r}")
    if x.ndim != 2 or sample.shape != (x.shape[0],):
        raise ValueError(f"x must be (T, D) and sample (T,), got {tuple(x.shape)}, {tuple(sample.shape)}")
    out = torch.zeros(n, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, sample.to(x.device), x)
    if how == "mean":
        out = out / torch.bincount(sample, minlength=n).clamp(min=1).to(x)[:, None]
    return out


def jaccard(z: Tensor, proto: Tensor) -> Tensor:
    """Generalised (weighted) Jaccard similarity of each row of ``z`` (N, D) with ``proto`` (D,)
    (eq. mona-jaccard): ``sum_k min(z_k, p_k) / sum_k max(z_k, p_k)``. Needs non-negative inputs."""
    if z.ndim != 2 or proto.shape != (z.shape[1],):
        raise ValueError(f"z must be (N, D) and proto (D,), got {tuple(z.shape)}, {tuple(proto.shape)}")
    if bool((z < 0).any()) or bool((proto < 0).any()):
        raise ValueError("jaccard needs non-negative z and proto (shift or rectify raw activations first)")
    num = torch.minimum(z, proto).sum(-1)
    den = torch.maximum(z, proto).sum(-1)
    return torch.where(den > 0, num / den.clamp(min=1e-30), torch.zeros_like(num))


def cosine(z: Tensor, proto: Tensor) -> Tensor:
    """Cosine similarity of each row of ``z`` (N, D) with ``proto`` (D,)."""
    if z.ndim != 2 or proto.shape != (z.shape[1],):
        raise ValueError(f"z must be (N, D) and proto (D,), got {tuple(z.shape)}, {tuple(proto.shape)}")
    return F.cosine_similarity(z, proto[None], dim=-1)


def alignment_scores(pool_x: Tensor, pool_sample: Tensor, n_pool: int, tgt_x: Tensor, tgt_sample: Tensor,
                     n_tgt: int, pooling: str = "mean", similarity: str = "jaccard") -> Tensor:
    """Distribution-alignment scores (eq. mona-select): pool the token rows of candidates and targets,
    average the target embeddings into one prototype, compare every candidate with it. (n_pool,)."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    z = pool(pool_x, pool_sample, n_pool, pooling)
    proto = pool(tgt_x, tgt_sample, n_tgt, pooling).mean(0)
    return (jaccard if similarity == "jaccard" else cosine)(z, proto)


def bm25_scores(pool_tokens: Tensor, pool_sample: Tensor, n_pool: int, query_tokens: Tensor, vocab: int,
                k1: float = 1.5, b: float = 0.75) -> Tensor:
    """Okapi BM25 of every candidate for a query that is the bag of all target exemplars' tokens
    (each query term weighted by its count). (n_pool,)."""
    if k1 < 0 or not 0 <= b <= 1:
        raise ValueError(f"need k1 >= 0 and b in [0, 1], got {k1}, {b}")
    if int(pool_tokens.max()) >= vocab or int(query_tokens.max()) >= vocab:
        raise ValueError(f"token ids must be < vocab={vocab}")
    tf = torch.zeros(n_pool, vocab).index_put_((pool_sample, pool_tokens), torch.ones(len(pool_tokens)),
                                                accumulate=True)  # (N, V)
    length = tf.sum(1, keepdim=True)
    df = (tf > 0).sum(0).float()
    idf = torch.log(1 + (n_pool - df + 0.5) / (df + 0.5))  # (V,)
    q = torch.bincount(query_tokens, minlength=vocab).float()
    sat = tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / length.mean()))
    return (sat * idf * q).sum(1)


def select_topk(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest scores (ties broken by index)."""
    if scores.ndim != 1 or not 1 <= k <= len(scores):
        raise ValueError(f"scores must be 1-d and 1 <= k <= {len(scores)}, got shape {tuple(scores.shape)}, k={k}")
    return torch.topk(scores, k).indices


def random_selection(n: int, k: int, generator: torch.Generator | None = None) -> Tensor:
    """``k`` of ``n`` indices uniformly at random, without replacement."""
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    return torch.randperm(n, generator=generator)[:k]


def precision_at_k(selected: Tensor, task: Tensor, target: int) -> float:
    """Fraction of the ``selected`` indices whose held-out task label is ``target``."""
    if len(selected) == 0:
        raise ValueError("selected must be non-empty")
    return float((task[selected] == target).float().mean())


def unigram_nll(train_tokens: Tensor, eval_tokens: Tensor, vocab: int, alpha: float = 0.5) -> float:
    """Downstream proxy: mean NLL (nats per token) of ``eval_tokens`` under an add-``alpha`` unigram
    LM fit on ``train_tokens`` (a model "tuned" on the selected data)."""
    if alpha <= 0 or len(eval_tokens) == 0:
        raise ValueError(f"need alpha > 0 and non-empty eval_tokens, got alpha={alpha}, {len(eval_tokens)} tokens")
    counts = torch.bincount(train_tokens, minlength=vocab).double() + alpha
    logp = torch.log(counts / counts.sum())
    return float(-logp[eval_tokens].mean())


def tokens_of(p: TokenPool, idx: Tensor) -> Tensor:
    """All token ids of the samples ``idx`` of ``p``."""
    keep = torch.zeros(p.n, dtype=torch.bool)
    keep[idx] = True
    return p.tokens[keep[p.sample]]


def overlap_profile(z: Tensor, task: Tensor, tasks: Sequence[int], top: int = 100) -> Tensor:
    """Fig. 4 data: the ``top`` most variant dimensions of the per-sample embeddings ``z`` (N, D),
    and the mean activation of each task in ``tasks`` on them, each row scaled to max 1. (len(tasks), top)."""
    if z.ndim != 2 or task.shape != (z.shape[0],):
        raise ValueError(f"z must be (N, D) and task (N,), got {tuple(z.shape)}, {tuple(task.shape)}")
    dims = z.var(0).topk(min(top, z.shape[1])).indices
    rows = torch.stack([z[task == t][:, dims].mean(0) for t in tasks])
    return rows / rows.abs().amax(1, keepdim=True).clamp(min=1e-12)


def overlap_coefficient(profile: Tensor) -> float:
    """How much two tasks' activation profiles overlap (2, D): ``sum min / sum max`` of the rows'
    magnitudes (raw activations are signed; a dimension counts as used by a task when it is far from 0)."""
    if profile.ndim != 2 or profile.shape[0] != 2:
        raise ValueError(f"profile must be (2, D), got {tuple(profile.shape)}")
    p = profile.abs()
    return float(torch.minimum(p[0], p[1]).sum() / p.max(0).values.sum().clamp(min=1e-12))


@dataclass
class Selection:
    """Outcomes of one selection method at budget ``k``."""

    method: str
    idx: Tensor  # (k,)
    precision: float
    nll: float  # unigram NLL of held-out target tokens
    mean_length: float


def evaluate_selection(method: str, idx: Tensor, pool_: TokenPool, target: int, eval_tokens: Tensor,
                       vocab: int) -> Selection:
    """Precision@k against the held-out labels and the downstream unigram NLL of one selection."""
    return Selection(method, idx, precision_at_k(idx, pool_.task, target),
                     unigram_nll(tokens_of(pool_, idx), eval_tokens, vocab),
                     float(pool_.lengths[idx].float().mean()))


def run_selection(pool_: TokenPool, tgt: TokenPool, target: int, k: int, codes_pool: Tensor, codes_tgt: Tensor,
                  eval_tokens: Tensor, vocab: int, generator: torch.Generator | None = None,
                  bm25: bool = True) -> dict[str, Selection]:
    """Every method of the chapter at the same budget ``k``: MONA (SAE + mean + Jaccard), its
    ablations (SAE + cosine, SAE + sum pooling + Jaccard), raw activations + cosine, BM25, random."""
    if not 1 <= k <= pool_.n:
        raise ValueError(f"k must be in [1, {pool_.n}], got {k}")
    if codes_pool.shape[0] != pool_.h.shape[0] or codes_tgt.shape[0] != tgt.h.shape[0]:
        raise ValueError("codes_pool / codes_tgt must have one row per token of pool_ / tgt")
    args_sae = (codes_pool, pool_.sample, pool_.n, codes_tgt, tgt.sample, tgt.n)
    args_raw = (pool_.h, pool_.sample, pool_.n, tgt.h, tgt.sample, tgt.n)
    scores = {
        "MONA (SAE, mean, Jaccard)": alignment_scores(*args_sae, "mean", "jaccard"),
        "SAE, mean, cosine": alignment_scores(*args_sae, "mean", "cosine"),
        "SAE, sum, Jaccard": alignment_scores(*args_sae, "sum", "jaccard"),
        "raw activations, mean, cosine": alignment_scores(*args_raw, "mean", "cosine"),
    }
    if bm25:
        scores["BM25 on token ids"] = bm25_scores(pool_.tokens, pool_.sample, pool_.n, tgt.tokens, vocab)
    out = {m: evaluate_selection(m, select_topk(s, k), pool_, target, eval_tokens, vocab) for m, s in scores.items()}
    out["random"] = evaluate_selection("random", random_selection(pool_.n, k, generator), pool_, target,
                                       eval_tokens, vocab)
    return out


def activation_scale(x: Tensor) -> float:
    """The scalar that gives token activations ``x`` (T, d) a mean squared norm of ``d``."""
    if x.ndim != 2:
        raise ValueError(f"x must be (T, d), got {tuple(x.shape)}")
    return float(math.sqrt(x.shape[1] / x.pow(2).sum(1).mean().clamp(min=1e-30)))


@dataclass
class TargetSplit:
    """One selection problem built from labelled samples: the target's exemplars, the candidate
    pool (all non-target samples plus a ``share`` of target samples) and held-out target samples."""

    exemplars: Tensor  # (m,) indices of the target exemplars D_tgt
    pool: Tensor  # (N,) indices of the candidate pool D_src, shuffled
    held_out: Tensor  # indices of target samples in neither (for the downstream measure)
    n_target_in_pool: int  # the budget k: as many as there are target samples in the pool


def target_split(labels: Tensor, target: int, share: float = 0.05, m: int = 8,
                 generator: torch.Generator | None = None) -> TargetSplit:
    """Split labelled samples for ``target``: ``m`` exemplars, a pool where the target makes up
    ``share`` of the samples, and the remaining target samples held out."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if not 0 < share < 1 or m < 1:
        raise ValueError(f"need 0 < share < 1 and m >= 1, got share={share}, m={m}")
    tgt = torch.nonzero(labels == target)[:, 0]
    others = torch.nonzero(labels != target)[:, 0]
    n_in = max(1, round(share / (1 - share) * len(others)))
    if len(tgt) < m + n_in + 1:
        raise ValueError(f"target {target} has {len(tgt)} samples; need m + {n_in} in the pool + 1 held out")
    tgt = tgt[torch.randperm(len(tgt), generator=generator)]
    pool_idx = torch.cat([others, tgt[m:m + n_in]])
    pool_idx = pool_idx[torch.randperm(len(pool_idx), generator=generator)]
    return TargetSplit(tgt[:m], pool_idx, tgt[m + n_in:], n_in)
