"""Differential information (Won et al., 2025) on tabular policies.

A tabular policy is a vector of log-probabilities over ``n`` outcomes. Everything here works
in log space (``(n,)`` float tensors, float64 recommended for the exact checks):

* :func:`did` -- the differential information distribution, eq. (DID):
  ``q_{pi/ref}(y) = (pi(y)/ref(y)) / sum_y' pi(y')/ref(y')``.
* :func:`rejected_policy` -- the rejected-sample policy that makes the power-law condition hold,
  ``pi_l ∝ ref^(1+beta) * pi*^(-beta)`` (eq. PL).
* :func:`sample_wins` / :func:`expected_wins` -- Bradley-Terry preference data with
  ``y_a ~ ref``, ``y_b ~ pi_l`` and ``p(y_a > y_b) = sigmoid(log ref/pi_l (y_a) - log ref/pi_l (y_b))``,
  aggregated into a win-count matrix ``W[winner, loser]``.
* :func:`preference_loss` -- the Bradley-Terry negative log-likelihood of a reward form
  (DPO ``beta log pi/ref``, reference-free ``beta log pi``, ratio ``beta pi/ref``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

REWARDS = ("dpo", "no_reference", "ratio")


def _logvec(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 1 or not x.is_floating_point():
        raise ValueError(f"{name} must be a 1-D float tensor of log-probabilities (n,), got "
                         f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite log-probabilities (no -inf: every outcome needs mass)")


def _same(a: Tensor, b: Tensor, na: str, nb: str) -> None:
    _logvec(a, na)
    _logvec(b, nb)
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def did(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """log q_{pi/ref}: the differential information distribution from ``ref`` to ``pi`` (eq. DID). (n,)"""
    _same(logp, logp_ref, "logp", "logp_ref")
    return torch.log_softmax(logp - logp_ref, dim=-1)


def entropy(logp: Tensor) -> Tensor:
    """Shannon entropy (nats) of a distribution given by its log-probabilities (n,)."""
    _logvec(logp, "logp")
    return -(logp.exp() * logp).sum()


def bayes_update(logp_ref: Tensor, log_q: Tensor) -> Tensor:
    """log pi with pi ∝ ref * q: the policy that the evidence ``q`` turns ``ref`` into (eq. Bayes)."""
    _same(logp_ref, log_q, "logp_ref", "log_q")
    return torch.log_softmax(logp_ref + log_q, dim=-1)


def rejected_policy(logp_ref: Tensor, logp_star: Tensor, beta: float) -> Tensor:
    """log pi_l with pi_l ∝ ref^(1+beta) pi*^(-beta) (eq. PL), normalised in log space. (n,)"""
    _same(logp_ref, logp_star, "logp_ref", "logp_star")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return torch.log_softmax((1 + beta) * logp_ref - beta * logp_star, dim=-1)


def zipf_logp(n: int, s: float = 1.1, dtype: torch.dtype = torch.float64) -> Tensor:
    """log-probabilities of a Zipf law p(rank k) ∝ k^(-s) over ``n`` outcomes. (n,)"""
    if n < 2:
        raise ValueError(f"n must be >= 2 outcomes, got {n}")
    k = torch.arange(1, n + 1, dtype=dtype)
    return torch.log_softmax(-s * k.log(), dim=-1)


def _pair_logits(logp_ref: Tensor, logp_l: Tensor) -> Tensor:
    """(n, n): the BT logit of ``a`` beating ``b``, log ref/pi_l (a) - log ref/pi_l (b)."""
    s = logp_ref - logp_l
    return s[:, None] - s[None, :]


def expected_wins(logp_ref: Tensor, logp_l: Tensor) -> Tensor:
    """Population win matrix per pair: ``W[i, j]`` = P(a pair is drawn and ``i`` beats ``j``). (n, n)"""
    _same(logp_ref, logp_l, "logp_ref", "logp_l")
    mu = logp_ref.exp()[:, None] * logp_l.exp()[None, :]  # (n, n): y_a = i ~ ref, y_b = j ~ pi_l
    p = torch.sigmoid(_pair_logits(logp_ref, logp_l))  # p(a beats b)
    return mu * p + (mu * (1 - p)).T  # a wins -> W[a, b]; b wins -> W[b, a]


def sample_wins(logp_ref: Tensor, logp_l: Tensor, n_pairs: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``n_pairs`` labelled pairs and count them: ``W[winner, loser]`` (n, n) float64 counts."""
    _same(logp_ref, logp_l, "logp_ref", "logp_l")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    n = logp_ref.numel()
    a = torch.multinomial(logp_ref.exp().float(), n_pairs, replacement=True, generator=generator)
    b = torch.multinomial(logp_l.exp().float(), n_pairs, replacement=True, generator=generator)
    p = torch.sigmoid(_pair_logits(logp_ref, logp_l)[a, b])
    a_wins = torch.rand(n_pairs, generator=generator, dtype=p.dtype) < p
    w, l = torch.where(a_wins, a, b), torch.where(a_wins, b, a)
    out = torch.zeros(n * n, dtype=torch.float64)
    out.index_add_(0, w * n + l, torch.ones(n_pairs, dtype=torch.float64))
    return out.view(n, n)


