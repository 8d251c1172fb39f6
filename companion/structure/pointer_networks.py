"""Pointer Networks (Vinyals, Fortunato & Jaitly, NeurIPS 2015, arXiv 1506.03134).

Everything the chapter ``book/structure/pointer-networks.md`` needs, in one module:

* **Data** generated on the fly: uniform points in the unit square; convex-hull targets from
  Andrew's monotone chain (:func:`convex_hull`, :func:`hull_target`) and exact travelling-salesman
  tours from Held--Karp dynamic programming (:func:`held_karp`, :func:`tsp_target`).
  Targets are **1-based pointers**; ``0`` points at the learned end vector ``e0``.
* **Models** sharing one LSTM encoder/decoder (:class:`PointerNet`, eq. (3) of the chapter: the
  additive attention *is* the output distribution; :class:`Seq2SeqAttention`, eqs. (4)-(5):
  the attention is blended into a context vector and a fixed-size softmax predicts the index).
* **Decoding**: greedy and beam search (:func:`greedy_decode`, :func:`beam_search`) with the
  validity constraints of each task (hull: no repeated vertex, close the polygon, then end;
  TSP: visit every city once, return to the first, then end).
* **Metrics**: exact-sequence accuracy, area coverage of the predicted polygon, tour length,
  and FAIL for invalid outputs (:func:`hull_metrics`, :func:`tsp_metrics`).

Sequence conventions: a target/prediction is a row of a ``(B, T)`` long tensor holding pointers
``1..n`` and the end pointer ``0``, padded with :data:`PAD` (``-1``) after the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    import ipywidgets
    from matplotlib.axes import Axes

Tensor = torch.Tensor
PAD = -1  # padding value of target / prediction sequences (ignored by the loss)
TASKS = ("hull", "tsp")


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def _as_points(points: np.ndarray | Tensor | Sequence, name: str = "points") -> np.ndarray:
    """``points`` as a float64 array of shape (n, 2) with finite values, n >= 1."""
    p = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] < 1:
        raise ValueError(f"{name} must have shape (n, 2) with n >= 1, got {tuple(p.shape)}")
    if not np.issubdtype(p.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {p.dtype}")
    p = p.astype(np.float64)
    if not np.isfinite(p).all():
        raise ValueError(f"{name} must be finite")
    return p


def random_points(batch: int, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``batch`` sets of ``n`` points drawn uniformly from the unit square: ``(batch, n, 2)``."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return torch.rand(batch, n, 2, generator=generator)


def convex_hull(points: np.ndarray | Tensor | Sequence) -> list[int]:
    """Vertices of the convex hull of ``points`` (n, 2) as **0-based** indices, in canonical order.

    Andrew's monotone chain: sort by (x, y), build the lower and upper chains, popping every
    point that does not make a strict left turn, so points in the middle of a hull edge are
    not vertices. Duplicated points count once (the smallest index represents them). The
    canonical order starts at the smallest vertex index and runs counter-clockwise. Fewer
    than three non-collinear points give a degenerate hull of one or two vertices.
    """
    p = _as_points(points)
    xs, ys = p[:, 0].tolist(), p[:, 1].tolist()
    order = sorted(range(len(xs)), key=lambda i: (xs[i], ys[i], i))
    uniq = [i for k, i in enumerate(order) if k == 0 or (xs[i], ys[i]) != (xs[order[k - 1]], ys[order[k - 1]])]
    if len(uniq) == 1:
        return uniq

    def cross(o: int, a: int, b: int) -> float:  # > 0: o -> a -> b turns left
        return (xs[a] - xs[o]) * (ys[b] - ys[o]) - (ys[a] - ys[o]) * (xs[b] - xs[o])

    def chain(seq: list[int]) -> list[int]:
        out: list[int] = []
        for i in seq:
            while len(out) >= 2 and cross(out[-2], out[-1], i) <= 0:
                out.pop()
            out.append(i)
        return out

    hull = chain(uniq)[:-1] + chain(uniq[::-1])[:-1]  # counter-clockwise
    start = hull.index(min(hull))
    return hull[start:] + hull[:start]


def closed_sequence(ring: Sequence[int]) -> list[int]:
    """The pointer sequence of a closed polygon or tour given by 0-based vertex indices:
    1-based pointers, the first repeated at the end, then the end pointer ``0``.

    >>> closed_sequence([0, 3, 2])
    [1, 4, 3, 1, 0]
    """
    ring = [int(i) for i in ring]
    if not ring or min(ring) < 0:
        raise ValueError(f"ring must hold at least one non-negative index, got {ring}")
    return [i + 1 for i in ring] + [ring[0] + 1, 0]


def hull_target(points: np.ndarray | Tensor | Sequence) -> list[int]:
    """The Ptr-Net target for the convex hull of ``points``: 1-based vertex pointers in canonical
    order (smallest index first, counter-clockwise), closed by repeating the first, then ``0``.

    >>> hull_target([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]])
    [1, 2, 3, 4, 1, 0]
    """
    return closed_sequence(convex_hull(points))


def held_karp(points: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Exact shortest closed tours by Held--Karp dynamic programming, O(2^n n^2) per instance.

    ``points`` is (n, 2) or (B, n, 2) with 2 <= n <= 13; the subset table is vectorised over
    the batch and over all subsets of one size. Returns ``(tours, lengths)``: tours (B, n) or
    (n,) as 0-based city indices starting at city 0, in the canonical direction (second city
    index smaller than the last), and their lengths (B,) or a 0-d array.
    """
    p = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    single = p.ndim == 2
    p = p[None] if single else p
    if p.ndim != 3 or p.shape[-1] != 2:
        raise ValueError(f"points must have shape (n, 2) or (B, n, 2), got {tuple(np.shape(points))}")
    B, n, _ = p.shape
    if not 2 <= n <= 13:
        raise ValueError(f"held_karp needs 2 <= n <= 13 cities (memory grows as 2^n), got n={n}")
    p = p.astype(np.float64)
    if not np.isfinite(p).all():
        raise ValueError("points must be finite")
    d = np.linalg.norm(p[:, :, None] - p[:, None], axis=-1)  # (B, n, n)
    m = n - 1  # cities 1..n-1 as bits 0..m-1; city 0 is the fixed start
    full = (1 << m) - 1
    dp = np.full((B, 1 << m, m), np.inf)  # dp[b, S, j]: 0 -> ... -> city j+1 visiting exactly S
    parent = np.zeros((B, 1 << m, m), dtype=np.int8)
    for j in range(m):
        dp[:, 1 << j, j] = d[:, 0, j + 1]
    masks = np.arange(1 << m)
    popcount = np.array([bin(s).count("1") for s in masks])
    for size in range(2, m + 1):
        level = masks[popcount == size]
        for j in range(m):
            sel = level[(level >> j) & 1 == 1]
            prev = sel ^ (1 << j)
            cand = dp[:, prev, :] + d[:, None, 1:, j + 1]  # (B, |sel|, m): come from city k+1
            parent[:, sel, j] = cand.argmin(-1)
            dp[:, sel, j] = cand.min(-1)
    closing = dp[:, full, :] + d[:, 1:, 0]  # (B, m)
    last = closing.argmin(-1)
    lengths = closing[np.arange(B), last]
    tours = np.zeros((B, n), dtype=np.int64)
    state, j = np.full(B, full), last
    for pos in range(n - 1, 0, -1):
        tours[:, pos] = j + 1
        k = parent[np.arange(B), state, j].astype(np.int64)
        state, j = state ^ (1 << j), k
    flip = tours[:, 1] > tours[:, -1]
    tours[flip, 1:] = tours[flip, 1:][:, ::-1]
    return (tours[0], lengths[0]) if single else (tours, lengths)


