"""Inverse permutation learning (Alur, Hays, Raghavan & Shah, 2025, arXiv 2509.24125).

Everything the chapter ``book/structure/inverse-permutation.md`` needs, in one module:

* **The task** (:class:`InversePermutationTask`): the input is a permutation matrix ``P`` and the
  permuted string ``Y_P = P Y``; the model must write the canonical string ``Y`` into ``n``
  read-out rows. Optional content-free *scratch tokens* are appended after ``Y_P``; by default
  the read-out rows are the **last** ``n`` rows (:func:`readout_rows`). ``causal=False`` removes
  the mask.
* **Data** (:func:`random_permutations`, :func:`make_batch`): uniform permutations, or
  near-identity ones built from ``k`` random transpositions (the curriculum,
  :func:`curriculum_transpositions`).
* **The bound** (:func:`reachable`, :func:`causal_bound`, :func:`oracle_prediction`): under a
  causal mask, the read-out row of ``Y_j`` can recover it only if the row holding it comes no
  later (Lemma 1); with i.i.d. zero-mean targets no causal model beats the chapter's eq.
  ``ip-bound``: ``nMSE >= (n - m)(n - m - 1) / (2 n^2)`` for ``m`` scratch tokens.
* **Models**: :class:`PermutationInverter`, a small pre-LN transformer on
  :class:`companion.nn.TransformerBlock` (trained in the chapter; one network can be read at
  several windows and moved to another mask with :meth:`PermutationInverter.adapt`), and
  :class:`DisentangledTransformer`, the attention-only model the paper analyses, with a hand-built
  two-layer solution (:func:`handbuilt_solution`).
* **Training and metrics** (:func:`train_inverter`, :func:`evaluate`, :func:`nmse`, :func:`row_nmse`).
* **Figures** (:func:`plot_reachability`) and an ipywidgets explorer (:func:`reachability_explorer`).

Index conventions: ``sigma`` is a ``(B, n)`` long tensor; row ``i`` of ``P`` is ``e_{sigma[i]}``, so
row ``i`` of ``Y_P`` holds ``Y[sigma[i]]``. Sequence rows: ``0..n-1`` hold ``P``, ``n..2n-1`` hold
``Y_P``, ``2n..2n+m-1`` are scratch tokens; ``Y_j`` must appear at row ``n + offset + j``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.attention import reference_attention
from ..nn.masks import CausalMask, FullMask, Mask
from ..nn.transformer import TransformerBlock, TransformerConfig
from ..train import History, train

Tensor = torch.Tensor
N_TYPES = 3  # token types: P row, Y_P row, scratch token


# ----------------------------------------------------------------------------------------------
# The task and its data
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InversePermutationTask:
    """One variant of the task: ``n`` elements of dimension ``d_y``, ``n_scratch`` scratch tokens,
    causal or bidirectional attention.

    Token features (eq. ``ip-tokens`` of the chapter), ``feature_dim = 2n + d_y + 3 + length``:
    ``[code (n) | y (d_y) | type (3) | slot (n) | one-hot position (length)]``; a ``P`` row carries
    ``code = e_{sigma[i]}``, a ``Y_P`` row ``y = Y[sigma[i]]``, a scratch token only its type.
    ``slot`` is the one-hot index of the row inside its block (``P`` row ``i``, ``Y_P`` row ``n + i``
    and scratch row ``2n + i`` all have slot ``i``, taken mod ``n``). Type and slot are fixed linear
    functions of the one-hot position, so they add no expressive power; they shorten training.
    """

    n: int
    d_y: int = 8
    n_scratch: int = 0
    causal: bool = True

    def __post_init__(self) -> None:
        if int(self.n) < 2:
            raise ValueError(f"n must be >= 2 (a permutation of at least two elements), got {self.n}")
        if int(self.d_y) < 1:
            raise ValueError(f"d_y must be >= 1, got {self.d_y}")
        if int(self.n_scratch) < 0:
            raise ValueError(f"n_scratch must be >= 0, got {self.n_scratch}")

    @property
    def length(self) -> int:
        """Sequence length ``T = 2n + m``."""
        return 2 * self.n + self.n_scratch

    @property
    def feature_dim(self) -> int:
        """Width of one input token."""
        return 2 * self.n + self.d_y + N_TYPES + self.length

    @property
    def mask(self) -> Mask:
        """The attention mask of this variant."""
        return CausalMask() if self.causal else FullMask()

    @property
    def name(self) -> str:
        """Short label for plots and tables."""
        if not self.causal:
            return "no mask" if self.n_scratch == 0 else f"no mask + {self.n_scratch} scratch"
        return "causal" if self.n_scratch == 0 else f"causal + {self.n_scratch} scratch"


@dataclass
class PermutationBatch:
    """Inputs ``x`` (B, T, F), canonical targets ``y`` (B, n, d_y) and the permutations ``sigma`` (B, n)."""

    x: Tensor
    y: Tensor
    sigma: Tensor


def random_permutations(batch: int, n: int, n_transpositions: int | None = None,
                        generator: torch.Generator | None = None) -> Tensor:
    """``(batch, n)`` permutations: uniform, or the identity after ``n_transpositions`` random swaps."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n_transpositions is None:
        return torch.rand(batch, n, generator=generator).argsort(dim=-1)
    if n_transpositions < 0:
        raise ValueError(f"n_transpositions must be >= 0 or None (uniform), got {n_transpositions}")
    sigma = torch.arange(n).repeat(batch, 1)  # (B, n)
    rows = torch.arange(batch)
    for _ in range(n_transpositions):
        ij = torch.randint(n, (batch, 2), generator=generator)  # (B, 2); i == j is a no-op swap
        a, b = sigma[rows, ij[:, 0]].clone(), sigma[rows, ij[:, 1]].clone()
        sigma[rows, ij[:, 0]], sigma[rows, ij[:, 1]] = b, a
    return sigma


