"""Circuit discovery with a discrete sparse-autoencoder code over attention-head outputs
(O'Neill & Bui 2024, arXiv 2405.12522), and the head-ablation ground truth it is judged against.

Pipeline (numbers refer to the chapter's equations):

1. :func:`head_results` -- every head's contribution to the residual stream,
   ``r_{l,h} = z_{l,h} W_O^{l,h}`` (eq. sae-result), mean-pooled over positions: (E, L*H, d).
2. :class:`SparseAutoencoder` -- one dictionary shared by all heads, tied pre-encoder /
   post-decoder bias, unit-norm dictionary rows (eq. sae-encode), trained with MSE + lambda * L1
   (eq. sae-loss) by :func:`train_sae` on a handful of prompts.
3. :func:`codes` -- the discrete code of each (example, head): the argmax feature (eq. sae-code).
4. :func:`node_scores` -- per head, the number of codes that occur on positive prompts and never
   on negative ones, ``|P \\ N|`` (eq. sae-node).
5. :func:`ablation_effects` -- mean-ablate each head in turn and measure the drop in the correct
   token's logit: the ground truth circuit (:func:`circuit_from_effects`).

The synthetic task (:func:`induction_batch`, :func:`bigram_batch`) is the card's: repeated spans
(solved by induction heads) mixed with a fixed random Markov chain (bigram statistics).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import nn

from ..nn.transformer import TinyLM

Tensor = torch.Tensor


# --------------------------------------------------------------------------------- the task
def markov_chain(vocab: int, branching: int = 3, generator: torch.Generator | None = None) -> Tensor:
    """A fixed random bigram chain: each token has ``branching`` likely successors. Returns (V, V) probabilities."""
    if vocab < 2 or not 1 <= branching <= vocab:
        raise ValueError(f"need vocab >= 2 and 1 <= branching <= vocab, got vocab={vocab}, branching={branching}")
    probs = torch.full((vocab, vocab), 0.02 / vocab)
    for t in range(vocab):
        nxt = torch.randperm(vocab, generator=generator)[:branching]
        probs[t, nxt] += 0.98 / branching
    return probs / probs.sum(1, keepdim=True)


def bigram_batch(n: int, length: int, chain: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``n`` sequences of ``length`` tokens sampled from ``chain`` (V, V): (n, length) int64."""
    if chain.ndim != 2 or chain.shape[0] != chain.shape[1]:
        raise ValueError(f"chain must be a square (V, V) matrix of probabilities, got {tuple(chain.shape)}")
    if n < 1 or length < 2:
        raise ValueError(f"need n >= 1 and length >= 2, got n={n}, length={length}")
    V = chain.shape[0]
    out = torch.empty(n, length, dtype=torch.long)
    out[:, 0] = torch.randint(0, V, (n,), generator=generator)
    for t in range(1, length):
        out[:, t] = torch.multinomial(chain[out[:, t - 1]], 1, generator=generator)[:, 0]
    return out


