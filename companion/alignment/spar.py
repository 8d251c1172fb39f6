"""SPaR (Cheng et al., 2025) at toy scale: self-play tree-search refinement -> preference pairs -> DPO.

A synthetic instruction language: the prompt ``[BOS, C_c, E_e, SEP]`` asks for a response of ``L``
content tokens with exactly ``c`` copies of token ``A`` (= 0) that ends with token ``e``. A
programmatic :func:`verify` is the ground truth; :func:`judge` is the verifier seen through ``votes``
noisy votes (each flipped with probability ``flip``) and a majority, mirroring the official voting.
:func:`critique` names one position that violates the instruction (the toy's critique), and
:func:`refine` runs the breadth-first tree search of the official ``ToT/bfs.py`` over single-token
edits at the criticised positions, valued by the judge's pass rate.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from companion.alignment.did import reward

A = 0  # the counted token
N_CONTENT = 8  # content tokens 0..7
COUNTS = (1, 2, 3)
ENDS = tuple(range(1, N_CONTENT))
BOS, SEP = N_CONTENT, N_CONTENT + 1
C_TOK = {c: N_CONTENT + 2 + i for i, c in enumerate(COUNTS)}
E_TOK = {e: N_CONTENT + 2 + len(COUNTS) + i for i, e in enumerate(ENDS)}
VOCAB = N_CONTENT + 2 + len(COUNTS) + len(ENDS)
PROMPT_LEN = 4
LOW, HIGH = (1, 2, 3), (4, 5, 6, 7)  # the two filler "styles"


def _check_resp(resp: Tensor) -> None:
    if not isinstance(resp, Tensor) or resp.ndim != 2 or resp.is_floating_point():
        raise ValueError(f"resp must be an integer (B, L) tensor, got {getattr(resp, 'shape', type(resp))}")


def prompts(counts: Tensor, ends: Tensor) -> Tensor:
    """Prompt tokens (B, 4) for per-row counts (B,) and end tokens (B,)."""
    if counts.shape != ends.shape or counts.ndim != 1:
        raise ValueError(f"counts and ends must be (B,) tensors of one shape, got {tuple(counts.shape)}, {tuple(ends.shape)}")
    c = torch.tensor([C_TOK[int(x)] for x in counts])
    e = torch.tensor([E_TOK[int(x)] for x in ends])
    return torch.stack([torch.full_like(c, BOS), c, e, torch.full_like(c, SEP)], 1)


def parse(prompt: Tensor) -> tuple[Tensor, Tensor]:
    """(counts, ends), each (B,), of prompts (B, 4)."""
    if prompt.ndim != 2 or prompt.shape[1] != PROMPT_LEN:
        raise ValueError(f"prompt must be (B, {PROMPT_LEN}), got {tuple(prompt.shape)}")
    return prompt[:, 1] - C_TOK[COUNTS[0]] + COUNTS[0], prompt[:, 2] - E_TOK[ENDS[0]] + ENDS[0]


def random_instructions(n: int, generator: torch.Generator) -> Tensor:
    """``n`` random prompts (n, 4)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    c = torch.tensor(COUNTS)[torch.randint(len(COUNTS), (n,), generator=generator)]
    e = torch.tensor(ENDS)[torch.randint(len(ENDS), (n,), generator=generator)]
    return prompts(c, e)


def verify(prompt: Tensor, resp: Tensor) -> Tensor:
    """Ground truth: does each response (B, L) follow its prompt (B, 4)? Bool (B,)."""
    _check_resp(resp)
    c, e = parse(prompt)
    return ((resp == A).sum(1) == c) & (resp[:, -1] == e) & (resp < N_CONTENT).all(1)


def judge(prompt: Tensor, resp: Tensor, votes: int = 5, flip: float = 0.15,
          generator: torch.Generator | None = None) -> Tensor:
    """Pass rate (B,) of ``votes`` noisy verdicts: each vote is the verifier's, flipped with prob. ``flip``."""
    if votes < 1:
        raise ValueError(f"votes must be >= 1, got {votes}")
    if not 0 <= flip < 0.5:
        raise ValueError(f"flip must be in [0, 0.5), got {flip}")
    ok = verify(prompt, resp)
    flips = torch.rand(resp.shape[0], votes, generator=generator) < flip
    return (ok[:, None] ^ flips).float().mean(1)


def critique(prompt: Tensor, resp: Tensor, generator: torch.Generator) -> Tensor:
    """One position (B,) that violates the instruction, -1 where none does.

    A wrong end token: the last position. Too many ``A``: a random ``A``. Too few: a random
    non-``A`` position before the last."""
    _check_resp(resp)
    c, e = parse(prompt)
    B, L = resp.shape
    out = torch.full((B,), -1, dtype=torch.long)
    cnt = (resp == A).sum(1)
    u = torch.rand(B, L, generator=generator)
    for b in range(B):
        if cnt[b] > c[b]:
            cand = (resp[b] == A).nonzero().flatten()
        elif cnt[b] < c[b]:
            cand = (resp[b, :-1] != A).nonzero().flatten()
        elif resp[b, -1] != e[b]:
            cand = torch.tensor([L - 1])
        else:
            continue
        out[b] = cand[u[b, cand].argmax()]
    return out