def _check_sigma(sigma: Tensor, n: int | None = None) -> Tensor:
    if not isinstance(sigma, torch.Tensor) or sigma.ndim != 2 or sigma.is_floating_point():
        raise ValueError(f"sigma must be an integer tensor of shape (B, n), got {getattr(sigma, 'shape', sigma)!r}")
    if n is not None and sigma.shape[1] != n:
        raise ValueError(f"sigma must have n={n} columns, got shape {tuple(sigma.shape)}")
    ref = torch.arange(sigma.shape[1], device=sigma.device).expand_as(sigma)
    if not torch.equal(sigma.sort(dim=-1).values, ref):
        raise ValueError("sigma must hold a permutation of 0..n-1 in every row")
    return sigma


def encode(task: InversePermutationTask, sigma: Tensor, y: Tensor) -> Tensor:
    """The input sequence ``h^(0) = [X, I_T]`` for permutations ``sigma`` (B, n) and strings ``y`` (B, n, d_y).

    Returns ``(B, T, feature_dim)``; see :class:`InversePermutationTask` for the layout.
    """
    n, d = task.n, task.d_y
    sigma = _check_sigma(sigma, n)
    if y.ndim != 3 or y.shape[0] != sigma.shape[0] or y.shape[1:] != (n, d):
        raise ValueError(f"y must have shape (B, n, d_y) = ({sigma.shape[0]}, {n}, {d}), got {tuple(y.shape)}")
    B, T = sigma.shape[0], task.length
    x = torch.zeros(B, T, task.feature_dim, dtype=y.dtype, device=y.device)
    x[:, :n, :n] = F.one_hot(sigma, n).to(y.dtype)  # P rows: code e_{sigma[i]}
    x[:, n:2 * n, n:n + d] = y.gather(1, sigma[..., None].expand(-1, -1, d))  # Y_P rows: Y[sigma[i]]
    t0 = n + d
    x[:, :n, t0] = 1.0
    x[:, n:2 * n, t0 + 1] = 1.0
    x[:, 2 * n:, t0 + 2] = 1.0
    s0 = t0 + N_TYPES
    x[:, :, s0:s0 + n] = F.one_hot(torch.arange(T, device=y.device) % n, n).to(y.dtype)  # slot in block
    x[:, :, s0 + n:] = torch.eye(T, dtype=y.dtype, device=y.device)  # one-hot positions I_T
    return x


