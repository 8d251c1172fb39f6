"""Multi-exit self-distillation for early-layer embeddings (ModularStarEncoder / MoSE; Gurioli et al., 2025).

One bidirectional encoder is trained with a contrastive (CLIP, symmetric InfoNCE) loss at several
*exits* ``e`` (after block ``e``), each with its own projection head, weighted by depth:

    L = sum_e alpha_e L_e,   alpha_e = e / n_layers.

There is no teacher and no KL term: deeper exits "guide" earlier ones only through the shared blocks.
This module holds

* a text -> code task on a tiny pipeline DSL (the card's generator): :func:`random_program`,
  :func:`describe`, :func:`hard_negatives`, :func:`encode_batch`, :data:`VOCAB`;
* :class:`MultiExitEncoder` -- a :class:`~companion.nn.TinyEncoder` whose forward pass stops at the
  deepest requested exit and returns one normalised embedding per exit (:meth:`MultiExitEncoder.encode`);
* :func:`multi_exit_loss` -- CLIP's symmetric InfoNCE (:func:`companion.embeddings.negclip.clip_loss`) per exit, weighted (``alpha_e = e / L``, or any weights);
* :func:`mrr` -- mean reciprocal rank of the right code for each description;
* :func:`truncated` -- a copy that keeps only the first ``k`` blocks (to check that exit ``k``
  depends on nothing deeper).
"""

from __future__ import annotations

import copy
import math
import random
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.masks import KeyPaddingMask
from ..nn.transformer import TinyEncoder, TransformerConfig
from .negclip import clip_loss  # the book's symmetric InfoNCE (CLIP's loss)

Tensor = torch.Tensor

# ------------------------------------------------------------------------------------------ the DSL
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAP_OPS = ("add", "sub", "mul")
FILTER_OPS = ("gt", "lt", "even", "odd")
REDUCE_OPS = ("sum", "max", "min", "count")
# English phrases (synonyms) for each op; {n} is the argument
_PHRASES = {
    ("map", "add"): ("add {n}", "increase each value by {n}", "plus {n}"),
    ("map", "sub"): ("subtract {n}", "decrease each value by {n}", "minus {n}"),
    ("map", "mul"): ("multiply by {n}", "scale each value by {n}", "times {n}"),
    ("filter", "gt"): ("keep values above {n}", "drop values not greater than {n}", "keep what exceeds {n}"),
    ("filter", "lt"): ("keep values below {n}", "drop values not less than {n}", "keep what is under {n}"),
    ("filter", "even"): ("keep the even values", "drop the odd values", "keep even numbers"),
    ("filter", "odd"): ("keep the odd values", "drop the even values", "keep odd numbers"),
    ("reduce", "sum"): ("return the sum", "add everything up", "return the total"),
    ("reduce", "max"): ("return the largest", "return the maximum", "take the biggest"),
    ("reduce", "min"): ("return the smallest", "return the minimum", "take the least"),
    ("reduce", "count"): ("return how many remain", "count the values", "return the count"),
}
_ARG = {"add", "sub", "mul", "gt", "lt"}
Stage = tuple[str, str, int | None]  # (kind, op, argument or None)


CODE_WORDS = ("|", "map", "filter", "reduce") + MAP_OPS + FILTER_OPS + REDUCE_OPS + tuple(str(i) for i in range(10))


def _build_vocab() -> tuple[str, ...]:
    words = {"then", "after", "first", ","} | {str(i) for i in range(10)} | set(NUMBER_WORDS)
    for forms in _PHRASES.values():
        for f in forms:
            words |= set(f.replace("{n}", "").split())
    # code tokens get their own ids (prefix "c:"): text and code share no token, as in NL vs source code
    return ("<pad>",) + tuple(sorted(words)) + tuple("c:" + w for w in CODE_WORDS)


VOCAB: tuple[str, ...] = _build_vocab()
TOKEN_ID = {w: i for i, w in enumerate(VOCAB)}


def random_program(rng: random.Random, min_stages: int = 3, max_stages: int = 4) -> tuple[Stage, ...]:
    """A pipeline of 3-4 stages: map/filter stages, optionally ending in a reduce; arguments in 1..9."""
    if not 1 <= min_stages <= max_stages:
        raise ValueError(f"need 1 <= min_stages <= max_stages, got {min_stages}, {max_stages}")
    n = rng.randint(min_stages, max_stages)
    stages: list[Stage] = []
    for i in range(n):
        if i == n - 1 and rng.random() < 0.5:
            stages.append(("reduce", rng.choice(REDUCE_OPS), None))
            continue
        kind = rng.choice(("map", "filter"))
        op = rng.choice(MAP_OPS if kind == "map" else FILTER_OPS)
        stages.append((kind, op, rng.randint(1, 9) if op in _ARG else None))
    return tuple(stages)


