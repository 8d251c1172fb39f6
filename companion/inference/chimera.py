"""Chimera: a draft model fed by the base model's own hidden states, verified losslessly by the base.

Chimera (Zeng et al., 2024) accelerates greedy decoding of a frozen base LM with a small *draft*
that reads the base model's last-layer hidden states ``h`` and the token embeddings ``e``:

* **trigram encoder** (eq. ``chimera-trigram``): ``g_p = W_p(u_p + SiLU(W_r u_p))`` with
  ``u_p = [e_{p-2}; e_{p-1}; e_p]`` and ``W_r`` zero-initialised;
* **full-context encoder** (eq. ``chimera-context``): one transformer layer over the
  concatenation ``[h_0 .. h_{L-1}; g_1 .. g_L]`` in which the trigram query ``g_p`` sees the
  base states ``h_{<p}`` and itself only (:func:`chimera_mask`); its output ``h~_p`` emulates
  the base state at a position the base model has not computed yet;
* **residual heads** (eq. ``chimera-heads``): head ``k`` maps ``[h_t; h~_{t+1}]`` to
  ``h_t + h~_{t+1} + W_k [h_t; h~_{t+1}]`` (``W_k`` zero-initialised) and reads it out with the
  base model's frozen LM head; it predicts token ``t + 2 + k`` (the base head gives ``t + 1``).

:class:`MedusaHeads` is the baseline (Cai et al., 2024): head ``k`` is ``h_t + SiLU(W_k h_t)``
read out by the same frozen LM head. Both drafts propose a token *tree* (:func:`draft_tree`),
which the base model verifies in **one** forward call under a
:class:`~companion.nn.masks.TreeMask` (:func:`speculative_generate`); the longest drafted path
that agrees with the base model's greedy choices is accepted, so the output is token-identical
to plain greedy decoding (:func:`greedy_generate`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import product
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models import cache_kwarg, keep_cache_positions
from ..nn.masks import TreeMask
from ..nn.transformer import TransformerBlock, TransformerConfig

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------
# base-model features
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def base_states(model: nn.Module, ids: Tensor, batch: int = 4) -> tuple[Tensor, Tensor]:
    """Last-layer hidden states ``(B, N, d)`` and greedy next tokens ``(B, N)`` of a frozen HF causal LM.

    ``model`` is a ``*ForCausalLM`` (``model.model`` the backbone, ``model.lm_head`` the head);
    ``ids`` is ``(B, N)``. The greedy token at position ``j`` is ``argmax lm_head(h_j)``: the
    base model's own prediction for token ``j + 1`` (the distillation target of the drafts).
    """
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.is_floating_point():
        raise ValueError(f"ids must be an integer tensor of shape (B, N), got {getattr(ids, 'shape', ids)!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    hs, greedy = [], []
    for i in range(0, ids.shape[0], batch):
        h = model.model(input_ids=ids[i:i + batch]).last_hidden_state  # (b, N, d)
        hs.append(h)
        greedy.append(model.lm_head(h).argmax(-1))  # (b, N)
    return torch.cat(hs), torch.cat(greedy)


# ---------------------------------------------------------------------------------------------
# the drafts
# ---------------------------------------------------------------------------------------------
def _check_features(h: Tensor, x: Tensor, d: int) -> None:
    if h.ndim != 3 or h.shape[-1] != d:
        raise ValueError(f"h must have shape (B, L, {d}), got {tuple(h.shape)}")
    if x.ndim != 2 or x.shape != (h.shape[0], h.shape[1] + 1) or x.is_floating_point():
        raise ValueError(f"x must be integer token ids of shape (B, L + 1) = {(h.shape[0], h.shape[1] + 1)}, "
                         f"got {tuple(x.shape)} {x.dtype}")


class _Draft(nn.Module):
    """Shared parts: the frozen LM head of the base model and the number of heads."""

    def __init__(self, lm_weight: Tensor, n_heads: int) -> None:
        super().__init__()
        if lm_weight.ndim != 2:
            raise ValueError(f"lm_weight must be the (V, d) LM-head matrix, got shape {tuple(lm_weight.shape)}")
        if n_heads < 1:
            raise ValueError(f"n_heads must be >= 1, got {n_heads}")
        self.register_buffer("lm_weight", lm_weight.detach(), persistent=False)  # (V, d), frozen, not copied
        self.n_heads = n_heads
        self.d = lm_weight.shape[1]

    def logits(self, z: Tensor) -> Tensor:
        """Read out head features ``(..., d)`` with the frozen LM head -> ``(..., V)``."""
        return z @ self.lm_weight.T


class ChimeraDraft(_Draft):
    """Trigram encoder + one full-context layer over base states + residual heads (eqs. chimera-*).

    ``embed_weight`` (V, d) and ``lm_weight`` (V, d) are the base model's frozen matrices (they
    may be the same tensor). ``n_attn_heads`` and ``d_ff`` size the full-context layer.
    """

    def __init__(self, embed_weight: Tensor, lm_weight: Tensor, n_heads: int = 3, n_attn_heads: int = 8,
                 d_ff: int | None = None, trigram_rank: int | None = None, rope_base: float = 10000.0) -> None:
        super().__init__(lm_weight, n_heads)
        if embed_weight.ndim != 2 or embed_weight.shape[1] != self.d:
            raise ValueError(f"embed_weight must have shape (V, {self.d}), got {tuple(embed_weight.shape)}")
        if trigram_rank is not None and trigram_rank < 1:
            raise ValueError(f"trigram_rank must be None (full 3d x 3d) or >= 1, got {trigram_rank}")
        d = self.d
        self.register_buffer("embed_weight", embed_weight.detach(), persistent=False)  # (V, d), frozen
        # W_r of eq. (chimera-trigram): full 3d x 3d as in the paper, or a rank-r product (CPU budget);
        # its last factor is zero-initialised, so the block starts as the identity.
        rank = trigram_rank or 3 * d
        self.trigram_res = nn.Sequential(*([nn.Linear(3 * d, rank, bias=False)] if trigram_rank else []),
                                         nn.Linear(rank, 3 * d))
        nn.init.zeros_(self.trigram_res[-1].weight)
        nn.init.zeros_(self.trigram_res[-1].bias)
        self.trigram_proj = nn.Linear(3 * d, d)
        cfg = TransformerConfig(vocab_size=1, d_model=d, n_layers=1, n_heads=n_attn_heads, d_ff=d_ff or 2 * d,
                                rope_base=rope_base)
        self.layer = TransformerBlock(cfg)
        self.heads = nn.ModuleList(nn.Linear(2 * d, d) for _ in range(n_heads))
        for head in self.heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def trigram(self, x: Tensor) -> Tensor:
        """``g_p`` for every position of ``x`` (B, N) -> (B, N, d); positions 0, 1 repeat token 0."""
        pad = x[:, :1].expand(-1, 2)
        xs = torch.cat([pad, x], dim=1)  # (B, N + 2)
        e = F.embedding(xs, self.embed_weight)  # (B, N + 2, d)
        u = torch.cat([e[:, :-2], e[:, 1:-1], e[:, 2:]], dim=-1)  # (B, N, 3d) = [e_{p-2}; e_{p-1}; e_p]
        return self.trigram_proj(u + F.silu(self.trigram_res(u)))

    def forward(self, h: Tensor, x: Tensor, last_only: bool = False) -> Tensor:
        """Head features ``(K, B, L', d)`` for positions ``t = 0 .. L-1`` (``L' = L``, or 1 if ``last_only``).

        ``h`` (B, L, d) are base states ``h_0 .. h_{L-1}``; ``x`` (B, L + 1) the tokens
        ``x_0 .. x_L`` (``x_L`` is the base model's next token). Feature ``k`` at ``t`` predicts
        token ``t + 2 + k``.
        """
        _check_features(h, x, self.d)
        B, L, _ = h.shape
        # g_1 .. g_L (B, L, d), or only g_L: its trigram needs the last three tokens
        g = self.trigram(x[:, -3:])[:, -1:] if last_only else self.trigram(x)[:, 1:]
        nq = g.shape[1]
        seq = torch.cat([h, g], dim=1)  # (B, L + nq, d)
        mask = chimera_mask(L, nq).to(h.device)
        pos = torch.cat([torch.arange(L), torch.arange(L - nq + 1, L + 1)]).to(h.device)
        out = self.layer(seq, mask, pos.unsqueeze(0))[:, L:]  # (B, nq, d): h~_p, the emulated base states
        ht = h[:, L - nq:]  # (B, nq, d): h_t = h_{p-1}
        pair = torch.cat([ht, out], dim=-1)  # (B, nq, 2d)
        return torch.stack([ht + out + head(pair) for head in self.heads])  # (K, B, nq, d)


class MedusaHeads(_Draft):
    """The baseline: head ``k`` is ``h_t + SiLU(W_k h_t + b_k)`` (zero-initialised), read by the frozen LM head."""

    def __init__(self, lm_weight: Tensor, n_heads: int = 3) -> None:
        super().__init__(lm_weight, n_heads)
        self.heads = nn.ModuleList(nn.Linear(self.d, self.d) for _ in range(n_heads))
        for head in self.heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, h: Tensor, x: Tensor, last_only: bool = False) -> Tensor:
        """Same contract as :meth:`ChimeraDraft.forward`; ``x`` is checked but not used."""
        _check_features(h, x, self.d)
        ht = h[:, -1:] if last_only else h  # (B, L', d)
        return torch.stack([ht + F.silu(head(ht)) for head in self.heads])  # (K, B, L', d)


def chimera_mask(n_ctx: int, n_query: int) -> Tensor:
    """Boolean mask ``(n_ctx + n_query, n_ctx + n_query)`` of the full-context layer (True = may attend).

    Rows ``0 .. n_ctx-1`` are the base states ``h_j`` (causal among themselves). Row ``n_ctx + i``
    is the trigram query for position ``p = n_ctx - n_query + 1 + i``: it sees ``h_{<p}`` and
    itself, never another trigram query.
    """
    if n_ctx < 1 or not 1 <= n_query <= n_ctx:
        raise ValueError(f"need n_ctx >= 1 and 1 <= n_query <= n_ctx, got n_ctx={n_ctx}, n_query={n_query}")
    n = n_ctx + n_query
    m = torch.zeros(n, n, dtype=torch.bool)
    m[:n_ctx, :n_ctx] = torch.ones(n_ctx, n_ctx, dtype=torch.bool).tril()
    p = n_ctx - n_query + 1 + torch.arange(n_query)  # (n_query,) positions of the queries
    m[n_ctx:, :n_ctx] = torch.arange(n_ctx)[None] < p[:, None]
    m[n_ctx:, n_ctx:] = torch.eye(n_query, dtype=torch.bool)
    return m


# ---------------------------------------------------------------------------------------------
# training and evaluation of a draft
# ---------------------------------------------------------------------------------------------
def head_targets(labels: Tensor, n_heads: int) -> list[Tensor]:
    """Targets of head ``k`` at positions ``t = 0 .. N-2-k``: ``labels[:, t + 1 + k]`` (eq. chimera-loss).

    ``labels`` (B, N) holds, at each position ``j``, the token that follows it (the base model's
    greedy token for distillation, or the text's next token). Head ``k`` at ``t`` predicts
    token ``t + 2 + k``, i.e. the label of position ``t + 1 + k``; features exist for
    ``t <= N - 2`` only (the trigram needs ``x_{t+1}``).
    """
    if labels.ndim != 2 or labels.shape[1] < n_heads + 1:
        raise ValueError(f"labels must have shape (B, N) with N >= n_heads + 1 = {n_heads + 1}, "
                         f"got {tuple(labels.shape)}")
    return [labels[:, 1 + k:] for k in range(n_heads)]


def draft_features(draft: _Draft, h: Tensor, x: Tensor) -> Tensor:
    """Features ``(K, B, N-1, d)`` of a draft on training windows: ``h``, ``x`` both (B, N)."""
    return draft(h[:, :-1], x)


def draft_loss(draft: _Draft, h: Tensor, x: Tensor, labels: Tensor) -> Tensor:
    """Sum over heads of the cross-entropy to :func:`head_targets` (sampled softmax).

    The softmax runs over the tokens that occur as a target in this batch (all heads), not over
    the whole vocabulary: ``V = 49,152`` logits per position and head do not fit a CPU budget.
    """
    z = draft_features(draft, h, x)  # (K, B, N-1, d)
    targets = head_targets(labels, draft.n_heads)
    cand = torch.unique(torch.cat([t.flatten() for t in targets]))  # (C,) sorted
    w = draft.lm_weight[cand]  # (C, d)
    loss = z.new_zeros(())
    for k, t in enumerate(targets):
        zk = z[k, :, : t.shape[1]]  # (B, n_k, d)
        loss = loss + F.cross_entropy((zk @ w.T).flatten(0, 1), torch.searchsorted(cand, t.flatten()))
    return loss


@torch.no_grad()
def head_accuracy(draft: _Draft, h: Tensor, x: Tensor, labels: Tensor, topk: int = 5) -> Tensor:
    """Top-1 and top-``topk`` accuracy of every head over the full vocabulary -> ``(K, 2)``."""
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    z = draft_features(draft, h, x)
    out = []
    for k, t in enumerate(head_targets(labels, draft.n_heads)):
        top = draft.logits(z[k, :, : t.shape[1]]).topk(topk, dim=-1).indices  # (B, n_k, topk)
        out.append([float((top[..., 0] == t).float().mean()), float((top == t[..., None]).any(-1).float().mean())])
    return torch.tensor(out)


# ---------------------------------------------------------------------------------------------
# tree drafting and lossless verification
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tree:
    """A static draft tree: node ``i`` takes the ``path[-1]``-th best token of head ``len(path) - 1``.

    ``paths`` are tuples of ranks, parents before children (e.g. ``(0,), (1,), (0, 0)``);
    ``parents[i]`` is the node index of ``paths[i][:-1]`` or ``-1`` for depth-1 nodes.
    """

    paths: tuple[tuple[int, ...], ...]
    parents: tuple[int, ...]
    depths: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.paths)

    @property
    def depth(self) -> int:
        return max(self.depths)

    @property
    def width(self) -> int:
        return 1 + max(r for p in self.paths for r in p)


def make_tree(paths: Sequence[Sequence[int]]) -> Tree:
    """Validate rank paths (every prefix present, parents first) and index their parents."""
    ps = [tuple(int(r) for r in p) for p in paths]
    if not ps or any(len(p) == 0 or min(p) < 0 for p in ps):
        raise ValueError(f"paths must be non-empty tuples of ranks >= 0, got {paths!r}")
    if len(set(ps)) != len(ps):
        raise ValueError("paths must be distinct")
    index = {p: i for i, p in enumerate(ps)}
    parents = []
    for i, p in enumerate(ps):
        parent = -1 if len(p) == 1 else index.get(p[:-1], i)
        if parent >= i:
            raise ValueError(f"paths must list every prefix before its extension; {p} comes before {p[:-1]}")
        parents.append(parent)
    return Tree(tuple(ps), tuple(parents), tuple(len(p) for p in ps))


def full_tree(widths: Sequence[int]) -> Tree:
    """The tree with the top-``widths[k]`` tokens of head ``k`` under every depth-``k`` node."""
    if not widths or any(int(w) < 1 for w in widths):
        raise ValueError(f"widths must be a non-empty sequence of ints >= 1, got {widths!r}")
    paths = [p for depth in range(1, len(widths) + 1) for p in product(*(range(w) for w in widths[:depth]))]
    return make_tree(paths)


def draft_tree(draft: _Draft, h: Tensor, x: Tensor, tree: Tree) -> Tensor:
    """Token of every tree node ``(T,)`` from the draft's head predictions at the last position.

    ``h`` (1, L, d) base states of the accepted tokens, ``x`` (1, L + 1) those tokens plus the
    base model's next token; node ``i`` gets rank ``paths[i][-1]`` of head ``depths[i] - 1``.
    """
    if tree.depth > draft.n_heads:
        raise ValueError(f"tree depth {tree.depth} exceeds the draft's {draft.n_heads} heads")
    z = draft(h, x, last_only=True)[:, 0, 0]  # (K, d)
    top = draft.logits(z[: tree.depth]).topk(tree.width, dim=-1).indices  # (depth, width)
    depth = torch.tensor(tree.depths, device=top.device) - 1
    rank = torch.tensor([p[-1] for p in tree.paths], device=top.device)
    return top[depth, rank]  # (T,)


def _emulate(draft: "ChimeraDraft", h: Tensor, chain: Tensor, triple: Tensor) -> Tensor:
    """One run of the full-context layer for one new position: the emulated state ``(1, d)``.

    Context: the base states ``h`` (1, L, d) followed by the emulated states ``chain`` (1, j, d)
    of the drafted tokens before this one (they stand in for base states nobody has computed);
    query: the trigram of ``triple`` (1, 3) at position ``L + j``, which sees the whole context.
    """
    g = draft.trigram(triple)[:, -1:]  # (1, 1, d)
    ctx = torch.cat([h, chain], dim=1)  # (1, L + j, d)
    n = ctx.shape[1]
    pos = torch.arange(n + 1, device=h.device)[None]
    return draft.layer(torch.cat([ctx, g], dim=1), chimera_mask(n, 1).to(h.device), pos)[:, -1]  # (1, d)


@torch.no_grad()
def draft_tree_autoregressive(draft: "ChimeraDraft", h: Tensor, x: Tensor, tree: Tree) -> Tensor:
    """Chimera's inference-time drafting: **head 0 only**, the full-context layer re-run on every drafted token.

    The root is the base model's next token ``x_L``; its emulated state ``e_root`` comes from the
    trigram ``(x_{L-2}, x_{L-1}, x_L)``. A node ``n`` drafted at position ``L + j`` gets its own
    emulated state ``e_n`` (trigram of its two predecessors and itself, context = ``h`` plus the
    emulated states of its ancestors), and its children are the top tokens of head 0 applied to
    ``[e_parent; e_n]`` (``e_parent(root) = h_{L-1}``), the features head 0 was trained on with
    base states. Same contract as :func:`draft_tree`; ``h`` (1, L, d), ``x`` (1, L + 1).
    """
    if not isinstance(draft, ChimeraDraft):
        raise ValueError(f"autoregressive drafting needs a ChimeraDraft, got {type(draft).__name__}")
    _check_features(h, x, draft.d)
    if h.shape[0] != 1:
        raise ValueError(f"h must hold one sequence (1, L, d), got {tuple(h.shape)}")
    head = draft.heads[0]
    feat = lambda prev, cur: prev + cur + head(torch.cat([prev, cur], dim=-1))  # noqa: E731  (1, d)
    seq = x[0].tolist()
    tok = {-1: seq[-1]}  # node -> its token; -1 is the root
    before = {-1: (seq[-3] if len(seq) >= 3 else seq[0], seq[-2] if len(seq) >= 2 else seq[0])}  # two predecessors
    state = {-1: _emulate(draft, h, h[:, :0], torch.tensor([[*before[-1], tok[-1]]], device=h.device))}
    prev_state = {-1: h[:, -1]}
    chain = {-1: [state[-1]]}
    children = {n: [i for i in range(tree.size) if tree.parents[i] == n] for n in [-1, *range(tree.size)]}
    nodes = torch.empty(tree.size, dtype=torch.long, device=h.device)
    for n in [-1, *range(tree.size)]:  # parents come before their children
        if not children[n]:
            continue
        if n >= 0:  # this node's emulated state: context h + its ancestors' states
            par = tree.parents[n]
            before[n] = (before[par][1], tok[par])
            triple = torch.tensor([[*before[n], tok[n]]], device=h.device)
            state[n] = _emulate(draft, h, torch.cat(chain[par], dim=0)[None], triple)
            prev_state[n] = state[par]
            chain[n] = chain[par] + [state[n]]
        top = draft.logits(feat(prev_state[n], state[n])).topk(tree.width, dim=-1).indices[0]  # (width,)
        for c in children[n]:
            tok[c] = int(top[tree.paths[c][-1]])
            nodes[c] = tok[c]
    return nodes


def accept_path(tree: Tree, nodes: Tensor, greedy: Tensor) -> list[int]:
    """Longest chain of nodes that the base model would have produced itself (greedy walk).

    ``nodes`` (T,) are the drafted tokens, ``greedy`` (T + 1,) the base model's argmax after
    the root (index 0) and after every node (index ``1 + i``). From the root, move to the child
    whose token equals the base model's greedy choice; stop when none does. Returns node indices.
    """
    if nodes.shape != (tree.size,) or greedy.shape != (tree.size + 1,):
        raise ValueError(f"nodes must be ({tree.size},) and greedy ({tree.size + 1},), "
                         f"got {tuple(nodes.shape)} and {tuple(greedy.shape)}")
    path, cur = [], -1
    while True:
        want = int(greedy[cur + 1])
        nxt = [i for i in range(tree.size) if tree.parents[i] == cur and int(nodes[i]) == want]
        if not nxt:
            return path
        cur = nxt[0]
        path.append(cur)


@dataclass
class DecodeResult:
    """Generated tokens and what it cost: base-model calls, tokens gained per call, seconds."""

    tokens: list[int]
    calls: int
    per_call: list[int] = field(default_factory=list)
    seconds: float = 0.0
    drafts: list[tuple[list[int], list[int]]] = field(default_factory=list)  # per call: (node tokens, accepted nodes)

    @property
    def tokens_per_call(self) -> float:
        return len(self.tokens) / max(self.calls, 1)


def _check_generate(prompt: Tensor, max_new: int) -> None:
    if not isinstance(prompt, Tensor) or prompt.ndim != 2 or prompt.shape[0] != 1 or prompt.shape[1] < 1:
        got = getattr(prompt, "shape", prompt)
        raise ValueError(f"prompt must be token ids of shape (1, P) with P >= 1, got {got!r}")
    if max_new < 1:
        raise ValueError(f"max_new must be >= 1, got {max_new}")


def _base_call(model: nn.Module, ids: Tensor, cache, **kw) -> Tensor:
    """One forward call of the base backbone with its KV cache -> last-layer states (1, n, d)."""
    return model.model(input_ids=ids, use_cache=True, **{cache_kwarg(model.model): cache}, **kw).last_hidden_state


@torch.no_grad()
def prefill(model: nn.Module, prompt: Tensor):
    """Run the prompt (1, P) through the base model: ``(KV cache, states (1, P, d), first greedy token)``."""
    from transformers import DynamicCache

    _check_generate(prompt, 1)
    cache = DynamicCache()
    states = _base_call(model, prompt, cache)
    return cache, states, int(model.lm_head(states[:, -1]).argmax(-1))


@torch.no_grad()
def greedy_generate(model: nn.Module, prompt: Tensor, max_new: int) -> DecodeResult:
    """Plain greedy decoding with a KV cache: one base call per new token."""
    _check_generate(prompt, max_new)
    start = time.perf_counter()
    cache, _, first = prefill(model, prompt)
    out = [first]
    while len(out) < max_new:
        h = _base_call(model, torch.tensor([[out[-1]]], device=prompt.device), cache)
        out.append(int(model.lm_head(h[:, -1]).argmax(-1)))
    return DecodeResult(out, calls=max_new, per_call=[1] * max_new, seconds=time.perf_counter() - start)


@torch.no_grad()
def verify_tree(model: nn.Module, cache, root: int, nodes: Tensor, tree: Tree,
                impl: str | None = None) -> tuple[list[int], int, Tensor]:
    """One base call on ``[root, nodes]`` under a :class:`TreeMask`; returns (accepted nodes, bonus, states).

    The cache holds ``c`` tokens; the root (the base model's last greedy token) sits at position
    ``c``, node ``i`` at ``c + depths[i]``. Needs ``attn_implementation="companion"`` (the mask
    goes in as ``companion_mask``; ``impl`` picks the kernel dispatch). Afterwards the cache
    holds the root and the accepted nodes only; ``states`` (1, 1 + n_acc, d) are their hidden states.
    """
    c = cache.get_seq_length()
    dev = nodes.device
    ids = torch.cat([torch.tensor([root], device=dev), nodes])[None]  # (1, 1 + T)
    pos = c + torch.tensor((0,) + tree.depths, device=dev)[None]  # (1, 1 + T)
    kw = {"companion_impl": impl} if impl is not None else {}
    h = _base_call(model, ids, cache, position_ids=pos, companion_mask=TreeMask(list(tree.parents), start=c + 1), **kw)
    greedy = model.lm_head(h[0]).argmax(-1)  # (1 + T,)
    path = accept_path(tree, nodes, greedy)
    bonus = int(greedy[path[-1] + 1]) if path else int(greedy[0])
    keep = torch.cat([torch.arange(c + 1, device=dev), c + 1 + torch.tensor(path, dtype=torch.long, device=dev)])
    keep_cache_positions(cache, keep)  # KV compaction: the root and the accepted path stay
    return path, bonus, h[:, [0] + [1 + i for i in path]]


@torch.no_grad()
def speculative_generate(model: nn.Module, draft: _Draft, prompt: Tensor, max_new: int, tree: Tree,
                         impl: str | None = None, drafting: str = "heads") -> DecodeResult:
    """Greedy speculative decoding: draft a tree, verify it in one base call, keep what agrees.

    ``drafting="heads"``: every depth from its own head, all reading one state (:func:`draft_tree`,
    Medusa's way); ``"autoregressive"``: Chimera's inference drafting with head 0 and the
    full-context layer re-run per drafted token (:func:`draft_tree_autoregressive`).
    The output equals :func:`greedy_generate` token for token (every kept token is the base
    model's argmax in its true context); ``per_call`` counts the tokens each base call added.
    """
    _check_generate(prompt, max_new)
    if drafting not in ("heads", "autoregressive"):
        raise ValueError(f"drafting must be 'heads' or 'autoregressive', got {drafting!r}")
    make_tree = draft_tree if drafting == "heads" else draft_tree_autoregressive
    start = time.perf_counter()
    cache, states, first = prefill(model, prompt)  # states: (1, P, d)
    seq = prompt[0].tolist()
    out = [first]
    per_call, drafts = [1], []
    while len(out) < max_new:
        x = torch.tensor([seq + out[-1:]], device=prompt.device)  # (1, L + 1)
        nodes = make_tree(draft, states, x, tree)
        path, bonus, new_states = verify_tree(model, cache, out[-1], nodes, tree, impl)
        seq.append(out[-1])
        seq.extend(int(nodes[i]) for i in path)
        out.extend(int(nodes[i]) for i in path)
        out.append(bonus)
        states = torch.cat([states, new_states], dim=1)
        per_call.append(len(path) + 1)
        drafts.append((nodes.tolist(), path))
    return DecodeResult(out[:max_new], calls=len(per_call), per_call=per_call, seconds=time.perf_counter() - start,
                        drafts=drafts)


# ---------------------------------------------------------------------------------------------
# pictures
# ---------------------------------------------------------------------------------------------
def plot_tree(tree: Tree, labels: Sequence[str], accepted: Sequence[int] = (), ax=None, title: str | None = None,
              root: str = "root"):
    """Draw a draft tree left to right: one column per depth, accepted nodes green, the rest grey."""
    import matplotlib.pyplot as plt

    if len(labels) != tree.size:
        raise ValueError(f"labels must hold one string per node ({tree.size}), got {len(labels)}")
    ax = ax or plt.subplots(figsize=(7, 0.45 * tree.size + 1))[1]
    leaves = [i for i in range(tree.size) if i not in tree.parents]
    y: dict[int, float] = {}
    for i in reversed(range(tree.size)):  # a node sits at the mean height of its children
        kids = [y[j] for j in range(tree.size) if tree.parents[j] == i]
        y[i] = sum(kids) / len(kids) if kids else -float(leaves.index(i))
    y[-1] = sum(y[i] for i in range(tree.size) if tree.parents[i] == -1) / max(1, tree.depths.count(1))
    ok = set(accepted)
    for i in range(tree.size):
        par = tree.parents[i]
        ax.plot([tree.depths[i] - 1, tree.depths[i]], [y[par], y[i]], color="green" if i in ok else "0.75", lw=1.5)
    ax.text(0, y[-1], root, ha="center", va="center", bbox=dict(boxstyle="round", fc="lightblue"), fontsize=9)
    for i in range(tree.size):
        ax.text(tree.depths[i], y[i], labels[i], ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round", fc="palegreen" if i in ok else "0.92"))
    ax.set_xlim(-0.5, tree.depth + 0.5)
    ax.set_ylim(min(y.values()) - 0.7, 0.7)
    ax.set_xticks(range(tree.depth + 1), ["root (base)"] + [f"head {k} (t+{k + 2})" for k in range(tree.depth)])
    ax.set_yticks([])
    ax.set_title(title or "draft tree (green: accepted by the base model)", fontsize=10)
    return ax


def tree_explorer(runs: dict[str, Sequence[DecodeResult]], tree: Tree, decode: Callable[[list[int]], str]):
    """Step through the verification calls of speculative decoding: draft tree, accepted path, tokens gained."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from ..widgets import redraw_on

    if not runs:
        raise ValueError("runs must map a draft name to its list of DecodeResult")
    name = W.Dropdown(options=list(runs), description="draft")
    prompt = W.IntSlider(value=0, min=0, max=len(next(iter(runs.values()))) - 1, description="prompt")
    call = W.IntSlider(value=0, min=0, max=50, description="base call")

    def draw() -> None:
        res = runs[name.value][prompt.value]
        call.max = max(len(res.drafts) - 1, 0)
        if not res.drafts:
            print("no verification call (the prefill produced every token)")
            return
        nodes, path = res.drafts[min(call.value, call.max)]
        before = res.tokens[: sum(res.per_call[: call.value + 1])]
        plot_tree(tree, [repr(decode([t]))[1:-1] for t in nodes], path, root=repr(decode(before[-1:]))[1:-1],
                  title=f"{name.value}, prompt {prompt.value}, call {call.value + 1}: "
                        f"{len(path)} drafted + 1 base token accepted")
        print("generated so far:", repr(decode(before)))

    return redraw_on([name, prompt, call], draw)


__all__ = ["ChimeraDraft", "DecodeResult", "MedusaHeads", "Tree", "accept_path", "base_states", "chimera_mask",
           "draft_features", "draft_loss", "draft_tree", "full_tree", "greedy_generate", "head_accuracy",
           "head_targets", "make_tree", "plot_tree", "prefill", "speculative_generate", "tree_explorer", "verify_tree"]
