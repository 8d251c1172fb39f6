"""Adaptive weighted rejection sampling (AWRS) for constrained generation (Lipkin et al., 2025).

A language model gives next-token log-probabilities :math:`\\log p(v \\mid x_{<t})`; a Boolean
constraint :math:`c` says whether a token sequence can still be completed into an accepted
string (the *prefix* check) and, for EOS, whether it is accepted (the *complete* check).

* :func:`awrs` -- one token by AWRS (chapter eqs. awrs-gumbel, awrs-weight): visit tokens in
  Gumbel-key order, test the constraint lazily, return the first accepted token (an exact sample
  from the locally constrained distribution :math:`q`) and, with ``proper_weights=True``, a second
  round whose rejection count gives an unbiased estimate of the local normaliser :math:`Z_t`.
* :func:`awrs_batch` -- the same two rounds for ``n`` independent draws at once, given the full
  validity mask (a vectorised simulator for statistics; identical to :func:`awrs` for equal noise).
* :func:`awrs_exact` -- the exact distribution of the accepted token and :math:`\\mathbb E[\\hat Z]`,
  by enumerating the sampling-without-replacement tree (tiny vocabularies).
* :class:`RegexDFA` / :class:`TokenConstraint` (module :mod:`companion.inference.regex_dfa`) -- the
  regular-expression constraint: an incremental character-level prefix check lifted to token ids.
* :func:`bigram_lm`, :func:`enumerate_lm`, :func:`global_posterior`, :func:`lcd_distribution`, :func:`awrs_smc` --
  the enumerable toy: exact posterior, exact locally constrained decoding, and SMC with AWRS.
* :func:`constrained_generate` -- SmolLM2 (any HF causal LM) with a KV cache, sampling each token by
  AWRS or by full-vocabulary masking, with per-token constraint calls and timings.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from ..models import cache_kwarg
from .regex_dfa import DEAD, UNIVERSE, RegexDFA, TokenConstraint  # noqa: F401  (re-exported)

# ----------------------------------------------------------------------------------------------
# AWRS for one token
# ----------------------------------------------------------------------------------------------

@dataclass
class AWRSResult:
    """One AWRS step. ``token`` is ``None`` when every token is rejected (weight ``-inf``).

    ``calls`` counts distinct constraint evaluations (a token tested in round 1 is not tested again),
    ``rejections`` is :math:`N` of eq. awrs-weight (both rounds), ``round1_calls`` what plain locally
    constrained decoding (one round, ``proper_weights=False``) would have spent.
    """

    token: int | None
    log_weight: float
    calls: int
    rejections: int
    round1_calls: int
    visits: list[tuple[int, bool, int]] = field(default_factory=list)  # (token, accepted, round)


def _check_logits(logits: Tensor, name: str = "logits") -> Tensor:
    if not isinstance(logits, Tensor) or logits.ndim != 1 or logits.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor (V,), got "
                         f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
    return logits.detach().to("cpu", torch.float64)


def _race_keys(logp: Tensor, generator: torch.Generator | None) -> Tensor:
    """Keys whose descending order is the Gumbel-top order of eq. awrs-gumbel, in the equivalent
    exponential-race form :math:`-E_v / p_v` (:math:`E_v \\sim \\mathrm{Exp}(1)`; one log per key).
    Tokens with :math:`p_v = 0` get key ``-inf`` (never visited)."""
    e = torch.empty(logp.shape, dtype=torch.float64).exponential_(generator=generator).clamp_min(1e-300)
    return -e * torch.exp(-logp)


def _visit_order(keys: Tensor, first: int = 32):
    """Token ids in descending key order, skipping ``-inf`` keys: a top-``first`` selection, and the
    full sort of the vocabulary only if the search gets that far (it rarely does)."""
    n_live = int(torch.isfinite(keys).sum())
    head = torch.topk(keys, min(first, n_live)).indices.tolist()  # sorted, largest first
    yield from head
    if n_live > len(head):
        yield from torch.argsort(keys, descending=True)[len(head):n_live].tolist()


def _prune(logits: Tensor, vocab_mask: Tensor | None) -> tuple[Tensor, float]:
    """log p restricted to the condition's vocabulary, renormalised, and its log normaliser log Z."""
    logp = torch.log_softmax(logits, -1)
    if vocab_mask is not None:
        if vocab_mask.shape != logits.shape or vocab_mask.dtype != torch.bool:
            raise ValueError(f"vocab_mask must be a bool tensor of shape {tuple(logits.shape)}, "
                             f"got {vocab_mask.dtype} {tuple(vocab_mask.shape)}")
        logp = logp.masked_fill(~vocab_mask.cpu(), -math.inf)
    log_z = float(torch.logsumexp(logp, -1))
    return logp - log_z, log_z


