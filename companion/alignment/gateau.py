"""GATEAU (Si et al., 2024): select long-context SFT samples by Homologous Models' Guidance (HMG) and
Contextual Awareness Measurement (CAM).

A sample is ``(c, x, y)``: a long context ``c``, an instruction ``x`` and a response ``y``. GATEAU scores
every sample of a pool and fine-tunes only on the top fraction:

* **HMG** -- the response-only perplexity of a short-context model minus that of its long-context
  sibling (:func:`response_ppl`, :func:`hmg_scores`, after ``select/rank.py``: min-max normalise each
  model's PPL over the pool, subtract, softmax over the pool). Here the two homologous models are *one*
  small LM under two masks: full causal attention (long) and a sliding window (short), both through the
  book's attention kernel :func:`companion.kernels.attention` (``impl="auto"``).
* **CAM** -- cut the context into segments; a segment's *importance* is the inverse perplexity of the
  response given that segment alone (:func:`segment_importance`), its *attention* is the long model's
  attention mass from the response positions onto the segment's keys (:func:`segment_attention`). The
  Contextual Awareness Score (:func:`cas_scores`) is ``1 - cos(importance, attention)``: high when the
  model does not look where the answer is.
* The final score (:func:`gateau_scores`) is ``alpha * HMG + (1 - alpha) * CAS``, both min-max normalised.

The chapter's pool (:func:`make_pool`) mixes three kinds of samples over real Wikipedia/news text
(bytes of :func:`companion.data.text_corpus`) with generated key-value records inserted in it:
``FAR`` (retrieve the values of a record far back: needs the long context), ``LOCAL`` (continue the text,
or retrieve a record just before the query: a short window suffices) and ``NOISY`` (retrieval whose
response is random values: a wrong label).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import kernels
from ..nn.masks import CausalMask, Mask, SlidingWindowMask
from ..nn.transformer import TinyLM, TransformerConfig
from ..train import History, train

# ----------------------------------------------------------------------------------------- vocabulary
N_BYTES = 256
N_KEYS = 16
N_VALUES = 32
KEY0 = N_BYTES                      # key tokens K0..K15
VAL0 = KEY0 + N_KEYS                # value tokens V0..V31
REC = VAL0 + N_VALUES               # starts a record: REC K v1 v2
QRY = REC + 1                       # instruction "retrieve": QRY K
CNT = QRY + 1                       # instruction "continue the text": CNT CNT
VOCAB = CNT + 1
FAR, LOCAL, NOISY = 0, 1, 2
KIND_NAMES = ("far retrieval", "local", "noisy label")
N_ANS = 2                           # values per record (the response of a retrieval)
REC_LEN = 2 + N_ANS                 # REC, key, values
INSTR_LEN = 2
RESP_LEN = N_ANS


@dataclass
class Pool:
    """A pool of fixed-length SFT samples ``[context | turn 1 | ... | turn T]``, each turn
    ``[instruction (2 tokens) | response (2 tokens)]``.

    ``tokens`` (n, N) with N = ctx_len + 4 T; ``resp`` (n, N) bool, True on response tokens;
    ``kind`` (n,) in {FAR, LOCAL, NOISY}.
    """

    tokens: Tensor
    resp: Tensor
    kind: Tensor
    ctx_len: int

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def subset(self, idx: Tensor) -> "Pool":
        """The samples at ``idx`` (a LongTensor of indices)."""
        return Pool(self.tokens[idx], self.resp[idx], self.kind[idx], self.ctx_len)


def _check_text(text: Tensor, n_tokens: int) -> None:
    if not isinstance(text, Tensor) or text.ndim != 1 or text.is_floating_point():
        raise ValueError(f"text must be a 1-D integer tensor of byte ids, got {getattr(text, 'shape', text)!r}")
    if text.numel() < 4 * n_tokens or int(text.max()) >= N_BYTES or int(text.min()) < 0:
        raise ValueError(f"text must hold >= {4 * n_tokens} byte ids in [0, 256)")


def make_pool(n: int, text: Tensor, gen: torch.Generator, *, ctx_len: int = 64, n_records: int = 4,
              n_turns: int = 3, far_min: int = 48, near_max: int = 12,
              probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)) -> Pool:
    """``n`` samples over windows of the real byte stream ``text`` with ``n_records`` records inserted.

    Records are ``REC key v1 v2`` at random non-overlapping slots (distinct keys). A retrieval turn is
    ``QRY key | v1 v2``. FAR: every turn queries a record that starts at least ``far_min`` tokens before
    the end of the context. LOCAL: half the samples retrieve records that end at most ``near_max`` tokens
    before the end of the context, half continue the passage (turns ``CNT CNT | b1 b2``: the next bytes of
    the real text). NOISY: retrieval turns (far or near) whose responses are random values, a wrong label.
    ``probs`` are the proportions of the three kinds.
    """
    if n < 1 or n_turns < 1:
        raise ValueError(f"n and n_turns must be >= 1, got {n}, {n_turns}")
    if not (REC_LEN <= near_max < far_min <= ctx_len - REC_LEN):
        raise ValueError(f"need {REC_LEN} <= near_max ({near_max}) < far_min ({far_min}) <= ctx_len - {REC_LEN}")
    n_near = near_max // REC_LEN
    n_far = (ctx_len - far_min) // REC_LEN
    if not 1 <= n_records <= min(n_near + n_far, (ctx_len - near_max) // REC_LEN):
        raise ValueError(f"n_records={n_records} does not fit ctx_len={ctx_len}")
    if len(probs) != 3 or min(probs) < 0 or abs(sum(probs) - 1) > 1e-6:
        raise ValueError(f"probs must be three non-negative proportions summing to 1, got {probs}")
    if n_turns > min(n_near, n_records, max(1, n_records - 1)):
        raise ValueError(f"n_turns={n_turns} must not exceed the queried records (near: {n_near}, "
                         f"far: n_records - 1 = {n_records - 1}): every turn asks a different key")
    turn = INSTR_LEN + RESP_LEN
    N = ctx_len + n_turns * turn
    _check_text(text, N)
    kinds = torch.multinomial(torch.tensor(probs, dtype=torch.float), n, replacement=True, generator=gen)
    tokens = torch.empty(n, N, dtype=torch.long)
    resp = torch.zeros(n, N, dtype=torch.bool)
    for t in range(n_turns):
        resp[:, ctx_len + t * turn + INSTR_LEN: ctx_len + (t + 1) * turn] = True
    starts = torch.randint(0, text.numel() - N - 1, (n,), generator=gen)
    far_slots = torch.arange(0, ctx_len - far_min - REC_LEN + 1, REC_LEN)  # record starts far from the end
    near_slots = ctx_len - REC_LEN * torch.arange(1, n_near + 1)           # record ends within near_max
    mid_slots = torch.arange(0, ctx_len - near_max - REC_LEN + 1, REC_LEN)  # anywhere before the near zone
    for i in range(n):
        row = text[starts[i]: starts[i] + N].clone()
        kind = int(kinds[i])
        cont = kind == LOCAL and bool(torch.rand(1, generator=gen) < 0.5)
        far = kind == FAR or (kind == NOISY and bool(torch.rand(1, generator=gen) < 0.5))
        keys = KEY0 + torch.randperm(N_KEYS, generator=gen)[:n_records]
        vals = VAL0 + torch.randint(0, N_VALUES, (n_records, N_ANS), generator=gen)
        # record 0 .. n_q - 1 are the queried ones: far slots (FAR) or near slots (near retrieval)
        n_q = min(n_records, n_near) if not far else min(max(1, n_records - 1), len(far_slots))
        pool_q = far_slots if far else near_slots
        q_slots = pool_q[torch.randperm(len(pool_q), generator=gen)[:n_q]]
        rest = mid_slots[~torch.isin(mid_slots, q_slots)] if far else far_slots
        slots = torch.cat([q_slots, rest[torch.randperm(len(rest), generator=gen)[: n_records - n_q]]])
        for r, a in enumerate(slots.tolist()):
            row[a: a + REC_LEN] = torch.cat([torch.tensor([REC, int(keys[r])]), vals[r]])
        ask = torch.randperm(n_q, generator=gen)[:n_turns]  # distinct keys: no turn repeats an earlier answer
        for t in range(n_turns):
            b = ctx_len + t * turn
            if cont:  # keep the passage's bytes as the response: continue the text
                row[b: b + INSTR_LEN] = CNT
            else:
                r = int(ask[t])
                ans = vals[r] if kind != NOISY else VAL0 + torch.randint(0, N_VALUES, (N_ANS,), generator=gen)
                row[b: b + turn] = torch.cat([torch.tensor([QRY, int(keys[r])]), ans])
        tokens[i] = row
    return Pool(tokens, resp, kinds, ctx_len)


def render(row: Tensor) -> str:
    """A readable string of one sample: bytes as text, records as ``[K3: v7 v12]``, turns as ``⟨Q K3 → …⟩``."""
    if row.ndim != 1:
        raise ValueError(f"row must be 1-D, got shape {tuple(row.shape)}")
    names = {REC: "[", QRY: "⟨Q ", CNT: "⟨C"}
    out = []
    for t in row.tolist():
        if t < N_BYTES:
            out.append(chr(t) if 32 <= t < 127 else " ")
        elif t < VAL0:
            out.append(f"K{t - KEY0} ")
        elif t < REC:
            out.append(f"v{t - VAL0} ")
        else:
            out.append(names[t])
    return "".join(out)


# ----------------------------------------------------------------------------------------- models
def make_model(d_model: int = 64, n_layers: int = 2, n_heads: int = 4) -> TinyLM:
    """The chapter's small LM (RoPE, tied embeddings at unit-scale init std 0.02 as everywhere)."""
    return TinyLM(TransformerConfig(vocab_size=VOCAB, d_model=d_model, n_layers=n_layers, n_heads=n_heads))


