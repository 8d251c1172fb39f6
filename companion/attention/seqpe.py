"""SeqPE: positions read as digit sequences by a small transformer encoder.

Li et al., *SeqPE: Transformer with Sequential Position Encoding* (arXiv 2506.13277). Everything the
chapter ``book/attention/seqpe.md`` needs:

* :func:`position_digits` writes each position in base 10, **left-padded** to ``max_digits`` slots
  with a padding mask, so the units digit always sits in the last slot (eq. (1) of the chapter).
* :class:`SeqPE` encodes those digit sequences with a small bidirectional
  :class:`companion.nn.TinyEncoder` whose [CLS] token is appended **last**; the position embedding is
  ``e(p) = W h_CLS / T`` (eq. (2)). Only the unique positions of a call are encoded.
* :func:`contrastive_candidates` and :func:`contrastive_loss` implement the distance-contrastive
  objective (eq. (4)): the "positive" of a pivot is simply its nearest candidate.
* :func:`transfer_windows` and :func:`transfer_loss` implement the out-of-distribution transfer
  (eq. (5)): the softmax similarity structure of a shifted window is pulled towards that of the
  training window (teacher detached), with a symmetric KL divergence.
* :class:`SeqPELM` wraps a :class:`companion.nn.TinyLM` (``pos="none"``) and adds SeqPE's low-rank
  positional bias to every attention layer's logits (the paper's GPT-2 ``attn_scalar``, eq. (3)) through
  the model's ``attn_fn`` hook. :class:`SeqPEObjective` is the training loss (eq. (6)): the task loss
  under the paper's random position shift (:func:`shifted_positions`) plus the two auxiliary losses,
  linearly warmed up (:func:`aux_weight`).
* :func:`spearman` and :func:`distance_correlation` measure how well embedding distance tracks
  position distance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from ..nn import Mask, TinyEncoder, TinyLM, TransformerConfig, attention

Tensor = torch.Tensor


def _check_int(value: int, name: str, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_position_tensor(positions: Tensor, name: str = "positions") -> None:
    if not isinstance(positions, torch.Tensor) or positions.is_floating_point() or positions.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {getattr(positions, 'dtype', type(positions))}")
    if positions.numel() and int(positions.min()) < 0:
        raise ValueError(f"{name} must be non-negative, got minimum {int(positions.min())}")


# ----------------------------------------------------------------------------------------------
# Positions as digit sequences
# ----------------------------------------------------------------------------------------------

def position_digits(positions: Tensor, max_digits: int, base: int = 10) -> tuple[Tensor, Tensor]:
    """Digits of ``positions`` (P,), right-aligned in ``max_digits`` slots (eq. (1)).

    Returns ``digits`` (P, max_digits) with values in ``[0, base)`` (0 in padding slots) and ``pad``
    (P, max_digits), True in the leading padding slots. Position 0 has one digit, "0".
    """
    _check_position_tensor(positions)
    _check_int(max_digits, "max_digits", 1)
    _check_int(base, "base", 2)
    if positions.ndim != 1:
        raise ValueError(f"positions must have shape (P,), got {tuple(positions.shape)}")
    if positions.numel() and int(positions.max()) >= base ** max_digits:
        raise ValueError(f"positions must be < base**max_digits = {base ** max_digits}, got {int(positions.max())}")
    p = positions.long()
    powers = base ** torch.arange(max_digits - 1, -1, -1, device=p.device)  # (max_digits,) most significant first
    digits = (p[:, None] // powers) % base  # (P, max_digits)
    n_digits = torch.ones_like(p)
    for k in range(1, max_digits):
        n_digits += (p >= base ** k).long()
    pad = torch.arange(max_digits, device=p.device)[None] < (max_digits - n_digits)[:, None]  # (P, max_digits)
    return digits.masked_fill(pad, 0), pad


class SeqPE(nn.Module):
    """Sequential position encoder: e(p) = W h_CLS(digits of p) / T (eq. (2)).

    ``causal=True`` (default) is the attention direction of the paper's GPT-2 script
    (``SEQPE_ATTN_DIRECTION=causal``), with its encoder dropout 0.1; ``causal=False`` reads the
    digits bidirectionally.

    ``forward(position_ids)`` maps any integer tensor of positions < ``base**max_digits`` to
    embeddings of shape ``position_ids.shape + (dim,)``; each distinct position is encoded once.
    """

    def __init__(self, dim: int, max_digits: int = 3, base: int = 10, d_model: int = 32, n_layers: int = 2,
                 n_heads: int = 4, temperature: float = 1.0, causal: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("max_digits", max_digits), ("d_model", d_model),
                            ("n_layers", n_layers), ("n_heads", n_heads)):
            _check_int(value, name, 1)
        _check_int(base, "base", 2)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dim, self.max_digits, self.base, self.temperature = dim, max_digits, base, float(temperature)
        self.causal = bool(causal)  # the official GPT-2 script: SEQPE_ATTN_DIRECTION=causal
        self.cls_id = base  # token ids: digits 0..base-1, then [CLS]
        # the digit-slot embeddings are the encoder's learned positions over the max_digits + 1 slots
        self.encoder = TinyEncoder(TransformerConfig(vocab_size=base + 1, d_model=d_model, n_layers=n_layers,
                                                     n_heads=n_heads, max_len=max_digits + 1, pos="learned",
                                                     dropout=dropout))
        self.out = nn.Linear(d_model, dim, bias=False)

    @property
    def max_position(self) -> int:
        """The first position this encoder cannot write: base**max_digits."""
        return self.base ** self.max_digits

    def encode(self, positions: Tensor) -> Tensor:
        """Embeddings of the positions (P,) -> (P, dim), one encoder pass per position."""
        digits, pad = position_digits(positions, self.max_digits, self.base)  # (P, M), (P, M)
        cls = torch.full_like(digits[:, :1], self.cls_id)
        tokens = torch.cat([digits, cls], dim=1)  # (P, M+1): [CLS] last
        keep_key = torch.cat([~pad, torch.ones_like(pad[:, :1])], dim=1)  # (P, M+1)
        mask = keep_key[:, None, :].expand(-1, tokens.shape[1], -1)  # (P, M+1, M+1) pads hidden
        if self.causal:  # each slot reads the slots before it; [CLS], last, reads every digit
            mask = mask & torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool, device=mask.device).tril()
        h = self.encoder(tokens, mask=mask)  # (P, M+1, d_model)
        return self.out(h[:, -1]) / self.temperature

    def forward(self, position_ids: Tensor) -> Tensor:
        """Integer positions of any shape -> embeddings of shape ``position_ids.shape + (dim,)``."""
        _check_position_tensor(position_ids, "position_ids")
        uniq, inverse = torch.unique(position_ids.reshape(-1), return_inverse=True)
        return self.encode(uniq)[inverse].reshape(*position_ids.shape, self.dim)


# ----------------------------------------------------------------------------------------------
# Distance-contrastive objective
# ----------------------------------------------------------------------------------------------

def _edit_once(s: str, kind: int, r1: int, r2: int) -> str:
    if kind == 0 or len(s) == 1:  # insert digit r2 % 10 at slot r1 % (len + 1)
        i = r1 % (len(s) + 1)
        return s[:i] + str(r2 % 10) + s[i:]
    if kind == 1:  # delete the digit at slot r1 % len
        i = r1 % len(s)
        return s[:i] + s[i + 1:]
    i = r1 % (len(s) - 1)  # swap two neighbouring digits
    return s[:i] + s[i + 1] + s[i] + s[i + 2:]


def _digit_edits(p: Tensor, max_position: int, generator: torch.Generator, tries: int = 8) -> Tensor:
    """One random base-10 digit edit of each position (P,): insert a digit, delete one, or swap two neighbours.

    An edit whose result is not a position (>= ``max_position``, e.g. an insertion into a 3-digit
    pivot when ``max_position`` = 512) is **resampled** (up to ``tries`` times, then a deletion),
    never wrapped around, so every hard negative is close to its pivot as a string.
    """
    out = []
    choice = torch.randint(0, 3, (p.numel(), tries), generator=generator).tolist()
    rand = torch.randint(0, 10**6, (p.numel(), tries, 2), generator=generator).tolist()
    for value, kinds, rs in zip(p.tolist(), choice, rand):
        s = str(value)
        edited = None
        for kind, (r1, r2) in zip(kinds, rs):
            e = _edit_once(s, kind, r1, r2)
            if e and int(e) < max_position:
                edited = int(e)
                break
        if edited is None:  # deleting a digit always gives a smaller number (or 0 for one digit)
            edited = int(s[1:] or "0")
        out.append(edited)
    return torch.tensor(out, dtype=torch.long)


def contrastive_candidates(n_pivots: int, n_candidates: int, max_position: int, near: int = 16,
                           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Sample pivots, candidates and labels for :func:`contrastive_loss`.

    Candidates mix three kinds, in thirds: uniformly random positions, digit edits of the pivot
    (123 -> 1293, 13, 213: close as strings, far as numbers; an edit at or beyond ``max_position``
    is resampled, never wrapped) and positions within ``near`` of the pivot (clamped to the range). Returns ``pivots`` (n_pivots,), ``candidates`` (n_pivots, n_candidates) and ``labels``
    (n_pivots,): the index of the candidate nearest to the pivot, argmin_j |c_j - p|.
    """
    _check_int(n_pivots, "n_pivots", 1)
    _check_int(n_candidates, "n_candidates", 3)
    _check_int(max_position, "max_position", 2)
    _check_int(near, "near", 1)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    pivots = torch.randint(0, max_position, (n_pivots,), generator=g)
    n_edit = n_candidates // 3
    n_near = n_candidates // 3
    n_rand = n_candidates - n_edit - n_near
    rand = torch.randint(0, max_position, (n_pivots, n_rand), generator=g)
    edits = torch.stack([_digit_edits(pivots, max_position, g) for _ in range(n_edit)], dim=1)
    offset = torch.randint(1, near + 1, (n_pivots, n_near), generator=g)
    sign = torch.randint(0, 2, (n_pivots, n_near), generator=g) * 2 - 1
    close = (pivots[:, None] + sign * offset).clamp(0, max_position - 1)
    candidates = torch.cat([rand, edits, close], dim=1)  # (n_pivots, n_candidates)
    labels = (candidates - pivots[:, None]).abs().argmin(dim=1)
    return pivots, candidates, labels


