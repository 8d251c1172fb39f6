"""DefSent+ (Liu, 2024): sentence embeddings from projecting definitions into a frozen, (quasi-)isotropic space
of dictionary entries -- the pieces of the chapter ``embeddings/defsent-plus``.

Read against the official code (``ryuliuxiaodong/DefSent-Plus``: ``GenerateEntryEmbeddings.py``,
``ICA-transform.py``, ``TrainEncoder.py``, ``GenerateEncoderInput.py``, ``defsentplus/model.py``; read
2026-12-04) and against the baseline's (``hppRC/defsent``: ``experiments/src/model.py``):

* :func:`wordnet_dictionary` -- a dictionary ``entry -> definitions`` from WordNet 3.0: every lemma (multi-word
  lemmas included) is an entry, its definitions are the glosses of its synsets, most frequent sense first.
* :func:`split_dictionary` -- a seeded subset: training entries, and held-out multi-word entries whose vector is
  built from all but one definition; the held-out definition is the retrieval query (never trained on, never
  averaged into a target).
* :func:`entry_matrix` -- ``GenerateEntryEmbeddings.py``'s AMP entry vectors: the mean, over an entry's
  definitions, of the masked mean of the last hidden states (one segment mean with ``index_add_``).
* :func:`fast_ica` -- ``ICA-transform.py``: ``StandardScaler``, then ``FastICA(n_components=d,
  whiten='unit-variance', fun='logcosh', tol=1e-4)`` (scikit-learn's parallel algorithm, re-implemented in torch
  because scikit-learn is not a dependency of the book), then ``x 100``.
* :func:`anisotropy` -- the mean pairwise cosine similarity of random rows.
* :class:`DefSentHead` -- ``TrainEncoder.py``'s ``mean`` path on top of cached frozen lower layers: trainable top
  layers, masked mean of the last hidden states, the encoder's pooler (``tanh(dense(.))``), and a bias-free
  linear head **tied to a frozen target matrix** (entries for DefSent+, word embeddings for DefSent).
* :func:`entry_loss` -- cross-entropy over all rows of the target matrix.

To fit the CPU budget the lower layers of the encoder stay frozen and run once
(:func:`companion.models.cache_encoder_states`); only the top layers and the pooler are fine-tuned
(:class:`companion.models.TopLayers`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import CachedStates, TopLayers, cache_encoder_states, mean_pool


@dataclass(frozen=True)
class Dictionary:
    """Entries and their definitions: ``definitions[i]`` are the definitions of ``entries[i]``."""

    entries: tuple[str, ...]
    definitions: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.entries) != len(self.definitions):
            raise ValueError(f"entries ({len(self.entries)}) and definitions ({len(self.definitions)}) must align")
        if any(len(d) == 0 for d in self.definitions):
            raise ValueError("every entry needs at least one definition")

    def __len__(self) -> int:
        return len(self.entries)


def wordnet_dictionary(wn) -> Dictionary:
    """Every lemma of ``wn`` (a :class:`companion.data.lexical.WordNet`) as an entry (lower case, spaces between
    words), with the glosses of its synsets as definitions, most frequent sense first (nouns before verbs, ...)."""
    if not hasattr(wn, "synsets") or not hasattr(wn, "__iter__"):
        raise ValueError(f"wn must be a WordNet from companion.data.wordnet(), got {type(wn).__name__}")
    seen: dict[str, None] = {}
    for s in wn:
        for lemma in s.lemmas:
            seen.setdefault(lemma.lower(), None)
    entries, definitions = [], []
    for lemma in seen:
        glosses = tuple(dict.fromkeys(s.definition for s in wn.synsets(lemma)))  # no repeated glosses
        entries.append(lemma)
        definitions.append(glosses)
    return Dictionary(tuple(entries), tuple(definitions))


@dataclass(frozen=True)
class Split:
    """A sampled experiment dictionary.

    ``entries``: every entry of the target space (training entries first, then the held-out ones).
    ``target_texts`` / ``target_entry``: the definitions averaged into entry vectors and the row each belongs to.
    ``train_texts`` / ``train_entry``: the training examples (definitions of training entries only).
    ``query_texts`` / ``query_entry``: one held-out definition of each held-out multi-word entry.
    """

    entries: tuple[str, ...]
    n_train_entries: int
    target_texts: tuple[str, ...]
    target_entry: Tensor  # (M,) long
    train_texts: tuple[str, ...]
    train_entry: Tensor  # (T,) long
    query_texts: tuple[str, ...]
    query_entry: Tensor  # (Q,) long


def split_dictionary(dic: Dictionary, n_train: int, n_heldout: int, seed: int, max_definitions: int = 4,
                     train_heldout_rest: bool = False) -> Split:
    """Sample ``n_train`` training entries (any entry, single- or multi-word, uniformly) and ``n_heldout``
    multi-word entries with at least two definitions, disjoint, with ``seed``.

    Each entry keeps at most its ``max_definitions`` most frequent senses. A held-out entry's vector is built
    from all its kept definitions but one (drawn at random); that one is its query and is never trained on. With
    ``train_heldout_rest`` the other definitions of the held-out entries are training examples too (held-out
    *definitions*); without it no definition of a held-out entry is (held-out *entries*).
    """
    if not isinstance(dic, Dictionary):
        raise ValueError(f"dic must be a Dictionary, got {type(dic).__name__}")
    if n_train < 1 or n_heldout < 1 or max_definitions < 2:
        raise ValueError(f"n_train and n_heldout must be >= 1 and max_definitions >= 2, "
                         f"got {n_train}, {n_heldout}, {max_definitions}")
    rng = np.random.default_rng(seed)
    pool_mw = [i for i, (e, d) in enumerate(zip(dic.entries, dic.definitions)) if " " in e and len(d) >= 2]
    if n_heldout > len(pool_mw):
        raise ValueError(f"n_heldout must be <= {len(pool_mw)} (multi-word entries with >= 2 definitions)")
    held = rng.choice(pool_mw, size=n_heldout, replace=False)
    rest = np.setdiff1d(np.arange(len(dic)), held)
    if n_train > len(rest):
        raise ValueError(f"n_train must be <= {len(rest)}, got {n_train}")
    train = rng.choice(rest, size=n_train, replace=False)
    entries, t_texts, t_entry, q_texts, q_entry = [], [], [], [], []
    for row, i in enumerate(train):
        entries.append(dic.entries[i])
        for d in dic.definitions[i][:max_definitions]:
            t_texts.append(d)
            t_entry.append(row)
    n_tr_defs = len(t_texts)
    tr_texts, tr_entry = list(t_texts), list(t_entry)
    for row, i in enumerate(held, start=len(train)):
        entries.append(dic.entries[i])
        defs = dic.definitions[i][:max_definitions]
        q = int(rng.integers(len(defs)))
        q_texts.append(defs[q])
        q_entry.append(row)
        for k, d in enumerate(defs):
            if k != q:
                t_texts.append(d)
                t_entry.append(row)
                if train_heldout_rest:
                    tr_texts.append(d)
                    tr_entry.append(row)
    t_entry_t = torch.tensor(t_entry, dtype=torch.long)
    return Split(entries=tuple(entries), n_train_entries=len(train), target_texts=tuple(t_texts),
                 target_entry=t_entry_t, train_texts=tuple(tr_texts), train_entry=torch.tensor(tr_entry, dtype=torch.long),
                 query_texts=tuple(q_texts), query_entry=torch.tensor(q_entry, dtype=torch.long))


def entry_matrix(def_emb: Tensor, def_entry: Tensor, n_entries: int) -> Tensor:
    """AMP entry vectors (n_entries, D): the mean of the rows of ``def_emb`` (M, D) that ``def_entry`` (M,)
    assigns to each entry (``GenerateEntryEmbeddings.py`` with ``entry_embed_encoding=amp``)."""
    if def_emb.ndim != 2 or def_entry.shape != def_emb.shape[:1]:
        raise ValueError(f"def_emb must be (M, D) and def_entry (M,), got {tuple(def_emb.shape)}, "
                         f"{tuple(def_entry.shape)}")
    if def_entry.dtype != torch.long or (len(def_entry) and (def_entry.min() < 0 or def_entry.max() >= n_entries)):
        raise ValueError(f"def_entry must be long indices in 0..{n_entries - 1}")
    total = torch.zeros(n_entries, def_emb.shape[1], dtype=def_emb.dtype).index_add_(0, def_entry, def_emb)
    count = torch.zeros(n_entries, dtype=def_emb.dtype).index_add_(0, def_entry, torch.ones_like(def_entry,
                                                                                                dtype=def_emb.dtype))
    if (count == 0).any():
        raise ValueError("def_entry must give every entry at least one definition")
    return total / count[:, None]


def _sym_decorrelation(w: Tensor) -> Tensor:
    """W <- (W W^T)^(-1/2) W: the nearest orthogonal matrix (scikit-learn's ``_sym_decorrelation``)."""
    s, u = torch.linalg.eigh(w @ w.T)
    s = s.clamp_min(torch.finfo(w.dtype).tiny)
    return (u * s.rsqrt()) @ u.T @ w


@dataclass
class ICA:
    """What :func:`fast_ica` fitted: ``out = pad(scale * ((x - mean) / std - centre) @ K^T @ W^T / component_std)``.

    ``K`` (C, D) whitens the C directions of the standardised data that carry variance; ``pad`` puts the C sources
    into the first C of D output columns and zeros into the rest (C < D only for degenerate data).
    """

    mean: Tensor  # (D,) StandardScaler mean
    std: Tensor  # (D,) StandardScaler scale (1 for constant columns, as scikit-learn)
    whitening: Tensor  # (C, D) K: the standardised rows times K^T have identity covariance
    unmixing: Tensor  # (C, C) W, orthogonal
    component_std: Tensor  # (C,) the unit-variance rescale
    centre: Tensor  # (D,) mean of the standardised data (0 up to rounding)
    scale: float
    iterations: int
    converged: bool

    def _pad(self, s: Tensor) -> Tensor:
        return F.pad(s, (0, self.mean.shape[0] - s.shape[1]))

    def transform(self, x: Tensor) -> Tensor:
        """Project rows ``x`` (N, D) into the fitted space (N, D) (new entries join the same frozen space)."""
        z = (x.double() - self.mean) / self.std - self.centre
        s = z @ self.whitening.T @ self.unmixing.T / self.component_std
        return self._pad(self.scale * s).to(x.dtype)

    def whiten_only(self, x: Tensor) -> Tensor:
        """The same, without the ICA rotation W: PCA whitening, ``scale`` times."""
        z = (x.double() - self.mean) / self.std - self.centre
        return self._pad(self.scale * (z @ self.whitening.T)).to(x.dtype)


def fast_ica(x: Tensor, scale: float = 100.0, max_iter: int = 200, tol: float = 1e-4, seed: int = 42,
             alpha: float = 1.0, rank_tol: float = 1e-6) -> tuple[Tensor, ICA]:
    """``ICA-transform.py``: standardise the columns of ``x`` (N, D), run FastICA with ``D`` components
    (parallel/symmetric algorithm, ``fun='logcosh'``, ``whiten='unit-variance'``, as scikit-learn), multiply by
    ``scale``. Returns the (N, D) transformed rows (dtype of ``x``) and the fitted :class:`ICA`.

    Directions without variance cannot be whitened: a constant column (all-MiniLM-L6-v2 has one) and singular
    values below ``rank_tol`` times the largest are left out, and their output columns are 0. scikit-learn would
    divide by those near-zero singular values and return amplified rounding noise there.

    The unmixing matrix W stays orthogonal, so the output is PCA whitening followed by a rotation: every dot
    product between two output rows equals the one between the whitened rows.
    """
    if x.ndim != 2 or x.shape[0] <= x.shape[1]:
        raise ValueError(f"x must have shape (N, D) with N > D samples, got {tuple(x.shape)}")
    if scale <= 0 or max_iter < 1 or tol <= 0 or not 0 < rank_tol < 1:
        raise ValueError(f"scale, max_iter, tol must be positive and rank_tol in (0, 1), "
                         f"got {scale}, {max_iter}, {tol}, {rank_tol}")
    xd = x.double()
    n, d = xd.shape
    mean, std = xd.mean(0), xd.std(0, unbiased=False)  # StandardScaler (population std)
    constant = std <= rank_tol * std.max()
    std = torch.where(constant, torch.ones_like(std), std)  # scikit-learn: scale 1 for a constant column
    z = (xd - mean) / std  # (N, D)
    z[:, constant] = 0.0
    centre = z.mean(0)
    zc = (z - centre).T  # (D, N) as scikit-learn's X^T
    u, sv, _ = torch.linalg.svd(zc, full_matrices=False)  # whitening by SVD, as scikit-learn's svd solver
    u = u * torch.sign(u[0])  # scikit-learn flips signs so that u[0] >= 0
    c = int((sv > rank_tol * sv[0]).sum())  # directions that carry variance
    k = (u[:, :c] / sv[:c]).T  # (C, D)
    x1 = (k @ zc) * np.sqrt(n)  # (C, N), identity covariance
    g = torch.Generator().manual_seed(seed)
    w = _sym_decorrelation(torch.randn(c, c, generator=g, dtype=torch.float64))
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        gx = torch.tanh(alpha * (w @ x1))  # (C, N)
        g_prime = (alpha * (1 - gx ** 2)).mean(1)  # (C,)
        w1 = _sym_decorrelation(gx @ x1.T / n - g_prime[:, None] * w)
        lim = float((torch.abs(torch.einsum("ij,ij->i", w1, w)) - 1).abs().max())
        w = w1
        if lim < tol:
            converged = True
            break
    s = (w @ x1).T  # (N, C) sources; covariance W I W^T = I up to rounding
    comp_std = s.std(0, unbiased=False)  # whiten='unit-variance'
    ica = ICA(mean=mean, std=std, whitening=k * np.sqrt(n), unmixing=w, component_std=comp_std,
              centre=centre, scale=float(scale), iterations=it, converged=converged)
    return ica._pad(scale * s / comp_std).to(x.dtype), ica


def anisotropy(x: Tensor, n: int = 1000, seed: int = 0) -> float:
    """Mean cosine similarity over all pairs of ``n`` rows of ``x`` (N, D) drawn without replacement with
    ``seed`` (all rows when N <= n): about 0 for an isotropic cloud, near 1 for a narrow cone."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x must have shape (N, D) with N >= 2, got {tuple(x.shape)}")
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    e = F.normalize(x[idx].double(), dim=-1)
    m = e.shape[0]
    total = (e.sum(0) ** 2).sum() - m  # sum over i != j of cos(e_i, e_j)
    return float(total / (m * (m - 1)))


class DefSentHead(nn.Module):
    """``TrainEncoder.py``'s ``mean`` encoding on cached lower-layer states: trainable copies of the top
    ``num_layers`` layers of a BERT ``encoder`` and of its pooler, and a bias-free linear head whose weight is the
    **frozen** ``target`` matrix (K, D) (a buffer: it cannot be trained).

    ``embed`` is the inference embedding of ``defsentplus/model.py`` (``pooling='mean'``: the masked mean of the last
    hidden states, no pooler); ``forward`` gives the training logits ``pooler(mean) @ target^T`` (B, K).
    """

    def __init__(self, encoder: nn.Module, num_layers: int, target: Tensor) -> None:
        super().__init__()
        if target.ndim != 2 or target.shape[1] != encoder.config.hidden_size:
            raise ValueError(f"target must have shape (K, {encoder.config.hidden_size}), got {tuple(target.shape)}")
        if getattr(encoder, "pooler", None) is None:
            raise ValueError("encoder must have a pooler (a BertModel built with add_pooling_layer=True)")
        self.top = TopLayers(encoder, num_layers)
        self.pooler = copy.deepcopy(encoder.pooler).requires_grad_(True)
        self.register_buffer("target", target.detach().clone().float())

    def embed(self, h: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, N, D) cached states, (B, N) mask -> (B, D) masked mean of the last hidden states."""
        return mean_pool(self.top(h, attention_mask), attention_mask)

    def sentence(self, h: Tensor, attention_mask: Tensor) -> Tensor:
        """The training representation: ``pooler(mean)`` = tanh(dense(mean)) -> (B, D)."""
        return self.pooler(self.embed(h, attention_mask).unsqueeze(1))

    def forward(self, h: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, N, D), (B, N) -> (B, K) logits over the rows of the frozen target."""
        return self.sentence(h, attention_mask) @ self.target.T


def entry_loss(head: DefSentHead, h: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the definitions' logits against the row of their entry (``labels``: (B,) long)."""
    if labels.ndim != 1 or labels.shape[0] != h.shape[0]:
        raise ValueError(f"labels must have shape ({h.shape[0]},), got {tuple(labels.shape)}")
    return F.cross_entropy(head(h, attention_mask), labels)


def word_piece_targets(tokenizer, entries: Sequence[str]) -> Tensor:
    """The vocabulary id of every entry that is a single word piece, -1 for the others (DefSent's entry set)."""
    if isinstance(entries, str):
        raise ValueError("entries must be a sequence of strings, not one string")
    out = []
    for e in entries:
        ids = tokenizer(e, add_special_tokens=False)["input_ids"]
        out.append(ids[0] if len(ids) == 1 and " " not in e else -1)
    return torch.tensor(out, dtype=torch.long)


def mean_word_piece_rows(tokenizer, entries: Sequence[str], word_emb: Tensor) -> Tensor:
    """DefSent extended to any entry: the mean of the (frozen) embeddings of the entry's word pieces -> (K, D)."""
    if isinstance(entries, str):
        raise ValueError("entries must be a sequence of strings, not one string")
    rows = []
    for e in entries:
        ids = tokenizer(e, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"entry {e!r} has no word pieces")
        rows.append(word_emb[ids].mean(0))
    return torch.stack(rows)


def rescale_rows(target: Tensor, norm: float) -> Tensor:
    """``target`` (K, D) times one factor so that its mean row norm is ``norm`` (the logit scale of every arm)."""
    if target.ndim != 2 or norm <= 0:
        raise ValueError(f"target must be (K, D) and norm > 0, got {tuple(target.shape)}, {norm}")
    return target * (norm / target.norm(dim=1).mean())


def top1_accuracy(scores: Tensor, gold: Tensor) -> float:
    """Share of rows of ``scores`` (Q, K) whose highest column is ``gold`` (Q,) (ties count as misses)."""
    if scores.ndim != 2 or gold.shape != scores.shape[:1]:
        raise ValueError(f"scores must be (Q, K) and gold (Q,), got {tuple(scores.shape)}, {tuple(gold.shape)}")
    right = scores.gather(1, gold[:, None])
    return float(((scores >= right).sum(1) == 1).double().mean())


@torch.no_grad()
def embed_cached(head: DefSentHead, cache: CachedStates, idx: Tensor | None = None, batch_size: int = 128,
                 sentence: bool = False) -> Tensor:
    """Embeddings (len(idx), D) of the cached texts ``idx`` (all when None), in batches of similar length:
    the inference embedding (:meth:`DefSentHead.embed`) or, with ``sentence``, the training representation."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    idx = torch.arange(len(cache)) if idx is None else torch.as_tensor(idx, dtype=torch.long)
    order = torch.argsort(cache.mask[idx].sum(1))
    out = torch.empty(len(idx), head.target.shape[1])
    dev = head.target.device
    was = head.training
    head.eval()
    for s in range(0, len(idx), batch_size):
        rows = order[s:s + batch_size]
        h, m, _ = cache[idx[rows]]
        h, m = h.to(dev), m.to(dev)
        out[rows] = (head.sentence(h, m) if sentence else head.embed(h, m)).float().cpu()
    head.train(was)
    return out


def example_batches(cache: CachedStates, labels: Tensor, batch_size: int, seed: int, device: torch.device | str = "cpu"):
    """A ``step -> (states, mask, labels)`` function for :func:`companion.train.train`: random training
    definitions (rows of ``cache`` whose label is >= 0; -1 marks a definition the arm cannot use)."""
    if labels.shape != (len(cache),):
        raise ValueError(f"labels must have shape ({len(cache)},), got {tuple(labels.shape)}")
    keep = torch.nonzero(labels >= 0).squeeze(1)
    if len(keep) == 0 or batch_size < 1:
        raise ValueError("need at least one usable definition and batch_size >= 1")
    g = torch.Generator().manual_seed(seed)

    def get(step: int) -> tuple[Tensor, Tensor, Tensor]:
        j = keep[torch.randint(len(keep), (batch_size,), generator=g)]
        h, m, _ = cache[j]
        return h.to(device), m.to(device), labels[j].to(device)

    return get