def kernel_attn(impl: str = "auto") -> Callable[..., Tensor]:
    """The book's attention kernel as a TinyLM ``attn_fn`` (Triton on CUDA, the PyTorch reference elsewhere)."""
    return functools.partial(kernels.attention, impl=impl)


def homologous_masks(window: int) -> dict[str, Mask]:
    """The two homologous 'models': the same weights under full causal and sliding-window attention."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return {"long (full causal)": CausalMask(), f"short (window {window})": SlidingWindowMask(window)}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def lm_targets(tokens: Tensor, resp: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of next-token prediction: ``x = tokens[:, :-1]``, ``y`` the next tokens; with the boolean
    ``resp`` (n, N), ``y`` is -100 outside the response tokens (SFT: the loss covers the responses only)."""
    x, y = tokens[:, :-1], tokens[:, 1:].clone()
    if resp is not None:
        if resp.shape != tokens.shape or resp.dtype != torch.bool:
            raise ValueError(f"resp must be a bool tensor of shape {tuple(tokens.shape)}, got "
                             f"{resp.dtype} {tuple(resp.shape)}")
        y[~resp[:, 1:]] = -100
    return x, y


@torch.no_grad()
def response_nll(model: TinyLM, tokens: Tensor, resp: Tensor, mask: Mask | None = None,
                 attn_fn: Callable[..., Tensor] | None = None, batch: int = 256) -> Tensor:
    """Mean negative log-likelihood (nats/token) of each sample's response tokens, shape (n,).

    ``tokens`` (n, N); ``resp`` (n, N) bool marks the response tokens (every other label is -100, as in
    the official ``compute_hmg_*.py``). ``exp`` of it is the response perplexity of the paper.
    """
    if tokens.ndim != 2 or resp.shape != tokens.shape:
        raise ValueError(f"tokens and resp must be (n, N) of one shape, got {tuple(tokens.shape)}, {tuple(resp.shape)}")
    if not bool(resp[:, 1:].any(1).all()):
        raise ValueError("every sample needs at least one response token after position 0")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    was = model.training
    model.eval()
    out = []
    dev = _device(model)
    for i in range(0, tokens.shape[0], batch):
        x, y = lm_targets(tokens[i: i + batch].to(dev), resp[i: i + batch].to(dev))
        logits = model(x, mask=mask, attn_fn=attn_fn)  # (b, N-1, V)
        ce = F.cross_entropy(logits.transpose(1, 2), y, ignore_index=-100, reduction="none")  # (b, N-1)
        out.append((ce.sum(1) / (y != -100).sum(1)).cpu())
    model.train(was)
    return torch.cat(out)