def awrs(logits: Tensor, accept: Callable[[int], bool], generator: torch.Generator | None = None,
         proper_weights: bool = True, vocab_mask: Tensor | None = None) -> AWRSResult:
    """Sample one token from :math:`q \\propto p\\,c` by adaptive rejection (eq. awrs-gumbel) and, with
    ``proper_weights``, return :math:`\\log\\hat Z_t` of eq. awrs-weight (unbiased for :math:`Z_t`).

    ``logits`` (V,) are the LM's next-token scores, ``accept(v)`` the constraint on appending ``v``.
    ``vocab_mask`` (V,) bool optionally prunes tokens the condition can never accept; their mass
    enters the weight through :math:`\\log Z` (the pruned normaliser). Without ``proper_weights``
    this is exact locally constrained decoding (one round, weight 0).
    """
    if not callable(accept):
        raise ValueError("accept must be a callable token id -> bool")
    logp, log_z = _prune(_check_logits(logits), vocab_mask)  # (V,), normalised over the pruned vocab
    cache: dict[int, bool] = {}
    visits: list[tuple[int, bool, int]] = []
    token, rejected, n_r1, round1_calls = None, [], 0, 0
    for rnd in (1, 2) if proper_weights else (1,):
        keys = _race_keys(logp, generator)  # (V,) Gumbel-top order = sampling without replacement
        if rejected:
            keys[rejected] = -math.inf  # rejected tokens stay pruned in round 2
        for v in _visit_order(keys):
            if v not in cache:
                cache[v] = bool(accept(v))
            visits.append((v, cache[v], rnd))
            if cache[v]:
                token = v if token is None else token
                break
            rejected.append(v)
        if rnd == 1:
            round1_calls, n_r1 = len(cache), len(rejected)  # R_1: rejections before the first acceptance
        if token is None:  # every token rejected: the particle dies
            return AWRSResult(None, -math.inf, len(cache), len(rejected), round1_calls, visits)
    if not proper_weights:
        return AWRSResult(token, 0.0, len(cache), len(rejected), round1_calls, visits)
    r1_mass = float(logp[rejected[:n_r1]].exp().sum()) if n_r1 else 0.0
    log_w = log_z + math.log1p(-min(r1_mass, 1.0)) - math.log(len(rejected) + 1)
    return AWRSResult(token, log_w, len(cache), len(rejected), round1_calls, visits)


class AWRSDraws(NamedTuple):
    """Vectorised AWRS draws: accepted token (-1 if none), log weight, rejections N, and the
    constraint calls the lazy algorithm :func:`awrs` would have made (distinct tokens tested)."""

    tokens: Tensor
    log_weights: Tensor
    rejections: Tensor
    calls: Tensor