def make_sft_data(n: int, length: int, comply: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Noisy demonstrations: prompts (n, 4) and responses (n, L). A fraction ``comply`` follow the
    instruction and use low filler tokens; the rest break it and use high filler tokens (the spurious
    style that independent pairs carry along)."""
    if not 0 <= comply <= 1:
        raise ValueError(f"comply must be in [0, 1], got {comply}")
    if length < max(COUNTS) + 2:
        raise ValueError(f"length must be >= {max(COUNTS) + 2}, got {length}")
    p = random_instructions(n, generator)
    c, e = parse(p)
    ok = torch.rand(n, generator=generator) < comply
    resp = torch.empty(n, length, dtype=torch.long)
    for b in range(n):
        style = torch.tensor(LOW if ok[b] else HIGH)
        r = style[torch.randint(len(style), (length,), generator=generator)]
        k = int(c[b]) if ok[b] else int(torch.randint(0, 5, (1,), generator=generator))
        pos = torch.randperm(length - 1, generator=generator)[:k]
        r[pos] = A
        end = int(e[b]) if ok[b] else int(torch.randint(1, N_CONTENT, (1,), generator=generator))
        r[-1] = end
        resp[b] = r
    return p, resp


def seq_logp(model: torch.nn.Module, prompt: Tensor, resp: Tensor) -> Tensor:
    """Sum of log pi(resp_t | prompt, resp_<t) over the response, per row (B,)."""
    _check_resp(resp)
    x = torch.cat([prompt, resp], 1)
    logits = model(x[:, :-1])[:, PROMPT_LEN - 1:]  # (B, L, V): the logits that predict resp
    return torch.log_softmax(logits.float(), -1).gather(-1, resp[..., None]).squeeze(-1).sum(1)


def sft_loss(model: torch.nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Mean next-token cross-entropy on the response tokens of (prompt, resp)."""
    prompt, resp = batch
    return -seq_logp(model, prompt, resp).mean() / resp.shape[1]


def dpo_loss(logp_c: Tensor, logp_r: Tensor, ref_c: Tensor, ref_r: Tensor, beta: float = 0.1,
             ftx: float = 0.1, length: int = 1) -> Tensor:
    """SPaR's actor loss, mean over pairs: ``-log sigma(beta[(lc - rc) - (lr - rr)]) - ftx * lc / length``.

    The implicit rewards are ``did.reward(..., 'dpo', beta)``; ``ftx`` is LLaMA-Factory's ``pref_ftx``
    SFT term on the chosen response, here per token (``length`` response tokens)."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if ftx < 0 or length < 1:
        raise ValueError(f"ftx must be >= 0 and length >= 1, got {ftx}, {length}")
    if not (logp_c.shape == logp_r.shape == ref_c.shape == ref_r.shape):
        raise ValueError("logp_c, logp_r, ref_c, ref_r must have one shape")
    margin = reward(logp_c, ref_c, "dpo", beta) - reward(logp_r, ref_r, "dpo", beta)
    return (-F.logsigmoid(margin) - ftx * logp_c / length).mean()


@torch.no_grad()
def sample(model: torch.nn.Module, prompt: Tensor, length: int, temperature: float = 1.0,
           generator: torch.Generator | None = None) -> Tensor:
    """Responses (B, length) over content tokens; ``temperature = 0`` is greedy."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    x = prompt
    for _ in range(length):
        logits = model(x)[:, -1, :N_CONTENT].float()
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)
        x = torch.cat([x, nxt], 1)
    return x[:, PROMPT_LEN:]


@torch.no_grad()
def edit(model: torch.nn.Module, prompt: Tensor, resp: Tensor, pos: Tensor, generator: torch.Generator,
         temperature: float = 1.0) -> Tensor:
    """The refiner's move: resample the token at ``pos`` (B,) from the policy given the prefix,
    excluding the current token. Rows with ``pos = -1`` are returned unchanged."""
    _check_resp(resp)
    out = resp.clone()
    rows = (pos >= 0).nonzero().flatten()
    if len(rows) == 0:
        return out
    x = torch.cat([prompt[rows], resp[rows]], 1)
    logits = model(x)[torch.arange(len(rows)), PROMPT_LEN - 1 + pos[rows], :N_CONTENT].float() / temperature
    logits[torch.arange(len(rows)), resp[rows, pos[rows]]] = float("-inf")
    out[rows, pos[rows]] = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
    return out


