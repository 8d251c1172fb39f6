"""Long-sequence layers as token mixers under one template, and attention sharded over workers.

Hè & Kabić, *A Unified View of Long-Sequence Models towards Modeling Million-Scale Dependencies*
(arXiv 2302.06218). Every layer below mixes the tokens of a sequence ``(B, L, D)`` as

    y = M(x) v,        M(x) in R^{L x L}                                    (eq. ulm-template)

and differs only in how ``M`` is structured and how ``M v`` is computed fast. Each family has a
*fast* function (what a model runs) and a *matrix* function (the explicit ``M``); the chapter and
the unit tests check that the two agree.

* softmax attention: dense, data dependent (:func:`softmax_mix`, :func:`softmax_matrix`);
* linear attention: ``M = D^-1 phi(Q) phi(K)^T``, causal via prefix sums of ``phi(k) v^T``
  (:func:`linear_mix`, :func:`linear_matrix`);
* sliding window: banded softmax, computed block by block in O(L w D) (:func:`window_mix`);
* long convolution / diagonal SSM: Toeplitz ``M``, computed by a zero-padded FFT in O(L log L D)
  (:func:`ssm_kernel`, :func:`fft_conv`, :func:`conv_matrix`);
* Fourier mixing (FNet, sequence axis): ``M = Re(F)`` (:func:`fourier_mix`, :func:`fourier_matrix`).

The second half shards the keys/values of softmax attention over ``P`` workers. Each worker returns
a partial output and the log-sum-exp of its scores; merging them by eq. ``ulm-merge`` is exact
(:func:`partial_attention`, :func:`merge_partials`, :func:`blockwise_attention`).
:func:`distributed_attention` runs the workers as real ``torch.distributed`` processes.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from ..nn.attention import attention, attention_with_lse, check_qkv
from ..nn.attention import merge_partials as _merge_partials
from ..nn.masks import CausalMask, Mask, SlidingWindowMask

Tensor = torch.Tensor
FAMILIES = ("softmax", "causal softmax", "linear (causal)", "sliding window", "SSM long conv", "Fourier (FNet)")


def _check_seq(x: Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor of shape (B, L, D), got {getattr(x, 'shape', x)!r}")


def _check_qk(q: Tensor, k: Tensor, v: Tensor | None = None) -> None:
    _check_seq(q, "q")
    _check_seq(k, "k")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape (B, L, D), got {tuple(q.shape)} and {tuple(k.shape)}")
    if v is not None:
        _check_seq(v, "v")
        if v.shape[:2] != q.shape[:2]:
            raise ValueError(f"v must have shape (B, L, Dv) = ({q.shape[0]}, {q.shape[1]}, Dv), got {tuple(v.shape)}")


# ---------------------------------------------------------------- softmax attention (dense M)
def _softmax_matrix(q: Tensor, k: Tensor, mask: Mask | None) -> Tensor:
    """softmax(q k^T / sqrt(d)) over the keys ``mask`` keeps, in the dtype of q (no float32 detour): (B, L, L)."""
    scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # (B, L, L)
    if mask is not None:
        scores = scores.masked_fill(~mask.dense(q.shape[1], device=q.device), float("-inf"))
    return torch.softmax(scores, dim=-1)


def softmax_matrix(q: Tensor, k: Tensor, causal: bool = False) -> Tensor:
    """Explicit M = softmax(q k^T / sqrt(d)) (masked if causal): (B, L, L)."""
    _check_qk(q, k)
    return _softmax_matrix(q, k, CausalMask() if causal else None)


def softmax_mix(q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
    """Fast softmax attention (fused SDPA): (B, L, Dv), equal to ``softmax_matrix(q, k) @ v``."""
    _check_qk(q, k, v)
    if q.shape[-1] != v.shape[-1]:
        raise ValueError(f"v must have the head dim of q ({q.shape[-1]}) for SDPA, got {v.shape[-1]}")
    return attention(q[:, None], k[:, None], v[:, None], CausalMask() if causal else None)[:, 0]


# ---------------------------------------------------------------- linear attention (low-rank M)
def elu_feature(x: Tensor) -> Tensor:
    """The positive feature map phi(x) = elu(x) + 1 of the linear transformer."""
    return F.elu(x) + 1


def linear_matrix(q: Tensor, k: Tensor, causal: bool = True) -> Tensor:
    """Explicit M = D^-1 phi(q) phi(k)^T (lower-triangular if causal), rows summing to 1: (B, L, L)."""
    _check_qk(q, k)
    a = elu_feature(q) @ elu_feature(k).transpose(1, 2)  # (B, L, L)
    if causal:
        a = torch.tril(a)
    return a / a.sum(-1, keepdim=True)


def linear_mix(q: Tensor, k: Tensor, v: Tensor, causal: bool = True) -> Tensor:
    """Linear attention in O(L D Dv) without forming M (eq. ulm-linear).

    Causal: the recurrent form S_t = S_{t-1} + phi(k_t) v_t^T, z_t = z_{t-1} + phi(k_t) evaluated as
    prefix sums; y_t = phi(q_t)^T S_t / phi(q_t)^T z_t. Non-causal: phi(q) (phi(k)^T v).
    """
    _check_qk(q, k, v)
    fq, fk = elu_feature(q), elu_feature(k)  # (B, L, D)
    if not causal:
        num = fq @ (fk.transpose(1, 2) @ v)  # (B, L, Dv)
        return num / (fq @ fk.sum(1, keepdim=True).transpose(1, 2))
    state = torch.cumsum(fk[..., :, None] * v[..., None, :], dim=1)  # (B, L, D, Dv)
    z = torch.cumsum(fk, dim=1)  # (B, L, D)
    num = torch.einsum("bld,bldv->blv", fq, state)
    return num / (fq * z).sum(-1, keepdim=True)


# ---------------------------------------------------------------- sliding window (banded M)
def window_matrix(q: Tensor, k: Tensor, window: int) -> Tensor:
    """Explicit banded M: causal softmax over the last ``window`` keys (i - window < j <= i): (B, L, L)."""
    _check_qk(q, k)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return _softmax_matrix(q, k, SlidingWindowMask(window))


def window_mix(q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
    """Sliding-window attention block by block: O(L w D) time, never an L x L matrix.

    Queries of block b (``window`` rows) only see keys of blocks b-1 and b; a (w, 2w) band mask
    inside that pair selects the last ``window`` keys of each row.
    """
    _check_qk(q, k, v)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    B, L, D = q.shape
    w = window
    nb = -(-L // w)
    pad = nb * w - L
    qb = F.pad(q, (0, 0, 0, pad)).view(B, nb, w, D)  # (B, nb, w, D)
    kp = F.pad(k, (0, 0, w, pad)).view(B, nb + 1, w, D)  # one zero block in front
    vp = F.pad(v, (0, 0, w, pad)).view(B, nb + 1, w, v.shape[-1])
    kb = torch.cat([kp[:, :-1], kp[:, 1:]], dim=2)  # (B, nb, 2w, D): previous block + own block
    vb = torch.cat([vp[:, :-1], vp[:, 1:]], dim=2)
    i = torch.arange(w, device=q.device)[:, None] + w  # query index inside the (2w) key window
    j = torch.arange(2 * w, device=q.device)[None]
    band = (j <= i) & (j > i - w)  # (w, 2w)
    first = torch.arange(nb, device=q.device)[:, None, None] > 0
    keep = band[None] & (first | (j >= w)[None])  # (nb, w, 2w): block 0 has no previous block
    scores = (qb @ kb.transpose(-1, -2)) / math.sqrt(D)  # (B, nb, w, 2w)
    weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
    return (weights @ vb).reshape(B, nb * w, -1)[:, :L]


# ---------------------------------------------------------------- long convolution / diagonal SSM (Toeplitz M)
def ssm_kernel(decay: Tensor, freq: Tensor, coef: Tensor, length: int) -> Tensor:
    """Convolution kernel of a diagonal SSM, one per channel (eq. ulm-ssm): (D, length).

    h[d, t] = sum_n Re(coef[d, n] * lambda[d, n]^t), lambda = exp(-decay + i freq); ``decay`` > 0,
    ``freq`` and complex ``coef`` (= C_n B_n) all (D, N).
    """
    if not (decay.shape == freq.shape == coef.shape) or decay.ndim != 2:
        raise ValueError(f"decay, freq and coef must share a shape (D, N), got {tuple(decay.shape)}, "
                         f"{tuple(freq.shape)}, {tuple(coef.shape)}")
    if not bool((decay > 0).all()):
        raise ValueError("decay must be > 0 everywhere (a stable SSM)")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    t = torch.arange(length, dtype=decay.dtype, device=decay.device)  # (L,)
    log_lam = torch.complex(-decay, freq)  # (D, N)
    powers = torch.exp(log_lam[..., None] * t)  # (D, N, L)
    return (coef[..., None] * powers).real.sum(1)  # (D, L)


def conv_matrix(h: Tensor) -> Tensor:
    """Explicit causal Toeplitz matrices W^c[d, i, j] = h[d, i - j] (i >= j), one per channel: (D, L, L)."""
    if h.ndim != 2:
        raise ValueError(f"h must be a kernel of shape (D, L), got {tuple(h.shape)}")
    L = h.shape[1]
    lag = torch.arange(L)[:, None] - torch.arange(L)[None]  # (L, L)
    return torch.where(lag >= 0, h[:, lag.clamp_min(0)], torch.zeros((), dtype=h.dtype))


def fft_conv(x: Tensor, h: Tensor) -> Tensor:
    """Causal depthwise convolution y[:, i, d] = sum_{j<=i} h[d, i-j] x[:, j, d] by FFT in O(L log L).

    Zero-pads to 2L: an L-point FFT would compute a *circular* convolution that leaks the future.
    """
    _check_seq(x, "x")
    if h.ndim != 2 or h.shape != (x.shape[2], x.shape[1]):
        raise ValueError(f"h must have shape (D, L) = ({x.shape[2]}, {x.shape[1]}), got {tuple(h.shape)}")
    L = x.shape[1]
    n = 2 * L
    xf = torch.fft.rfft(x, n=n, dim=1)  # (B, L+1, D)
    hf = torch.fft.rfft(h.T, n=n, dim=0)  # (L+1, D)
    return torch.fft.irfft(xf * hf, n=n, dim=1)[:, :L]


# ---------------------------------------------------------------- Fourier mixing (fixed M)
def fourier_matrix(length: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Explicit FNet mixing along the sequence, M = Re(F) with F[i, j] = exp(-2 pi i ij / L): (L, L)."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    idx = torch.arange(length, dtype=torch.float64)
    return torch.cos(2 * math.pi * torch.outer(idx, idx) / length).to(dtype)


def fourier_mix(x: Tensor) -> Tensor:
    """FNet's token mixing along the sequence: Re(FFT(x)) in O(L log L). Non-causal."""
    _check_seq(x, "x")
    return torch.fft.fft(x, dim=1).real