def make_batch(task: InversePermutationTask, batch: int, n_transpositions: int | None = None,
               generator: torch.Generator | None = None) -> PermutationBatch:
    """A fresh batch: Gaussian strings ``Y`` (zero mean, unit variance) and random permutations."""
    sigma = random_permutations(batch, task.n, n_transpositions, generator)
    y = torch.randn(batch, task.n, task.d_y, generator=generator)
    return PermutationBatch(encode(task, sigma, y), y, sigma)


def curriculum_transpositions(step: int, steps: int, n: int, ramp: float = 0.6, factor: float = 1.5) -> int | None:
    """Transposition count of the curriculum at ``step``: ramps from 0 to ``factor * n`` over the
    first ``ramp`` fraction of ``steps``, then ``None`` (uniform permutations)."""
    if not 0.0 <= ramp <= 1.0:
        raise ValueError(f"ramp must lie in [0, 1], got {ramp}")
    if factor < 0:
        raise ValueError(f"factor must be >= 0, got {factor}")
    end = ramp * steps
    if step >= end:
        return None
    return int(round(factor * n * step / end))


# ----------------------------------------------------------------------------------------------
# What a causal model can see: Lemma 1 and the bound
# ----------------------------------------------------------------------------------------------

def reachable(sigma: Tensor, n_scratch: int = 0, causal: bool = True) -> Tensor:
    """``(B, n)`` bool: can read-out row ``n + m + j`` see the row ``n + sigma^{-1}(j)`` that holds ``Y_j``?"""
    sigma = _check_sigma(sigma)
    if n_scratch < 0:
        raise ValueError(f"n_scratch must be >= 0, got {n_scratch}")
    if not causal:
        return torch.ones_like(sigma, dtype=torch.bool)
    source = sigma.argsort(dim=-1)  # source[b, j] = sigma^{-1}(j): the Y_P row holding Y_j
    j = torch.arange(sigma.shape[1], device=sigma.device)
    return source <= j + n_scratch


def causal_bound(n: int, n_scratch: int = 0) -> float:
    """Least normalised MSE of any causal model, eq. ``ip-bound``: ``(n-m)(n-m-1) / (2 n^2)`` (0 if m >= n)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n_scratch < 0:
        raise ValueError(f"n_scratch must be >= 0, got {n_scratch}")
    k = max(n - n_scratch, 0)
    return k * (k - 1) / (2 * n * n)


def oracle_prediction(task: InversePermutationTask, batch: PermutationBatch) -> Tensor:
    """The best predictor under the task's mask: ``Y_j`` where it is reachable, the mean 0 elsewhere."""
    keep = reachable(batch.sigma, task.n_scratch, task.causal)  # (B, n)
    return batch.y * keep[..., None]


