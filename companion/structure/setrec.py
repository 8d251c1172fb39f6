"""SETRec: order-agnostic set identifiers for generative recommendation (Lin et al., SIGIR 2025).

Every item is a *set* of ``1 + n_sem`` continuous tokens -- one collaborative-filtering (CF) token
and ``n_sem`` semantic tokens from an autoencoder over the item's text embedding. A user's history
of ``L`` items is laid out item after item; the **sparse attention mask** (eq. setrec-mask of the
chapter) hides the tokens of one item from each other, and all tokens of item ``t`` share the
position id ``t`` (eq. setrec-pos), so no order exists inside an item. ``1 + n_sem`` learnable
**queries** follow the history; they are blind to each other, so one forward pass produces all
tokens of the next item at once (query-guided simultaneous generation). Query ``k`` scores every
item through the item's ``k``-th token (eq. setrec-score); training is cross-entropy per query plus
the autoencoder's reconstruction loss (eq. setrec-loss).

Chapter: ``book/structure/setrec.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..nn.masks import CausalMask, KeyPaddingMask, Mask, SegmentMask, SlidingWindowMask
from ..nn.transformer import TinyLM, TransformerBlock, TransformerConfig

Tensor = torch.Tensor
LAYOUTS = ("set", "sequential")
PAD = 0  # item id 0 pads short histories; real items are 1..n_items


# ---------------------------------------------------------------------------------------------
# data: MovieLens-100K as next-item prediction with warm and cold items
# ---------------------------------------------------------------------------------------------
@dataclass
class RecData:
    """MovieLens sequences split for next-item prediction, with a set of cold items.

    Item ids are the MovieLens ids (1..n_items), 0 is padding. Cold items never occur in
    ``train_seqs`` nor in any history; they appear only as evaluation targets.
    """

    n_items: int
    texts: list[str]  # texts[i] describes item i (texts[0] = "" for padding)
    cold: Tensor  # (n_items + 1,) bool; cold[0] is False
    train_seqs: list[Tensor]  # per user: warm items in time order, the last two interactions excluded
    valid: tuple[Tensor, Tensor]  # histories (U, L), targets (U,): each user's second-to-last item
    test: tuple[Tensor, Tensor]  # histories (U, L), targets (U,): each user's last item
    cold_valid: tuple[Tensor, Tensor]  # half of the interactions with cold items (history: warm items before)
    cold_test: tuple[Tensor, Tensor]  # the other half
    examples: tuple[Tensor, Tensor]  # every training (history (E, L), next item (E,)) pair

    @property
    def warm(self) -> Tensor:
        """(n_items + 1,) bool: the items a model may see during training (padding excluded)."""
        w = ~self.cold
        w[PAD] = False
        return w


def item_text(title: str, genres: Sequence[str]) -> str:
    """The text the semantic tokenizer reads for one movie, e.g. ``"Toy Story: Animation, Children's, Comedy"``."""
    return f"{title}: {', '.join(g for g in genres if g != 'unknown')}"


def text_embeddings(encoder, tokenizer, texts: Sequence[str], batch_size: int = 64) -> Tensor:
    """Sentence embeddings (N, D) of ``texts``, encoded shortest first (less padding, same result)."""
    from ..models import sentence_embeddings

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    emb = sentence_embeddings(encoder, tokenizer, [texts[i] for i in order], batch_size=batch_size, max_length=64)
    out = torch.empty_like(emb)
    out[torch.tensor(order, dtype=torch.long)] = emb
    return out


def left_pad(items: Sequence[int] | Tensor, length: int) -> Tensor:
    """The last ``length`` items of a history, left-padded with :data:`PAD` -> (length,) long."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    t = torch.as_tensor(list(items), dtype=torch.long)[-length:]
    return torch.cat([torch.full((length - len(t),), PAD, dtype=torch.long), t])