def awrs_batch(logits: Tensor, valid: Tensor, n: int | None = None, generator: torch.Generator | None = None,
               proper_weights: bool = True) -> AWRSDraws:
    """Independent AWRS draws, vectorised over a *known* validity mask (a simulator for statistics
    and for SMC on tiny vocabularies; the lazy :func:`awrs` is what saves constraint calls).

    ``logits``/``valid`` are (V,) with ``n`` draws at one context, or (B, V) for one draw per row.
    Same algorithm and noise order as :func:`awrs` (one context, ``n=1``, same generator state:
    identical results): the first accepted token in key order is the arg-max of the keys over valid
    tokens, the rejections are the invalid tokens with a larger key.
    """
    if not isinstance(logits, Tensor) or logits.ndim not in (1, 2) or logits.shape[-1] == 0:
        raise ValueError("logits must be a (V,) or (B, V) tensor")
    if not isinstance(valid, Tensor) or valid.shape != logits.shape or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor of shape {tuple(logits.shape)}")
    if logits.ndim == 1:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int for 1-D logits, got {n!r}")
        logits, valid = logits[None], valid[None]  # (1, V): broadcast over the n draws
    elif n is not None and n != logits.shape[0]:
        raise ValueError(f"n must be None or {logits.shape[0]} for (B, V) logits, got {n}")
    else:
        n = logits.shape[0]
    logp = torch.log_softmax(logits.detach().to("cpu", torch.float64), -1)  # (1 or B, V)
    finite = torch.isfinite(logp)
    valid = valid.cpu() & finite
    invalid = ~valid & finite
    any_valid = valid.any(-1).expand(n)  # (n,)
    inv_p = torch.exp(-logp)  # exponential-race keys -E/p, same order as the Gumbel keys

    def keys() -> Tensor:  # (n, V)
        return -torch.empty((n, logp.shape[-1]), dtype=torch.float64).exponential_(generator=generator) * inv_p

    k1 = keys()
    best = k1.masked_fill(~valid, -math.inf).max(-1)  # first acceptance of round 1
    rej1 = invalid & (k1 > best.values[:, None])  # (n, V): R_1 (all invalid tokens if none is valid)
    tokens = torch.where(any_valid, best.indices, -1)
    n1 = rej1.sum(-1)
    if not proper_weights:
        log_w = torch.where(any_valid, 0.0, -math.inf).double()
        return AWRSDraws(tokens, log_w, n1, n1 + any_valid.long())
    r1_mass = (rej1 * logp.exp()).sum(-1)  # (n,)
    k2 = keys().masked_fill_(rej1, -math.inf)
    best2 = k2.masked_fill(~valid, -math.inf).max(-1)
    n2 = ((k2 > best2.values[:, None]) & invalid & ~rej1).sum(-1)
    log_w = torch.log1p(-r1_mass.clamp(max=1.0)) - torch.log1p((n1 + n2).double())
    log_w = torch.where(any_valid, log_w, -math.inf)
    calls = torch.where(any_valid, n1 + 1 + n2 + (best2.indices != best.indices).long(), n1)
    return AWRSDraws(tokens, log_w, torch.where(any_valid, n1 + n2, n1), calls)


def awrs_exact(probs: Tensor, valid: Tensor) -> tuple[Tensor, float, float]:
    """Exact law of AWRS at one context by enumerating both rounds' sampling-without-replacement trees.

    ``probs`` (V,) need not be normalised (their sum is the pruned normaliser Z of eq. awrs-weight).
    Returns (distribution of the accepted token (V,), :math:`\\mathbb E[\\hat Z]`, expected calls).
    Cost grows like (number of invalid tokens)!, so keep it to a handful.
    """
    dist, mean_w, mean_calls, _ = _awrs_enumerate(probs, valid)
    return dist, mean_w, mean_calls


def awrs_exact_joint(probs: Tensor, valid: Tensor) -> Tensor:
    """Exact :math:`\\mathbb E[\\hat Z \\cdot 1\\{x = v\\}]` for every token ``v`` (V,), by enumeration.

    *Proper weighting* (what SMC needs, eq. awrs-smc) is the joint statement that this equals
    :math:`p_v\\,c_v` (``probs * valid``), not only that :math:`\\mathbb E[\\hat Z] = Z_t`: the accepted
    token and its weight are dependent.
    """
    return _awrs_enumerate(probs, valid)[3]