def nmse(pred: Tensor, target: Tensor, rows: Tensor | None = None) -> float:
    """Normalised MSE ``sum ||pred - target||^2 / sum ||target||^2`` over (optionally selected) rows.

    ``pred`` and ``target`` are ``(B, n, d_y)``; ``rows`` is an optional ``(B, n)`` bool selection.
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"pred and target must both have shape (B, n, d_y), "
                         f"got {tuple(pred.shape)} and {tuple(target.shape)}")
    pred, target = pred.detach(), target.detach()
    err = (pred - target).pow(2).sum(-1)  # (B, n)
    energy = target.pow(2).sum(-1)
    if rows is not None:
        if rows.shape != err.shape or rows.dtype != torch.bool:
            raise ValueError(f"rows must be a bool tensor of shape {tuple(err.shape)}, "
                             f"got {rows.dtype} {tuple(rows.shape)}")
        err, energy = err[rows], energy[rows]
    total = float(energy.sum())
    return float(err.sum()) / total if total > 0 else float("nan")


# ----------------------------------------------------------------------------------------------
# The trained model
# ----------------------------------------------------------------------------------------------

class PermutationInverter(nn.Module):
    """A pre-LN transformer over real-valued tokens: linear embedding, ``n_layers`` blocks of
    :class:`companion.nn.TransformerBlock` (no positional scheme inside: positions are one-hot
    input features), final LayerNorm, linear read-out of ``d_y`` values per row."""

    def __init__(self, task: InversePermutationTask, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                 d_ff: int | None = None) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.task = task
        self.sizes = {"d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "d_ff": d_ff}
        cfg = TransformerConfig(vocab_size=1, d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ff=d_ff,
                                pos="none")
        self.embed = nn.Linear(task.feature_dim, d_model)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, task.d_y)
        self.register_buffer("positions", torch.arange(task.length), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Every row's output: ``(B, T', feature_dim) -> (B, T', d_y)``.

        ``x`` is the full sequence (``T' = T``) or a prefix of it (``T' < T``); under the causal mask
        a prefix gets exactly the outputs its rows get in the full sequence (Lemma 1).
        """
        if x.ndim != 3 or x.shape[-1] != self.task.feature_dim or not 1 <= x.shape[1] <= self.task.length:
            raise ValueError(f"x must have shape (B, T', F) with 1 <= T' <= {self.task.length} and "
                             f"F = {self.task.feature_dim}, got {tuple(x.shape)}")
        h = self.embed(x)  # (B, T', d_model)
        mask = self.task.mask
        positions = self.positions[:x.shape[1]]
        for block in self.blocks:
            h = block(h, mask, positions)
        return self.head(self.ln_f(h))  # (B, T', d_y)

    def adapt(self, task: InversePermutationTask) -> "PermutationInverter":
        """A copy of this network for another variant of the task (other mask, fewer scratch tokens).

        ``task`` must have the same ``n`` and ``d_y`` and at most as many rows. Every weight is
        copied; the embedding keeps the input columns the new layout has (the one-hot columns of
        rows beyond ``task.length`` are dropped), so on the rows they share the copy computes what
        this network computes on a prefix of its input under ``task``'s mask.
        """
        old = self.task
        if (task.n, task.d_y) != (old.n, old.d_y) or task.length > old.length:
            raise ValueError(f"task must have n={old.n}, d_y={old.d_y} and length <= {old.length}, got "
                             f"n={task.n}, d_y={task.d_y}, length={task.length}")
        new = PermutationInverter(task, **self.sizes).to(self.head.weight.device)
        state = self.state_dict()
        state["embed.weight"] = state["embed.weight"][:, :task.feature_dim]
        new.load_state_dict(state)
        return new

    def predict(self, x: Tensor, offset: int | None = None) -> Tensor:
        """The read-out window ``offset``: ``(B, n, d_y)``, the model's guess of the canonical string."""
        return self(x)[:, readout_rows(self.task, offset)]

    def attention_maps(self, x: Tensor) -> list[Tensor]:
        """Attention weights of every layer, ``(B, H, T, T)`` each, from the reference attention."""
        for block in self.blocks:
            block.attn.keep_weights = True
        try:
            with torch.no_grad():
                self(x)
            return [block.attn.last_weights for block in self.blocks]
        finally:
            for block in self.blocks:
                block.attn.keep_weights = False


def readout_rows(task: InversePermutationTask, offset: int | None = None) -> slice:
    """Rows ``n + offset .. 2n + offset - 1``, where ``Y_0 .. Y_{n-1}`` are read.

    ``offset`` counts the scratch tokens a read-out row has behind it: ``0`` reads at the ``Y_P``
    rows (the plain task), ``n_scratch`` (the default) at the last ``n`` rows. Under the causal mask,
    reading window ``offset`` of a sequence with ``n_scratch`` scratch tokens gives exactly what the
    same network gives on a sequence with only ``offset`` scratch tokens (Lemma 1).
    """
    offset = task.n_scratch if offset is None else int(offset)
    if not 0 <= offset <= task.n_scratch:
        raise ValueError(f"offset must lie in [0, n_scratch={task.n_scratch}], got {offset}")
    return slice(task.n + offset, 2 * task.n + offset)