@dataclass
class Tree:
    """One search: the root, the final node, its value and the positions edited along its path."""

    root: Tensor
    final: Tensor
    value: float
    edited: set
    nodes: list  # (depth, response, value) of every expanded child, for plots


def refine(model: torch.nn.Module, prompt: Tensor, root: Tensor, generator: torch.Generator,
           branch: int = 3, keep: int = 2, depth: int = 3, votes: int = 5, flip: float = 0.15,
           gate: float = 0.5) -> Tree:
    """Breadth-first tree search (official ``ToT/bfs.py``): expand each frontier node into ``branch``
    children (one critique, one edit each), value them by the judge's pass rate, keep the best ``keep``,
    stop as soon as the best child has value > ``gate`` or after ``depth`` levels; return the best node."""
    if prompt.shape != (1, PROMPT_LEN) or root.ndim != 2 or root.shape[0] != 1:
        raise ValueError(f"prompt must be (1, 4) and root (1, L), got {tuple(prompt.shape)}, {tuple(root.shape)}")
    if not (1 <= keep <= branch) or depth < 1:
        raise ValueError(f"need 1 <= keep <= branch and depth >= 1, got keep={keep}, branch={branch}, depth={depth}")
    frontier = [(root, set())]
    best, nodes = (root, 0.0, set()), []
    for d in range(depth):
        resp = torch.cat([r for r, _ in frontier for _ in range(branch)])
        marks = [m for _, m in frontier for _ in range(branch)]
        p = prompt.expand(len(resp), -1)
        pos = critique(p, resp, generator)
        kids = edit(model, p, resp, pos, generator)
        v = judge(p, kids, votes, flip, generator)
        order = v.argsort(descending=True, stable=True)[:keep]
        nodes += [(d + 1, kids[i:i + 1], float(v[i])) for i in range(len(kids))]
        frontier = [(kids[i:i + 1], marks[i] | ({int(pos[i])} if pos[i] >= 0 else set())) for i in order]
        i0 = int(order[0])
        best = (kids[i0:i0 + 1], float(v[i0]), frontier[0][1])
        if best[1] > gate:
            break
    return Tree(root=root, final=best[0], value=best[1], edited=best[2], nodes=nodes)


def hamming(a: Tensor, b: Tensor) -> Tensor:
    """Number of differing tokens per row between equal-length responses (B, L) -> (B,)."""
    if a.shape != b.shape:
        raise ValueError(f"a and b must have one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    return (a != b).sum(1)


def independent_pairs(model: torch.nn.Module, prompt: Tensor, length: int, generator: torch.Generator,
                      k: int = 5, votes: int = 5, flip: float = 0.15) -> tuple[Tensor, Tensor, Tensor]:
    """Self-rewarding-style pairs: sample ``k`` per prompt, judge each by majority, keep prompts with
    a judged pass and a judged fail; (prompts, chosen, rejected)."""
    B = prompt.shape[0]
    p = prompt.repeat_interleave(k, 0)
    r = sample(model, p, length, 1.0, generator)
    ok = (judge(p, r, votes, flip, generator) > 0.5).view(B, k)
    r = r.view(B, k, length)
    u = torch.rand(B, k, generator=generator)
    keep = ok.any(1) & (~ok).any(1)
    ci = torch.where(ok, u, -1.0).argmax(1)
    ri = torch.where(~ok, u, -1.0).argmax(1)
    idx = torch.arange(B)
    return prompt[keep], r[idx, ci][keep], r[idx, ri][keep]


def spar_pairs(model: torch.nn.Module, prompt: Tensor, length: int, generator: torch.Generator,
               k: int = 5, votes: int = 5, flip: float = 0.15) -> tuple[Tensor, Tensor, Tensor, list]:
    """SPaR pairs: sample ``k`` per prompt, pick one judged-fail response at random as the root, tree-search
    its refinement, keep it when the final value is > 0.5; (prompts, refined, root, trees)."""
    B = prompt.shape[0]
    p = prompt.repeat_interleave(k, 0)
    r = sample(model, p, length, 1.0, generator)
    fail = (judge(p, r, votes, flip, generator) <= 0.5).view(B, k)
    r = r.view(B, k, length)
    u = torch.rand(B, k, generator=generator)
    ps, cs, rs, trees = [], [], [], []
    for b in fail.any(1).nonzero().flatten().tolist():
        root = r[b, int(torch.where(fail[b], u[b], -1.0).argmax())][None]
        t = refine(model, prompt[b:b + 1], root, generator, votes=votes, flip=flip)
        if t.value > 0.5:
            ps.append(prompt[b:b + 1]); cs.append(t.final); rs.append(root); trees.append(t)
    if not ps:
        return prompt[:0], prompt.new_zeros(0, length), prompt.new_zeros(0, length), []
    return torch.cat(ps), torch.cat(cs), torch.cat(rs), trees