def tsp_target(points: np.ndarray | Tensor) -> list[int]:
    """The Ptr-Net target for the optimal tour of ``points`` (n, 2): 1-based pointers starting at
    city 1 (canonical direction, see :func:`held_karp`), back to city 1, then ``0``."""
    tour, _ = held_karp(_as_points(points))
    return closed_sequence(tour)


@dataclass
class PointerBatch:
    """A padded batch: ``points`` (B, N, 2), ``lengths`` (B,), ``targets`` (B, T) padded with PAD."""

    points: Tensor
    lengths: Tensor
    targets: Tensor

    def to(self, device: torch.device | str) -> "PointerBatch":
        """The same batch on ``device``."""
        return PointerBatch(self.points.to(device), self.lengths.to(device), self.targets.to(device))


def pad_targets(seqs: Sequence[Sequence[int]]) -> Tensor:
    """Stack pointer sequences of different lengths into a (B, T) long tensor padded with PAD."""
    if len(seqs) == 0:
        raise ValueError("seqs must hold at least one sequence")
    out = torch.full((len(seqs), max(len(s) for s in seqs)), PAD, dtype=torch.long)
    for b, s in enumerate(seqs):
        out[b, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


def make_batch(task: str, batch: int, n_min: int, n_max: int | None = None,
               generator: torch.Generator | None = None) -> PointerBatch:
    """``batch`` random instances of ``task`` ("hull" or "tsp"), each with its own n drawn
    uniformly from ``[n_min, n_max]``, zero-padded to the largest n in the batch."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    n_max = n_min if n_max is None else n_max
    if not 3 <= n_min <= n_max:
        raise ValueError(f"need 3 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
    if task == "tsp" and n_max > 13:
        raise ValueError(f"tsp labels are exact (Held-Karp): n_max must be <= 13, got {n_max}")
    lengths = torch.randint(n_min, n_max + 1, (batch,), generator=generator)
    points = random_points(batch, int(lengths.max()), generator) * (
        torch.arange(int(lengths.max())) < lengths[:, None]).unsqueeze(-1)  # (B, N, 2), zero padding
    if task == "hull":
        seqs = [hull_target(points[b, :lengths[b]]) for b in range(batch)]
    else:
        seqs = [None] * batch
        for n in lengths.unique().tolist():  # one vectorised Held-Karp call per distinct n
            rows = (lengths == n).nonzero().flatten()
            tours, _ = held_karp(points[rows, :n])
            for b, tour in zip(rows.tolist(), tours):
                seqs[b] = closed_sequence(tour)
    return PointerBatch(points, lengths, pad_targets(seqs))


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

class AdditiveAttention(nn.Module):
    """Content-based additive attention scores ``u_j = vᵀ tanh(W1 e_j + W2 d)`` (chapter eq. (2))."""

    def __init__(self, hidden: int):
        super().__init__()
        self.W1 = nn.Linear(hidden, hidden, bias=False)
        self.W2 = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, 1, bias=False)

    def keys(self, enc: Tensor) -> Tensor:
        """``W1 e_j`` for all positions, computed once per input: (B, N, H) -> (B, N, H)."""
        return self.W1(enc)

    def forward(self, keys: Tensor, dec: Tensor, valid: Tensor) -> Tensor:
        """Scores (B, T, N) of decoder states ``dec`` (B, T, H) against ``keys`` (B, N, H);
        positions where ``valid`` (B, N) is False get ``-inf``."""
        u = self.v(torch.tanh(keys[:, None] + self.W2(dec)[:, :, None])).squeeze(-1)  # (B, T, N)
        return u.masked_fill(~valid[:, None], float("-inf"))


class _PointerSeqModel(nn.Module):
    """What both models share -- everything but the output head (chapter eq. (1)):

    * a linear embedding of each point's coordinates, ``x_j = W_x P_j + b``;
    * an LSTM encoder over ``x_1..x_n`` giving ``e_1..e_n``;
    * an LSTM decoder, started from the encoder's final state, whose input at step i is the
      embedded point chosen at step i-1 (a learned start vector "⇒" at step 0), giving ``d_i``;
    * an :class:`AdditiveAttention` scorer.

    Subclasses define :meth:`num_outputs` and :meth:`head`, which turns decoder states into
    log-probabilities over the output indices ``0 (end), 1, 2, ...``.
    """

    def __init__(self, hidden: int, init_scale: float | None):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if init_scale is not None and init_scale <= 0:
            raise ValueError(f"init_scale must be > 0 or None (PyTorch's default init), got {init_scale}")
        self.hidden = hidden
        self.embed = nn.Linear(2, hidden)  # a point's coordinates -> R^H (encoder and decoder inputs)
        self.encoder = nn.LSTM(hidden, hidden, batch_first=True)
        self.decoder = nn.LSTM(hidden, hidden, batch_first=True)
        self.start = nn.Parameter(torch.zeros(hidden))  # the decoder's first input, "⇒" in the paper
        self.attention = AdditiveAttention(hidden)
        self._init_scale = init_scale

    def _init(self) -> None:
        """The paper's initialisation, uniform in [-init_scale, init_scale], if one was given."""
        if self._init_scale is not None:
            for p in self.parameters():
                nn.init.uniform_(p, -self._init_scale, self._init_scale)

    # -- what subclasses define ---------------------------------------------------------------
    def num_outputs(self, n_max: int) -> int:
        """Size C of the output distribution for inputs padded to ``n_max`` points."""
        raise NotImplementedError

    def head(self, state: dict[str, Tensor], dec: Tensor) -> Tensor:
        """Log-probabilities (B, T, C) of the next output from decoder states ``dec`` (B, T, H)."""
        raise NotImplementedError

    # -- checks -------------------------------------------------------------------------------
    @staticmethod
    def _check_inputs(points: Tensor, lengths: Tensor | None) -> Tensor:
        if not isinstance(points, torch.Tensor) or points.ndim != 3 or points.shape[-1] != 2:
            raise ValueError(f"points must be a tensor of shape (B, N, 2), got "
                             f"{tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__}")
        if not points.is_floating_point():
            raise ValueError(f"points must be floating point, got {points.dtype}")
        B, N, _ = points.shape
        if lengths is None:
            return torch.full((B,), N, dtype=torch.long, device=points.device)
        lengths = torch.as_tensor(lengths, device=points.device)
        if lengths.shape != (B,) or lengths.dtype.is_floating_point:
            raise ValueError(f"lengths must be an integer tensor of shape ({B},), got {tuple(lengths.shape)} {lengths.dtype}")
        if int(lengths.min()) < 1 or int(lengths.max()) > N:
            raise ValueError(f"lengths must lie in [1, {N}] (the padded number of points), got "
                             f"[{int(lengths.min())}, {int(lengths.max())}]")
        return lengths.long()

    # -- encoder / decoder ------------------------------------------------------------------
    def encode(self, points: Tensor, lengths: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Encoder states (B, N, H) (zero at padding) and the final (h, c) after the last real point."""
        N = points.shape[1]
        x = self.embed(points)  # (B, N, H)
        if bool((lengths == N).all()):
            enc, (h, c) = self.encoder(x)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, (h, c) = self.encoder(packed)
            enc, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=N)
        return enc, (h, c)

    def _decoder_inputs(self, points: Tensor, idx: Tensor) -> Tensor:
        """Embedded coordinates of the points that 1-based pointers ``idx`` (B, T) name, and the
        learned start vector where ``idx`` names no point (before the first step). -> (B, T, H)."""
        safe = (idx - 1).clamp(min=0, max=points.shape[1] - 1)
        xy = torch.gather(points, 1, safe.unsqueeze(-1).expand(*idx.shape, 2))  # (B, T, 2)
        x = self.embed(xy)
        return torch.where((idx >= 1).unsqueeze(-1), x, self.start.expand_as(x))

    def output_valid(self, lengths: Tensor, n_max: int) -> Tensor:
        """Bool (B, C): which output indices are real choices (end pointer, non-padded points)."""
        C = self.num_outputs(n_max)
        return torch.arange(C, device=lengths.device)[None] <= lengths[:, None]

    def forward(self, points: Tensor, targets: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Teacher-forced log-probabilities (B, T, C) of the next pointer at every target step."""
        lengths = self._check_inputs(points, lengths)
        if targets.ndim != 2 or targets.shape[0] != points.shape[0] or targets.dtype != torch.long:
            raise ValueError(f"targets must be a long tensor of shape ({points.shape[0]}, T), got "
                             f"{tuple(targets.shape)} {targets.dtype}")
        C = self.num_outputs(points.shape[1])
        if int(targets.max()) >= C:
            raise ValueError(f"targets hold pointer {int(targets.max())} but this model has only {C} "
                             f"outputs (0..{C - 1}); a fixed-vocabulary model cannot name later points")
        beyond = targets > lengths[:, None]  # (B, T): pointers at padded positions of a shorter instance
        if bool(beyond.any()):
            b = int(beyond.any(1).nonzero()[0])
            raise ValueError(f"targets[{b}] points at {int(targets[b].max())} but instance {b} has only "
                             f"lengths[{b}] = {int(lengths[b])} points (padding cannot be a target)")
        state = self.start_decoding(points, lengths)
        prev = torch.cat([torch.zeros_like(targets[:, :1]), targets[:, :-1]], dim=1)  # (B, T)
        return self._decode(state, prev)

    # -- incremental decoding (used by greedy and beam search) ------------------------------
    def start_decoding(self, points: Tensor, lengths: Tensor | None = None) -> dict[str, Tensor]:
        """The decoding state: a dict of batch-first tensors (reindexable for beam search)."""
        lengths = self._check_inputs(points, lengths)
        enc, (h, c) = self.encode(points, lengths)
        return {"points": points, "lengths": lengths, "enc": enc, "h": h[0], "c": c[0],
                "valid": self.output_valid(lengths, points.shape[1])}

    def step(self, state: dict[str, Tensor], prev: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One decoder step: ``prev`` (B,) is the previous pointer (0 before the first step).
        Returns log-probabilities (B, C) and the updated state."""
        logp = self._decode(state, prev[:, None], update=True)
        return logp[:, 0], state

    def _decode(self, state: dict[str, Tensor], prev: Tensor, update: bool = False) -> Tensor:
        """Run the decoder over previous pointers ``prev`` (B, T) and apply the head."""
        x = self._decoder_inputs(state["points"], prev)  # (B, T, H)
        dec, (h, c) = self.decoder(x, (state["h"][None], state["c"][None]))  # (B, T, H)
        if update:
            state["h"], state["c"] = h[0], c[0]
        return self.head(state, dec)


class PointerNet(_PointerSeqModel):
    """Ptr-Net: the attention over the encoder states *is* the output distribution (eq. (3)):

    ``p(C_i = j | C_<i, P) = softmax_j(vᵀ tanh(W1 e_j + W2 d_i))`` over ``j = 0..n``, where
    ``e_0`` is a learned end vector; padded positions get probability exactly 0.
    """

    def __init__(self, hidden: int = 128, init_scale: float | None = None):
        super().__init__(hidden, init_scale)
        self.end = nn.Parameter(torch.zeros(hidden))  # e_0: pointing here ends the output
        self._init()

    def num_outputs(self, n_max: int) -> int:
        return n_max + 1  # the end pointer and one output per input point

    def start_decoding(self, points: Tensor, lengths: Tensor | None = None) -> dict[str, Tensor]:
        state = super().start_decoding(points, lengths)
        enc = torch.cat([self.end.expand(points.shape[0], 1, -1), state["enc"]], dim=1)  # (B, N+1, H)
        state["keys"] = self.attention.keys(enc)  # W1 e_j for j = 0..N, once per input
        return state

    def head(self, state: dict[str, Tensor], dec: Tensor) -> Tensor:
        scores = self.attention(state["keys"], dec, state["valid"])  # (B, T, N+1)
        return torch.log_softmax(scores, dim=-1)


class Seq2SeqAttention(_PointerSeqModel):
    """The baseline: seq2seq with content-based attention and a **fixed** output vocabulary
    (eqs. (4)-(5)).

    The same additive attention blends the encoder states into a context ``d'_i``; the
    attentional state ``tanh(W_c [d_i; d'_i])`` feeds a softmax over ``{0 (end), 1..vocab}``.
    Inputs longer than ``vocab`` are read fine, but their points beyond ``vocab`` can never
    be output.
    """

    def __init__(self, hidden: int = 128, vocab: int = 10, init_scale: float | None = None):
        super().__init__(hidden, init_scale)
        if vocab < 1:
            raise ValueError(f"vocab must be >= 1, got {vocab}")
        self.vocab = vocab
        self.combine = nn.Linear(2 * hidden, hidden)  # W_c: [d_i; d'_i] -> attentional state
        self.out = nn.Linear(hidden, vocab + 1)  # W_o: one logit per vocabulary entry
        self._init()

    def num_outputs(self, n_max: int) -> int:
        return self.vocab + 1

    def start_decoding(self, points: Tensor, lengths: Tensor | None = None) -> dict[str, Tensor]:
        state = super().start_decoding(points, lengths)
        state["keys"] = self.attention.keys(state["enc"])  # W1 e_j for j = 1..N
        state["enc_valid"] = torch.arange(points.shape[1], device=points.device)[None] < state["lengths"][:, None]
        return state

    def head(self, state: dict[str, Tensor], dec: Tensor) -> Tensor:
        a = torch.softmax(self.attention(state["keys"], dec, state["enc_valid"]), dim=-1)  # (B, T, N)
        context = torch.bmm(a, state["enc"])  # d'_i: (B, T, H)
        logits = self.out(torch.tanh(self.combine(torch.cat([dec, context], dim=-1))))  # (B, T, vocab+1)
        return torch.log_softmax(logits.masked_fill(~state["valid"][:, None], float("-inf")), dim=-1)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def pointer_loss(model: _PointerSeqModel, batch: PointerBatch) -> Tensor:
    """Mean cross-entropy of the target pointers under teacher forcing (PAD steps ignored)."""
    logp = model(batch.points, batch.targets, batch.lengths)  # (B, T, C)
    return F.nll_loss(logp.flatten(0, 1), batch.targets.flatten(), ignore_index=PAD)


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------

@dataclass
class _Progress:
    """Per-row bookkeeping of a partial output: visited outputs, first pointer, closed, done."""

    visited: Tensor  # (R, C) bool
    first: Tensor  # (R,) long, 0 = none yet
    count: Tensor  # (R,) distinct points chosen
    closed: Tensor  # (R,) polygon / tour closed (first point repeated)
    done: Tensor  # (R,) end pointer emitted

    @classmethod
    def empty(cls, rows: int, C: int, device: torch.device) -> "_Progress":
        z = torch.zeros(rows, dtype=torch.long, device=device)
        return cls(torch.zeros(rows, C, dtype=torch.bool, device=device), z, z.clone(),
                   z.bool(), z.bool())

    def take(self, idx: Tensor) -> "_Progress":
        return _Progress(self.visited[idx], self.first[idx], self.count[idx], self.closed[idx], self.done[idx])

    def advance(self, choice: Tensor) -> None:
        """Record ``choice`` (R,) for the rows that are not done yet."""
        live = ~self.done
        is_point = live & (choice > 0)
        closing = is_point & (choice == self.first)
        new = is_point & ~closing
        self.first = torch.where(new & (self.first == 0), choice, self.first)
        self.visited[new.nonzero().flatten(), choice[new]] = True
        self.count = self.count + new.long()
        self.closed = self.closed | closing
        self.done = self.done | (live & (choice == 0))


def _check_task(task: str | None) -> None:
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} or None (unconstrained), got {task!r}")


def allowed_outputs(progress: _Progress, valid: Tensor, lengths: Tensor, task: str | None) -> Tensor:
    """Bool (R, C): the outputs a decoder may choose next.

    ``task=None`` only forbids padding. ``"hull"``: an unvisited point, or the first point once
    three are chosen (closing the polygon); after closing, only the end pointer. ``"tsp"``: an
    unvisited point; the first point once every point is visited; then the end pointer. Rows
    that are done may only repeat the end pointer (kept as PAD in the output).
    """
    _check_task(task)
    R, C = valid.shape
    end_only = torch.zeros(R, C, dtype=torch.bool, device=valid.device)
    end_only[:, 0] = True
    if task is None:
        return torch.where(progress.done[:, None], end_only, valid)
    points = valid.clone()
    points[:, 0] = False
    free = points & ~progress.visited
    first = F.one_hot(progress.first, C).bool() & (progress.first > 0)[:, None]
    n_real = torch.minimum(lengths, torch.full_like(lengths, C - 1))  # points this output space can name
    can_close = progress.count >= (3 if task == "hull" else n_real)
    allowed = free | (first & can_close[:, None])
    return torch.where((progress.closed | progress.done)[:, None], end_only, allowed)


def _max_steps(lengths: Tensor) -> int:
    return int(lengths.max()) + 2  # every point once, close, end


@torch.no_grad()
def greedy_decode(model: _PointerSeqModel, points: Tensor, lengths: Tensor | None = None,
                  task: str | None = "hull", max_steps: int | None = None) -> Tensor:
    """Pick the most probable allowed output at every step. Returns (B, L) long, PAD after the end.

    ``task`` selects the validity constraints (:func:`allowed_outputs`); ``None`` decodes
    without constraints (then outputs can be invalid: metrics report them as FAIL).
    """
    _check_task(task)
    state = model.start_decoding(points, lengths)
    lengths = state["lengths"]
    B, C = state["valid"].shape
    prog = _Progress.empty(B, C, points.device)
    prev = torch.zeros(B, dtype=torch.long, device=points.device)
    out = []
    for _ in range(max_steps or _max_steps(lengths)):
        if bool(prog.done.all()):
            break
        logp, state = model.step(state, prev)
        allowed = allowed_outputs(prog, state["valid"], lengths, task)
        choice = logp.masked_fill(~allowed, float("-inf")).argmax(-1)
        out.append(torch.where(prog.done, torch.full_like(choice, PAD), choice))
        prog.advance(choice)
        prev = choice
    return torch.stack(out, dim=1)


@torch.no_grad()
def beam_search(model: _PointerSeqModel, points: Tensor, lengths: Tensor | None = None,
                task: str | None = "hull", beam: int = 3, max_steps: int | None = None) -> Tensor:
    """Beam search over output sequences with the constraints of ``task``; returns the most
    probable finished sequence per input, (B, L) long, PAD after the end.

    Scores are summed log-probabilities; a finished beam keeps its score. With ``beam=1`` this
    is exactly :func:`greedy_decode`.
    """
    _check_task(task)
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    state = model.start_decoding(points, lengths)
    lengths = state["lengths"]
    B, C = state["valid"].shape
    K = beam
    rows = torch.arange(B, device=points.device).repeat_interleave(K)  # (B*K,) beam rows
    state = {k: v[rows] for k, v in state.items()}
    lengths = lengths[rows]
    prog = _Progress.empty(B * K, C, points.device)
    score = torch.full((B, K), float("-inf"), device=points.device)
    score[:, 0] = 0.0  # all beams start identical: keep one
    prev = torch.zeros(B * K, dtype=torch.long, device=points.device)
    seqs = torch.empty(B * K, 0, dtype=torch.long, device=points.device)
    for _ in range(max_steps or _max_steps(lengths)):
        if bool(prog.done.all()):
            break
        logp, state = model.step(state, prev)  # (B*K, C)
        allowed = allowed_outputs(prog, state["valid"], lengths, task)
        logp = logp.masked_fill(~allowed, float("-inf"))
        logp = torch.where(prog.done[:, None], torch.where(allowed, 0.0, float("-inf")), logp)
        total = (score.reshape(B * K, 1) + logp).reshape(B, K * C)
        score, flat = total.topk(K, dim=-1)  # (B, K)
        src = (torch.arange(B, device=points.device)[:, None] * K + flat // C).flatten()  # (B*K,)
        choice = (flat % C).flatten()
        prog = prog.take(src)
        state = {k: v[src] for k, v in state.items()}
        emitted = torch.where(prog.done, torch.full_like(choice, PAD), choice)
        seqs = torch.cat([seqs[src], emitted[:, None]], dim=1)
        prog.advance(choice)
        prev = choice
    best = score.argmax(-1)  # (B,)
    return seqs.reshape(B, K, -1)[torch.arange(B), best]


@torch.no_grad()
def pointer_distributions(model: _PointerSeqModel, points: Tensor, seq: Sequence[int]) -> Tensor:
    """Teacher-forced output distributions (T, C) of one instance ``points`` (n, 2) along ``seq``
    (e.g. a decoded sequence; PAD is dropped): row i is p(C_i | C_<i, P) over 0 (end), 1, 2, ..."""
    seq = [int(s) for s in seq if int(s) != PAD]
    if not seq:
        raise ValueError("seq must hold at least one pointer")
    logp = model(points[None], torch.tensor([seq], device=points.device))  # (1, T, C)
    return logp[0].exp()


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------

def _trim(seq: Tensor | Sequence[int]) -> list[int]:
    s = seq.tolist() if isinstance(seq, torch.Tensor) else list(seq)
    return [int(x) for x in s if int(x) != PAD]


def polygon_area(points: np.ndarray | Tensor | Sequence, vertices: Sequence[int]) -> float:
    """Area of the polygon through ``points[vertices]`` (0-based, open ring) by the shoelace formula."""
    p = _as_points(points)[list(vertices)]
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _segments_cross(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> bool:
    """Do the closed segments ab and cd intersect?"""
    def orient(p, q, r):
        v = float((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))
        return int(v > 0) - int(v < 0)

    def on(p, q, r):  # r on segment pq, given collinear
        return min(p[0], q[0]) <= r[0] <= max(p[0], q[0]) and min(p[1], q[1]) <= r[1] <= max(p[1], q[1])

    o1, o2, o3, o4 = orient(a, b, c), orient(a, b, d), orient(c, d, a), orient(c, d, b)
    if o1 != o2 and o3 != o4:
        return True
    return (o1 == 0 and on(a, b, c)) or (o2 == 0 and on(a, b, d)) or (o3 == 0 and on(c, d, a)) \
        or (o4 == 0 and on(c, d, b))


def is_simple_polygon(points: np.ndarray | Tensor | Sequence, vertices: Sequence[int]) -> bool:
    """True if the closed ring ``points[vertices]`` (0-based, >= 3 distinct) does not cross itself."""
    p = _as_points(points)
    v = list(vertices)
    m = len(v)
    if m < 3 or len(set(v)) != m:
        return False
    for i in range(m):
        for j in range(i + 1, m):
            if j == i + 1 or (i == 0 and j == m - 1):
                continue  # neighbouring edges share a vertex
            if _segments_cross(p[v[i]], p[v[(i + 1) % m]], p[v[j]], p[v[(j + 1) % m]]):
                return False
    return True


def parse_closed_sequence(seq: Tensor | Sequence[int], n: int) -> list[int] | None:
    """The 0-based ring of a pointer sequence ``[c1, .., ck, c1, 0]`` over ``n`` points, or None
    if the sequence is not of that form (wrong end, repeats, pointers out of range)."""
    s = _trim(seq)
    if len(s) < 3 or s[-1] != 0 or s[-2] != s[0]:
        return None
    ring = s[:-2]
    if any(not 1 <= c <= n for c in ring) or len(set(ring)) != len(ring):
        return None
    return [c - 1 for c in ring]


def hull_metrics(points: Tensor, lengths: Tensor | None, pred: Tensor, target: Tensor) -> dict[str, float]:
    """Convex-hull metrics over a batch: ``accuracy`` (exact sequence), ``area`` (mean area of the
    predicted polygon / area of the true hull, 0 for invalid outputs) and ``fail`` (fraction of
    outputs that are not a closed, simple polygon of >= 3 distinct points)."""
    B = points.shape[0]
    if pred.ndim != 2 or target.ndim != 2 or pred.shape[0] != B or target.shape[0] != B:
        raise ValueError(f"pred and target must have shape ({B}, T), got {tuple(pred.shape)} and {tuple(target.shape)}")
    lengths = torch.full((B,), points.shape[1]) if lengths is None else lengths
    acc = area = fail = 0.0
    for b in range(B):
        n = int(lengths[b])
        p = points[b, :n].cpu().numpy()
        t, s = _trim(target[b]), _trim(pred[b])
        acc += float(s == t)
        ring = parse_closed_sequence(s, n)
        if ring is None or not is_simple_polygon(p, ring):
            fail += 1
            continue
        true_area = polygon_area(p, [c - 1 for c in t[:-2]])
        area += polygon_area(p, ring) / true_area if true_area > 0 else float(s == t)
    return {"accuracy": acc / B, "area": area / B, "fail": fail / B}


def tour_length(points: np.ndarray | Tensor | Sequence, seq: Tensor | Sequence[int]) -> float:
    """Length of the closed tour that the pointer sequence ``seq`` describes; ``nan`` if ``seq``
    is not a valid tour (every point exactly once, back to the first, then end)."""
    p = _as_points(points)
    ring = parse_closed_sequence(seq, len(p))
    if ring is None or len(ring) != len(p):
        return float("nan")
    q = p[ring]  # (n, 2) in tour order
    return float(np.linalg.norm(q - np.roll(q, -1, axis=0), axis=-1).sum())


def tsp_metrics(points: Tensor, pred: Tensor) -> dict[str, float]:
    """TSP metrics over a batch of equal-size instances: mean predicted tour ``length`` (valid
    tours only), mean ``optimal`` length (Held--Karp), and ``fail`` (fraction of invalid tours)."""
    lens = np.array([tour_length(points[b], pred[b]) for b in range(points.shape[0])])
    _, opt = held_karp(points)
    ok = ~np.isnan(lens)
    return {"length": float(lens[ok].mean()) if ok.any() else float("nan"),
            "optimal": float(np.mean(opt)), "fail": float(1 - ok.mean())}


def evaluate_hull(model: _PointerSeqModel, batch: PointerBatch, beam: int = 1) -> dict[str, float]:
    """Decode a hull ``batch`` with the hull constraints (greedy, or beam search for ``beam > 1``)
    and score it with :func:`hull_metrics`."""
    decode = greedy_decode(model, batch.points, batch.lengths, task="hull") if beam == 1 else \
        beam_search(model, batch.points, batch.lengths, task="hull", beam=beam)
    return hull_metrics(batch.points, batch.lengths, decode, batch.targets)


# ----------------------------------------------------------------------------------------------
# Figures and the explorer
# ----------------------------------------------------------------------------------------------

def plot_hull_prediction(points: Tensor | np.ndarray, pred: Tensor | Sequence[int],
                         target: Tensor | Sequence[int] | None = None, ax: Axes | None = None,
                         probs: Tensor | None = None, title: str | None = None, labels: bool = True) -> Axes:
    """Draw the points, the true hull (grey, dashed) and the predicted polygon (green if exactly
    right, orange if a valid but different polygon, red if invalid). ``probs`` (C,) scales each
    point by the probability the model gives it (a pointer distribution). Returns the axes."""
    import matplotlib.pyplot as plt

    p = _as_points(points)
    n = len(p)
    ax = plt.subplots(figsize=(3.6, 3.6))[1] if ax is None else ax
    target = hull_target(p) if target is None else _trim(target)
    pred = _trim(pred)
    true_ring = [c - 1 for c in target[:-2]]
    ax.fill(*p[true_ring].T, color="0.85", zorder=0)
    ax.plot(*p[true_ring + true_ring[:1]].T, "--", color="0.45", lw=1, label="true hull", zorder=1)
    ring = parse_closed_sequence(pred, n)
    ok = ring is not None and is_simple_polygon(p, ring)
    color = "tab:green" if pred == target else "tab:orange" if ok else "tab:red"
    shown = ring if ring is not None else [c - 1 for c in pred if 1 <= c <= n]
    if shown:
        closed = shown + shown[:1] if ring is not None else shown
        ax.plot(*p[closed].T, "-", color=color, lw=2, alpha=0.8, label="prediction", zorder=2)
    sizes = np.full(n, 14.0)
    if probs is not None:
        pr = torch.as_tensor(probs).detach().cpu().numpy()
        sizes[:min(n, len(pr) - 1)] = 14 + 600 * pr[1:n + 1]
    ax.scatter(*p.T, s=sizes, color="tab:blue", alpha=0.7, zorder=3)
    if labels and n <= 25:
        for i, (x, y) in enumerate(p):
            ax.annotate(str(i + 1), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7)
    if title is None:
        title = "exact" if pred == target else (
            f"area {polygon_area(p, ring) / max(polygon_area(p, true_ring), 1e-12):.1%}" if ok else "FAIL")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_aspect("equal")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    return ax


def hull_explorer(models: dict[str, _PointerSeqModel], n: int = 20, n_max: int = 50,
                  train_range: tuple[int, int] = (5, 10), seed: int = 0) -> ipywidgets.Widget:
    """ipywidgets explorer: random points (slider ``n``, button for new points), a model's
    predicted hull against the true hull, and the pointer distribution of one decoding step
    drawn as point sizes."""
    import ipywidgets as W
    import matplotlib.pyplot as plt

    if not models:
        raise ValueError("models must map at least one name to a model")
    if not 3 <= n <= n_max:
        raise ValueError(f"need 3 <= n <= n_max, got n={n}, n_max={n_max}")
    which = W.Dropdown(options=list(models), description="model")
    size = W.IntSlider(value=n, min=3, max=n_max, description="n points")
    beam = W.IntSlider(value=1, min=1, max=5, description="beam")
    step = W.IntSlider(value=0, min=0, max=n_max + 1, description="step", tooltip="decoding step shown as point sizes")
    new = W.Button(description="new points")
    out = W.Output()
    draws = {"k": seed}

    def draw(*_):
        g = torch.Generator().manual_seed(draws["k"] * 1000 + size.value)
        model = models[which.value]
        pts = random_points(1, size.value, g).to(next(model.parameters()).device)
        pred = beam_search(model, pts, task="hull", beam=beam.value)[0]
        seq = _trim(pred)
        shown = min(step.value, len(seq) - 1)
        probs = pointer_distributions(model, pts[0], seq)[shown]
        lo, hi = train_range
        where = "inside" if lo <= size.value <= hi else "OUTSIDE"
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(4.6, 4.6))
            plot_hull_prediction(pts[0].cpu(), seq, ax=ax, probs=probs)
            ax.set_title(f"{which.value}, n={size.value} ({where} training range {lo}-{hi})\n"
                         f"{ax.get_title()}; point size = p(pointer at step {shown} = point)", fontsize=9)
            plt.show()

    def renew(_):
        draws["k"] += 1
        draw()

    for w in (which, size, beam, step):
        w.observe(draw, names="value")
    new.on_click(renew)
    draw()
    return W.HBox([W.VBox([which, size, beam, step, new]), out])