def _split_heads(e: Tensor, n_heads: int) -> Tensor:
    """(..., n, dim) -> (..., n_heads, n, dim / n_heads)."""
    if e.shape[-1] % n_heads:
        raise ValueError(f"the embedding dim {e.shape[-1]} must be divisible by n_heads={n_heads}")
    return e.unflatten(-1, (n_heads, -1)).transpose(-3, -2)


def contrastive_loss(pivot_emb: Tensor, cand_emb: Tensor, labels: Tensor, n_heads: int = 1) -> Tensor:
    """L_ct = -log softmax_j(e(p)·e(c_j))[y], averaged over pivots and heads (eq. (4)).

    ``pivot_emb`` (B, D), ``cand_emb`` (B, n, D), ``labels`` (B,). With ``n_heads > 1`` the
    embeddings are split into heads and each head is a separate classification (the paper's
    multi-head loss).
    """
    if pivot_emb.ndim != 2 or cand_emb.ndim != 3 or cand_emb.shape[0] != pivot_emb.shape[0] \
            or cand_emb.shape[2] != pivot_emb.shape[1]:
        raise ValueError(f"pivot_emb must be (B, D) and cand_emb (B, n, D), got {tuple(pivot_emb.shape)} "
                         f"and {tuple(cand_emb.shape)}")
    if labels.shape != pivot_emb.shape[:1]:
        raise ValueError(f"labels must have shape ({pivot_emb.shape[0]},), got {tuple(labels.shape)}")
    _check_int(n_heads, "n_heads", 1)
    piv = _split_heads(pivot_emb[:, None], n_heads)  # (B, H, 1, D/H)
    cand = _split_heads(cand_emb, n_heads)  # (B, H, n, D/H)
    logits = (piv @ cand.transpose(-1, -2)).squeeze(-2)  # (B, H, n)
    return F.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(n_heads))