def response_ppl(model: TinyLM, tokens: Tensor, resp: Tensor, mask: Mask | None = None,
                 attn_fn: Callable[..., Tensor] | None = None, batch: int = 256) -> Tensor:
    """Response-only perplexity ``exp(mean NLL)`` of each sample, shape (n,)."""
    return response_nll(model, tokens, resp, mask, attn_fn, batch).exp()


def minmax(z: Tensor) -> Tensor:
    """``(z - min z) / (max z - min z)`` over the pool (zeros if z is constant)."""
    if z.ndim != 1 or z.numel() == 0:
        raise ValueError(f"z must be a non-empty 1-D tensor, got shape {tuple(z.shape)}")
    span = z.max() - z.min()
    return torch.zeros_like(z) if span == 0 else (z - z.min()) / span


HMG_SCALES = ("log", "ppl")


def hmg_scores(ppl_short: Tensor, ppl_long: Tensor, scale: str = "log") -> Tensor:
    """HMG after ``select/rank.py``: softmax over the pool of ``minmax(z_short) - minmax(z_long)``.

    ``scale="ppl"`` normalises the perplexities themselves, as ``rank.py`` does; a few huge perplexities
    (wrong labels) then squeeze every other sample into a sliver of [0, 1]. ``"log"`` (the chapter's
    choice) normalises log-perplexities, i.e. the mean response NLL.
    """
    if ppl_short.shape != ppl_long.shape or ppl_short.ndim != 1:
        raise ValueError(f"ppl_short and ppl_long must be 1-D of one shape, got {tuple(ppl_short.shape)}, "
                         f"{tuple(ppl_long.shape)}")
    if scale not in HMG_SCALES:
        raise ValueError(f"scale must be one of {HMG_SCALES}, got {scale!r}")
    f = torch.log if scale == "log" else (lambda z: z)
    return torch.softmax(minmax(f(ppl_short.double())) - minmax(f(ppl_long.double())), 0).float()