def code_text(program: Sequence[Stage]) -> str:
    """The DSL source, e.g. ``map add 3 | filter gt 5 | reduce sum``."""
    return " | ".join(f"{k} {o}" + ("" if a is None else f" {a}") for k, o, a in program)


def describe(program: Sequence[Stage], rng: random.Random) -> str:
    """A templated English description: a synonym per stage, numbers as digits or words, and the
    stages either in order ("first A , then B") or reversed ("B after A")."""
    phrases = []
    for k, o, a in program:
        p = rng.choice(_PHRASES[(k, o)])
        if a is not None:
            p = p.format(n=str(a) if rng.random() < 0.5 else NUMBER_WORDS[a])
        phrases.append(p)
    if rng.random() < 0.5:
        return "first " + " , then ".join(phrases)
    return " after ".join(reversed(phrases))


def hard_negatives(program: Sequence[Stage], rng: random.Random, n: int) -> list[tuple[Stage, ...]]:
    """Up to ``n`` distinct programs with **the same bag of tokens** as ``program`` but another meaning:
    its map/filter stages in another order (a final reduce stays last), and/or its arguments moved to
    other stages. A bag-of-words encoder cannot tell them from ``program``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    prog = tuple(program)
    body, tail = (prog[:-1], prog[-1:]) if prog[-1][0] == "reduce" else (prog, ())
    out: set[tuple[Stage, ...]] = set()
    for _ in range(50 * (n + 1)):
        if len(out) >= n:
            break
        order = list(body)
        rng.shuffle(order)
        args = [a for _, _, a in order if a is not None]
        if rng.random() < 0.5:
            rng.shuffle(args)
        it = iter(args)
        q = tuple((k, o, None if a is None else next(it)) for k, o, a in order) + tail
        if q != prog:
            out.add(q)
    return sorted(out, key=code_text)


def tokenize(text: str, side: str) -> list[int]:
    """Word-level token ids of a description (``side="text"``) or a DSL program (``side="code"``); the
    two sides have disjoint ids (the word ``add`` in a description is not the token ``add`` in code)."""
    if side not in ("text", "code"):
        raise ValueError(f"side must be 'text' or 'code', got {side!r}")
    pre = "c:" if side == "code" else ""
    try:
        return [TOKEN_ID[pre + w] for w in text.split()]
    except KeyError as e:
        raise ValueError(f"text has a word outside the {side} vocabulary: {e.args[0]!r}") from None


def encode_batch(texts: Sequence[str], side: str) -> tuple[Tensor, Tensor]:
    """Right-padded token ids (B, N) and lengths (B,) of ``texts`` (``side``: "text" or "code")."""
    if len(texts) == 0:
        raise ValueError("texts must be non-empty")
    ids = [tokenize(t, side) for t in texts]
    n = max(len(x) for x in ids)
    out = torch.zeros(len(ids), n, dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, :len(x)] = torch.tensor(x)
    return out, torch.tensor([len(x) for x in ids])


# ------------------------------------------------------------------------------------ the encoder
class ExitHead(nn.Module):
    """One exit's head: LayerNorm, mean pooling over real tokens, a linear projection, L2 normalisation,
    and its own learnable logit scale (CLIP's 1/temperature, initialised at 1/0.07)."""

    def __init__(self, d_model: int, dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d_model)
        self.proj = nn.Linear(d_model, dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, h: Tensor, lengths: Tensor) -> Tensor:
        pooled = TinyEncoder.mean_pool(self.ln(h), lengths)  # (B, d_model)
        return F.normalize(self.proj(pooled), dim=-1)  # (B, dim)

    def scale(self) -> Tensor:
        return self.log_scale.clamp(max=math.log(100)).exp()


class MultiExitEncoder(TinyEncoder):
    """A bidirectional :class:`TinyEncoder` with a projection head after each block in ``exits``.

    :meth:`encode` runs the blocks only up to the deepest requested exit (early exit = truncated forward
    pass) and returns ``{exit: (B, dim) unit vectors}``. ``exits`` are 1-based block counts.
    """

    def __init__(self, cfg: TransformerConfig, exits: Sequence[int], dim: int = 64) -> None:
        super().__init__(cfg)
        exits = tuple(sorted(set(int(e) for e in exits)))
        if not exits or exits[0] < 1 or exits[-1] > cfg.n_layers:
            raise ValueError(f"exits must lie in 1..n_layers={cfg.n_layers}, got {exits}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.exits = exits
        self.heads = nn.ModuleDict({str(e): ExitHead(cfg.d_model, dim) for e in exits})

    def exit_hidden(self, idx: Tensor, lengths: Tensor, exits: Sequence[int]) -> dict[int, Tensor]:
        """Hidden states (B, N, d) after block ``e`` for each ``e`` in ``exits``; blocks deeper than
        ``max(exits)`` are not run."""
        if not isinstance(idx, Tensor) or idx.ndim != 2 or idx.is_floating_point():
            raise ValueError(f"idx must be an integer tensor of shape (B, N), got {getattr(idx, 'shape', idx)!r}")
        if not isinstance(lengths, Tensor) or lengths.shape != idx.shape[:1]:
            raise ValueError(f"lengths must be a tensor of shape ({idx.shape[0]},), got {getattr(lengths, 'shape', lengths)!r}")
        want = set(int(e) for e in exits)
        if not want or min(want) < 1 or max(want) > len(self.blocks):
            raise ValueError(f"exits must lie in 1..{len(self.blocks)}, got {sorted(want)}")
        if int(idx.max()) >= self.cfg.vocab_size or int(idx.min()) < 0:
            raise ValueError(f"idx values must lie in [0, {self.cfg.vocab_size})")
        pos = torch.arange(idx.shape[1], device=idx.device)
        mask = KeyPaddingMask(lengths)
        x = self.embed(idx)
        if self.abs_pos is not None:
            x = x + self.abs_pos(pos)
        x = self.drop(x)
        out = {}
        for i, block in enumerate(self.blocks[:max(want)], start=1):
            x = block(x, mask, pos)
            if i in want:
                out[i] = x
        return out

    def encode(self, idx: Tensor, lengths: Tensor, exits: Sequence[int] | None = None) -> dict[int, Tensor]:
        """``{exit: (B, dim)}`` normalised embeddings at ``exits`` (default: all of the model's exits)."""
        exits = self.exits if exits is None else tuple(exits)
        missing = [e for e in exits if str(e) not in self.heads]
        if missing:
            raise ValueError(f"exits {missing} have no head; the model's exits are {self.exits}")
        hidden = self.exit_hidden(idx, lengths, exits)
        return {e: self.heads[str(e)](hidden[e], lengths) for e in exits}


def truncated(model: MultiExitEncoder, k: int) -> MultiExitEncoder:
    """A deep copy of ``model`` with only its first ``k`` blocks and its heads at exits <= k."""
    if k not in model.exits:
        raise ValueError(f"k must be one of the model's exits {model.exits}, got {k}")
    m = copy.deepcopy(model)
    m.blocks = m.blocks[:k]
    m.heads = nn.ModuleDict({str(e): m.heads[str(e)] for e in model.exits if e <= k})
    m.exits = tuple(e for e in model.exits if e <= k)
    return m


# ------------------------------------------------------------------------------------------ losses
def exit_weights(exits: Sequence[int], n_layers: int, scheme: str = "linear") -> dict[int, float]:
    """Loss weight per exit: ``"linear"`` alpha_e = e / n_layers (the paper), ``"uniform"`` 1,
    ``"last"`` 1 at the deepest exit and 0 elsewhere (last-only training)."""
    if scheme not in ("linear", "uniform", "last"):
        raise ValueError(f"scheme must be 'linear', 'uniform' or 'last', got {scheme!r}")
    if n_layers < 1 or not exits or max(exits) > n_layers or min(exits) < 1:
        raise ValueError(f"exits must lie in 1..n_layers={n_layers}, got {tuple(exits)}")
    if scheme == "linear":
        return {e: e / n_layers for e in exits}
    if scheme == "uniform":
        return {e: 1.0 for e in exits}
    return {e: float(e == max(exits)) for e in exits}


def multi_exit_loss(model: MultiExitEncoder, batch: tuple[Tensor, Tensor, Tensor, Tensor],
                    weights: dict[int, float]) -> Tensor:
    """sum_e w_e * CLIP_e on a batch ``(desc ids, desc lengths, code ids, code lengths)``; exits with
    weight 0 are not computed (their blocks still run if a deeper exit needs them)."""
    if not weights or any(w < 0 for w in weights.values()):
        raise ValueError(f"weights must map exits to non-negative numbers, got {weights}")
    dq, lq, dc, lc = batch
    live = [e for e, w in weights.items() if w > 0]
    if not live:
        raise ValueError("at least one exit must have a positive weight")
    eq, ec = model.encode(dq, lq, live), model.encode(dc, lc, live)
    return sum(weights[e] * clip_loss(eq[e], ec[e], model.heads[str(e)].scale()) for e in live)


# ------------------------------------------------------------------------------------------ metrics
def mrr(q: Tensor, pool: Tensor, target: Tensor) -> float:
    """Mean reciprocal rank of ``pool[target[i]]`` among all rows of ``pool`` (P, d) for query ``q[i]``
    (Q, d); ties count against the query (rank = 1 + number of candidates scoring >= the right one, minus 1)."""
    if q.ndim != 2 or pool.ndim != 2 or q.shape[1] != pool.shape[1]:
        raise ValueError(f"q (Q, d) and pool (P, d) must share d, got {tuple(q.shape)} and {tuple(pool.shape)}")
    if target.shape != (q.shape[0],):
        raise ValueError(f"target must have shape ({q.shape[0]},), got {tuple(target.shape)}")
    s = q @ pool.T  # (Q, P)
    right = s.gather(1, target[:, None])  # (Q, 1)
    rank = (s >= right).sum(1).to(torch.float)  # the right one counts itself: rank >= 1
    return float((1.0 / rank).mean())


def recall_at_1(q: Tensor, pool: Tensor, target: Tensor) -> float:
    """Fraction of queries whose right candidate scores strictly above every other one."""
    s = q @ pool.T
    right = s.gather(1, target[:, None])
    return float(((s >= right).sum(1) == 1).to(torch.float).mean())


# ------------------------------------------------------------------------------- data for the chapter
class RetrievalSplit:
    """Held-out text -> code retrieval: ``n_queries`` programs with one description each, and a pool of
    their code plus ``negatives`` hard negatives per program (``pool_size = n_queries * (1 + negatives)``
    at most; duplicates are dropped). ``train_batch`` draws fresh programs that are never in the pool."""

    def __init__(self, n_queries: int, negatives: int, seed: int) -> None:
        if n_queries < 1 or negatives < 0:
            raise ValueError(f"need n_queries >= 1 and negatives >= 0, got {n_queries}, {negatives}")
        rng = random.Random(10**6 + seed)
        progs: list[tuple[Stage, ...]] = []
        seen: set[tuple[Stage, ...]] = set()
        while len(progs) < n_queries:
            p = random_program(rng)
            if p not in seen:
                seen.add(p)
                progs.append(p)
        pool = list(progs)
        for p in progs:
            for q in hard_negatives(p, rng, negatives):
                if q not in seen:
                    seen.add(q)
                    pool.append(q)
        self.programs, self.pool_programs, self.held_out = progs, pool, seen
        self.descriptions = [describe(p, rng) for p in progs]
        self.queries = encode_batch(self.descriptions, "text")
        self.pool = encode_batch([code_text(p) for p in pool], "code")
        self.target = torch.arange(n_queries)

    def train_batch(self, batch: int, seed: int, group: int = 4) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``batch`` (description, code) pairs of distinct programs outside the held-out set, drawn in
        groups of ``group`` programs with the same bag of tokens (a program and its hard negatives), so
        that in-batch negatives require reading order. ``group=1``: independent programs."""
        if batch < 2 or group < 1:
            raise ValueError(f"need batch >= 2 and group >= 1, got {batch}, {group}")
        rng = random.Random(seed)
        progs: list[tuple[Stage, ...]] = []
        chosen: set[tuple[Stage, ...]] = set()
        while len(progs) < batch:
            p = random_program(rng)
            for q in [p] + hard_negatives(p, rng, group - 1):
                if q not in self.held_out and q not in chosen and len(progs) < batch:
                    chosen.add(q)
                    progs.append(q)
        dq, lq = encode_batch([describe(p, rng) for p in progs], "text")
        dc, lc = encode_batch([code_text(p) for p in progs], "code")
        return dq, lq, dc, lc

    @torch.no_grad()
    def evaluate(self, model: MultiExitEncoder, exits: Sequence[int] | None = None) -> dict[int, float]:
        """MRR of the right code for each held-out description, per exit."""
        was = model.training
        model.eval()
        eq, ec = model.encode(*self.queries, exits), model.encode(*self.pool, exits)
        model.train(was)
        return {e: mrr(eq[e], ec[e], self.target) for e in eq}


def fit_probe(model: MultiExitEncoder, exit: int, split: RetrievalSplit, *, steps: int, batch: int, lr: float,
              seed: int) -> None:
    """Re-initialise the head at ``exit`` and train only it (backbone frozen) with the CLIP loss: the
    linear probe of a last-only model. Modifies ``model`` in place."""
    if str(exit) not in model.heads:
        raise ValueError(f"exit must be one of the model's exits {model.exits}, got {exit}")
    if steps < 1 or batch < 2 or lr <= 0:
        raise ValueError(f"need steps >= 1, batch >= 2, lr > 0, got {steps}, {batch}, {lr}")
    torch.manual_seed(seed)
    head = ExitHead(model.cfg.d_model, model.heads[str(exit)].proj.out_features)
    model.heads[str(exit)] = head
    opt = torch.optim.AdamW(head.parameters(), lr=lr)
    model.eval()
    for step in range(steps):
        dq, lq, dc, lc = split.train_batch(batch, seed * 1_000_003 + step)
        with torch.no_grad():
            hq, hc = model.exit_hidden(dq, lq, [exit])[exit], model.exit_hidden(dc, lc, [exit])[exit]
        loss = clip_loss(head(hq, lq), head(hc, lc), head.scale())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