def _awrs_enumerate(probs: Tensor, valid: Tensor) -> tuple[Tensor, float, float, Tensor]:
    """(law of the accepted token, E[Ẑ], E[calls], E[Ẑ·1{x=v}] per v) by enumerating both rounds."""
    p = _check_logits(probs, "probs")
    if (p < 0).any() or not torch.isfinite(p).all():
        raise ValueError("probs must be finite and non-negative")
    if not isinstance(valid, Tensor) or valid.shape != p.shape or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor of shape {tuple(p.shape)}")
    z = float(p.sum())
    if z <= 0:
        raise ValueError("probs must have positive total mass")
    pn = (p / z).tolist()
    ok = valid.tolist()
    support = [v for v in range(len(pn)) if pn[v] > 0]

    def outcomes(removed: frozenset):  # yield (prob, accepted token, rejected tokens in order)
        rest = [v for v in support if v not in removed]
        mass = sum(pn[v] for v in rest)
        for v in rest:
            pr = pn[v] / mass
            if ok[v]:
                yield pr, v, ()
            else:
                for pr2, tok, rej in outcomes(removed | {v}):
                    yield pr * pr2, tok, (v,) + rej

    dist = torch.zeros(len(pn), dtype=torch.float64)
    joint = torch.zeros(len(pn), dtype=torch.float64)  # E[Ẑ · 1{x = v}]
    if not any(ok[v] for v in support):
        return dist, 0.0, float(len(support)), joint
    mean_w = mean_calls = 0.0
    for pr1, tok, rej1 in outcomes(frozenset()):
        dist[tok] += pr1
        w1 = 1.0 - sum(pn[v] for v in rej1)
        for pr2, tok2, rej2 in outcomes(frozenset(rej1)):
            w = pr1 * pr2 * z * w1 / (len(rej1) + len(rej2) + 1)
            mean_w += w
            joint[tok] += w
            mean_calls += pr1 * pr2 * (len(rej1) + 1 + len(rej2) + (tok2 != tok))
    return dist, mean_w, mean_calls, joint


# ----------------------------------------------------------------------------------------------
# The enumerable toy: exact posterior, exact LCD, AWRS-SMC
# ----------------------------------------------------------------------------------------------

NextLogp = Callable[[tuple[int, ...]], Tensor]  # context token ids -> (V,) next-token log-probs


def bigram_lm(start: Tensor, transition: Tensor, eos: int, max_len: int) -> NextLogp:
    """A bigram LM over a tiny vocabulary: ``start`` (V,) is p(x_1), ``transition`` (V, V) is
    p(x_t | x_{t-1}); after ``max_len`` non-EOS tokens EOS is forced, so every sequence ends."""
    if start.ndim != 1 or transition.shape != (start.numel(), start.numel()):
        raise ValueError(f"start must be (V,) and transition (V, V), "
                         f"got {tuple(start.shape)}, {tuple(transition.shape)}")
    if (start < 0).any() or (transition < 0).any():
        raise ValueError("start and transition must hold non-negative probabilities")
    if not 0 <= eos < start.numel() or max_len < 1:
        raise ValueError(f"eos must be a token id in [0, {start.numel()}) and max_len >= 1, got {eos}, {max_len}")
    start, transition = start.double(), transition.double()
    logp0 = torch.log(start / start.sum())
    logpt = torch.log(transition / transition.sum(-1, keepdim=True))
    forced = torch.full_like(logp0, -math.inf)
    forced[eos] = 0.0

    def next_logp(ctx: tuple[int, ...]) -> Tensor:
        if len(ctx) >= max_len:
            return forced
        return logp0 if not ctx else logpt[ctx[-1]]

    return next_logp


def enumerate_lm(next_logp: NextLogp, eos: int, max_tokens: int = 64) -> dict[tuple[int, ...], float]:
    """All EOS-terminated sequences (EOS excluded from the key) with their LM probability p(x).

    The LM must end every sequence within ``max_tokens`` tokens (e.g. force EOS at a length limit).
    """
    out: dict[tuple[int, ...], float] = {}

    def walk(ctx: tuple[int, ...], prob: float) -> None:
        if len(ctx) > max_tokens:
            raise ValueError(f"max_tokens: the LM did not emit EOS within {max_tokens} tokens")
        probs = next_logp(ctx).double().exp().tolist()
        for v, pv in enumerate(probs):
            if pv > 0:
                if v == eos:
                    out[ctx] = out.get(ctx, 0.0) + prob * pv
                else:
                    walk(ctx + (v,), prob * pv)

    walk((), 1.0)
    return out