def reward(logp: Tensor, logp_ref: Tensor, kind: str, beta: float) -> Tensor:
    """The implicit reward of a policy: ``dpo`` beta log pi/ref, ``no_reference`` beta log pi,
    ``ratio`` beta pi/ref. (n,)"""
    if kind not in REWARDS:
        raise ValueError(f"kind must be one of {REWARDS}, got {kind!r}")
    if kind == "dpo":
        return beta * (logp - logp_ref)
    if kind == "no_reference":
        return beta * logp
    return beta * (logp - logp_ref).exp()


def preference_loss(logits: Tensor, logp_ref: Tensor, wins: Tensor, kind: str = "dpo", beta: float = 0.5) -> Tensor:
    """Bradley-Terry NLL of the reward form ``kind`` on the win matrix, per pair (eq. DPO):
    ``-sum_ij W_ij log sigmoid(r_i - r_j) / sum W``. ``logits`` are the policy's free logits (n,)."""
    if not isinstance(wins, Tensor) or wins.ndim != 2 or wins.shape != (logits.numel(), logits.numel()):
        raise ValueError(f"wins must be an (n, n) matrix with n = {logits.numel()}, got {tuple(getattr(wins, 'shape', ()))}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    logp = torch.log_softmax(logits, dim=-1)
    r = reward(logp, logp_ref.to(logp.dtype), kind, beta)
    margin = r[:, None] - r[None, :]  # (n, n): r_winner - r_loser
    w = wins.to(logp.dtype)
    return -(w * nn.functional.logsigmoid(margin)).sum() / w.sum()


class TabularPolicy(nn.Module):
    """A free logit vector over ``n`` outcomes, initialised at the reference policy."""

    def __init__(self, logp_ref: Tensor) -> None:
        super().__init__()
        _logvec(logp_ref, "logp_ref")
        self.logits = nn.Parameter(logp_ref.detach().clone())

    def forward(self) -> Tensor:
        """log pi_theta (n,)."""
        return torch.log_softmax(self.logits, dim=-1)


def centered_r2(pred: Tensor, target: Tensor, keep: Tensor | None = None) -> float:
    """R^2 of ``pred`` against ``target`` after centering both (no fitted slope), over ``keep``.

    DPO identifies log pi/ref only up to a constant, hence the centering; a wrong scale
    (e.g. a mismatched beta) lowers R^2, as it should.
    """
    if pred.shape != target.shape or pred.ndim != 1:
        raise ValueError(f"pred and target must be 1-D of one shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if keep is not None:
        if keep.shape != pred.shape or keep.dtype != torch.bool:
            raise ValueError(f"keep must be a bool mask of shape {tuple(pred.shape)}")
        pred, target = pred[keep], target[keep]
    if pred.numel() < 2:
        raise ValueError("need at least two kept outcomes for R^2")
    p = pred - pred.mean()
    t = target - target.mean()
    return float(1 - ((p - t) ** 2).sum() / (t ** 2).sum())


def fit(logp_ref: Tensor, wins: Tensor, kind: str = "dpo", beta: float = 0.5, steps: int = 3000,
        lr: float = 0.05, trace: Tensor | None = None, **train_kw) -> tuple[Tensor, dict[str, list[float]]]:
    """Fit a tabular policy to ``wins`` with the reward form ``kind`` through :func:`companion.train.train`.

    Full batch, Adam, constant learning rate. Returns the fitted log pi (n,) and, every 50 steps,
    its entropy and the mean log-likelihood of the chosen and rejected samples of ``trace``
    (a win matrix; default ``wins``).
    """
    from ..train import train

    trace = wins if trace is None else trace
    policy = TabularPolicy(logp_ref)
    chosen_w = trace.sum(1) / trace.sum()  # (n,) how often each outcome is the winner
    rejected_w = trace.sum(0) / trace.sum()
    curves: dict[str, list[float]] = {"step": [], "entropy": [], "chosen": [], "rejected": []}

    def ev(m: TabularPolicy) -> dict[str, float]:
        lp = m().detach()
        return {"entropy": float(entropy(lp)), "chosen": float((chosen_w * lp).sum()),
                "rejected": float((rejected_w * lp).sum())}

    hist = train(policy, lambda m, _: preference_loss(m.logits, logp_ref, wins, kind, beta), lambda s: None,
                 steps=steps, lr=lr, schedule="constant", clip=None, eval_fn=ev, eval_every=50,
                 **{"desc": f"{kind} (beta {beta:g})", **train_kw})
    curves["step"] = [0] + hist.eval_steps
    base = ev(TabularPolicy(logp_ref))
    for k in ("entropy", "chosen", "rejected"):
        curves[k] = [base[k]] + hist.metric(k)
    with torch.no_grad():
        return policy().detach(), curves


def solve(logp_ref: Tensor, wins: Tensor, kind: str = "dpo", beta: float = 0.5, iters: int = 30) -> Tensor:
    """The minimiser of :func:`preference_loss` by Newton's method in float64 (log pi, (n,)).

    For the DPO and reference-free rewards the loss is convex in the logits (the rewards are
    linear in them up to a constant that cancels in r_i - r_j); its only flat direction is a
    constant shift of the logits, which the step removes. :func:`fit` is the gradient-descent
    training a chapter shows; this is the optimum it is heading for.
    """
    if kind not in ("dpo", "no_reference"):
        raise ValueError(f"kind must be 'dpo' or 'no_reference' (convex cases), got {kind!r}")
    ref = logp_ref.detach().to(torch.float64)
    x = ref.clone()
    n = x.numel()
    ones = torch.full((n, n), 1.0 / n, dtype=torch.float64)

    def f(z: Tensor) -> Tensor:
        return preference_loss(z, ref, wins, kind, beta)

    for _ in range(iters):
        g = torch.autograd.functional.jacobian(f, x)
        h = torch.autograd.functional.hessian(f, x)
        step = torch.linalg.solve(h + ones * h.diagonal().mean(), g)  # the shift direction is null: pin it
        x = x - step
        if float(step.abs().max()) < 1e-13:
            break
    return torch.log_softmax(x, dim=-1)


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (scipy.stats)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a.numpy(), b.numpy()).statistic)