# ----------------------------------------------------------------------------------------------
# Out-of-distribution transfer
# ----------------------------------------------------------------------------------------------

def transfer_windows(n_indices: int, train_len: int, max_position: int,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Sample ``n_indices`` distinct positions I of the training window [0, train_len) and one shifted
    copy s + I with s uniform in [train_len, max_position - train_len]. Returns (I, s + I), each (n,)."""
    _check_int(train_len, "train_len", 1)
    _check_int(n_indices, "n_indices", 2)
    if n_indices > train_len:
        raise ValueError(f"n_indices must be <= train_len={train_len}, got {n_indices}")
    if max_position < 2 * train_len:
        raise ValueError(f"max_position must be >= 2 * train_len = {2 * train_len}, got {max_position}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    idx = torch.randperm(train_len, generator=g)[:n_indices].sort().values
    shift = int(torch.randint(train_len, max_position - train_len + 1, (1,), generator=g))
    return idx, idx + shift


def transfer_loss(teacher_emb: Tensor, student_emb: Tensor, n_heads: int = 1) -> Tensor:
    """L_tr = KL(S || T̄) + KL(T̄ || S) between row-softmaxed similarity matrices (eq. (5)).

    ``teacher_emb`` (n, D): embeddings of in-distribution positions I; ``student_emb`` (n, D): of the
    shifted positions s + I. T = softmax(E_I E_Iᵀ) is detached; S = softmax(E_{s+I} E_{s+I}ᵀ).
    Returns the symmetric divergence averaged over **all** n × n elements and heads, the reduction of
    the official ``F.kl_div(..., log_target=True)`` (``reduction='mean'``), i.e. 1/n of a per-row KL.
    """
    if teacher_emb.ndim != 2 or teacher_emb.shape != student_emb.shape:
        raise ValueError(f"teacher_emb and student_emb must both be (n, D), got {tuple(teacher_emb.shape)} "
                         f"and {tuple(student_emb.shape)}")
    _check_int(n_heads, "n_heads", 1)
    t = _split_heads(teacher_emb.detach(), n_heads)  # (H, n, D/H)
    s = _split_heads(student_emb, n_heads)
    log_t = F.log_softmax(t @ t.transpose(-1, -2), dim=-1)  # (H, n, n)
    log_s = F.log_softmax(s @ s.transpose(-1, -2), dim=-1)
    kl_st = log_s.exp() * (log_s - log_t)  # (H, n, n) elementwise terms of KL(S || T)
    kl_ts = log_t.exp() * (log_t - log_s)  # (H, n, n) elementwise terms of KL(T || S)
    return (kl_st + kl_ts).mean()


# ----------------------------------------------------------------------------------------------
# Training helpers and the model
# ----------------------------------------------------------------------------------------------

class SeqPELM(nn.Module):
    """A :class:`TinyLM` (``pos="none"``) whose attention logits get SeqPE's low-rank positional bias.

    The paper's GPT-2 ``attn_scalar`` injection (eq. (3)): one linear map ``pe_qk`` shared by all
    layers turns e(p) into per-head (q^pe, k^pe), and every layer adds
    ``gamma · q^pe_i · k^pe_j / sqrt(d_h)`` to its logits. ``forward``/``loss`` mirror :class:`TinyLM`.
    """

    def __init__(self, cfg: TransformerConfig, pe_dim: int = 32, gamma: float = 1.0, **seqpe_kwargs) -> None:
        super().__init__()
        if cfg.pos != "none":
            raise ValueError(f"cfg.pos must be 'none' (SeqPE replaces the position scheme), got {cfg.pos!r}")
        self.lm = TinyLM(cfg)
        self.pe = SeqPE(pe_dim, **seqpe_kwargs)
        self.n_heads, self.head_dim, self.gamma = cfg.n_heads, cfg.d_model // cfg.n_heads, float(gamma)
        self.pe_qk = nn.Linear(pe_dim, 2 * cfg.d_model, bias=False)

    def position_bias(self, position_ids: Tensor) -> Tensor:
        """gamma · q^pe_i · k^pe_j / sqrt(d_h) for positions (N,) -> (1, H, N, N)."""
        if position_ids.ndim != 1:
            raise ValueError(f"position_ids must have shape (N,), got {tuple(position_ids.shape)}")
        qk = self.pe_qk(self.pe(position_ids)).view(-1, 2, self.n_heads, self.head_dim)  # (N, 2, H, Dh)
        q_pe, k_pe = qk[:, 0].transpose(0, 1), qk[:, 1].transpose(0, 1)  # (H, N, Dh)
        return (self.gamma * (q_pe @ k_pe.transpose(-1, -2)) / self.head_dim ** 0.5)[None]

    def forward(self, idx: Tensor, mask: Mask | Tensor | None = None, position_ids: Tensor | None = None) -> Tensor:
        """Token ids (B, N) -> logits (B, N, vocab); ``position_ids`` (N,) default ``arange(N)``."""
        if not isinstance(idx, torch.Tensor) or idx.ndim != 2:
            raise ValueError(f"idx must be an integer tensor of shape (B, N), got {getattr(idx, 'shape', idx)!r}")
        if position_ids is None:
            position_ids = torch.arange(idx.shape[1], device=idx.device)
        bias = self.position_bias(position_ids).to(self.lm.embed.weight.dtype)  # (1, H, N, N)

        def attn_fn(q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None) -> Tensor:
            return attention(q, k, v, mask, bias=bias)

        return self.lm(idx, mask=mask, position_ids=position_ids, attn_fn=attn_fn)

    def loss(self, idx: Tensor, targets: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """Mean next-token cross-entropy; ``targets`` (B, N) aligned with ``idx`` (already shifted)."""
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
        logits = self(idx, position_ids=position_ids)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def shifted_positions(length: int, max_position: int, rate: float, generator: torch.Generator) -> Tensor:
    """Position ids for one batch: ``arange(length)``, or with probability ``rate`` a window
    [s, s + length) with s uniform in [0, max_position - length] (the paper's random shift). Shape (length,)."""
    _check_int(length, "length", 1)
    if not 0 <= rate <= 1:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    if max_position < length:
        raise ValueError(f"max_position must be >= length={length}, got {max_position}")
    start = 0
    if float(torch.rand((), generator=generator)) < rate:
        start = int(torch.randint(0, max_position - length + 1, (1,), generator=generator))
    return torch.arange(start, start + length)


def aux_weight(step: int, weight: float, warmup: int) -> float:
    """Linear warm-up of an auxiliary loss weight: weight · min(1, (step + 1) / warmup)."""
    if warmup < 0 or weight < 0:
        raise ValueError(f"weight and warmup must be >= 0, got weight={weight}, warmup={warmup}")
    return weight if warmup == 0 else weight * min(1.0, (step + 1) / warmup)


# ----------------------------------------------------------------------------------------------
# Geometry: does embedding distance track position distance?
# ----------------------------------------------------------------------------------------------

def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors of equal length (ties: average ranks)."""
    if x.ndim != 1 or x.shape != y.shape or x.numel() < 2:
        raise ValueError(f"x and y must be 1-D of the same length >= 2, got {tuple(x.shape)} and {tuple(y.shape)}")
    rho = spearmanr(x.detach().double().cpu().numpy(), y.detach().double().cpu().numpy()).statistic
    return 0.0 if rho != rho else float(rho)  # NaN (a constant input) -> no correlation


@torch.no_grad()
def distance_correlation(pos_fn, max_position: int, n_pairs: int = 2000, seed: int = 0) -> float:
    """Spearman correlation between ||e(p) - e(q)|| and |p - q| on random pairs of [0, max_position).

    ``pos_fn`` maps an integer tensor (n,) of positions to embeddings (n, D) (e.g. a :class:`SeqPE`).
    """
    _check_int(max_position, "max_position", 2)
    _check_int(n_pairs, "n_pairs", 2)
    g = torch.Generator().manual_seed(seed)
    p, q = torch.randint(0, max_position, (2, n_pairs), generator=g)
    emb = pos_fn(torch.arange(max_position))  # (max_position, D)
    return spearman((emb[p] - emb[q]).norm(dim=-1), (p - q).abs().float())


# ----------------------------------------------------------------------------------------------
# The training objective
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SeqPEObjective:
    """L = L_task + w_ct L_ct + w_tr L_tr (eq. (6)), weights warmed up linearly over ``warmup`` steps.

    ``w_ct = w_tr = 0`` gives plain SeqPE (still trained with the random position shift).
    """

    train_len: int
    max_position: int
    w_ct: float = 0.1
    w_tr: float = 0.1
    warmup: int = 100
    shift_rate: float = 0.1
    n_pivots: int = 32
    n_candidates: int = 16
    n_transfer: int = 16
    near: int = 16
    n_heads: int = 4

    def __post_init__(self) -> None:
        _check_int(self.train_len, "train_len", 1)
        if self.max_position < 2 * self.train_len:
            raise ValueError(f"max_position must be >= 2 * train_len = {2 * self.train_len}, got {self.max_position}")
        if self.w_ct < 0 or self.w_tr < 0:
            raise ValueError(f"w_ct and w_tr must be >= 0, got {self.w_ct}, {self.w_tr}")

    def positions(self, generator: torch.Generator) -> Tensor:
        """The position ids of one training batch (random shift with rate ``shift_rate``), shape (train_len,)."""
        return shifted_positions(self.train_len, self.max_position, self.shift_rate, generator)

    def __call__(self, model: SeqPELM, x: Tensor, y: Tensor, position_ids: Tensor, step: int,
                 generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """The total loss of one step and its parts (floats, for logging)."""
        if not isinstance(model, SeqPELM):
            raise ValueError(f"model must be a SeqPELM, got {type(model).__name__}")
        pe = model.pe
        task = model.loss(x, y, position_ids=position_ids.to(x.device))
        total, parts = task, {"task": task.item()}
        if self.w_ct == 0 and self.w_tr == 0:
            return total, parts
        piv, cand, labels = contrastive_candidates(self.n_pivots, self.n_candidates, self.max_position,
                                                   self.near, generator)
        idx, shifted = transfer_windows(self.n_transfer, self.train_len, self.max_position, generator)
        n_ct, n_tr = piv.numel() * (1 + self.n_candidates), idx.numel()
        positions = torch.cat([torch.cat([piv[:, None], cand], dim=1).flatten(), idx, shifted])
        emb = pe(positions.to(x.device))  # one encoder pass for both losses: (n_ct + 2 n_tr, D)
        ct_emb = emb[:n_ct].unflatten(0, (piv.numel(), -1))  # (n_pivots, 1 + n, D)
        ct = contrastive_loss(ct_emb[:, 0], ct_emb[:, 1:], labels.to(x.device), self.n_heads)
        tr = transfer_loss(emb[n_ct:n_ct + n_tr], emb[n_ct + n_tr:], self.n_heads)
        total = total + aux_weight(step, self.w_ct, self.warmup) * ct + aux_weight(step, self.w_tr, self.warmup) * tr
        parts |= {"ct": ct.item(), "tr": tr.item()}
        return total, parts


# ----------------------------------------------------------------------------------------------
# The card's extrapolation task: copy the token `offset` positions back
# ----------------------------------------------------------------------------------------------
IGNORE = -100  # target value that F.cross_entropy skips


def copy_offset_batch(batch: int, length: int, offset: int = 8, vocab: int = 32,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Sequences with s_t = s_{t - offset} after ``offset`` random tokens, as next-token pairs (x, y).

    x, y (batch, length): x = s[:-1], y = s[1:], with ``IGNORE`` at the ``offset - 1`` targets that are
    still random, so loss and accuracy cover only the deterministic tokens. The rule is relative
    (the same offset everywhere), so a position scheme that generalises beyond the training length
    keeps solving it there.
    """
    for name, value, low in (("batch", batch, 1), ("length", length, 1), ("offset", offset, 1), ("vocab", vocab, 2)):
        _check_int(value, name, low)
    if length < offset + 1:
        raise ValueError(f"length must be > offset = {offset}, got {length}")
    prefix = torch.randint(0, vocab, (batch, offset), generator=generator)
    seq = prefix.repeat(1, (length + 1) // offset + 1)[:, :length + 1]  # (batch, length + 1)
    x, y = seq[:, :-1].clone(), seq[:, 1:].clone()
    y[:, :offset - 1] = IGNORE
    return x, y


@torch.no_grad()
def copy_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 64, start: int = 0, **kwargs) -> float:
    """Fraction of the deterministic tokens (``y != IGNORE``) at positions >= ``start`` that ``model``
    predicts by argmax (``start`` = the training length scores only the positions beyond it)."""
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"x and y must both be (n, length), got {tuple(x.shape)} and {tuple(y.shape)}")
    if not 0 <= start < x.shape[1]:
        raise ValueError(f"start must be in [0, {x.shape[1]}), got {start}")
    y = y.clone()
    y[:, :start] = IGNORE
    was = model.training
    model.eval()
    hits = total = 0
    for i in range(0, x.shape[0], batch):
        pred = model(x[i:i + batch], **kwargs).argmax(-1)
        keep = y[i:i + batch] != IGNORE
        hits += int((pred == y[i:i + batch])[keep].sum())
        total += int(keep.sum())
    model.train(was)
    return hits / max(total, 1)


# ----------------------------------------------------------------------------------------------
# Explorer
# ----------------------------------------------------------------------------------------------

def position_explorer(encoders: Mapping[str, SeqPE], max_position: int, train_len: int,
                      position: int = 300):
    """Slide a position p: its digit sequence, its nearest neighbours and the cosine similarity
    cos(e(p), e(q)) for every q < ``max_position``, one curve per trained encoder."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from ..widgets import redraw_on

    if not encoders:
        raise ValueError("encoders must map at least one name to a SeqPE")
    _check_int(max_position, "max_position", 2)
    with torch.no_grad():
        unit = {name: F.normalize(pe(torch.arange(max_position, device=next(pe.parameters()).device)), dim=-1).cpu()
                for name, pe in encoders.items()}
    max_digits = next(iter(encoders.values())).max_digits
    slider = W.IntSlider(value=min(position, max_position - 1), min=0, max=max_position - 1,
                         description="position p", continuous_update=False)

    def draw() -> None:
        p = slider.value
        digits, pad = position_digits(torch.tensor([p]), max_digits)
        slots = " ".join("·" if m else str(d) for d, m in zip(digits[0].tolist(), pad[0].tolist()))
        print(f"p = {p}: digit slots [{slots}] + [CLS]   (· = masked padding)")
        fig, ax = plt.subplots(figsize=(8, 3.2))
        for name, u in unit.items():
            sim = u @ u[p]  # (max_position,)
            top = [int(q) for q in sim.argsort(descending=True)[1:6]]
            print(f"  {name}: nearest positions {top}")
            ax.plot(sim.numpy(), lw=1, label=name)
        ax.axvspan(0, train_len, color="tab:green", alpha=0.12, label=f"training window [0, {train_len})")
        ax.axvline(p, color="k", ls="--", lw=1)
        ax.set_xlabel("position q")
        ax.set_ylabel("cos(e(p), e(q))")
        ax.set_title(f"Similarity of position {p} to every position")
        ax.legend(fontsize=8)

    return redraw_on([slider], draw, vertical=True)