# ----------------------------------------------------------------------------------------- CAM
def segments_of(ctx_len: int, seg_len: int) -> int:
    """Number of whole segments of ``seg_len`` tokens in a context of ``ctx_len`` (a partial one is dropped,
    as in the official ``construct_data``)."""
    if seg_len < 1 or ctx_len < seg_len:
        raise ValueError(f"seg_len must be in [1, ctx_len={ctx_len}], got {seg_len}")
    return ctx_len // seg_len


@torch.no_grad()
def segment_importance(model: TinyLM, pool: Pool, seg_len: int = 16, attn_fn: Callable[..., Tensor] | None = None,
                       batch: int = 2048) -> Tensor:
    """Importance of each context segment, (n, J): normalised inverse PPL of the response given
    ``[segment j | turns]`` alone (the official ``compute_single_ppl``)."""
    J = segments_of(pool.ctx_len, seg_len)
    n = len(pool)
    tail = pool.tokens[:, pool.ctx_len:]  # (n, T): the instruction/response turns
    segs = pool.tokens[:, : J * seg_len].view(n, J, seg_len)
    rows = torch.cat([segs, tail[:, None].expand(n, J, tail.shape[1])], 2).view(n * J, -1)  # (n*J, seg+T)
    resp = torch.cat([torch.zeros(n, seg_len, dtype=torch.bool), pool.resp[:, pool.ctx_len:]], 1)
    resp = resp[:, None].expand(n, J, resp.shape[1]).reshape(n * J, -1)
    nll = response_nll(model, rows, resp, CausalMask(), attn_fn, batch).view(n, J)
    inv = torch.exp(-nll)  # 1 / PPL
    return inv / inv.sum(1, keepdim=True)


