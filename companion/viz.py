"""Plotting helpers shared by the chapters: masks, attention maps, learning curves."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes

from .nn.masks import Mask
from .train import History

Tensor = torch.Tensor


def _axes(ax: Axes | None, size: tuple[float, float] = (4.5, 4.0)) -> Axes:
    return plt.subplots(figsize=size)[1] if ax is None else ax


def _matrix(x: Tensor, name: str) -> Tensor:
    t = torch.as_tensor(x).detach().cpu()
    while t.ndim > 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix (or have leading dims of size 1), got shape {tuple(t.shape)}")
    return t


def _ticks(ax: Axes, q_labels: Sequence[str] | None, k_labels: Sequence[str] | None) -> None:
    if k_labels is not None:
        ax.set_xticks(range(len(k_labels)), k_labels, rotation=90, fontsize=7)
    if q_labels is not None:
        ax.set_yticks(range(len(q_labels)), q_labels, fontsize=7)


def plot_mask(mask: Mask | Tensor, n: int | None = None, nk: int | None = None, ax: Axes | None = None,
              title: str | None = None, labels: Sequence[str] | None = None) -> Axes:
    """Show a boolean attention mask: dark = may attend. ``mask`` is a Mask (give ``n``) or a matrix."""
    if isinstance(mask, Mask):
        if n is None:
            raise ValueError("n (number of query positions) is required when mask is a Mask object")
        m = mask.dense(n, nk)[0]
        title = title or repr(mask)
    else:
        m = _matrix(mask, "mask")
    ax = _axes(ax)
    ax.imshow(m.float().numpy(), cmap="Blues", vmin=0, vmax=1.15, interpolation="nearest")
    ax.set_title(title or "attention mask", fontsize=10)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    _ticks(ax, labels, labels)
    return ax


def plot_attention(weights: Tensor, ax: Axes | None = None, title: str | None = None,
                   q_labels: Sequence[str] | None = None, k_labels: Sequence[str] | None = None) -> Axes:
    """Heat map of attention weights (Nq, Nk), rows = queries, with a colour bar."""
    w = _matrix(weights, "weights").float()
    ax = _axes(ax)
    im = ax.imshow(w.numpy(), cmap="viridis", interpolation="nearest", vmin=0)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    ax.set_title(title or "attention weights", fontsize=10)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    _ticks(ax, q_labels, k_labels)
    return ax


def plot_curves(curves: Mapping[str, Sequence[float] | History], ax: Axes | None = None,
                x: Mapping[str, Sequence[float]] | None = None, xlabel: str = "training step",
                ylabel: str = "training loss", title: str | None = None,
                hlines: Mapping[str, float] | None = None, logy: bool = False, smooth: int = 20) -> Axes:
    """Learning curves, one line per entry; a :class:`History` plots its smoothed training loss.

    ``hlines`` draws labelled horizontal reference lines (e.g. an analytic bound).
    """
    if not curves:
        raise ValueError("curves must hold at least one series")
    ax = _axes(ax, (6.0, 3.8))
    for name, series in curves.items():
        if isinstance(series, History):
            xs, ys = series.steps, series.smoothed_losses(smooth)
        else:
            ys = list(series)
            xs = list(x[name]) if x is not None and name in x else list(range(len(ys)))
        if len(xs) != len(ys):
            raise ValueError(f"curve {name!r}: {len(xs)} x values for {len(ys)} y values")
        ax.plot(xs, ys, label=name)
    for i, (name, y) in enumerate((hlines or {}).items()):
        ax.axhline(y, ls="--", lw=1, color=f"C{len(curves) + i}", label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or ylabel, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
