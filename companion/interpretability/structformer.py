"""StructFormer (Shen et al. 2021, arXiv 2012.00857), as studied by Momen (2024, arXiv 2403.09714):
a parser network predicts a syntactic distance between neighbouring tokens and a syntactic height
per token; from them a differentiable dependency distribution ``P`` (who is whose parent) is built,
and every attention head is restricted to a learned mixture of the parent and child relations.

Pieces, in the chapter's order (equation labels in brackets):

* :func:`compute_block` -- ``p(l, r | i)``, the span around token i [sf-block];
* :func:`compute_head` -- ``p(j | l, r)``, the head of a span [sf-head];
* :func:`parent_distribution` -- ``P_ij = sum_{l,r} p(l,r|i) p(j|l,r)``, ``P_ii = 0`` [sf-parent];
* :class:`Parser` -- convolutions over the embeddings -> distances and heights, margin calibration;
* :func:`dependency_attention` -- ``sigmoid(q k^T / sqrt(d) + log pad) * M`` [sf-attn], plugged into the
  shared :class:`companion.nn.transformer.TransformerBlock` through its ``attn_fn`` hook;
* :class:`StructFormer` and the plain-transformer control :class:`MLMTransformer`;
* the evaluation: greedy top-down trees from distances, unlabeled F1, attachment score, and the
  random / left- / right-branching baselines; a small PCFG with gold trees (:class:`PCFG`);
* :func:`gold_distance_height` -- distances and heights built from a gold headed binary tree, for
  which hard parameters give exactly the gold heads (the chapter's exact check).

Structure follows the official ``structformer/structformer.py`` and ``layers.py`` of
google-research (read for this chapter); the code here is written anew.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.transformer import TransformerBlock, TransformerConfig

Tensor = torch.Tensor
BIG = 1e9


# --------------------------------------------------------------------------------- distances -> dependencies
def _check_dh(distance: Tensor, height: Tensor) -> None:
    if distance.ndim != 2 or height.shape != distance.shape or not distance.is_floating_point():
        raise ValueError(f"distance and height must be float tensors of the same shape (B, L), got "
                         f"{tuple(distance.shape)} and {tuple(height.shape)}")


def compute_block(distance: Tensor, height: Tensor, s0: float | Tensor) -> Tensor:
    """``p(l, r | i)`` [sf-block]: (B, L, L, L) indexed [b, i, l, r].

    ``distance[:, j]`` separates tokens j and j+1 (the last entry and pads are +1e9);
    ``gamma_ij = sigmoid(s0 (tau_i - delta_j))`` is the probability that token i's span crosses
    boundary j; cumulative minima to the left and right give the distributions of the span's ends.
    """
    _check_dh(distance, height)
    gamma = torch.sigmoid(s0 * (height[:, :, None] - distance[:, None, :]))  # (B, L, L) [b, i, j]
    ones = torch.ones_like(gamma)
    # left end: P(l <= j) = min_{j <= k < i} gamma_ik, then p(l = j) = P(l <= j) - P(l <= j - 1)
    left_cdf = (gamma.tril(-1) + ones.triu(0)).flip(-1).cummin(-1)[0].flip(-1)
    left = (left_cdf - F.pad(left_cdf[:, :, :-1], (1, 0), value=0.0)).tril(0)
    # right end: P(r >= j) = min_{i <= k < j} gamma_ik, then p(r = j) = P(r >= j) - P(r >= j + 1)
    x = gamma.triu(0) + ones.tril(-1)
    right_cdf = F.pad(x[:, :, :-1], (1, 0), value=1.0).cummin(-1)[0]
    right = (right_cdf - F.pad(right_cdf[:, :, 1:], (0, 1), value=0.0)).triu(0)
    return left[:, :, :, None] * right[:, :, None, :]  # (B, L, L, L)


def compute_head(height: Tensor, s1: float | Tensor) -> Tensor:
    """``p(j | l, r) = softmax_{l <= j <= r}(s1 tau_j)`` [sf-head]: (B, L, L, L) indexed [b, l, r, j]."""
    if height.ndim != 2:
        raise ValueError(f"height must be (B, L), got {tuple(height.shape)}")
    L = height.shape[1]
    idx = torch.arange(L, device=height.device)
    inside = (idx[:, None, None] <= idx[None, None, :]) & (idx[None, None, :] <= idx[None, :, None])  # (l, r, j)
    logits = (s1 * height)[:, None, None, :].expand(-1, L, L, -1)
    return torch.softmax(logits.masked_fill(~inside, -BIG), dim=-1)


def parent_distribution(distance: Tensor, height: Tensor, s0: float | Tensor, s1: float | Tensor) -> Tensor:
    """``P_ij = sum_{l,r} p(l, r | i) p(j | l, r)`` with ``P_ii = 0`` [sf-parent]: (B, L, L).
    Row i is the distribution of token i's parent; the root's row sums to ~0."""
    block = compute_block(distance, height, s0)
    head = compute_head(height, s1)
    P = torch.einsum("bilr,blrj->bij", block, head)
    eye = torch.eye(P.shape[-1], dtype=torch.bool, device=P.device)
    return P.masked_fill(eye, 0.0)


# --------------------------------------------------------------------------------- the parser network
class _Conv(nn.Module):
    """Conv1d over the sequence with 'same' length (even kernels shift by one, as in the official code)."""

    def __init__(self, d: int, kernel: int) -> None:
        super().__init__()
        self.shift = kernel % 2 == 0
        self.conv = nn.Conv1d(d, d, kernel, padding=kernel // 2 if self.shift else (kernel - 1) // 2)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, d)
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return y[:, 1:] if self.shift else y


class Parser(nn.Module):
    """Convolutions + LayerNorm (no affine) + tanh over embeddings, then distance and height heads."""

    def __init__(self, d: int, n_layers: int = 2, kernel: int = 5) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(_Conv(d, kernel), nn.LayerNorm(d, elementwise_affine=False),
                                                  nn.Tanh()) for _ in range(n_layers))
        self.distance_ff = nn.Sequential(_Conv(d, 2), nn.LayerNorm(d, elementwise_affine=False), nn.Tanh(),
                                         nn.Linear(d, 1))
        self.height_ff = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d, elementwise_affine=False), nn.Tanh(),
                                       nn.Linear(d, 1))

    def forward(self, h: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        """``h`` (B, L, d) embeddings, ``keep`` (B, L) bool (False = pad) -> distance, height (B, L)."""
        for layer in self.layers:
            h = layer(h.masked_fill(~keep[:, :, None], 0.0))
        height = self.height_ff(h).squeeze(-1).masked_fill(~keep, -BIG)
        keep_next = F.pad(keep[:, 1:], (0, 1), value=False)  # boundary j exists iff token j+1 is real
        distance = self.distance_ff(h).squeeze(-1).masked_fill(~keep_next, BIG)
        return distance - calibration_margin(distance, height, keep), height


def calibration_margin(distance: Tensor, height: Tensor, keep: Tensor) -> Tensor:
    """The batch-global margin subtracted from the distances so that they sit at the heights' level
    (the official ``parse``): for every span, how far its bounding distances exceed its highest token."""
    L = distance.shape[1]
    hmax = height[:, None, :].expand(-1, L, -1)
    hmax = torch.cummax(hmax.triu(0) - torch.ones_like(hmax).tril(-1) * BIG, dim=-1)[0].triu(0)  # (B, l, r)
    left = torch.relu(F.pad(distance[:, :-1, None], (0, 0, 1, 0), value=BIG) - hmax)
    right = torch.relu(distance[:, None, :] - hmax)
    margin = torch.minimum(left, right).triu(0)
    keep_next = F.pad(keep[:, 1:], (0, 1), value=False)
    valid = torch.stack([keep_next] + [keep] * (L - 1), dim=1)
    return margin.masked_fill(~valid, 0.0).max()


# --------------------------------------------------------------------------------- the models
def dependency_attention(q: Tensor, k: Tensor, v: Tensor, *, relation: Tensor, keep: Tensor,
                         mask=None) -> Tensor:
    """``sigmoid(q k^T / sqrt(d) + log pad) * M`` then ``@ v`` [sf-attn]; no row normalisation.

    q, k, v: (B, H, L, Dh); ``relation`` M: (B, H, L, L); ``keep``: (B, L) bool key padding.
    """
    if relation.shape != (*q.shape[:3], k.shape[2]):
        raise ValueError(f"relation must be (B, H, L, L) = {(*q.shape[:3], k.shape[2])}, got {tuple(relation.shape)}")
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, L, L)
    weights = torch.sigmoid(scores.masked_fill(~keep[:, None, None, :], -BIG)) * relation
    return weights @ v


class MLMTransformer(nn.Module):
    """The control: a bidirectional transformer of the same blocks with softmax attention, learned positions,
    tied output embedding; ``forward(x, keep) -> logits (B, L, V)``."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if cfg.pos != "none":
            raise ValueError(f"cfg.pos must be 'none' (positions are learned here), got {cfg.pos!r}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)  # the official init
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        nn.init.uniform_(self.pos.weight, -0.1, 0.1)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.out_bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def _check(self, x: Tensor, keep: Tensor) -> None:
        if x.ndim != 2 or x.is_floating_point() or keep.shape != x.shape or keep.dtype != torch.bool:
            raise ValueError(f"x must be (B, L) int and keep (B, L) bool, got {tuple(x.shape)} {x.dtype}, "
                             f"{tuple(keep.shape)} {keep.dtype}")
        if x.shape[1] > self.cfg.max_len:
            raise ValueError(f"sequence length {x.shape[1]} exceeds max_len {self.cfg.max_len}")

    def embed_tokens(self, x: Tensor) -> Tensor:
        return self.embed(x) + self.pos(torch.arange(x.shape[1], device=x.device))

    def logits(self, h: Tensor) -> Tensor:
        return self.ln_f(h) @ self.embed.weight.T + self.out_bias

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        self._check(x, keep)
        h = self.embed_tokens(x)
        mask = keep[:, None, :].expand(-1, x.shape[1], -1)  # (B, L, L) key padding
        pos = torch.arange(x.shape[1], device=x.device)
        for block in self.blocks:
            h = block(h, mask, pos)
        return self.logits(h)


class StructFormer(MLMTransformer):
    """The same blocks, each head restricted to ``M = w_parent P + w_child P^T`` [sf-attn]."""

    def __init__(self, cfg: TransformerConfig, parser_layers: int = 2, kernel: int = 5) -> None:
        super().__init__(cfg)
        self.parser = Parser(cfg.d_model, parser_layers, kernel)
        self.rel_logits = nn.Parameter(torch.randn(cfg.n_layers, cfg.n_heads, 2) * 0.1)  # parent, child
        self.log_scaler = nn.Parameter(torch.zeros(2))  # s0 = exp(theta0), s1 = exp(theta1)

    def parse(self, x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """distance, height (B, L) and the parent distribution P (B, L, L)."""
        self._check(x, keep)
        distance, height = self.parser(self.embed(x), keep)
        s0, s1 = self.log_scaler.exp()
        return distance, height, parent_distribution(distance, height, s0, s1)

    def forward(self, x: Tensor, keep: Tensor, parents: Tensor | None = None) -> Tensor:
        """MLM logits (B, L, V). ``parents`` (B, L, L) replaces the parser's P (for interventions)."""
        if parents is None:
            _, _, P = self.parse(x, keep)
        else:
            if parents.shape != (*x.shape, x.shape[1]):
                raise ValueError(f"parents must be (B, L, L) = {(*x.shape, x.shape[1])}, got {tuple(parents.shape)}")
            self._check(x, keep)
            P = parents
        w = torch.softmax(self.rel_logits, dim=-1)  # (layers, H, 2)
        rel = torch.stack([P, P.transpose(1, 2)], dim=1)  # (B, 2, L, L)
        h = self.embed_tokens(x)
        pos = torch.arange(x.shape[1], device=x.device)
        for layer, block in enumerate(self.blocks):
            M = torch.einsum("hr,brij->bhij", w[layer], rel)  # (B, H, L, L)

            def attn(q, k, v, mask=None, M=M):
                return dependency_attention(q, k, v, relation=M, keep=keep)

            h = block(h, None, pos, attn_fn=attn)
        return self.logits(h)


def mlm_batch(x: Tensor, keep: Tensor, mask_id: int, rate: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Mask ``rate`` of the real tokens with ``mask_id``: returns (inputs, targets) with -100 where not masked."""
    if not 0 < rate < 1:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    hide = (torch.rand(x.shape, generator=generator) < rate) & keep
    return x.masked_fill(hide, mask_id), x.masked_fill(~hide, -100)


def mlm_loss(model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Cross-entropy on the masked positions of a batch ``(inputs, keep, targets)``."""
    inp, keep, tgt = batch
    return F.cross_entropy(model(inp, keep).flatten(0, 1), tgt.flatten(), ignore_index=-100)


# --------------------------------------------------------------------------------- trees and metrics
Span = tuple[int, int]


def tree_from_distances(dist: Sequence[float]) -> list[Span]:
    """Greedy top-down binary tree: split each span at its largest distance. ``dist`` has n-1 entries
    (boundary j between words j and j+1). Returns the spans (l, r) inclusive of every constituent."""
    n = len(dist) + 1
    spans: list[Span] = []

    def split(lo: int, hi: int) -> None:
        spans.append((lo, hi))
        if hi > lo:
            j = max(range(lo, hi), key=lambda k: (dist[k], -k))
            split(lo, j)
            split(j + 1, hi)

    split(0, n - 1)
    return spans


def unlabeled_f1(pred: Sequence[Span], gold: Sequence[Span], n: int) -> float:
    """Sentence-level unlabeled F1 over non-trivial spans (length >= 2, not the whole sentence);
    1.0 when both have none (sentences of <= 2 words)."""
    keep = lambda s: {x for x in s if x[1] > x[0] and x != (0, n - 1)}  # noqa: E731
    p, g = keep(pred), keep(gold)
    if not p and not g:
        return 1.0
    tp = len(p & g)
    return 0.0 if tp == 0 else 2 * tp / (len(p) + len(g))


def branching_distances(n: int, kind: str, rng: random.Random | None = None) -> list[float]:
    """Distances of the left-branching, right-branching or a random binary tree on n words."""
    if kind == "left":
        return [float(j) for j in range(n - 1)]  # largest at the end: ((((w1 w2) w3) ...
    if kind == "right":
        return [float(n - j) for j in range(n - 1)]  # largest at the start: (w1 (w2 (...
    if kind == "random":
        rng = rng or random.Random(0)
        return [rng.random() for _ in range(n - 1)]
    raise ValueError(f"kind must be 'left', 'right' or 'random', got {kind!r}")


def chain_heads(n: int, kind: str, rng: random.Random | None = None) -> list[int]:
    """Dependency baselines: each word's head is the previous word ('left'), the next word ('right'),
    or a uniformly random other word ('random'); -1 for the root."""
    if kind == "left":
        return [-1] + list(range(n - 1))
    if kind == "right":
        return list(range(1, n)) + [-1]
    if kind == "random":
        rng = rng or random.Random(0)
        root = rng.randrange(n)
        return [-1 if i == root else rng.choice([j for j in range(n) if j != i]) for i in range(n)]
    raise ValueError(f"kind must be 'left', 'right' or 'random', got {kind!r}")


def attachment_score(pred: Sequence[int], gold: Sequence[int]) -> tuple[int, int]:
    """(correct, total) heads over the non-root words of the gold tree."""
    if len(pred) != len(gold):
        raise ValueError(f"pred and gold must have the same length, got {len(pred)} and {len(gold)}")
    pairs = [(p, g) for p, g in zip(pred, gold) if g >= 0]
    return sum(p == g for p, g in pairs), len(pairs)


# --------------------------------------------------------------------------------- gold trees
@dataclass
class Node:
    """A node of a headed binary tree over words ``lo..hi``; leaves have no children."""

    lo: int
    hi: int
    head: int  # word index of the lexical head
    children: list["Node"] = field(default_factory=list)

    def spans(self) -> list[Span]:
        out = [(self.lo, self.hi)]
        for c in self.children:
            out += c.spans()
        return out


def gold_heads(root: Node, n: int) -> list[int]:
    """Dependency heads of a headed tree: each non-head child's head attaches to the node's head."""
    heads = [-1] * n

    def walk(node: Node) -> None:
        for c in node.children:
            if c.head != node.head:
                heads[c.head] = node.head
            walk(c)

    walk(root)
    return heads


def gold_distance_height(root: Node, n: int) -> tuple[Tensor, Tensor]:
    """Distances and heights built from a gold headed binary tree (for the exact check).

    A node's level is 1 + its taller child's level (leaves 0); the distance between words j and
    j+1 is the level of the node that splits them; a word's height is the level of the lowest node it
    does *not* head, plus 0.5 (the root's head: the root's level + 1.5). The last distance is +1e9.
    """
    dist = torch.full((n,), BIG)
    height = torch.zeros(n)

    def level(node: Node) -> int:
        if not node.children:
            return 0
        lv = 1 + max(level(c) for c in node.children)
        node.level = lv  # type: ignore[attr-defined]
        dist[node.children[0].hi] = float(lv)
        return lv

    top = level(root)

    def walk(node: Node, parent_level: float) -> None:
        for c in node.children:
            if c.head != node.head:
                height[c.head] = node.level + 0.5  # type: ignore[attr-defined]
            walk(c, node.level)  # type: ignore[attr-defined]

    height[root.head] = top + 1.5
    walk(root, top)
    return dist, height


class PCFG:
    """A small English-like probabilistic grammar with lexical heads and gold binary trees.

    S -> NP VP; NP -> Det N' | NP PP; N' -> Adj N' | N; VP -> V NP | VP PP | V Adv;
    PP -> P NP. Heads: N' in NP, N in N', V in VP, P in PP, VP in S. Words are grouped by
    preterminal (``self.words``), so the vocabulary is ``self.vocab``.
    """

    RULES = {
        "S": [(("NP", "VP"), 1, 1.0)],
        "NP": [(("Det", "N'"), 1, 0.75), (("NP", "PP"), 0, 0.25)],
        "N'": [(("Adj", "N'"), 1, 0.35), (("N",), 0, 0.65)],
        "VP": [(("V", "NP"), 0, 0.55), (("VP", "PP"), 0, 0.25), (("V", "Adv"), 0, 0.20)],
        "PP": [(("P", "NP"), 0, 1.0)],
    }
    SIZES = {"Det": 4, "Adj": 8, "N": 12, "V": 10, "P": 5, "Adv": 4}

    def __init__(self) -> None:
        self.words = {t: [f"{t.lower()}{i}" for i in range(k)] for t, k in self.SIZES.items()}
        self.vocab = [w for ws in self.words.values() for w in ws]

    def _expand(self, sym: str, rng: random.Random, depth: int, out: list[str]) -> Node:
        if sym in self.words:
            i = len(out)
            out.append(rng.choice(self.words[sym]))
            return Node(i, i, i)
        options = self.RULES[sym]
        if depth > 6:  # cut recursion: take the first (non-recursive) rule
            options = options[:1] if sym != "N'" else options[1:]
        r, acc = rng.random() * sum(o[2] for o in options), 0.0
        for rhs, head, p in options:
            acc += p
            if r <= acc:
                break
        kids = [self._expand(s, rng, depth + 1, out) for s in rhs]
        if len(kids) == 1:
            return kids[0]
        return Node(kids[0].lo, kids[-1].hi, kids[head].head, kids)

    def sample(self, rng: random.Random, min_len: int = 5, max_len: int = 15) -> tuple[list[str], Node]:
        """One sentence (words) and its gold headed binary tree, length in [min_len, max_len]."""
        if not 2 <= min_len <= max_len:
            raise ValueError(f"need 2 <= min_len <= max_len, got {min_len}, {max_len}")
        while True:
            words: list[str] = []
            tree = self._expand("S", rng, 0, words)
            if min_len <= len(words) <= max_len:
                return words, tree


def pad_batch(sentences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Right-pad token-id lists to (B, L_max) with ``pad_id``; returns (ids, keep) with keep False on pads."""
    if not sentences or any(len(s) == 0 for s in sentences):
        raise ValueError("sentences must be a non-empty list of non-empty token-id lists")
    L = max(len(s) for s in sentences)
    ids = torch.full((len(sentences), L), pad_id, dtype=torch.long)
    for b, s in enumerate(sentences):
        ids[b, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    lengths = torch.tensor([len(s) for s in sentences])
    return ids, torch.arange(L)[None] < lengths[:, None]


@torch.no_grad()
def induced_structure(model: StructFormer, ids: Tensor, keep: Tensor) -> tuple[list[list[Span]], list[list[int]]]:
    """Per sentence: the greedy tree of the parser's distances and the argmax parent of each word
    (-1 for the word whose parent row is the smallest, taken as the root)."""
    model.eval()
    distance, _, P = model.parse(ids, keep)
    trees, heads = [], []
    for b in range(ids.shape[0]):
        n = int(keep[b].sum())
        trees.append(tree_from_distances(distance[b, : n - 1].tolist()))
        Pb = P[b, :n, :n]
        h = Pb.argmax(-1).tolist()
        h[int(Pb.sum(-1).argmin())] = -1
        heads.append(h)
    return trees, heads


def parent_matrix(heads: Sequence[Sequence[int]], L: int) -> Tensor:
    """One-hot parent matrices (B, L, L) from head lists (-1 = root, a zero row)."""
    P = torch.zeros(len(heads), L, L)
    for b, hs in enumerate(heads):
        for i, j in enumerate(hs):
            if j >= 0:
                P[b, i, j] = 1.0
    return P


def random_tree_heads(n: int, rng: random.Random) -> list[int]:
    """Heads of a random projective tree: the greedy tree of random distances, headed at random children."""
    heads = [-1] * n

    def build(lo: int, hi: int) -> int:  # returns the head of span lo..hi
        if lo == hi:
            return lo
        j = rng.randrange(lo, hi)
        a, b = build(lo, j), build(j + 1, hi)
        h, d = (a, b) if rng.random() < 0.5 else (b, a)
        heads[d] = h
        return h

    build(0, n - 1)
    return heads


# --------------------------------------------------------------------------------- real sentences
def remove_punctuation(words: Sequence[str], heads: Sequence[int], upos: Sequence[str]) -> tuple[list[str], list[int]]:
    """Drop the PUNCT tokens of a dependency-parsed sentence (the usual unsupervised-parsing evaluation);
    a dropped token's dependents move to its nearest kept ancestor (-1 if none). Returns words, heads."""
    if not len(words) == len(heads) == len(upos):
        raise ValueError(f"words, heads and upos must have one entry per token, got {len(words)}, {len(heads)}, {len(upos)}")
    keep = [u != "PUNCT" for u in upos]
    new = {}
    for i, k in enumerate(keep):
        if k:
            new[i] = len(new)

    def kept_ancestor(j: int) -> int:
        seen = 0
        while j >= 0 and not keep[j] and seen <= len(heads):
            j, seen = heads[j], seen + 1
        return new.get(j, -1) if j >= 0 else -1

    out_w = [w for w, k in zip(words, keep) if k]
    out_h = [kept_ancestor(h) for h, k in zip(heads, keep) if k]
    return out_w, out_h


def dependency_spans(heads: Sequence[int]) -> list[Span]:
    """The span (leftmost, rightmost descendant) of every word's subtree in a dependency tree: the
    constituents a projective dependency tree implies, to score induced trees with :func:`unlabeled_f1`."""
    n = len(heads)
    if any(not -1 <= h < n for h in heads):
        raise ValueError(f"heads must be in [-1, {n}), got {list(heads)}")
    lo, hi = list(range(n)), list(range(n))
    for i in range(n):
        j, steps = heads[i], 0
        while j >= 0 and steps < n:
            lo[j], hi[j] = min(lo[j], i), max(hi[j], i)
            j, steps = heads[j], steps + 1
    return [(lo[i], hi[i]) for i in range(n)]