def global_posterior(lm_probs: dict[tuple[int, ...], float],
                     constraint: TokenConstraint) -> dict[tuple[int, ...], float]:
    """:math:`\\pi(x) \\propto p(x)\\,c(x)` over the enumerated sequences (eq. awrs-global)."""
    eos = min(constraint.eos)
    kept = {x: p for x, p in lm_probs.items() if _complete(constraint, x, eos)}
    total = sum(kept.values())
    if total <= 0:
        raise ValueError("constraint: no enumerated sequence satisfies it")
    return {x: p / total for x, p in kept.items()}


def _complete(constraint: TokenConstraint, tokens: tuple[int, ...], eos: int) -> bool:
    state = constraint.start()
    for v in tokens:
        if not constraint.accepts(state, v):
            return False
        state = constraint.advance(state, v)
    return constraint.accepts(state, eos)


def lcd_distribution(next_logp: NextLogp, constraint: TokenConstraint, max_tokens: int = 64
                     ) -> tuple[dict[tuple[int, ...], float], float]:
    """Exact output law of locally constrained decoding (eq. awrs-lcd), renormalised over runs that
    finish, and the probability of hitting a dead end (no valid next token)."""
    out: dict[tuple[int, ...], float] = {}
    dead = 0.0

    def walk(ctx: tuple[int, ...], state: int, prob: float) -> None:
        nonlocal dead
        if len(ctx) > max_tokens:
            raise ValueError(f"max_tokens: the LM did not emit EOS within {max_tokens} tokens")
        probs = next_logp(ctx).double().exp()
        mask = torch.tensor([bool(pv > 0) and constraint.accepts(state, v) for v, pv in enumerate(probs.tolist())])
        z = float((probs * mask).sum())
        if z <= 0:
            dead += prob
            return
        for v in mask.nonzero().flatten().tolist():
            pv = float(probs[v]) / z
            if v in constraint.eos:
                out[ctx] = out.get(ctx, 0.0) + prob * pv
            else:
                walk(ctx + (v,), constraint.advance(state, v), prob * pv)

    walk((), constraint.start(), 1.0)
    total = sum(out.values())
    return {x: p / total for x, p in out.items()}, dead


def tv_distance(p: dict, q: dict) -> float:
    """Total variation distance between two distributions given as {outcome: probability}."""
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


@dataclass
class SMCResult:
    """Final particles of one SMC run: sequences (EOS dropped), log weights, and cost."""

    sequences: list[tuple[int, ...]]
    log_weights: list[float]
    calls: int
    resamples: int

    def distribution(self) -> dict[tuple[int, ...], float]:
        """The weighted particle approximation of the posterior ({} if every particle died)."""
        lw = torch.tensor(self.log_weights, dtype=torch.float64)
        if not torch.isfinite(lw).any():
            return {}
        w = torch.softmax(lw, 0).tolist()
        out: dict[tuple[int, ...], float] = {}
        for x, wi in zip(self.sequences, w):
            if wi > 0:
                out[x] = out.get(x, 0.0) + wi
        return out