def random_did(n: int, scale: float, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64) -> Tensor:
    """A random DID independent of any reference: ``log_softmax(scale * z)``, z ~ N(0, I). (n,)

    Small ``scale`` gives a near-uniform (high-entropy) DID, large ``scale`` a peaked one.
    """
    if n < 2:
        raise ValueError(f"n must be >= 2 outcomes, got {n}")
    if scale < 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    z = torch.randn(n, generator=generator, dtype=dtype)
    return torch.log_softmax(scale * z, dim=-1)


def explorer(n: int = 32, s: float = 1.1):
    """ipywidgets: a gamma slider for the DID family q ∝ ref^gamma on a Zipf reference, with the
    bars of ref, q and pi* = ref * q and the entropies H(q) and H(pi*) - H(ref)."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from ..widgets import redraw_on

    lref = zipf_logp(n, s)
    gamma = W.FloatSlider(value=1.0, min=-1.5, max=1.5, step=0.1, description="gamma")

    def draw() -> None:
        lq = torch.log_softmax(gamma.value * lref, dim=-1)
        ls = bayes_update(lref, lq)
        fig, ax = plt.subplots(figsize=(8, 3.2), layout="constrained")
        x = torch.arange(1, n + 1)
        for k, (lab, lp) in enumerate([("reference", lref), ("DID q", lq), ("pi* = ref * q (normalised)", ls)]):
            ax.bar(x + (k - 1) * 0.28, lp.exp(), width=0.28, label=lab)
        ax.set_xlabel("outcome (rank under the reference)")
        ax.set_ylabel("probability")
        ax.set_title(f"gamma = {gamma.value:+.1f}: H(q) = {float(entropy(lq)):.2f} nats, "
                     f"H(pi*) - H(ref) = {float(entropy(ls) - entropy(lref)):+.2f} nats")
        ax.legend()

    return redraw_on([gamma], draw, vertical=True)