def evaluate(model: PermutationInverter, batch: PermutationBatch, offset: int | None = None) -> dict[str, float]:
    """nMSE of read-out window ``offset`` on ``batch``, overall and split by whether a plain causal
    model (no scratch tokens) could reach the row: ``sigma^{-1}(j) <= j`` ("reachable") or not."""
    with torch.no_grad():
        pred = model.predict(batch.x, offset)
    seen = reachable(batch.sigma)
    return {"nmse": nmse(pred, batch.y),
            "nmse_reachable": nmse(pred, batch.y, seen),
            "nmse_unreachable": nmse(pred, batch.y, ~seen)}  # NaN when no row is out of sight


def train_inverter(task: InversePermutationTask, *, steps: int, readouts: Mapping[str, int] | None = None,
                   batch: int = 64, lr: float = 3e-3, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                   d_ff: int | None = None, curriculum: bool = True, eval_batch: PermutationBatch | None = None,
                   eval_every: int = 100, seed: int = 0, device: torch.device | str = "cpu",
                   init: PermutationInverter | None = None, progress: bool = True
                   ) -> tuple[PermutationInverter, History]:
    """Train a :class:`PermutationInverter` on fresh batches with :func:`companion.train.train`.

    ``readouts`` maps a name to a read-out window (:func:`readout_rows`); the loss is the mean of
    the windows' MSEs, and each window is evaluated as ``"<name>/nmse"``, ``"<name>/nmse_reachable"``
    and ``"<name>/nmse_unreachable"`` (default: one window, the last ``n`` rows, named
    ``task.name``). With ``curriculum`` the permutations start near the identity
    (:func:`curriculum_transpositions`); evaluation always uses ``eval_batch`` (uniform
    permutations; default: 1,024 drawn from seed ``seed + 10_000``) and also runs before the first
    step. ``init`` warm-starts from a trained network (:meth:`PermutationInverter.adapt`); the
    size arguments are then taken from it.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    readouts = {task.name: task.n_scratch} if readouts is None else dict(readouts)
    if not readouts:
        raise ValueError("readouts must name at least one read-out window")
    for offset in readouts.values():
        readout_rows(task, offset)  # validates the offset
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if eval_batch is None:
        eval_batch = make_batch(task, 1024, generator=torch.Generator().manual_seed(seed + 10_000))
    eval_batch = PermutationBatch(*(t.to(device) for t in (eval_batch.x, eval_batch.y, eval_batch.sigma)))
    model = init.adapt(task) if init is not None else PermutationInverter(task, d_model, n_layers, n_heads, d_ff)
    model = model.to(device)

    def batches(step: int) -> PermutationBatch:
        k = curriculum_transpositions(step, steps, task.n) if curriculum else None
        b = make_batch(task, batch, k, gen)
        return PermutationBatch(b.x.to(device), b.y.to(device), b.sigma.to(device))

    def loss_fn(m: PermutationInverter, b: PermutationBatch) -> Tensor:
        out = m(b.x)  # (B, T, d_y): one forward pass serves every read-out window
        return sum(F.mse_loss(out[:, readout_rows(task, o)], b.y) for o in readouts.values()) / len(readouts)

    def eval_fn(m: PermutationInverter) -> dict[str, float]:
        return {f"{name}/{k}": v for name, o in readouts.items() for k, v in evaluate(m, eval_batch, o).items()}

    model.eval()
    with torch.no_grad():
        before = eval_fn(model)
    hist = train(model, loss_fn, batches, steps=steps, lr=lr, warmup=max(1, steps // 20), eval_fn=eval_fn,
                 eval_every=eval_every, desc=", ".join(readouts), progress=progress)
    hist.eval_steps.insert(0, 0)
    hist.evals.insert(0, before)
    return model, hist


# ----------------------------------------------------------------------------------------------
# The paper's formal model: the disentangled, attention-only transformer
# ----------------------------------------------------------------------------------------------

class DisentangledTransformer(nn.Module):
    """``h^(i+1) = [h^(i), softmax(MASK(h^(i) A^(i+1) h^(i)T)) h^(i)]`` (eq. ``ip-disentangled``).

    ``matrices[i]`` has shape ``(d_i, d_i)`` with ``d_i = 2^i d_0``: each layer appends a block of
    the width of the whole residual stream so far, nothing is ever overwritten.
    """

    def __init__(self, matrices: list[Tensor], d0: int) -> None:
        super().__init__()
        if not matrices:
            raise ValueError("matrices must hold at least one layer")
        for i, a in enumerate(matrices):
            width = d0 * 2 ** i
            if a.shape != (width, width):
                raise ValueError(f"matrices[{i}] must have shape ({width}, {width}), got {tuple(a.shape)}")
        self.d0 = d0
        self.A = nn.ParameterList(nn.Parameter(a.clone()) for a in matrices)

    def forward(self, h: Tensor, mask: Mask | None) -> Tensor:
        """``h^(0)`` (B, T, d0) -> the last residual stream ``h^(k)`` (B, T, 2^k d0)."""
        if h.ndim != 3 or h.shape[-1] != self.d0:
            raise ValueError(f"h must have shape (B, T, {self.d0}), got {tuple(h.shape)}")
        for a in self.A:
            scores_q = (h @ a)[:, None]  # (B, 1, T, d): query side h A, one head
            out = reference_attention(scores_q, h[:, None], h[:, None], mask, scale=1.0)  # (B, 1, T, d)
            h = torch.cat([h, out[:, 0]], dim=-1)
        return h


def handbuilt_solution(task: InversePermutationTask, beta: float = 50.0) -> DisentangledTransformer:
    """A two-layer disentangled transformer that inverts the permutation where the mask allows.

    Layer 1 (positional offset): row ``n + i`` attends to ``P`` row ``i`` and copies its code
    ``e_{sigma[i]}``. Layer 2 (content match): read-out row ``n + m + j`` attends to the ``Y_P`` row
    whose copied code is ``e_j`` (score ``2 beta``; other ``Y_P`` rows ``beta``, every other row at
    most ``beta``) and so copies ``Y_j``. ``beta`` is the softmax sharpness.
    Read the answer with :func:`handbuilt_readout`.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    n, d, d0 = task.n, task.d_y, task.feature_dim
    pos0 = 2 * n + d + N_TYPES  # column of the one-hot position of row 0
    a1 = torch.zeros(d0, d0)
    for i in range(n):  # query row n+i matches key row i
        a1[pos0 + n + i, pos0 + i] = beta
    a2 = torch.zeros(2 * d0, 2 * d0)
    start = readout_rows(task).start
    for j in range(n):  # query: read-out row start+j
        a2[pos0 + start + j, d0 + j] = beta  # key: the code e_j copied by layer 1 ...
        a2[pos0 + start + j, n + d + 1] = beta  # ... on a Y_P row (a P row may hold e_j too)
    return DisentangledTransformer([a1, a2], d0)