def split_movielens(ratings, items, cold_frac: float = 0.2, history_len: int = 10, max_cold_cases: int = 2000,
                    generator: torch.Generator | None = None) -> RecData:
    """Build :class:`RecData` from the MovieLens tables (``companion.data.movielens_100k``).

    A random ``cold_frac`` of the items is cold: removed from every training sequence and history.
    Leave-one-out: each user's last interaction is the test target, the one before the
    validation target; histories are the preceding warm items (at most ``history_len``).
    Up to ``max_cold_cases`` interactions with cold items (not the last two of a user), each with
    the warm items before it as history, are split in halves: ``cold_valid`` and ``cold_test``.
    """
    if not 0.0 < cold_frac < 1.0:
        raise ValueError(f"cold_frac must be in (0, 1), got {cold_frac}")
    if history_len < 1 or max_cold_cases < 1:
        raise ValueError(f"history_len and max_cold_cases must be >= 1, got {history_len}, {max_cold_cases}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    n_items = int(items["item_id"].max())
    texts = [""] * (n_items + 1)
    for row in items.itertuples():
        texts[int(row.item_id)] = item_text(str(row.title), row.genres)
    cold = torch.zeros(n_items + 1, dtype=torch.bool)
    cold[1 + torch.randperm(n_items, generator=g)[: int(round(cold_frac * n_items))]] = True

    ordered = ratings.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    train_seqs, valid, test, cold_cases, ex = [], ([], []), ([], []), ([], []), ([], [])
    for _, seq in ordered.groupby("user_id", sort=True)["item_id"]:
        s = seq.to_numpy()
        warm_before = [int(i) for i in s[:-2] if not cold[int(i)]]
        train_seqs.append(torch.tensor(warm_before, dtype=torch.long))
        padded = [PAD] * history_len + warm_before
        ex[0].extend(padded[t:t + history_len] for t in range(1, len(warm_before)))
        ex[1].extend(warm_before[1:])
        for split, end in ((valid, len(s) - 2), (test, len(s) - 1)):
            split[0].append(left_pad([int(i) for i in s[:end] if not cold[int(i)]], history_len))
            split[1].append(int(s[end]))
        hist: list[int] = []
        for i in s[:-2]:
            if cold[int(i)] and len(hist) >= 3:
                cold_cases[0].append(left_pad(hist, history_len))
                cold_cases[1].append(int(i))
            elif not cold[int(i)]:
                hist.append(int(i))
    pick = torch.randperm(len(cold_cases[1]), generator=g)[:max_cold_cases]
    half = len(pick) // 2
    as_pair = lambda h, t: (torch.stack(h), torch.tensor(t, dtype=torch.long))  # noqa: E731
    ch, ct = as_pair(*cold_cases)
    return RecData(n_items=n_items, texts=texts, cold=cold, train_seqs=train_seqs, valid=as_pair(*valid),
                   test=as_pair(*test), cold_valid=(ch[pick[:half]], ct[pick[:half]]),
                   cold_test=(ch[pick[half:]], ct[pick[half:]]),
                   examples=(torch.tensor(ex[0], dtype=torch.long), torch.tensor(ex[1], dtype=torch.long)))


def left_padding(history: Tensor) -> Tensor:
    """Number of leading :data:`PAD` items of each left-padded history (B, L) -> (B,) long."""
    if history.ndim != 2:
        raise ValueError(f"history must be (B, L), got {tuple(history.shape)}")
    return (history != PAD).long().cumsum(1).eq(0).sum(1)


def sample_batch(data: RecData, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random (history (B, L), target (B,)) pairs from the training sequences (warm items only)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    idx = torch.randint(len(data.examples[1]), (batch_size,), generator=generator)
    return data.examples[0][idx], data.examples[1][idx]


# ---------------------------------------------------------------------------------------------
# the layout: sparse mask and shared position ids
# ---------------------------------------------------------------------------------------------
def item_groups(n_hist: int, tokens_per_item: int, n_queries: int) -> Tensor:
    """Group id of every position: item ``t``'s tokens -> ``t``, the queries -> ``n_hist`` (length N)."""
    if n_hist < 0 or tokens_per_item < 1 or n_queries < 1:
        raise ValueError(f"need n_hist >= 0, tokens_per_item >= 1, n_queries >= 1; got "
                         f"{n_hist}, {tokens_per_item}, {n_queries}")
    hist = torch.arange(n_hist).repeat_interleave(tokens_per_item)
    return torch.cat([hist, torch.full((n_queries,), n_hist)])


def setrec_mask(n_hist: int, tokens_per_item: int, n_queries: int) -> Mask:
    """The sparse mask (eq. setrec-mask): causal, and a token never sees another token of its own group.

    ``CausalMask() & (~SegmentMask(groups) | SlidingWindowMask(1))``: the window of one is the
    diagonal, so each token sees itself; the queries form one group, so they are blind to each other.
    """
    groups = item_groups(n_hist, tokens_per_item, n_queries)
    return CausalMask() & (~SegmentMask(groups) | SlidingWindowMask(1))


def layout(n_hist: int, tokens_per_item: int, n_queries: int, kind: str = "set") -> tuple[Mask, Tensor]:
    """``(mask, position_ids (N,))`` of a history of ``n_hist`` items followed by the queries.

    ``"set"``: the sparse mask, and every token of item ``t`` at position ``t``, the queries at
    ``n_hist, n_hist + 1, ...`` (eq. setrec-pos; sequential query positions as in the official
    decoder-only variant -- the queries are blind to each other, so this keeps them distinct without
    any order among them mattering). ``"sequential"``: the ordinary causal mask and positions
    ``0..N-1`` (what a token-sequence identifier gets).
    """
    if kind not in LAYOUTS:
        raise ValueError(f"kind must be one of {LAYOUTS}, got {kind!r}")
    groups = item_groups(n_hist, tokens_per_item, n_queries)
    if kind == "set":
        pos = groups.clone()
        pos[-n_queries:] = n_hist + torch.arange(n_queries)
        return setrec_mask(n_hist, tokens_per_item, n_queries), pos
    return CausalMask(), torch.arange(len(groups))


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
def mlp(widths: Sequence[int]) -> nn.Sequential:
    """Linear layers with GELU in between: widths (d0, d1, ..., dn)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


@dataclass
class SetRecConfig:
    """Sizes of a SETRec model. ``n_sem = 0`` gives the CF-only (single ID token) baseline."""

    n_items: int
    text_dim: int = 384
    n_sem: int = 2
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    ae_hidden: int = 256
    alpha: float = 0.7  # weight of the reconstruction loss (eq. setrec-loss)
    use_cf: bool = True  # False: semantic-only identifier (no CF token)

    def __post_init__(self) -> None:
        if self.n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {self.n_items}")
        if self.n_sem < 0:
            raise ValueError(f"n_sem must be >= 0, got {self.n_sem}")
        if not self.use_cf and self.n_sem == 0:
            raise ValueError("an identifier needs at least one token: use_cf=True or n_sem >= 1")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")

    @property
    def n_tokens(self) -> int:
        """Tokens per item = number of queries."""
        return int(self.use_cf) + self.n_sem


class SetRec(nn.Module):
    """CF tokenizer + semantic tokenizer (autoencoder) + transformer with the sparse mask + queries.

    ``text_emb`` (n_items + 1, text_dim) holds each item's frozen text embedding (row 0: padding).
    ``cf_emb`` (n_items + 1, d_cf), optional: frozen pretrained CF item embeddings; the CF token is then
    ``W_cf e_i`` with a trainable ``W_cf`` (the paper's CF tokenizer), else a trainable ID embedding.
    """

    def __init__(self, cfg: SetRecConfig, text_emb: Tensor, cf_emb: Tensor | None = None) -> None:
        super().__init__()
        if text_emb.shape != (cfg.n_items + 1, cfg.text_dim):
            raise ValueError(f"text_emb must have shape {(cfg.n_items + 1, cfg.text_dim)}, got {tuple(text_emb.shape)}")
        if cf_emb is not None and (cf_emb.ndim != 2 or cf_emb.shape[0] != cfg.n_items + 1 or not cfg.use_cf):
            raise ValueError(f"cf_emb must have shape ({cfg.n_items + 1}, d_cf) and needs use_cf=True, "
                             f"got {tuple(cf_emb.shape)}")
        self.cfg = cfg
        d = cfg.d_model
        self.register_buffer("text_emb", text_emb.float().clone())
        self.cf: nn.Module | None = None  # CF tokenizer
        if cf_emb is not None:
            frozen = nn.Embedding.from_pretrained(cf_emb.detach().float().clone(), freeze=True)
            self.cf = nn.Sequential(frozen, nn.Linear(cf_emb.shape[1], d, bias=False))
        elif cfg.use_cf:
            self.cf = nn.Embedding(cfg.n_items + 1, d)
            nn.init.normal_(self.cf.weight, std=0.1)
        if cfg.n_sem:
            self.encoder = mlp([cfg.text_dim, cfg.ae_hidden, cfg.n_sem * d])  # semantic tokenizer
            self.decoder = mlp([cfg.n_sem * d, cfg.ae_hidden, cfg.text_dim])
        self.queries = nn.Parameter(0.1 * torch.randn(cfg.n_tokens, d))  # (T, d)
        tcfg = TransformerConfig(vocab_size=1, d_model=d, n_layers=cfg.n_layers, n_heads=cfg.n_heads, pos="rope")
        self.blocks = nn.ModuleList(TransformerBlock(tcfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self._layouts: dict[tuple[int, str], tuple[Mask, Tensor]] = {}

    # -- tokenizers ----------------------------------------------------------------------------
    def semantic_codes(self, ids: Tensor) -> Tensor:
        """Autoencoder codes of items ``ids`` (...,) -> (..., n_sem, d)."""
        z = self.encoder(self.text_emb[ids])  # (..., n_sem * d)
        return z.view(*ids.shape, self.cfg.n_sem, self.cfg.d_model)

    def item_tokens(self, ids: Tensor) -> Tensor:
        """The set identifier of items ``ids`` (...,) -> (..., T, d): [CF token, semantic tokens]."""
        parts = []
        if self.cf is not None:
            parts.append(self.cf(ids).unsqueeze(-2))  # (..., 1, d)
        if self.cfg.n_sem:
            parts.append(self.semantic_codes(ids))  # (..., n_sem, d)
        return torch.cat(parts, dim=-2)

    def all_tokens(self) -> Tensor:
        """Token tables of the whole catalogue (n_items + 1, T, d); row 0 is padding."""
        return self.item_tokens(torch.arange(self.cfg.n_items + 1, device=self.queries.device))

    # -- the forward pass ----------------------------------------------------------------------
    def encode(self, tokens: Tensor, kind: str = "set",
               attn_fn: Callable[..., Tensor] | None = None, n_pad: Tensor | None = None) -> Tensor:
        """History tokens (B, L, T, d) -> query outputs (B, T, d) in one forward pass.

        ``n_pad`` (B,): the number of left-padding items of each history; their tokens are hidden
        from every query (a key-padding mask, as in the official code), so padding changes nothing.
        """
        if tokens.ndim != 4 or tokens.shape[-2:] != (self.cfg.n_tokens, self.cfg.d_model):
            raise ValueError(f"tokens must have shape (B, L, {self.cfg.n_tokens}, {self.cfg.d_model}), "
                             f"got {tuple(tokens.shape)}")
        B, L, T, d = tokens.shape
        key = (L, kind)
        if key not in self._layouts:
            self._layouts[key] = layout(L, T, T, kind)
        mask, pos = self._layouts[key]
        if n_pad is not None and bool((n_pad > 0).any()):
            mask = mask & ~KeyPaddingMask(n_pad.to(tokens.device) * T)  # left padding: keys < n_pad*T hidden
        x = torch.cat([tokens.reshape(B, L * T, d), self.queries.expand(B, T, d)], dim=1)  # (B, L*T + T, d)
        pos = pos.to(x.device)
        for block in self.blocks:
            x = block(x, mask, pos, attn_fn)
        return self.ln_f(x[:, -T:])  # (B, T, d)

    def forward(self, history: Tensor, kind: str = "set", attn_fn: Callable[..., Tensor] | None = None) -> Tensor:
        """Item ids (B, L) -> query outputs (B, T, d)."""
        if history.ndim != 2 or history.is_floating_point():
            raise ValueError(f"history must be an integer tensor (B, L), got {getattr(history, 'shape', history)!r}")
        if int(history.min()) < 0 or int(history.max()) > self.cfg.n_items:
            raise ValueError(f"history ids must lie in [0, {self.cfg.n_items}]")
        return self.encode(self.item_tokens(history), kind, attn_fn, n_pad=left_padding(history))

    # -- grounding, loss, ranking --------------------------------------------------------------
    def token_scores(self, h: Tensor, tables: Tensor | None = None) -> Tensor:
        """s_k(i) = h_k · E_k[i] (eq. setrec-score): query outputs (B, T, d) -> (B, T, n_items + 1)."""
        tables = self.all_tokens() if tables is None else tables  # (I, T, d)
        return torch.einsum("btd,itd->bti", h, tables)

    def loss(self, history: Tensor, target: Tensor, allowed: Tensor | None = None) -> Tensor:
        """Eq. setrec-loss: mean cross-entropy over the T queries + alpha * reconstruction MSE.

        ``allowed`` (n_items + 1,) bool restricts the softmax to the items known at training time.
        """
        tables = self.all_tokens()  # (I, T, d), recomputed through the autoencoder every step
        s = self.token_scores(self(history), tables)  # (B, T, I)
        s = s.masked_fill(~allowed.to(s.device), float("-inf")) if allowed is not None else s
        ce = F.cross_entropy(s.flatten(0, 1), target.repeat_interleave(self.cfg.n_tokens))
        if not self.cfg.n_sem:
            return ce
        items = torch.unique(torch.cat([history.flatten(), target]))
        items = items[items != PAD]
        recon = self.decoder(self.encoder(self.text_emb[items]))
        return ce + self.cfg.alpha * F.mse_loss(recon, self.text_emb[items])

    def combine(self, s: Tensor, beta: float) -> Tensor:
        """score(i) = (1 - beta) s_0(i) + beta * sum_k>=1 s_k(i) (eq. setrec-rank); s: (B, T, I) -> (B, I)."""
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        if self.cf is None:  # semantic-only: no CF score to mix with
            return s.sum(1)
        if not self.cfg.n_sem:  # CF-only: its one score is used as is (the formula's beta = 1 would zero it)
            return s[:, 0]
        return (1 - beta) * s[:, 0] + beta * s[:, 1:].sum(1)


# ---------------------------------------------------------------------------------------------
# simultaneous versus one-token-per-call generation
# ---------------------------------------------------------------------------------------------
def decode_one_by_one(model: SetRec, history: Tensor) -> tuple[Tensor, int]:
    """Produce the T query outputs one call at a time, as an ordered (token-sequence) decoder must.

    Call ``k`` runs the model on the history followed by queries ``0..k`` (causal among them,
    like autoregressive decoding) and keeps the output of query ``k``. Under the set layout the
    queries are blind to each other, so the result equals :meth:`SetRec.forward` exactly, at
    T forward passes instead of one. Returns (outputs (B, T, d), number of forward calls).
    """
    tokens = model.item_tokens(history)  # (B, L, T, d)
    B, L, T, d = tokens.shape
    flat = tokens.reshape(B, L * T, d)
    n_pad = left_padding(history)
    outs = []
    for k in range(T):
        mask, pos = layout(L, T, k + 1, "set")  # history + the first k + 1 queries
        if bool((n_pad > 0).any()):
            mask = mask & ~KeyPaddingMask(n_pad.to(flat.device) * T)
        x = torch.cat([flat, model.queries[: k + 1].expand(B, k + 1, d)], dim=1)
        for block in model.blocks:
            x = block(x, mask, pos.to(x.device))
        outs.append(model.ln_f(x[:, -1]))
    return torch.stack(outs, dim=1), T


class CallCounter:
    """Context manager counting the forward calls of the transformer's first block."""

    def __init__(self, model: SetRec) -> None:
        self.model, self.calls = model, 0

    def __enter__(self) -> "CallCounter":
        def hook(*_):
            self.calls += 1

        self._handle = self.model.blocks[0].register_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def token_scores_for(model: SetRec, histories: Tensor, batch_size: int = 512) -> Tensor:
    """Per-query scores of every item for every history: (U, L) -> (U, T, n_items + 1)."""
    was_training = model.training
    model.eval()
    tables = model.all_tokens()
    out = torch.cat([model.token_scores(model(histories[i:i + batch_size]), tables)
                     for i in range(0, len(histories), batch_size)])
    model.train(was_training)
    return out


def rank_metrics(scores: Tensor, targets: Tensor, candidates: Tensor, k: int = 10) -> dict[str, float]:
    """Recall@k and NDCG@k of one target per row, ranking only the ``candidates`` (I,) bool items.

    scores (U, I); ties count against the target (its rank is the number of candidates scoring >= it).
    """
    if scores.ndim != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(f"scores must be (U, I) and targets (U,), got {tuple(scores.shape)}, {tuple(targets.shape)}")
    if candidates.shape != scores.shape[1:] or candidates.dtype != torch.bool:
        raise ValueError(f"candidates must be a bool tensor of shape ({scores.shape[1]},)")
    if not bool(candidates[targets].all()):
        raise ValueError("every target must be among the candidates")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s = scores.masked_fill(~candidates, float("-inf"))
    t = s.gather(1, targets[:, None])  # (U, 1)
    rank = (s > t).sum(1) + (s == t).sum(1) - 1  # 0-based
    hit = rank < k
    ndcg = torch.where(hit, 1.0 / torch.log2(rank.float() + 2.0), torch.zeros_like(rank, dtype=torch.float))
    return {f"recall@{k}": hit.float().mean().item(), f"ndcg@{k}": ndcg.mean().item()}


SETTINGS = ("all", "warm", "cold")


def cases(data: RecData, setting: str, which: str = "test") -> tuple[Tensor, Tensor, Tensor]:
    """(histories (U, L), targets (U,), candidate items (n_items + 1,) bool) of one evaluation setting.

    ``all``: each user's last (``which="test"``) or second-to-last (``"valid"``) item, ranked among
    all items; ``warm``: those of them whose target is warm, ranked among the warm items;
    ``cold``: interactions with cold items (:attr:`RecData.cold_test` / ``cold_valid``), ranked among
    the cold items.
    """
    if which not in ("test", "valid"):
        raise ValueError(f"which must be 'test' or 'valid', got {which!r}")
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    if setting == "cold":
        hist, tgt = data.cold_test if which == "test" else data.cold_valid
        return hist, tgt, data.cold
    hist, tgt = data.test if which == "test" else data.valid
    if setting == "warm":
        w = data.warm[tgt]
        return hist[w], tgt[w], data.warm
    every = torch.ones(data.n_items + 1, dtype=torch.bool)
    every[PAD] = False
    return hist, tgt, every


def evaluate(model: SetRec, data: RecData, betas: dict[str, float], which: str = "test",
             k: int = 10) -> dict[str, dict[str, float]]:
    """Recall@k / NDCG@k per setting of ``betas`` (setting -> beta of eq. setrec-rank), see :func:`cases`."""
    out = {}
    for setting, beta in betas.items():
        hist, tgt, cand = cases(data, setting, which)
        out[setting] = rank_metrics(model.combine(token_scores_for(model, hist), beta), tgt, cand, k)
    return out


def select_beta(model: SetRec, data: RecData, setting: str = "all",
                betas: Sequence[float] = tuple(np.linspace(0.0, 1.0, 11)), k: int = 10) -> tuple[float, list[float]]:
    """The beta of eq. setrec-rank with the best *validation* Recall@k in ``setting`` (never the test set).

    Returns (best beta, validation recall per beta).
    """
    if len(betas) == 0:
        raise ValueError("betas must not be empty")
    hist, tgt, cand = cases(data, setting, "valid")
    s = token_scores_for(model, hist)
    recalls = [rank_metrics(model.combine(s, float(b)), tgt, cand, k)[f"recall@{k}"] for b in betas]
    return float(betas[int(np.argmax(recalls))]), recalls


# ---------------------------------------------------------------------------------------------
# the card's token-sequence baseline: a residual k-means semantic ID decoded level by level
# ---------------------------------------------------------------------------------------------
def residual_kmeans(x: Tensor, n_levels: int, n_codes: int, iters: int = 20,
                    generator: torch.Generator | None = None) -> Tensor:
    """Residual k-means codes (n, n_levels) of the rows of ``x`` (n, D), ``n_codes`` centroids per level.

    Level ``l`` clusters the residuals left by levels ``< l`` (Lloyd's algorithm, ``iters`` rounds,
    centroids initialised on random rows; an empty cluster keeps its centroid).
    """
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor (n, D), got {getattr(x, 'shape', x)!r}")
    if n_levels < 1 or not 1 <= n_codes <= x.shape[0] or iters < 1:
        raise ValueError(f"need n_levels >= 1, 1 <= n_codes <= n = {x.shape[0]}, iters >= 1; "
                         f"got {n_levels}, {n_codes}, {iters}")
    resid, codes = x.float().clone(), []
    for _ in range(n_levels):
        cent = resid[torch.randperm(len(resid), generator=generator)[:n_codes]].clone()  # (K, D)
        for _ in range(iters):
            assign = torch.cdist(resid, cent).argmin(1)
            sums = torch.zeros_like(cent).index_add_(0, assign, resid)
            counts = torch.bincount(assign, minlength=n_codes).float()[:, None]
            cent = torch.where(counts > 0, sums / counts.clamp_min(1), cent)
        assign = torch.cdist(resid, cent).argmin(1)
        codes.append(assign)
        resid = resid - cent[assign]
    return torch.stack(codes, 1)


def semantic_ids(x: Tensor, n_levels: int, n_codes: int, generator: torch.Generator | None = None) -> Tensor:
    """Residual k-means codes plus a last level that tells apart items with equal codes (as in TIGER).

    ``x`` (n, D) -> (n, n_levels + 1) long: unique rows; the last column counts the earlier items
    with the same ``n_levels`` codes (0 for most items).
    """
    codes = residual_kmeans(x, n_levels, n_codes, generator=generator)
    _, inverse = torch.unique(codes, dim=0, return_inverse=True)
    dedup = torch.zeros(len(codes), dtype=torch.long)
    seen: dict[int, int] = {}
    for i, g in enumerate(inverse.tolist()):
        dedup[i] = seen.get(g, 0)
        seen[g] = dedup[i].item() + 1
    return torch.cat([codes, dedup[:, None]], 1)


class TokenSeqRec(nn.Module):
    """Token-sequence generative recommender: history items as their semantic-ID tokens, the next
    item's ID generated one level at a time (a causal RoPE transformer of SETRec's size).

    ``codes`` (n_items + 1, n_levels): the semantic ID of every item (row 0, padding, is ignored).
    Token ids: level ``l``'s code ``c`` is ``offset[l] + c``; then BOS and PAD.
    """

    def __init__(self, codes: Tensor, d_model: int = 64, n_layers: int = 2, n_heads: int = 4) -> None:
        super().__init__()
        if codes.ndim != 2 or codes.is_floating_point() or int(codes.min()) < 0:
            raise ValueError(f"codes must be a non-negative integer tensor (n_items + 1, n_levels), got {tuple(codes.shape)}")
        self.register_buffer("codes", codes.long().clone())
        sizes = (codes[1:].max(0).values + 1).tolist()
        self.sizes = [int(s) for s in sizes]
        self.offsets = [int(o) for o in np.cumsum([0] + self.sizes[:-1])]
        self.bos, self.pad = sum(self.sizes), sum(self.sizes) + 1
        self.lm = TinyLM(TransformerConfig(vocab_size=self.pad + 1, d_model=d_model, n_layers=n_layers,
                                           n_heads=n_heads, pos="rope"))

    @property
    def n_levels(self) -> int:
        return len(self.sizes)

    def item_token_ids(self, ids: Tensor) -> Tensor:
        """Token ids of items ``ids`` (...,) -> (..., n_levels); padding items -> PAD tokens."""
        tok = self.codes[ids] + torch.tensor(self.offsets, device=ids.device)
        return torch.where((ids == PAD)[..., None], torch.full_like(tok, self.pad), tok)

    def _logits(self, history: Tensor, prefix: Tensor) -> Tensor:
        """Logits (B, 1 + P, V) after [history tokens, BOS, prefix tokens (B, P)]: the last 1 + P positions."""
        B, L = history.shape
        seq = torch.cat([self.item_token_ids(history).flatten(1), torch.full((B, 1), self.bos, device=history.device),
                         prefix], 1)
        return self.lm(seq, CausalMask())[:, L * self.n_levels:]  # PAD tokens are ordinary (learned) tokens here

    def loss(self, history: Tensor, target: Tensor) -> Tensor:
        """Mean cross-entropy of the target's ID tokens, each level over its own codes (teacher forcing)."""
        tgt = self.item_token_ids(target)  # (B, n_levels)
        logits = self._logits(history, tgt[:, :-1])  # (B, n_levels, V)
        return sum(F.cross_entropy(logits[:, l, o:o + s], tgt[:, l] - o)
                   for l, (o, s) in enumerate(zip(self.offsets, self.sizes))) / self.n_levels

    @torch.no_grad()
    def beam_search(self, history: Tensor, candidates: Tensor, beam: int = 20) -> tuple[Tensor, Tensor]:
        """Top-``beam`` items per history by log-probability, decoded level by level, constrained to
        ``candidates`` ((n_items + 1,) bool): items (B, beam) best first (-1 where fewer exist), scores (B, beam)."""
        if candidates.dtype != torch.bool or candidates.shape != (self.codes.shape[0],):
            raise ValueError(f"candidates must be a bool tensor of shape ({self.codes.shape[0]},)")
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        was_training = self.training
        self.eval()
        dev = history.device
        cand = candidates.clone()
        cand[PAD] = False
        items = cand.nonzero().flatten()
        C = self.codes[items]  # (I, n_levels)
        B = history.shape[0]
        prefix = torch.zeros(B, 1, 0, dtype=torch.long, device=dev)  # (B, beams, level)
        score = torch.zeros(B, 1, device=dev)
        seq = torch.cat([self.item_token_ids(history).flatten(1), torch.full((B, 1), self.bos, device=dev)], 1)
        logits, cache = self.lm.forward_cached(seq)  # the history once; beams reuse its cache
        logits = logits[:, -1:]  # (B * beams, 1, V), beams = 1 at the first level
        for l, (o, s) in enumerate(zip(self.offsets, self.sizes)):
            nb = prefix.shape[1]
            logp = logits[:, -1, o:o + s].log_softmax(-1).view(B, nb, s)
            # allowed[b, k, c]: some candidate item starts with prefix[b, k] followed by c
            match = (C[None, None, :, :l] == prefix[:, :, None, :]).all(-1)  # (B, nb, I)
            allowed = torch.zeros(B, nb, s, device=dev).scatter_add_(2, C[:, l].expand(B, nb, -1), match.float()) > 0
            total = (score[..., None] + logp).masked_fill(~allowed, float("-inf")).flatten(1)  # (B, nb * s)
            k = min(beam, total.shape[1])
            score, idx = total.topk(k, dim=1)
            parent = idx // s  # (B, k): the beam each new beam extends
            prefix = torch.cat([prefix.gather(1, parent[..., None].expand(-1, -1, l)), (idx % s)[..., None]], 2)
            if l + 1 < self.n_levels:  # feed the chosen code, continuing the parent beam's cache
                rows = (torch.arange(B, device=dev)[:, None] * nb + parent).flatten()  # (B * k,)
                cache = [(kk[rows], vv[rows]) for kk, vv in cache]
                logits, cache = self.lm.forward_cached((prefix[:, :, -1] + o).flatten()[:, None], cache)
        # map full IDs back to items (IDs are unique)
        hit = (C[None, None] == prefix[:, :, None]).all(-1)  # (B, beam, I)
        found = hit.any(-1) & torch.isfinite(score)
        out = torch.where(found, items[hit.float().argmax(-1)], torch.full_like(score, -1, dtype=torch.long))
        self.train(was_training)
        return out, score.masked_fill(~found, float("-inf"))


def beam_recall(model: TokenSeqRec, data: RecData, setting: str, which: str = "test", k: int = 10,
                beam: int = 20, batch_size: int = 256) -> dict[str, float]:
    """Recall@k / NDCG@k of :meth:`TokenSeqRec.beam_search` (constrained to the setting's candidates)."""
    if beam < k:
        raise ValueError(f"beam must be >= k, got beam={beam}, k={k}")
    hist, tgt, cand = cases(data, setting, which)
    hits, ndcg = [], []
    for i in range(0, len(hist), batch_size):
        top, _ = model.beam_search(hist[i:i + batch_size], cand, beam)
        pos = (top[:, :k] == tgt[i:i + batch_size, None])
        hits.append(pos.any(1).float())
        rank = pos.float().argmax(1).float()
        ndcg.append(torch.where(pos.any(1), 1.0 / torch.log2(rank + 2.0), torch.zeros_like(rank)))
    return {f"recall@{k}": torch.cat(hits).mean().item(), f"ndcg@{k}": torch.cat(ndcg).mean().item()}
