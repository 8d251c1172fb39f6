"""RoPE with adjusted base frequency (ABF) vs position interpolation (PI).

Xiong et al., *Effective Long-Context Scaling of Foundation Models* (NAACL 2024, arXiv 2309.16039).
Everything the chapter ``book/inference/long-context-scaling.md`` needs:

* **Analysis** (exact, float64): the RoPE frequencies :func:`rope_inv_freq` (eq. (1) of the
  chapter), the RoFormer long-term decay bound :func:`decay_bound` (eq. (3)), its relative form
  :func:`relative_decay` and its mean over a range of distances :func:`mean_relative_decay` (eq. (4)).
* **Context extension** of a trained RoPE model: a :class:`RoPEScaling` names the rotation a
  model should use (a base and a position scale; :func:`extension` builds the three variants
  ``"rope"``, ``"pi"``, ``"abf"``) and :func:`rope_correction` turns it into an ``attn_fn`` for
  :class:`companion.nn.TinyLM`. The model keeps rotating ``q, k`` with its own base; the
  correction rotates every pair further by ``m (s θ'_k - θ_k)`` (eq. (5)), since 2-D rotations
  compose by adding angles. Angles are computed in float64 and cast at the end.
The chapter's retrieval task and its accuracy are the InfLLM chapter's
(:func:`companion.inference.infllm.recall_batch`, :func:`~companion.inference.infllm.answer_accuracy`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..nn import attention
from ..nn.positions import apply_rope

Tensor = torch.Tensor
METHODS = ("rope", "pi", "abf")


# ----------------------------------------------------------------------------------------------
# Analysis: frequencies and the long-term decay bound
# ----------------------------------------------------------------------------------------------

def _check_rope_args(head_dim: int, base: float) -> None:
    if not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim must be an even int >= 2, got {head_dim!r}")
    if not base > 1:
        raise ValueError(f"base must be > 1, got {base!r}")


def rope_inv_freq(head_dim: int, base: float) -> Tensor:
    """θ_k = base^(-2k/d) for k = 0..d/2-1 (eq. (1)), float64, shape (d/2,)."""
    _check_rope_args(head_dim, base)
    return float(base) ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def wavelengths(head_dim: int, base: float) -> Tensor:
    """Wavelength 2π/θ_k of each rotating pair, in tokens, shape (d/2,)."""
    return 2 * math.pi / rope_inv_freq(head_dim, base)


def _distances(distances: Tensor | int | float | list) -> Tensor:
    m = torch.as_tensor(distances, dtype=torch.float64)
    if m.ndim > 1 or not torch.isfinite(m).all():
        raise ValueError("distances must be a finite scalar or 1-D sequence of relative distances")
    return m.reshape(-1)


def decay_bound(distances: Tensor | int | float | list, head_dim: int, base: float) -> Tensor:
    """B_b(m) = (2/d) Σ_{j=1}^{d/2} |Σ_{k<j} e^{i m θ_k}| (eq. (3)), float64, shape (M,).

    With h_k = q̃_k conj(k̃_k) the complex pairs of q and k and h_{d/2} := 0, Abel summation gives
    ``|Σ_k h_k e^{i m θ_k}| <= max_k |h_{k+1} - h_k| · (d/2) · B_b(m)`` (RoFormer §3.4.3).
    """
    m = _distances(distances)
    ang = m[:, None] * rope_inv_freq(head_dim, base)[None]  # (M, d/2)
    partial = torch.cumsum(torch.polar(torch.ones_like(ang), ang), dim=1)  # S_j, j = 1..d/2
    return partial.abs().mean(dim=1)


def relative_decay(distances: Tensor | int | float | list, head_dim: int, base: float) -> Tensor:
    """B_b(m) / B_b(0); B_b(0) = (d/2 + 1)/2, so the curve starts at 1."""
    return decay_bound(distances, head_dim, base) / ((head_dim // 2 + 1) / 2)


def mean_relative_decay(lo: int, hi: int, head_dim: int, base: float) -> float:
    """Mean of B_b(m)/B_b(0) over the integer distances m = lo..hi (eq. (4))."""
    if not (isinstance(lo, int) and isinstance(hi, int)) or not 0 <= lo <= hi:
        raise ValueError(f"lo and hi must be ints with 0 <= lo <= hi, got lo={lo!r}, hi={hi!r}")
    return float(relative_decay(torch.arange(lo, hi + 1), head_dim, base).mean())


# ----------------------------------------------------------------------------------------------
# Context extension: which rotation a model uses
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RoPEScaling:
    """Rotate pair k at position m by m · scale · base^(-2k/d).

    ``scale = 1``: plain RoPE with this base (ABF when the base is larger than the trained one);
    ``scale = L_old / L_new``: position interpolation (PI).
    """

    base: float
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.base > 1:
            raise ValueError(f"base must be > 1, got {self.base!r}")
        if not 0 < self.scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {self.scale!r}")

    def inv_freq(self, head_dim: int) -> Tensor:
        """Effective angular speed scale · θ_k of each pair, float64, shape (d/2,)."""
        return self.scale * rope_inv_freq(head_dim, self.base)

    def angles(self, n: int, head_dim: int) -> Tensor:
        """Rotation angles m · scale · θ_k for m = 0..n-1, float64, shape (n, d/2)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        return torch.arange(n, dtype=torch.float64)[:, None] * self.inv_freq(head_dim)[None]