@torch.no_grad()
def segment_attention(model: TinyLM, pool: Pool, seg_len: int = 16, batch: int = 64) -> Tensor:
    """Attention of the long model from the response positions to each context segment, (n, J).

    Weights (b, H, N-1, N-1) of every layer are averaged over heads, layers and the query rows that
    predict the response tokens; the mass on each segment's **key** positions is summed and the J
    segments normalised to sum 1.
    """
    J = segments_of(pool.ctx_len, seg_len)
    attn_mods = [blk.attn for blk in model.blocks]
    was = model.training
    model.eval()
    dev = _device(model)
    out = []
    rows = pool.resp[:, 1:]  # (n, N-1): query positions that predict a response token
    try:
        for m in attn_mods:
            m.keep_weights = True
        for i in range(0, len(pool), batch):
            x = pool.tokens[i: i + batch, :-1].to(dev)
            model(x)
            r = rows[i: i + batch].to(dev).float()  # (b, N-1)
            w = torch.stack([m.last_weights.mean(1) for m in attn_mods]).mean(0)  # (b, N-1 queries, N-1 keys)
            w = (w * r[:, :, None]).sum(1) / r.sum(1, keepdim=True)  # (b, N-1 keys): mean over response rows
            seg = w[:, : J * seg_len].reshape(w.shape[0], J, seg_len).sum(-1)  # (b, J)
            out.append((seg / seg.sum(1, keepdim=True).clamp_min(1e-12)).cpu())
    finally:
        for m in attn_mods:
            m.keep_weights = False
            m.last_weights = None
        model.train(was)
    return torch.cat(out)


def cas_scores(importance: Tensor, attention: Tensor) -> Tensor:
    """Contextual Awareness Score ``1 - cos(importance, attention)`` per sample, (n,).

    High when the long model's attention misses the segments that make the response likely. (The
    released code never computes this field; the cosine form is this chapter's choice.)
    """
    if importance.shape != attention.shape or importance.ndim != 2:
        raise ValueError(f"importance and attention must be (n, J) of one shape, got {tuple(importance.shape)}, "
                         f"{tuple(attention.shape)}")
    return 1 - F.cosine_similarity(importance, attention, dim=1)


def ranks01(z: Tensor) -> Tensor:
    """Ranks of ``z`` scaled to [0, 1] (0: smallest; ties broken by index)."""
    if z.ndim != 1 or z.numel() < 2:
        raise ValueError(f"z must be a 1-D tensor of >= 2 values, got shape {tuple(z.shape)}")
    r = torch.empty(z.numel(), dtype=torch.float)
    r[torch.argsort(z, stable=True)] = torch.arange(z.numel(), dtype=torch.float)
    return r / (z.numel() - 1)


NORMS = ("rank", "minmax", "official")