def handbuilt_readout(task: InversePermutationTask, h: Tensor) -> Tensor:
    """The ``y`` columns of the layer-2 block at the read-out rows: ``(B, T, 4 d0) -> (B, n, d_y)``."""
    d0 = task.feature_dim
    if h.ndim != 3 or h.shape[-1] != 4 * d0:
        raise ValueError(f"h must be the residual stream of a 2-layer model, shape (B, T, {4 * d0}), "
                         f"got {tuple(h.shape)}")
    block2 = h[:, readout_rows(task), 2 * d0:]  # (B, n, 2 d0): layer 2 attended to h^(1)
    return block2[..., task.n:task.n + task.d_y]


# ----------------------------------------------------------------------------------------------
# Figures and the explorer
# ----------------------------------------------------------------------------------------------

def row_labels(task: InversePermutationTask) -> list[str]:
    """Tick labels of the sequence rows: ``P0..``, ``Y_P0..``, ``S0..`` (scratch)."""
    n = task.n
    return [f"P{i}" for i in range(n)] + [f"Yp{i}" for i in range(n)] + [f"S{i}" for i in range(task.n_scratch)]


def plot_reachability(task: InversePermutationTask, sigma: Tensor, ax=None, title: str | None = None):
    """The task's attention mask with, for every ``j``, a marker at (read-out row of ``Y_j``, row holding
    ``Y_j``): a green dot where the mask lets the read-out row see it, a red cross where it does not.

    ``sigma`` is one permutation, shape ``(n,)``. Returns the matplotlib axes.
    """
    import matplotlib.pyplot as plt

    from ..viz import plot_mask

    sigma = _check_sigma(torch.as_tensor(sigma).reshape(1, -1), task.n)
    T, n = task.length, task.n
    dense = task.mask.dense(T)[0]  # (T, T)
    ax = plt.subplots(figsize=(4.2, 4.2))[1] if ax is None else ax
    source = n + sigma[0].argsort()  # row of Y_j
    read = torch.arange(readout_rows(task).start, readout_rows(task).stop)  # read-out row of Y_j
    ok = dense[read, source]
    if title is None:
        title = f"{task.name}: {int((~ok).sum())} of {n} out of sight"
    plot_mask(dense, ax=ax, title=title, labels=row_labels(task))
    ax.scatter(source[ok].tolist(), read[ok].tolist(), s=40, c="tab:green", marker="o", label="Y_j visible")
    ax.scatter(source[~ok].tolist(), read[~ok].tolist(), s=50, c="tab:red", marker="x", label="Y_j hidden")
    ax.set_xlabel("key row (where Y_j sits)")
    ax.set_ylabel("query row (where Y_j must appear)")
    return ax