def awrs_smc(next_logp: NextLogp, constraint: TokenConstraint, n_particles: int,
             generator: torch.Generator | None = None, ess_threshold: float = 0.5,
             max_tokens: int = 64) -> SMCResult:
    """Sequential Monte Carlo with AWRS as the proposal (eq. awrs-smc): every particle's weight is
    multiplied by :math:`\\hat Z_t`; multinomial resampling when ESS < ``ess_threshold`` · N.

    Meant for tiny vocabularies: each step evaluates the full validity mask once and draws all
    particles' AWRS proposals with :func:`awrs_batch` (the same law as the lazy :func:`awrs`);
    ``calls`` in the result counts what the lazy algorithm would have spent.
    """
    if not isinstance(n_particles, int) or n_particles < 1:
        raise ValueError(f"n_particles must be a positive int, got {n_particles!r}")
    if not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}")
    seqs: list[tuple[int, ...]] = [()] * n_particles
    states = [constraint.start()] * n_particles
    logw = torch.zeros(n_particles, dtype=torch.float64)  # (Np,)
    done = [False] * n_particles
    calls = resamples = 0
    vocab = range(constraint.vocab_size)
    for _ in range(max_tokens + 1):
        active = [i for i in range(n_particles) if not done[i] and logw[i] > -math.inf]
        if not active:
            break
        logits = torch.stack([next_logp(seqs[i]) for i in active])  # (A, V)
        valid = torch.tensor([[constraint.accepts(states[i], v) for v in vocab] for i in active])  # (A, V)
        draw = awrs_batch(logits, valid, generator=generator)
        calls += int(draw.calls.sum())
        logw[active] += draw.log_weights
        for i, tok in zip(active, draw.tokens.tolist()):
            if tok < 0:
                continue
            if tok in constraint.eos:
                done[i] = True
            else:
                seqs[i] = seqs[i] + (tok,)
                states[i] = constraint.advance(states[i], tok)
        if not torch.isfinite(logw).any():
            break
        w = torch.softmax(logw, 0)
        if float(1.0 / (w ** 2).sum()) < ess_threshold * n_particles and not all(done):
            idx = torch.multinomial(w, n_particles, replacement=True, generator=generator).tolist()
            mean_lw = float(torch.logsumexp(logw, 0)) - math.log(n_particles)
            seqs, states, done = [seqs[j] for j in idx], [states[j] for j in idx], [done[j] for j in idx]
            logw = torch.full((n_particles,), mean_lw, dtype=torch.float64)
            resamples += 1
    final = [float(lw) if d else -math.inf for lw, d in zip(logw, done)]  # unfinished particles carry no mass
    return SMCResult(seqs, final, calls, resamples)


# ----------------------------------------------------------------------------------------------
# A real LM: SmolLM2 with a KV cache
# ----------------------------------------------------------------------------------------------

def token_strings(tokenizer) -> list[str | None]:
    """The text of every token id of a HF tokenizer; ``None`` for special tokens and for byte
    fragments that are not valid UTF-8 on their own (an ASCII constraint can never accept them)."""
    special = set(tokenizer.all_special_ids)
    out: list[str | None] = []
    for v in range(len(tokenizer)):
        s = None if v in special else tokenizer.decode([v], clean_up_tokenization_spaces=False)
        out.append(None if s is None or "\ufffd" in s else s)
    return out


@dataclass
class GenerationStats:
    """One constrained generation: the text, whether it is complete, and per-token costs."""

    text: str
    complete: bool
    calls: list[int]  # constraint evaluations per generated token
    round1_calls: list[int]  # what one round (LCD via rejection) needed, for AWRS; = calls for masking
    constraint_s: list[float]  # seconds spent choosing each token (constraint + sampling)
    lm_s: list[float]  # seconds of each LM forward
    log_weight: float  # sum of AWRS log weights (0 for masking)