def induction_batch(n: int, length: int, vocab: int, generator: torch.Generator | None = None,
                    negative: bool = False) -> Tensor:
    """Repeated-span sequences: the second half copies the first, so it is predictable by induction.

    With ``negative=True`` the first half is re-drawn after the copy is made: the same second half,
    length-matched token for token, but nothing earlier predicts it. Returns (n, length) int64.
    """
    if length < 4 or length % 2:
        raise ValueError(f"length must be an even number >= 4, got {length}")
    if n < 1 or vocab < 2:
        raise ValueError(f"need n >= 1 and vocab >= 2, got n={n}, vocab={vocab}")
    half = torch.randint(0, vocab, (n, length // 2), generator=generator)
    seq = torch.cat([half, half], dim=1)
    if negative:
        seq[:, : length // 2] = torch.randint(0, vocab, (n, length // 2), generator=generator)
    return seq


def mixed_batch(n: int, length: int, chain: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The training mixture: half induction sequences, half bigram sequences, shuffled. (n, length)."""
    k = n // 2
    seq = torch.cat([induction_batch(k, length, chain.shape[0], generator),
                     bigram_batch(n - k, length, chain, generator)])
    return seq[torch.randperm(n, generator=generator)]


def lm_loss(model: TinyLM, seq: Tensor) -> Tensor:
    """Next-token cross-entropy of ``model`` on ``seq`` (B, N)."""
    return model.loss(seq[:, :-1], seq[:, 1:])


# --------------------------------------------------------------------------------- head outputs
class HeadHook:
    """Forward pre-hooks on every attention ``out_proj``: record the per-head outputs ``z`` and/or
    replace chosen heads by a fixed value (mean ablation). Use as a context manager."""

    def __init__(self, model: TinyLM, replace: dict[tuple[int, int], Tensor] | None = None,
                 record: bool = True) -> None:
        self.model, self.replace, self.record = model, replace or {}, record
        self.z: list[Tensor] = []  # per layer: (B, N, H, Dh)
        self._handles: list = []

    def __enter__(self) -> "HeadHook":
        for layer, block in enumerate(self.model.blocks):
            self._handles.append(block.attn.out_proj.register_forward_pre_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, layer: int) -> Callable:
        H = self.model.cfg.n_heads

        def hook(module: nn.Module, args: tuple[Tensor]) -> tuple[Tensor] | None:
            x = args[0]  # (B, N, H * Dh), heads concatenated
            B, N, _ = x.shape
            z = x.view(B, N, H, -1)  # (B, N, H, Dh)
            if self.record:
                self.z.append(z.detach())
            if any(key[0] == layer for key in self.replace):
                z = z.clone()
                for (lay, head), value in self.replace.items():
                    if lay == layer:
                        z[:, :, head] = value  # value: (N, Dh) or (Dh,)
                return (z.reshape(B, N, -1),)
            return None

        return hook


def head_results(model: TinyLM, seq: Tensor, batch: int = 256) -> Tensor:
    """Each head's output written into the residual stream, ``z_h W_O^h`` (eq. sae-result),
    mean-pooled over positions: (E, L * H, d_model), heads in layer-major order."""
    if seq.ndim != 2 or seq.is_floating_point():
        raise ValueError(f"seq must be an integer tensor (E, N), got {getattr(seq, 'shape', seq)!r}")
    H, d = model.cfg.n_heads, model.cfg.d_model
    Dh = d // H
    out = []
    with torch.no_grad():
        for i in range(0, seq.shape[0], batch):
            with HeadHook(model) as hook:
                model(seq[i:i + batch])
            per_layer = []
            for layer, z in enumerate(hook.z):
                W = model.blocks[layer].attn.out_proj.weight.view(d, H, Dh)  # (d, H, Dh)
                r = torch.einsum("bnhk,dhk->bnhd", z, W)  # (B, N, H, d)
                per_layer.append(r.mean(1))  # (B, H, d)
            out.append(torch.cat(per_layer, dim=1))  # (B, L*H, d)
    return torch.cat(out)


def correct_logit(model: TinyLM, seq: Tensor, positions: slice, replace: dict | None = None) -> Tensor:
    """Mean logit of the correct next token over ``positions`` of ``seq`` (B, N); per example (B,)."""
    with torch.no_grad(), HeadHook(model, replace=replace, record=False):
        logits = model(seq[:, :-1])  # (B, N-1, V)
    tgt = seq[:, 1:]
    picked = logits.gather(-1, tgt[..., None])[..., 0]  # (B, N-1)
    return picked[:, positions].mean(1)


def ablation_effects(model: TinyLM, seq: Tensor, positions: slice) -> Tensor:
    """Mean-ablate each head in turn (its output replaced by its mean over ``seq`` at each position)
    and return the drop of the correct token's mean logit: (L, H). Costs L * H + 1 forward passes."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    with torch.no_grad(), HeadHook(model) as hook:
        model(seq[:, :-1])
    means = [z.mean(0) for z in hook.z]  # per layer (N, H, Dh)
    clean = correct_logit(model, seq, positions).mean()
    eff = torch.zeros(L, H)
    for layer in range(L):
        for head in range(H):
            abl = correct_logit(model, seq, positions, replace={(layer, head): means[layer][:, head]})
            eff[layer, head] = clean - abl.mean()
    return eff


def circuit_from_effects(effects: Tensor, frac: float = 0.1) -> Tensor:
    """Ground truth circuit: heads whose ablation effect is >= ``frac`` of the largest. Bool, shape of ``effects``."""
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    return effects >= frac * effects.max()


# --------------------------------------------------------------------------------- the SAE
class UnitNormLinear(nn.Module):
    """A linear layer whose weight rows (``dim=-1``, default) or columns (``dim=0``) have unit norm:
    the gradient component parallel to each row is projected out in backward, and rows are
    renormalised on every forward (as in the official code)."""

    def __init__(self, d_in: int, d_out: int, bias: bool = True, dim: int = -1) -> None:
        super().__init__()
        if dim not in (-1, 0):
            raise ValueError(f"dim must be -1 (unit rows) or 0 (unit columns), got {dim}")
        self.dim = dim
        self.weight = nn.Parameter(F.normalize(torch.randn(d_out, d_in), dim=dim))
        bound = 1 / d_in ** 0.5
        self.bias = nn.Parameter(torch.empty(d_out).uniform_(-bound, bound)) if bias else None
        self.weight.register_hook(self._project)

    def _project(self, grad: Tensor) -> Tensor:
        w = F.normalize(self.weight.detach(), dim=self.dim)
        return grad - (grad * w).sum(self.dim, keepdim=True) * w

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            self.weight.copy_(F.normalize(self.weight, dim=self.dim))
        return F.linear(x, self.weight, self.bias)


class SparseAutoencoder(nn.Module):
    """``f = ReLU(W_e (x - b) + b_e)``, ``x_hat = W_d f + b`` (eq. sae-encode): one dictionary of
    ``n_features`` shared by all heads; ``b`` is the tied bias (initialised at zero).

    With ``k`` set it is a **TopK SAE** (Gao et al. 2024, as in EleutherAI's ``sparsify``): only the
    ``k`` largest activations of each input are kept, the encoder is an unconstrained linear layer
    initialised as the decoder's transpose with zero bias, and the decoder's *atoms* (its columns,
    one per feature) have unit norm. ``k=None`` (default) is the circuit chapter's L1 SAE, unchanged.
    """

    def __init__(self, d_model: int, n_features: int = 300, k: int | None = None) -> None:
        super().__init__()
        if d_model < 1 or n_features < 1:
            raise ValueError(f"d_model and n_features must be >= 1, got {d_model}, {n_features}")
        if k is not None and not 1 <= k <= n_features:
            raise ValueError(f"k must be None or in [1, n_features={n_features}], got {k}")
        self.k = k
        self.tied_bias = nn.Parameter(torch.zeros(d_model))
        if k is None:
            self.encoder = UnitNormLinear(d_model, n_features, bias=True)
            self.decoder = UnitNormLinear(n_features, d_model, bias=False)
        else:
            self.decoder = UnitNormLinear(n_features, d_model, bias=False, dim=0)  # (d, F): unit columns
            self.encoder = nn.Linear(d_model, n_features)
            with torch.no_grad():
                self.encoder.weight.copy_(self.decoder.weight.T)
                self.encoder.bias.zero_()

    def encode(self, x: Tensor) -> Tensor:
        """(..., d) -> feature activations (..., F); with ``k``, all but the k largest are zero."""
        if x.shape[-1] != self.tied_bias.shape[0]:
            raise ValueError(f"x must end in d_model={self.tied_bias.shape[0]}, got shape {tuple(x.shape)}")
        f = F.relu(self.encoder(x - self.tied_bias))
        if self.k is None:
            return f
        top = f.topk(self.k, dim=-1)
        return torch.zeros_like(f).scatter(-1, top.indices, top.values)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.encode(x)
        return f, self.decoder(f) + self.tied_bias

    @torch.no_grad()
    def renormalise(self) -> "SparseAutoencoder":
        """Put the dictionary back on the unit sphere (an optimiser step moves it off it)."""
        for layer in (self.encoder, self.decoder):
            if isinstance(layer, UnitNormLinear):
                layer.weight.copy_(F.normalize(layer.weight, dim=layer.dim))
        return self


def sae_loss(sae: SparseAutoencoder, x: Tensor, lam: float) -> Tensor:
    """MSE (mean over all entries) + ``lam`` * mean over (example, head) of ||f||_1 (eq. sae-loss)."""
    f, x_hat = sae(x)
    return F.mse_loss(x_hat, x) + lam * f.abs().sum(-1).mean()


def train_sae(x: Tensor, n_features: int = 300, lam: float = 0.02, epochs: int = 500, lr: float = 1e-3,
              seed: int = 0) -> SparseAutoencoder:
    """Full-batch Adam on ``x`` (E, heads, d) -- a handful of prompts -- for ``epochs`` steps."""
    if x.ndim != 3:
        raise ValueError(f"x must be (examples, heads, d_model), got {tuple(x.shape)}")
    if lam < 0 or epochs < 0:
        raise ValueError(f"need lam >= 0 and epochs >= 0, got lam={lam}, epochs={epochs}")
    torch.manual_seed(seed)
    sae = SparseAutoencoder(x.shape[-1], n_features)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    for _ in range(epochs):
        loss = sae_loss(sae, x, lam)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return sae.renormalise().eval()


def codes(sae: SparseAutoencoder, x: Tensor) -> Tensor:
    """The discrete code of each (example, head): the argmax feature (eq. sae-code). (E, heads) int64."""
    with torch.no_grad():
        return sae.encode(x).argmax(-1)


def node_scores(pos_codes: Tensor, neg_codes: Tensor, normalise: bool = False) -> Tensor:
    """Per head, ``|P \\ N|``: codes seen on positives and never on negatives (eq. sae-node). (heads,)."""
    if pos_codes.ndim != 2 or neg_codes.ndim != 2 or pos_codes.shape[1] != neg_codes.shape[1]:
        raise ValueError(f"pos_codes and neg_codes must be (examples, heads) with the same heads, got "
                         f"{tuple(pos_codes.shape)} and {tuple(neg_codes.shape)}")
    out = torch.zeros(pos_codes.shape[1])
    for h in range(pos_codes.shape[1]):
        p, n = set(pos_codes[:, h].tolist()), set(neg_codes[:, h].tolist())
        out[h] = len(p - n) / (len(p | n) if normalise else 1)
    return out


def roc_auc(scores: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney form, ties count one half)."""
    s, y = np.asarray(scores, dtype=float).ravel(), np.asarray(labels, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same size, got {s.shape} and {y.shape}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("labels must contain both positives and negatives")
    r = rankdata(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def best_f1(scores: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """The best F1 over all thresholds on ``scores`` (predict circuit when score >= threshold)."""
    s, y = np.asarray(scores, dtype=float).ravel(), np.asarray(labels, dtype=bool).ravel()
    best = 0.0
    for t in np.unique(s):
        pred = s >= t
        tp = int((pred & y).sum())
        if tp:
            best = max(best, 2 * tp / (int(pred.sum()) + int(y.sum())))
    return best


@dataclass
class CircuitScore:
    """Node scores of one SAE and how well they rank the ground-truth heads."""

    scores: Tensor  # (heads,)
    auc: float
    f1: float
    seconds: float
    sae: SparseAutoencoder | None = None


def sae_circuit(pos: Tensor, neg: Tensor, truth: Tensor, n_train: int = 10, n_features: int = 300,
                lam: float = 0.02, epochs: int = 500, seed: int = 0, trained: bool = True) -> CircuitScore:
    """Train the SAE on ``n_train`` prompts drawn from pos + neg (E, heads, d), code every prompt,
    score the heads and compare with ``truth`` (heads,) bool. ``trained=False``: the untrained SAE."""
    if pos.shape[1:] != neg.shape[1:] or truth.numel() != pos.shape[1]:
        raise ValueError(f"pos/neg must be (E, heads, d) with heads = truth.numel(); got {tuple(pos.shape)}, "
                         f"{tuple(neg.shape)}, truth {tuple(truth.shape)}")
    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    pool = torch.cat([pos, neg])
    sample = pool[torch.randperm(pool.shape[0], generator=g)[:n_train]]
    sae = train_sae(sample, n_features, lam, epochs if trained else 0, seed=seed)
    s = node_scores(codes(sae, pos), codes(sae, neg))
    seconds = time.perf_counter() - start
    return CircuitScore(s, roc_auc(s, truth.ravel()), best_f1(s, truth.ravel()), seconds, sae)


def plot_head_grid(values: Tensor, truth: Tensor, ax, title: str, cbar_label: str) -> None:
    """A layer x head heat-map of ``values`` (L, H) with the ground-truth heads outlined."""
    import matplotlib.patches as patches

    L, H = values.shape
    im = ax.imshow(values.numpy(), cmap="viridis", aspect="auto")
    for layer in range(L):
        for head in range(H):
            if truth[layer, head]:
                ax.add_patch(patches.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec="red", lw=2))
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    ax.figure.colorbar(im, ax=ax, label=cbar_label)


def sae_explorer(pos: Tensor, neg: Tensor, truth: Tensor, n_layers: int, seed: int = 0):
    """Sliders for lambda and the number of SAE training prompts: retrain the SAE, redraw the node scores."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from ..widgets import redraw_on

    lam = W.FloatLogSlider(value=0.02, base=10, min=-4, max=0, description="lambda")
    n_train = W.IntSlider(value=10, min=2, max=100, description="prompts")

    def draw() -> None:
        r = sae_circuit(pos, neg, truth.ravel(), n_train=n_train.value, lam=lam.value, seed=seed)
        fig, ax = plt.subplots(figsize=(6, 2.8))
        plot_head_grid(r.scores.view(n_layers, -1), truth, ax,
                       f"|P \\ N| per head: AUC {r.auc:.2f}, best F1 {r.f1:.2f}", "codes unique to positives")

    return redraw_on([lam, n_train], draw, vertical=True)