def row_nmse(model: PermutationInverter, sigma: Tensor, offset: int | None = None, samples: int = 256,
             generator: torch.Generator | None = None) -> Tensor:
    """Per-row nMSE of read-out window ``offset`` for one permutation ``sigma`` (n,), averaged over
    ``samples`` random strings ``Y``: shape ``(n,)``."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    task = model.task
    sig = _check_sigma(torch.as_tensor(sigma).reshape(1, -1), task.n).expand(samples, -1)
    y = torch.randn(samples, task.n, task.d_y, generator=generator)
    device = model.head.weight.device
    with torch.no_grad():
        pred = model.predict(encode(task, sig, y).to(device), offset).cpu()
    return (pred - y).pow(2).sum(-1).sum(0) / y.pow(2).sum(-1).sum(0)


def reachability_explorer(n: int, models: Mapping[str, tuple[PermutationInverter, int]] | None = None):
    """Pick a permutation (by seed), the number of scratch tokens and the mask; see which answers
    are out of sight, the bound, and the per-row error of the trained networks that match.

    ``models`` maps a variant name (``InversePermutationTask.name``) to ``(network, offset)``.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from ..widgets import redraw_on

    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    models = dict(models or {})
    seed = W.IntSlider(value=0, min=0, max=99, description="perm. seed")
    scratch = W.IntSlider(value=0, min=0, max=n, description="scratch m")
    masked = W.Checkbox(value=True, description="causal mask")

    def draw() -> None:
        task = InversePermutationTask(n, n_scratch=scratch.value, causal=masked.value)
        sigma = random_permutations(1, n, generator=torch.Generator().manual_seed(seed.value))[0]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
        plot_reachability(task, sigma, ax=a1)
        seen = reachable(sigma[None], task.n_scratch, task.causal)[0]
        x = list(range(n))
        a2.bar([i - 0.2 for i in x], (~seen).float().tolist(), width=0.4, color="lightgray",
               label="best possible (oracle)")
        if task.name in models:
            net, offset = models[task.name]
            err = row_nmse(net, sigma, offset, generator=torch.Generator().manual_seed(1))
            a2.bar([i + 0.2 for i in x], err.tolist(), width=0.4, color="tab:blue", label=f"trained: {task.name}")
        a2.set_xticks(range(n), [f"Y{j}" for j in range(n)])
        a2.set_ylim(0, 1.5)
        a2.set_xlabel("canonical row j")
        a2.set_ylabel("nMSE of row j (256 random strings)")
        a2.set_title(f"bound over all permutations: {causal_bound(n, task.n_scratch if task.causal else n):.3f}",
                     fontsize=10)
        a2.legend(fontsize=8, loc="upper right")
        fig.tight_layout()

    return redraw_on([seed, scratch, masked], draw)