@torch.no_grad()
def constrained_generate(model, prompt_ids: Tensor, constraint: TokenConstraint, method: str = "awrs",
                         max_new_tokens: int = 48, generator: torch.Generator | None = None) -> GenerationStats:
    """Sample from a HF causal LM under ``constraint`` one token at a time (KV cache).

    ``method="awrs"``: lazy AWRS with proper weights (eqs. awrs-gumbel, awrs-weight);
    ``"mask"``: full-vocabulary masking, :math:`|V|` constraint calls per token, then a draw from the
    masked softmax. Both sample from the same locally constrained distribution :math:`q`. AWRS
    prunes the tokens the constraint can never spell (special tokens other than EOS) with
    ``vocab_mask`` instead of spending calls on them; their mass enters the weight through log Z.
    """
    if method not in ("awrs", "mask"):
        raise ValueError(f"method must be 'awrs' or 'mask', got {method!r}")
    if not isinstance(prompt_ids, Tensor) or prompt_ids.ndim != 1 or prompt_ids.numel() == 0:
        raise ValueError("prompt_ids must be a non-empty 1-D LongTensor (N,)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    kw = cache_kwarg(model)
    spellable = torch.tensor([(s is not None and s != "") or v in constraint.eos
                              for v, s in enumerate(constraint.strings)])  # (V,) bool
    state, text, past = constraint.start(), "", None
    inp = prompt_ids[None].to(device)  # (1, N)
    stats = GenerationStats("", False, [], [], [], [], 0.0)
    for _ in range(max_new_tokens):
        t0 = time.perf_counter()
        out = model(input_ids=inp, use_cache=True, logits_to_keep=1, **{kw: past})
        past = getattr(out, kw)
        logits = out.logits[0, -1, :constraint.vocab_size].float().cpu()  # (V,)
        t1 = time.perf_counter()
        c0 = constraint.calls
        if method == "awrs":
            res = awrs(logits, lambda v: constraint.accepts(state, v), generator, vocab_mask=spellable)
            token, r1 = res.token, res.round1_calls
            stats.log_weight += res.log_weight
        else:
            mask = constraint.mask(state)
            token, r1 = None, constraint.vocab_size
            if mask.any():
                probs = torch.softmax(logits.double().masked_fill(~mask, -math.inf), -1)
                token = int(torch.multinomial(probs, 1, generator=generator))
        stats.constraint_s.append(time.perf_counter() - t1)
        stats.lm_s.append(t1 - t0)
        stats.calls.append(constraint.calls - c0)
        stats.round1_calls.append(r1)
        if token is None or token in constraint.eos:
            stats.complete = token is not None
            break
        state = constraint.advance(state, token)
        text += constraint.strings[token]
        inp = torch.tensor([[token]], device=device)
    stats.text = text
    return stats


# ----------------------------------------------------------------------------------------------
# Explorer
# ----------------------------------------------------------------------------------------------

def awrs_explorer(logits: Tensor, valid: Tensor, labels: Sequence[str], top: int = 30):
    """Step through one AWRS draw: tokens visited in Gumbel order, red = rejected, green = accepted.

    ``logits`` (V,) and ``valid`` (V,) bool at one context; ``labels`` the token texts. Sliders pick
    the noise seed, the temperature of ``p`` and how many visits to show.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from ..widgets import redraw_on

    logits = _check_logits(logits)
    if valid.shape != logits.shape or valid.dtype != torch.bool or len(labels) != logits.numel():
        raise ValueError("valid must be a (V,) bool tensor and labels must have V entries")
    seed = W.IntSlider(value=0, min=0, max=50, description="noise seed")
    temp = W.FloatLogSlider(value=1.0, base=10, min=-0.5, max=0.7, step=0.05, description="temperature")
    steps = W.IntSlider(value=60, min=1, max=60, description="visits shown")

    def draw() -> None:
        lg = logits / temp.value
        res = awrs(lg, lambda v: bool(valid[v]), torch.Generator().manual_seed(seed.value))
        p = torch.softmax(lg, -1)
        order = torch.argsort(p, descending=True)[:top].tolist()
        shown = res.visits[:steps.value]
        colour = {v: ("tab:green" if ok else "tab:red") for v, ok, _ in shown}
        fig, ax = plt.subplots(figsize=(10, 3.4))
        ax.bar(range(len(order)), [float(p[v]) for v in order],
               color=[colour.get(v, "lightgray") for v in order])
        ax.set_xticks(range(len(order)), [repr(labels[v])[1:-1] for v in order], rotation=90, fontsize=7)
        ax.set_ylabel("p(token | context)")
        z = float(p[valid].sum())
        ax.set_title(f"{len(shown)} of {len(res.visits)} visits shown; calls {res.calls} (|V| = {len(p):,}); "
                     f"exact Z = {z:.3f}, estimate Ẑ = {math.exp(res.log_weight):.3f}", fontsize=9)
        ax.set_xlabel(f"top-{top} tokens by probability (green: accepted, red: rejected, grey: not visited)")
        fig.tight_layout()

    return redraw_on([seed, temp, steps], draw, vertical=True)