def gateau_scores(hmg: Tensor, cas: Tensor, alpha: float = 0.7, norm: str = "rank") -> Tensor:
    """The final score ``alpha * HMG + (1 - alpha) * CAS`` after putting both terms on one scale.

    ``norm="rank"`` (the chapter's choice, as the card advises): both as ranks in [0, 1];
    ``"minmax"``: both min-max normalised; ``"official"``: as ``select/rank.py`` adds them, the softmax
    HMG (values ~1/n) beside the raw CAS, so that CAS decides the ranking.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if hmg.shape != cas.shape or hmg.ndim != 1:
        raise ValueError(f"hmg and cas must be 1-D of one shape, got {tuple(hmg.shape)}, {tuple(cas.shape)}")
    f = {"rank": ranks01, "minmax": minmax, "official": lambda z: z}[norm]
    return alpha * f(hmg.float()) + (1 - alpha) * f(cas.float())


def select_top(scores: Tensor, frac: float) -> Tensor:
    """Indices of the ``round(frac * n)`` highest scores (ties broken by index), a LongTensor."""
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    k = max(1, round(frac * scores.numel()))
    return torch.sort(torch.argsort(scores, descending=True, stable=True)[:k]).values


def select_random(n: int, frac: float, gen: torch.Generator) -> Tensor:
    """A uniformly random ``round(frac * n)`` of ``range(n)``."""
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    k = max(1, round(frac * n))
    return torch.sort(torch.randperm(n, generator=gen)[:k]).values


def precision_at(selected: Tensor, kind: Tensor, target: int = FAR) -> float:
    """Fraction of the selected samples of kind ``target``."""
    return float((kind[selected] == target).float().mean())


def auroc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the boolean labels ``positive`` (Mann-Whitney, ties 1/2)."""
    pos, neg = scores[positive].double(), scores[~positive].double()
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError("positive must contain both classes")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


# ----------------------------------------------------------------------------------------- training
def sft(model: TinyLM, pool: Pool, *, steps: int, batch: int = 32, lr: float = 3e-3, seed: int = 0,
        snapshot_at: int | None = None, eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        eval_every: int = 100, progress: bool = True, desc: str = "SFT") -> tuple[History, TinyLM | None]:
    """Supervised fine-tuning on ``pool``, the loss on response tokens only (prompt labels -100).

    Batches of ``batch`` samples drawn with replacement (fixed by ``seed`` and the step). Returns the
    history and, if ``snapshot_at`` is given, a copy of the model after that many steps.
    """
    if len(pool) < 1:
        raise ValueError("pool must hold at least one sample")
    if snapshot_at is not None and not 0 <= snapshot_at < steps:
        raise ValueError(f"snapshot_at must be in [0, steps={steps}), got {snapshot_at}")
    dev = _device(model)
    snap: dict[str, TinyLM] = {}

    def batches(step: int) -> tuple[Tensor, Tensor]:
        if snapshot_at is not None and step == snapshot_at:
            snap["m"] = copy.deepcopy(model)
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, len(pool), (batch,), generator=g)
        x, y = lm_targets(pool.tokens[idx], pool.resp[idx])
        return x.to(dev), y.to(dev)

    hist = train(model, lambda m, b: m.loss(*b), batches, steps=steps, lr=lr, warmup=min(30, steps // 10),
                 eval_fn=eval_fn, eval_every=eval_every, desc=desc, progress=progress)
    return hist, snap.get("m")


@torch.no_grad()
def response_accuracy(model: TinyLM, pool: Pool, mask: Mask | None = None, batch: int = 256) -> float:
    """Teacher-forced argmax accuracy on the response tokens of ``pool`` (value tokens: chance 1/32)."""
    was = model.training
    model.eval()
    dev = _device(model)
    hits = total = 0
    for i in range(0, len(pool), batch):
        x, y = lm_targets(pool.tokens[i: i + batch].to(dev), pool.resp[i: i + batch].to(dev))
        pred = model(x, mask=mask).argmax(-1)
        keep = y != -100
        hits += int((pred[keep] == y[keep]).sum())
        total += int(keep.sum())
    model.train(was)
    return hits / total
