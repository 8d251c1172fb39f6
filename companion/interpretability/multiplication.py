"""Why transformers fail at multi-digit multiplication (Bai et al. 2025, arXiv 2510.00184): the data,
the running sum the middle digits need, the auxiliary-loss model, implicit chain of thought, and
linear probes.

* :func:`multiplication_batch` -- 4x4-digit products written least-significant digit first:
  ``a0 a1 a2 a3 * b0 b1 b2 b3 = c0 .. c7`` (18 tokens); the logits at positions 9..16 predict c0..c7.
* :func:`running_sum` -- ``s_k = sum_{i+j=k} a_i b_j``, ``c_hat_k = s_k + floor(c_hat_{k-1} / 10)``,
  ``c_k = c_hat_k mod 10`` (eq. mul-chat; ``get_c_hats`` of the official ``experiments/probe_c_hat.py``).
* :class:`AuxHeadProbe` -- per-head linear regressions ``w_h^T z_h`` (one vector per head, no bias) of
  ``c_hat_k`` on the attention output *before* ``W_O``, added to the loss with weight ``lam``
  (eq. mul-aux; the official checkpoint's ``linear_regression_heads``).
* :func:`icot_cot` / :func:`icot_sequence` -- the explicit chain of thought of Deng et al. (2024)'s
  4x4 data: ``p0 + p1' ( s01 ) + p2' ( s012 ) + p3'``, partial products shifted and zero-padded, and the
  partial sums in brackets (46 tokens), placed between ``b`` and ``=``.
* :func:`icot_removed` / :func:`icot_batch` -- stepwise internalisation: the number of CoT tokens removed
  from the left grows by one every ``steps_per_token`` steps, plus a random offset per example with
  P(o) proportional to exp(-lambda o) (official ``compute_lambda_distribution``, lambda = 4); fully
  removed, a sequence is exactly the plain 18-token one.
* :func:`digit_losses`, :func:`digit_accuracy` -- per-answer-digit CE and accuracy.
* :func:`residual_sites` -- the residual stream after attention and after the MLP of every layer
  (the official probes' ``hook_resid_mid`` / ``hook_resid_post``) at the answer-digit positions.
* :func:`ridge_probe_r2` -- closed-form ridge probes of ``c_hat_k`` from a representation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.transformer import TinyLM

Tensor = torch.Tensor
TIMES, EQUALS, PLUS, LPAR, RPAR, PAD = 10, 11, 12, 13, 14, 15  # token ids after the ten digits
VOCAB = 16
N_DIGITS = 4
SEQ_LEN = 4 * N_DIGITS + 2  # 18
ANSWER = slice(2 * N_DIGITS + 1, 4 * N_DIGITS + 1)  # logits at positions 9..16 predict c0..c7
C_TOKENS = slice(2 * N_DIGITS + 2, 4 * N_DIGITS + 2)  # positions 10..17 hold the tokens c0..c7
N_COT = 46  # tokens of the 4x4 chain of thought
IGNORE = -100


def digits_lsb(x: Tensor, n: int) -> Tensor:
    """The ``n`` decimal digits of ``x`` (B,), least significant first: (B, n)."""
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.ndim != 1:
        raise ValueError(f"x must be a 1-D integer tensor, got {getattr(x, 'dtype', type(x))} "
                         f"{tuple(getattr(x, 'shape', ()))}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return torch.stack([(x // 10 ** k) % 10 for k in range(n)], dim=1)


def from_digits(d: Tensor) -> Tensor:
    """The integers (B,) whose least-significant-first digits are ``d`` (B, n)."""
    if d.ndim != 2:
        raise ValueError(f"d must be (B, n) digits, got {tuple(d.shape)}")
    return (d * 10 ** torch.arange(d.shape[1])).sum(1)


def running_sum(a: Tensor, b: Tensor) -> Tensor:
    """``c_hat_k`` for k = 0..2n-1 from digit tensors a, b (B, n), least significant first (eq. mul-chat)."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must be digit tensors of the same shape (B, n), got {tuple(a.shape)}, {tuple(b.shape)}")
    B, n = a.shape
    s = torch.zeros(B, 2 * n, dtype=torch.long)
    for i in range(n):
        for j in range(n):
            s[:, i + j] += a[:, i] * b[:, j]
    c_hat = torch.zeros_like(s)
    carry = torch.zeros(B, dtype=torch.long)
    for k in range(2 * n):
        c_hat[:, k] = s[:, k] + carry
        carry = c_hat[:, k] // 10
    return c_hat