def extension(method: str, trained_base: float, factor: float, abf_base: float | None = None) -> RoPEScaling:
    """The rotation used after extending the context ``factor``-fold.

    ``"rope"``: unchanged; ``"pi"``: positions scaled by 1/factor; ``"abf"``: base ``abf_base``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not factor >= 1:
        raise ValueError(f"factor must be >= 1, got {factor!r}")
    if method == "pi":
        return RoPEScaling(trained_base, 1.0 / factor)
    if method == "abf":
        if abf_base is None or not abf_base > trained_base:
            raise ValueError(f"abf_base must be larger than trained_base={trained_base}, got {abf_base!r}")
        return RoPEScaling(abf_base)
    return RoPEScaling(trained_base)


def rope_correction(trained_base: float, target: RoPEScaling) -> Callable[..., Tensor]:
    """An ``attn_fn`` for :class:`~companion.nn.TinyLM` that turns its RoPE(``trained_base``)
    into ``target`` (eq. (5)): q and k, already rotated by m θ_k, are rotated by m (s θ'_k - θ_k).

    Assumes the default positions 0..N-1 (the model is called without ``position_ids``).
    """
    if not isinstance(target, RoPEScaling):
        raise ValueError(f"target must be a RoPEScaling, got {type(target).__name__}")
    if not trained_base > 1:
        raise ValueError(f"trained_base must be > 1, got {trained_base!r}")
    cache: dict[tuple[int, int], Tensor] = {}

    def attn_fn(q: Tensor, k: Tensor, v: Tensor, mask=None, bias=None) -> Tensor:
        n, d = q.shape[2], q.shape[3]
        if (n, d) not in cache:  # the extra angle m (s θ'_k - θ_k), in float64, by nn.positions.apply_rope
            delta = target.inv_freq(d) - rope_inv_freq(d, trained_base)  # (d/2,), float64
            cache[(n, d)] = (torch.arange(n, dtype=torch.float64, device=q.device), delta)
        pos, delta = cache[(n, d)]
        return attention(apply_rope(q, pos, inv_freq=delta), apply_rope(k, pos, inv_freq=delta), v, mask, bias=bias)

    return attn_fn


# ----------------------------------------------------------------------------------------------
# Explorer
# ----------------------------------------------------------------------------------------------

def plot_decay(bases: dict[str, float], head_dim: int, max_distance: int, ax=None, window: int | None = None):
    """Relative decay bound B_b(m)/B_b(0) of eq. (3) against distance m (log axis), one line per base."""
    import matplotlib.pyplot as plt

    if not bases:
        raise ValueError("bases must name at least one base")
    if not isinstance(max_distance, int) or max_distance < 2:
        raise ValueError(f"max_distance must be an int >= 2, got {max_distance!r}")
    ax = ax or plt.subplots(figsize=(6, 3.6))[1]
    m = torch.unique(torch.logspace(0, math.log10(max_distance), 400).round())
    for name, base in bases.items():
        ax.plot(m, relative_decay(m, head_dim, base), lw=1.2, label=name)
    if window is not None:
        ax.axvline(window, ls="--", color="gray", lw=1, label=f"context window ({window})")
    ax.set_xscale("log")
    ax.set_xlabel("relative distance m (tokens)")
    ax.set_ylabel(r"$B_b(m)\,/\,B_b(0)$")
    ax.set_title(f"RoPE long-term decay bound, head dim {head_dim}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def decay_explorer(reference_base: float = 1e4, window: int = 4096):
    """A log-scale slider for the RoPE base and a head-dim picker: the decay bound against the
    reference base, and the wavelength of every pair against the context window."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from ..widgets import redraw_on

    base = W.FloatLogSlider(value=5e5, base=10, min=2, max=8, step=0.05, description="base b",
                            readout_format=".3g")
    dim = W.Dropdown(options=[16, 32, 64, 128], value=128, description="head dim")
    ctx = W.IntSlider(value=window, min=64, max=131072, step=64, description="window")

    def draw() -> None:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
        plot_decay({f"b = {reference_base:.3g}": reference_base, f"b = {base.value:.3g}": base.value},
                   dim.value, 4 * ctx.value, ax=a1, window=ctx.value)
        for name, b in ((f"b = {reference_base:.3g}", reference_base), (f"b = {base.value:.3g}", base.value)):
            a2.plot(wavelengths(dim.value, b), marker=".", lw=1, label=name)
        a2.axhline(ctx.value, ls="--", color="gray", lw=1, label="context window")
        a2.set_yscale("log")
        a2.set_xlabel("pair index k")
        a2.set_ylabel(r"wavelength $2\pi/\theta_k$ (tokens)")
        a2.set_title("pairs slower than the window never complete a turn", fontsize=10)
        a2.grid(alpha=0.3)
        a2.legend(fontsize=8)
        fig.tight_layout()

    return redraw_on([base, dim, ctx], draw, vertical=True)