# ---------------------------------------------------------------- the gallery
@dataclass
class MixerCase:
    """One family on one input: its explicit M, the template output M v and the fast output."""

    name: str
    matrix: Tensor  # (B, L, L) or (D, L, L) for the per-channel convolution
    template: Tensor  # M v: (B, L, D)
    fast: Tensor  # the fast algorithm: (B, L, D)
    causal: bool

    @property
    def max_error(self) -> float:
        """max |fast - M v|."""
        return float((self.fast - self.template).abs().max())


def mixer_gallery(length: int = 64, dim: int = 16, window: int = 8, batch: int = 1, seed: int = 0,
                  dtype: torch.dtype = torch.float64) -> dict[str, MixerCase]:
    """Every family of :data:`FAMILIES` on one random input x (B, L, D) with random projections.

    q, k, v = x W_q, x W_k, x W_v; the SSM has N = 4 modes per channel with random decays and
    frequencies. Returns ``{family: MixerCase}``.
    """
    if length < 2 or dim < 1 or batch < 1:
        raise ValueError(f"length must be >= 2, dim and batch >= 1, got {length}, {dim}, {batch}")
    if not 1 <= window <= length:
        raise ValueError(f"window must be in [1, length={length}], got {window}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, dim, generator=g, dtype=dtype)
    wq, wk, wv = (torch.randn(dim, dim, generator=g, dtype=dtype) / math.sqrt(dim) for _ in range(3))
    q, k, v = x @ wq, x @ wk, x @ wv  # (B, L, D)
    n_modes = 4
    decay = 0.02 + 0.2 * torch.rand(dim, n_modes, generator=g, dtype=dtype)
    freq = math.pi * torch.rand(dim, n_modes, generator=g, dtype=dtype)
    coef = torch.complex(torch.randn(dim, n_modes, generator=g, dtype=dtype),
                         torch.randn(dim, n_modes, generator=g, dtype=dtype)) / n_modes
    h = ssm_kernel(decay, freq, coef, length)  # (D, L)

    def case(name: str, m: Tensor, fast: Tensor, causal: bool, per_channel: bool = False) -> MixerCase:
        template = torch.einsum("dij,bjd->bid", m, v) if per_channel else m @ v
        return MixerCase(name, m, template, fast, causal)

    cases = [
        case("softmax", softmax_matrix(q, k), softmax_mix(q, k, v), False),
        case("causal softmax", softmax_matrix(q, k, causal=True), softmax_mix(q, k, v, causal=True), True),
        case("linear (causal)", linear_matrix(q, k), linear_mix(q, k, v), True),
        case("sliding window", window_matrix(q, k, window), window_mix(q, k, v, window), True),
        case("SSM long conv", conv_matrix(h), fft_conv(v, h), True, per_channel=True),
        case("Fourier (FNet)", fourier_matrix(length, dtype)[None], fourier_mix(v), False),
    ]
    return {c.name: c for c in cases}


# ---------------------------------------------------------------- sharded attention with an exact LSE merge
def partial_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, k_offset: int = 0,
                      scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Softmax attention of all queries over one shard of keys (eq. ulm-partial).

    ``q`` (B, H, Nq, D); ``k, v`` (B, H, Nk, D) hold keys ``k_offset .. k_offset + Nk - 1``.
    Returns the shard-normalised output o (B, H, Nq, D) and the log-sum-exp of the scores
    lse (B, H, Nq) (-inf, with o = 0, for a row that sees no key of this shard). The softmax and
    the log-sum-exp are the shared :func:`companion.nn.attention.attention_with_lse`; this
    function only builds the causal keep-matrix of the shard.
    """
    check_qkv(q, k, v)
    if k.shape[1] != q.shape[1]:
        raise ValueError(f"k must have the heads of q ({q.shape[1]}), got {k.shape[1]}")
    if k_offset < 0:
        raise ValueError(f"k_offset must be >= 0, got {k_offset}")
    keep = None
    if causal:
        qi = torch.arange(q.shape[2], device=q.device)[:, None]
        kj = torch.arange(k.shape[2], device=q.device)[None] + k_offset
        keep = (kj <= qi)[None, None]  # (1, 1, Nq, Nk)
    return attention_with_lse(q, k, v, keep, scale=scale)


def merge_partials(outs: Sequence[Tensor], lses: Sequence[Tensor]) -> Tensor:
    """Exact merge of shard outputs (eq. ulm-merge): o = sum_p exp(lse_p - lse) o_p, lse = logsumexp_p lse_p.

    The merge is the shared :func:`companion.nn.attention.merge_partials`; this returns its output only.
    """
    return _merge_partials(list(outs), list(lses))[0]


def shard_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """Split ``n`` positions into ``parts`` contiguous shards [lo, hi) of near-equal size."""
    if parts < 1 or n < parts:
        raise ValueError(f"parts must be in [1, n={n}], got {parts}")
    edges = [round(i * n / parts) for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def blockwise_attention(q: Tensor, k: Tensor, v: Tensor, parts: int, causal: bool = False) -> Tensor:
    """Attention with keys/values split into ``parts`` shards, merged exactly, in one process."""
    check_qkv(q, k, v)
    outs, lses = [], []
    for lo, hi in shard_bounds(k.shape[2], parts):
        o, lse = partial_attention(q, k[:, :, lo:hi], v[:, :, lo:hi], causal=causal, k_offset=lo)
        outs.append(o)
        lses.append(lse)
    return merge_partials(outs, lses)


@dataclass
class ShardReport:
    """What one worker held: its key range and the bytes of its tensors."""

    rank: int
    keys: tuple[int, int]
    kv_bytes: int  # its K/V shard
    score_bytes: int  # its (B, H, Nq, Nk/P) score block
    partial_bytes: int  # its partial output and log-sum-exp

    @property
    def total_bytes(self) -> int:
        return self.kv_bytes + self.score_bytes + self.partial_bytes


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _worker(rank: int, world_size: int, folder: str, causal: bool, backend: str) -> None:
    """One process of :func:`distributed_attention`: load q and its own K/V shard, attend, all-reduce."""
    torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"file://{folder}/store", rank=rank, world_size=world_size)
    try:
        device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
        q = torch.load(f"{folder}/q.pt").to(device)
        shard = torch.load(f"{folder}/kv{rank}.pt")
        k, v, lo = shard["k"].to(device), shard["v"].to(device), shard["lo"]
        scale = 1.0 / math.sqrt(q.shape[-1])
        o, lse = partial_attention(q, k, v, causal=causal, k_offset=lo, scale=scale)
        score_bytes = q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.element_size()
        # exact merge across workers: global max, then sums of rescaled numerators and normalisers
        m = lse.clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
        w = torch.exp(lse - m)  # (B, H, Nq); 0 where this shard sees no key
        num = w[..., None] * o
        den = w.clone()
        dist.all_reduce(num, op=dist.ReduceOp.SUM)
        dist.all_reduce(den, op=dist.ReduceOp.SUM)
        out = num / den[..., None]
        report = {"rank": rank, "keys": (lo, lo + k.shape[2]), "kv_bytes": _nbytes(k) + _nbytes(v),
                  "score_bytes": score_bytes, "partial_bytes": _nbytes(o) + _nbytes(lse)}
        torch.save({"report": report, "out": out.cpu() if rank == 0 else None}, f"{folder}/result{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def distributed_attention(q: Tensor, k: Tensor, v: Tensor, world_size: int, causal: bool = False,
                          backend: str = "gloo") -> tuple[Tensor, list[ShardReport], float]:
    """Attention computed by ``world_size`` real ``torch.distributed`` processes, each holding one K/V shard.

    Worker p loads only the queries and keys/values ``shard_bounds(Nk, P)[p]``, computes its partial
    (o_p, lse_p) and the workers merge with three all-reduces (max of lse, sums of
    exp(lse_p - m) o_p and exp(lse_p - m)) -- eq. ulm-merge. Processes are started with
    ``torch.multiprocessing.spawn`` and rendezvous through a file store, so this works from a
    notebook and under pytest. Returns (output (B, H, Nq, D) from rank 0, one report per worker,
    wall seconds including process start-up).
    """
    check_qkv(q, k, v)
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(f"backend 'nccl' needs world_size ({world_size}) <= number of GPUs ({torch.cuda.device_count()})")
    bounds = shard_bounds(k.shape[2], world_size)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ulm-dist-") as folder:
        torch.save(q.detach().cpu(), os.path.join(folder, "q.pt"))
        for rank, (lo, hi) in enumerate(bounds):
            torch.save({"k": k[:, :, lo:hi].detach().cpu().clone(), "v": v[:, :, lo:hi].detach().cpu().clone(),
                        "lo": lo}, os.path.join(folder, f"kv{rank}.pt"))
        mp.spawn(_worker, args=(world_size, folder, causal, backend), nprocs=world_size, join=True)
        results = [torch.load(os.path.join(folder, f"result{r}.pt")) for r in range(world_size)]
    seconds = time.perf_counter() - start
    reports = [ShardReport(**{**r["report"], "keys": tuple(r["report"]["keys"])}) for r in results]
    return results[0]["out"].to(q.device), reports, seconds


# ---------------------------------------------------------------- where long context helps: a needle task
def needle_batch(batch: int, length: int, distance: tuple[int, int], n_noise: int = 16, n_needles: int = 8,
                 generator: torch.Generator | None = None, distractor_gap: int | None = None) -> tuple[Tensor, Tensor]:
    """Sequences whose label is one needle token ``d`` positions before the last (query) token.

    Tokens ``0 .. n_noise-1`` are noise, ``n_noise .. n_noise+n_needles-1`` needles (one per sequence),
    ``n_noise + n_needles`` the query token at position ``length - 1``; ``d`` is uniform in
    ``[distance[0], distance[1]]``. Returns x (batch, length) and the needle y (batch,). A model whose
    context holds the last C tokens sees the needle iff d <= C - 1; otherwise it can only guess
    (accuracy 1 / n_needles).

    With ``distractor_gap`` a second, different needle is placed *farther* back, at a distance
    uniform in ``[d + distractor_gap, length - 2]``, and the label is still the **nearest** needle.
    Then the task needs order: a model without positions sees two needles and cannot tell which is
    the label (accuracy about 1/2 once both are in its context).
    """
    lo, hi = distance
    if batch < 1 or n_noise < 1 or n_needles < 2:
        raise ValueError(f"batch, n_noise must be >= 1 and n_needles >= 2, got {batch}, {n_noise}, {n_needles}")
    if not 1 <= lo <= hi <= length - 1:
        raise ValueError(f"distance must satisfy 1 <= lo <= hi <= length - 1 = {length - 1}, got {distance}")
    if distractor_gap is not None and not (distractor_gap >= 1 and hi + distractor_gap <= length - 2):
        raise ValueError(f"distractor_gap must be >= 1 with distance[1] + distractor_gap <= length - 2 = "
                         f"{length - 2}, got {distractor_gap}")
    x = torch.randint(0, n_noise, (batch, length), generator=generator)
    y = torch.randint(n_noise, n_noise + n_needles, (batch,), generator=generator)
    d = torch.randint(lo, hi + 1, (batch,), generator=generator)
    rows = torch.arange(batch)
    if distractor_gap is not None:
        other = n_noise + (y - n_noise + torch.randint(1, n_needles, (batch,), generator=generator)) % n_needles
        far = d + distractor_gap  # (batch,) nearest allowed distractor distance
        d2 = far + (torch.rand(batch, generator=generator) * (length - 1 - far)).long()  # in [far, length - 2]
        x[rows, length - 1 - d2] = other
    x[rows, length - 1 - d] = y
    x[:, -1] = n_noise + n_needles
    return x, y


# ---------------------------------------------------------------- pictures and the explorer
def plot_mixing_matrix(m: Tensor, ax=None, title: str | None = None):
    """Heat map of one mixing matrix M (L, L) with a symmetric colour scale (M may be negative)."""
    import matplotlib.pyplot as plt

    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"m must be a square matrix (L, L), got {tuple(m.shape)}")
    ax = plt.subplots(figsize=(3.2, 3.0))[1] if ax is None else ax
    lim = float(m.abs().max()) or 1.0
    im = ax.imshow(m.float().numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title or "mixing matrix M", fontsize=9)
    ax.set_xlabel("source token j")
    ax.set_ylabel("output token i")
    return ax


def mixer_explorer(length: int = 32, dim: int = 8):
    """Pick a family, the length L, the window and the input seed; see M(x) and max |fast - M v|."""
    import ipywidgets as W
    import matplotlib.pyplot as plt

    from ..widgets import redraw_on

    family = W.Dropdown(options=FAMILIES, value="sliding window", description="family")
    size = W.IntSlider(value=length, min=4, max=128, step=4, description="L")
    window = W.IntSlider(value=8, min=1, max=64, description="window")
    seed = W.IntSlider(value=0, min=0, max=20, description="input seed")

    def draw():
        case = mixer_gallery(size.value, dim, min(window.value, size.value), seed=seed.value)[family.value]
        m = case.matrix[0]
        fig, ax = plt.subplots(figsize=(4.4, 4.0))
        label = " (channel 0 of D)" if family.value == "SSM long conv" else ""
        plot_mixing_matrix(m, ax, f"{family.value}{label}\nmax |fast - M v| = {case.max_error:.1e}")

    return redraw_on([family, size, window, seed], draw)