def multiplication_batch(n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``n`` random 4x4-digit problems (operands 1000..9999): tokens (n, 18) and running sums c_hat (n, 8)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    a = torch.randint(10 ** (N_DIGITS - 1), 10 ** N_DIGITS, (n,), generator=generator)
    b = torch.randint(10 ** (N_DIGITS - 1), 10 ** N_DIGITS, (n,), generator=generator)
    da, db = digits_lsb(a, N_DIGITS), digits_lsb(b, N_DIGITS)
    c = digits_lsb(a * b, 2 * N_DIGITS)
    seq = torch.cat([da, torch.full((n, 1), TIMES), db, torch.full((n, 1), EQUALS), c], dim=1)
    return seq, running_sum(da, db)


def _check_seq(seq: Tensor) -> None:
    if not isinstance(seq, torch.Tensor) or seq.ndim != 2 or seq.shape[1] != SEQ_LEN:
        raise ValueError(f"seq must be (B, {SEQ_LEN}) multiplication tokens, got {tuple(getattr(seq, 'shape', ()))}")


def icot_cot(seq: Tensor) -> Tensor:
    """The 46-token chain of thought of each problem in ``seq`` (B, 18), in the official 4x4 format
    (Deng et al. 2024, ``data/4_by_4_mult``): ``p0 + p1' ( s01 ) + p2' ( s012 ) + p3'`` with
    ``p_j = a * b_j`` (5 digits), ``p_j'`` its shift by j places (5 + j digits), ``s01 = p0 + p1'``
    (6 digits), ``s012 = s01 + p2'`` (7 digits), every number least significant digit first."""
    _check_seq(seq)
    B = seq.shape[0]
    a, db = from_digits(seq[:, :N_DIGITS]), seq[:, N_DIGITS + 1: 2 * N_DIGITS + 1]
    tok = lambda t: torch.full((B, 1), t)  # noqa: E731
    parts: list[Tensor] = [digits_lsb(a * db[:, 0], 5)]
    total = a * db[:, 0]
    for j in range(1, N_DIGITS):
        shifted = a * db[:, j] * 10 ** j
        parts += [tok(PLUS), digits_lsb(shifted, 5 + j)]
        total = total + shifted
        if j < N_DIGITS - 1:
            parts += [tok(LPAR), digits_lsb(total, 5 + j), tok(RPAR)]
    return torch.cat(parts, dim=1)


def icot_sequence(seq: Tensor, removed: int | Tensor = 0) -> list[Tensor]:
    """``a * b <CoT without its first removed tokens> = c`` for each row of ``seq`` (B, 18).

    ``removed`` is one count for all rows or one per row (B,), each in [0, 46]; with 46 the row is
    exactly the plain 18-token sequence. Returns a list of B 1-D tensors (lengths differ)."""
    _check_seq(seq)
    B = seq.shape[0]
    r = torch.as_tensor(removed).expand(B) if torch.as_tensor(removed).ndim == 0 else torch.as_tensor(removed)
    if r.shape != (B,) or int(r.min()) < 0 or int(r.max()) > N_COT:
        raise ValueError(f"removed must be an int or (B,) counts in [0, {N_COT}], got {removed!r}")
    cot = icot_cot(seq)
    head, tail = seq[:, : 2 * N_DIGITS + 1], seq[:, 2 * N_DIGITS + 1:]  # a * b | = c
    return [torch.cat([head[i], cot[i, int(r[i]):], tail[i]]) for i in range(B)]


def removal_offsets(n: int, lam: float = 4.0, generator: torch.Generator | None = None,
                    truncate: int = 100) -> Tensor:
    """Random extra removals per example (n,): P(o) = (1 - e^-lam) e^(-lam o), the remainder of the
    truncated tail on the last value (official ``compute_lambda_distribution``); ``lam=inf``: zeros."""
    if n < 1 or lam <= 0:
        raise ValueError(f"need n >= 1 and lam > 0, got {n}, {lam}")
    if math.isinf(lam):
        return torch.zeros(n, dtype=torch.long)
    p = (1 - math.exp(-lam)) * torch.exp(-lam * torch.arange(truncate, dtype=torch.float64))
    p[-1] += 1 - p.sum()
    return torch.multinomial(p, n, replacement=True, generator=generator)


def icot_removed(step: int, steps_per_token: int, n_cot: int = N_COT) -> int:
    """CoT tokens scheduled for removal at ``step``: one more every ``steps_per_token`` steps (the
    official ``scheduled_to_remove`` with ``steps_per_removed_token``), at most ``n_cot``."""
    if step < 0 or steps_per_token < 1 or n_cot < 0:
        raise ValueError(f"need step >= 0, steps_per_token >= 1, n_cot >= 0, got {step}, {steps_per_token}, {n_cot}")
    return min(n_cot, step // steps_per_token)


def pad_rows(rows: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Right-pad rows to (B, N) tokens with PAD and build next-token labels (B, N - 1): every token after
    ``b`` (CoT, ``=``, answer) is a label, the prompt and the padding are IGNORE (official labels)."""
    if not rows:
        raise ValueError("rows must hold at least one sequence")
    N = max(len(r) for r in rows)
    x = torch.full((len(rows), N), PAD, dtype=torch.long)
    y = torch.full((len(rows), N), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, : len(r)] = r
        y[i, 2 * N_DIGITS + 1: len(r)] = r[2 * N_DIGITS + 1:]
    return x, y[:, 1:]


def icot_batch(seq: Tensor, scheduled: int, lam: float = 4.0,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """A training batch of stepwise internalisation: ``scheduled`` + a random offset CoT tokens removed
    per row (capped at 46), padded. Returns tokens (B, N) and labels (B, N - 1)."""
    if not 0 <= scheduled <= N_COT:
        raise ValueError(f"scheduled must be in [0, {N_COT}], got {scheduled}")
    removed = (scheduled + removal_offsets(seq.shape[0], lam, generator)).clamp_max(N_COT)
    return pad_rows(icot_sequence(seq, removed))


def icot_loss(model: TinyLM, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Mean next-token CE over the labelled tokens (CoT, ``=``, answer) of an :func:`icot_batch`."""
    x, y = batch
    logits = model(x[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)


class AuxHeadProbe(nn.Module):
    """Per-head linear regressions ``w_h^T z_h`` (no bias, one vector per head shared by the positions)
    of ``c_hat / scale`` from the attention output of ``layer`` *before* W_O (head dim ``d_h``), at the
    positions of the tokens c_0..c_7 (where the official probes read ``c_hat_k``) (eq. mul-aux)."""

    def __init__(self, model: TinyLM, layer: int, heads: tuple[int, ...], scale: float = 100.0) -> None:
        super().__init__()
        cfg = model.cfg
        if not 0 <= layer < cfg.n_layers or not heads or any(not 0 <= h < cfg.n_heads for h in heads):
            raise ValueError(f"layer must be in [0, {cfg.n_layers}) and heads in [0, {cfg.n_heads}), got {layer}, {heads}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.layer, self.heads, self.scale = layer, tuple(heads), scale
        self.d_head = cfg.d_model // cfg.n_heads
        self.n_heads = cfg.n_heads
        self.probes = nn.ModuleList(nn.Linear(self.d_head, 1, bias=False) for _ in heads)

    def head_outputs(self, model: TinyLM, seq: Tensor) -> tuple[Tensor, Tensor]:
        """(logits (B, N, V) of the whole ``seq`` (B, N), per-head outputs before W_O (B, N, H, d_h))."""
        store: list[Tensor] = []
        hook = model.blocks[self.layer].attn.out_proj.register_forward_pre_hook(lambda m, a: store.append(a[0]))
        try:
            logits = model(seq)
        finally:
            hook.remove()
        B, N, _ = store[0].shape
        return logits, store[0].view(B, N, self.n_heads, self.d_head)

    def loss(self, model: TinyLM, seq: Tensor, c_hat: Tensor, positions: slice = C_TOKENS) -> tuple[Tensor, Tensor]:
        """(next-token logits (B, N-1, V), mean squared probe error over heads and ``positions``)."""
        if c_hat.shape != (seq.shape[0], positions.stop - positions.start):
            raise ValueError(f"c_hat must be (B, {positions.stop - positions.start}), got {tuple(c_hat.shape)}")
        logits, z = self.head_outputs(model, seq)
        z = z[:, positions]  # (B, 8, H, Dh)
        target = c_hat.float() / self.scale  # (B, 8)
        err = torch.stack([(p(z[:, :, h]).squeeze(-1) - target) ** 2 for p, h in zip(self.probes, self.heads)])
        return logits[:, :-1], err.mean()


def answer_loss(logits: Tensor, seq: Tensor) -> Tensor:
    """Mean CE of the 8 answer digits of ``seq`` (B, 18) under next-token ``logits`` (B, 17, V)."""
    return digit_losses(logits, seq).mean()


def digit_losses(logits: Tensor, seq: Tensor) -> Tensor:
    """Per-answer-digit cross-entropy (8,) of next-token ``logits`` (B, N-1, V) on ``seq`` (B, N)."""
    if logits.ndim != 3 or logits.shape[:2] != (seq.shape[0], seq.shape[1] - 1):
        raise ValueError(f"logits must be (B, N-1, V) for seq (B, N) = {tuple(seq.shape)}, got {tuple(logits.shape)}")
    tgt = seq[:, 1:][:, -2 * N_DIGITS:]  # (B, 8): the answer is the last 8 tokens
    lg = logits[:, -2 * N_DIGITS:]  # (B, 8, V)
    return F.cross_entropy(lg.transpose(1, 2), tgt, reduction="none").mean(0)


@torch.no_grad()
def digit_accuracy(model: TinyLM, seq: Tensor) -> Tensor:
    """Per-answer-digit accuracy (8,) with teacher forcing (each digit given the true earlier tokens);
    ``seq`` (B, N) ends with the 8 answer digits (plain or with a CoT of one length)."""
    pred = model(seq[:, :-1])[:, -2 * N_DIGITS:].argmax(-1)
    return (pred == seq[:, -2 * N_DIGITS:]).float().mean(0)


@torch.no_grad()
def residual_sites(model: TinyLM, seq: Tensor, positions: slice = C_TOKENS) -> dict[str, Tensor]:
    """The residual stream of ``seq`` (B, 18) after each layer's attention (``resid_mid``) and after its
    MLP (``resid_post``), at ``positions`` (default: the tokens c_0..c_7): name -> (B, 8, d)."""
    _check_seq(seq)
    store: dict[str, Tensor] = {}
    hooks = []
    for i, block in enumerate(model.blocks):
        hooks.append(block.ln2.register_forward_pre_hook(
            lambda m, a, i=i: store.__setitem__(f"L{i} resid_mid", a[0][:, positions])))
        hooks.append(block.register_forward_hook(
            lambda m, a, o, i=i: store.__setitem__(f"L{i} resid_post", o[:, positions])))
    try:
        model(seq)
    finally:
        for h in hooks:
            h.remove()
    return {k: store[k] for k in sorted(store, key=lambda s: (s[:2], "post" in s))}


def ridge_probe_r2(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, ridge: float = 1e-2) -> float:
    """R^2 on held-out data of a closed-form ridge regression of ``y`` (n,) on ``x`` (n, d) (with intercept)."""
    if x_train.ndim != 2 or y_train.shape != (x_train.shape[0],) or x_test.ndim != 2 \
            or x_test.shape[1] != x_train.shape[1] or y_test.shape != (x_test.shape[0],):
        raise ValueError(f"x must be (n, d) and y (n,), got {tuple(x_train.shape)}, {tuple(y_train.shape)}, "
                         f"{tuple(x_test.shape)}, {tuple(y_test.shape)}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    mu, sd = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    xt = torch.cat([(x_train - mu) / sd, torch.ones(len(x_train), 1)], 1).double()
    A = xt.T @ xt + ridge * len(x_train) * torch.eye(xt.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(A, xt.T @ y_train.double())
    xs = torch.cat([(x_test - mu) / sd, torch.ones(len(x_test), 1)], 1).double()
    resid = y_test.double() - xs @ w
    return float(1 - resid.pow(2).sum() / (y_test.double() - y_test.double().mean()).pow(2).sum())



def visible_onehot(seq: Tensor, k: int) -> Tensor:
    """One-hot of every token a model has read at the position of c_k (operands, ``*``, ``=``, c_0..c_k):
    (B, (11 + k) * VOCAB), the features of the inputs-only baseline probe."""
    _check_seq(seq)
    if not 0 <= k < 2 * N_DIGITS:
        raise ValueError(f"k must be in [0, {2 * N_DIGITS}), got {k}")
    return F.one_hot(seq[:, : C_TOKENS.start + k + 1], VOCAB).flatten(1).float()


def partial_r2(x_train: Tensor, base_train: Tensor, y_train: Tensor, x_test: Tensor, base_test: Tensor,
               y_test: Tensor, ridge: float = 1e-2) -> float:
    """Held-out partial R^2 of ``x`` beyond ``base``: ``1 - SSE(ridge on [x, base]) / SSE(ridge on base)``,
    the share of what the baseline features leave unexplained that ``x`` explains (0: nothing)."""
    if base_train.shape[0] != x_train.shape[0] or base_test.shape[0] != x_test.shape[0]:
        raise ValueError(f"base must have one row per row of x, got {tuple(base_train.shape)} for "
                         f"{tuple(x_train.shape)}, {tuple(base_test.shape)} for {tuple(x_test.shape)}")
    sse = lambda r2: (1 - r2)  # noqa: E731  (R^2 on the same test targets: SSE is proportional to 1 - R^2)
    r2_base = ridge_probe_r2(base_train, y_train, base_test, y_test, ridge)
    r2_full = ridge_probe_r2(torch.cat([x_train, base_train], 1), y_train, torch.cat([x_test, base_test], 1),
                             y_test, ridge)
    return float(1 - sse(r2_full) / max(sse(r2_base), 1e-12))


def probe_table(model: TinyLM, seq: Tensor, c_hat: Tensor, n_train: int, ridge: float = 1e-2,
                beyond_inputs: bool = True) -> dict[str, list[float]]:
    """Held-out probes of c_hat_k from each residual site at the token c_k, k = 0..7: site -> 8 values.

    ``beyond_inputs``: the partial R^2 beyond a probe on the one-hot tokens read so far
    (:func:`visible_onehot`, :func:`partial_r2`), i.e. what the model *computed*; else the plain R^2.
    The first ``n_train`` rows train the probes, the rest test them."""
    if not 0 < n_train < seq.shape[0]:
        raise ValueError(f"n_train must be in (0, {seq.shape[0]}), got {n_train}")
    out = {}
    tr, te = slice(0, n_train), slice(n_train, None)
    for site, h in residual_sites(model, seq).items():  # (B, 8, d)
        vals = []
        for k in range(2 * N_DIGITS):
            y = c_hat[:, k].float()
            if beyond_inputs:
                base = visible_onehot(seq, k)
                vals.append(partial_r2(h[tr, k], base[tr], y[tr], h[te, k], base[te], y[te], ridge))
            else:
                vals.append(ridge_probe_r2(h[tr, k], y[tr], h[te, k], y[te], ridge))
        out[site] = vals
    return out


def inputs_only_r2(seq: Tensor, c_hat: Tensor, n_train: int, ridge: float = 1e-2) -> list[float]:
    """Held-out R^2 of c_hat_k from the one-hot tokens read so far alone (k = 0..7): the baseline probe."""
    tr, te = slice(0, n_train), slice(n_train, None)
    return [ridge_probe_r2(visible_onehot(seq, k)[tr], c_hat[tr, k].float(), visible_onehot(seq, k)[te],
                           c_hat[te, k].float(), ridge) for k in range(2 * N_DIGITS)]


@torch.no_grad()
def exact_match(model: TinyLM, seq: Tensor) -> float:
    """Share of problems whose 8 answer digits, generated greedily after ``... =``, are all right."""
    _check_seq(seq)
    out = model.generate(seq[:, : C_TOKENS.start], 2 * N_DIGITS)
    return float((out[:, C_TOKENS] == seq[:, C_TOKENS]).all(1).float().mean())


def plot_carry_chain(a: int, b: int, k: int, ax=None):
    """The digit pairs (a_i, b_j) that feed c_k: i + j = k (the sum s_k, dark) and i + j < k (through
    the carry, light), for 4-digit ``a`` and ``b``; the title gives s_k, c_hat_k and c_k."""
    import matplotlib.pyplot as plt

    if not (10 ** (N_DIGITS - 1) <= a < 10 ** N_DIGITS and 10 ** (N_DIGITS - 1) <= b < 10 ** N_DIGITS):
        raise ValueError(f"a and b must have {N_DIGITS} digits, got {a}, {b}")
    if not 0 <= k < 2 * N_DIGITS:
        raise ValueError(f"k must be in [0, {2 * N_DIGITS}), got {k}")
    ax = ax or plt.subplots(figsize=(4.2, 4))[1]
    da, db = digits_lsb(torch.tensor([a]), N_DIGITS)[0], digits_lsb(torch.tensor([b]), N_DIGITS)[0]
    c_hat = running_sum(da[None], db[None])[0]
    i, j = torch.meshgrid(torch.arange(N_DIGITS), torch.arange(N_DIGITS), indexing="ij")
    level = torch.where(i + j == k, 2.0, torch.where(i + j < k, 1.0, 0.0))
    ax.imshow(level.T, cmap="Blues", vmin=0, vmax=2.4, origin="lower")
    for ii in range(N_DIGITS):
        for jj in range(N_DIGITS):
            ax.text(ii, jj, f"{int(da[ii])}x{int(db[jj])}", ha="center", va="center", fontsize=9,
                    color="white" if ii + jj == k else "black")
    ax.set_xticks(range(N_DIGITS), [f"a{t}={int(da[t])}" for t in range(N_DIGITS)])
    ax.set_yticks(range(N_DIGITS), [f"b{t}={int(db[t])}" for t in range(N_DIGITS)])
    ax.set_xlabel("digit of a (least significant first)")
    ax.set_ylabel("digit of b")
    s_k = int(sum(da[t] * db[k - t] for t in range(N_DIGITS) if 0 <= k - t < N_DIGITS))
    ax.set_title(f"c{k}: s = {s_k}, running sum = {int(c_hat[k])}, digit = {int(c_hat[k]) % 10}\n"
                 f"pairs feeding c{k}: {int((i + j <= k).sum())} of 16", fontsize=9)
    return ax
