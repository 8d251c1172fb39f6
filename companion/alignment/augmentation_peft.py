"""Data augmentation for parameter-efficient tuning (Obadinma, Guo & Zhu, 2023).

The study: with few labels, does task-agnostic data augmentation (EDA) help *full fine-tuning*,
*deep prefix tuning* (P-tuning v2) and *LoRA* alike, or does it hurt the parameter-efficient
methods? And does a supervised contrastive loss on the sentence embeddings fix prefix tuning
on augmented data? The pieces:

* :func:`eda`: Easy Data Augmentation (Wei & Zou, 2019) -- synonym replacement, random
  insertion, random swap, random deletion -- with the book's English thesaurus as synonym source;
  :func:`negation_reviews`: the synthetic "hard" sentiment task (negation scope).
* :class:`LoRALinear` / :func:`add_lora`: ``W x + (alpha / r) B A x`` with ``B = 0`` at init;
  :class:`DeepPrefix`: trainable key/value prefixes for every adapted layer (P-tuning v2).
* :func:`bert_layer`: one BERT layer of a ``transformers`` ``BertModel``, recomputed from its own
  modules so that prefixes can be prepended to the keys and values (checked equal to the model).
* :class:`PeftClassifier`: the top ``n`` layers of the encoder (full fine-tuning, LoRA or prefix)
  and a linear head on the mean-pooled states; the frozen lower layers are run once
  (:func:`encode_frozen`).
* :func:`supcon_loss` (Khosla et al., 2020) and :func:`silhouette` (cosine distance).
* :func:`run_arm`: train one arm (method x augmentation x loss) and measure it.
"""

from __future__ import annotations

import copy
import math
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import mean_pool
from ..nn.attention import attention
from ..train import train

METHODS = ("ft", "lora", "prefix")
METHOD_NAMES = {"ft": "full fine-tuning", "lora": "LoRA", "prefix": "prefix tuning (P-tuning v2)"}

# EDA's stop words (the official code's list, shortened): never replaced by a synonym
STOP_WORDS = frozenset(
    "i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers "
    "herself it its itself they them their theirs themselves what which who whom this that these those am is "
    "are was were be been being have has had having do does did doing a an the and but if or because as until "
    "while of at by for with about against between into through during before after above below to from up "
    "down in out on off over under again further then once here there when where why how all any both each "
    "few more most other some such no nor not only own same so than too very s t can will just don should now "
    "'s n't".split())


# ------------------------------------------------------------------------------------------ EDA
@lru_cache(maxsize=1)
def synonym_table() -> dict[str, tuple[str, ...]]:
    """Word -> its single-word synonyms (all senses) from the book's English thesaurus
    (:func:`companion.data.thesaurus`), lower case letters only, the word itself removed."""
    from ..data import thesaurus

    out: dict[str, tuple[str, ...]] = {}
    for head, senses in thesaurus("en").items():
        syns = {s.lower() for sense in senses for s in sense.synonyms if re.fullmatch(r"[a-zA-Z]+", s)}
        syns.discard(head.lower())
        if syns:
            out[head.lower()] = tuple(sorted(syns))
    return out


def _synonyms(word: str, table: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    return () if word in STOP_WORDS else table.get(word, ())


def eda(text: str, alpha: float, rng: random.Random, op: str | None = None,
        table: dict[str, tuple[str, ...]] | None = None) -> str:
    """One EDA view of ``text`` (Wei & Zou, 2019; as in their ``eda.py``).

    ``op`` is one of ``"sr"`` (replace ``n`` non-stop words by a synonym), ``"ri"`` (insert a
    synonym of a random word at a random place, ``n`` times), ``"rs"`` (swap two words, ``n``
    times), ``"rd"`` (delete each word with probability ``alpha``), or None: one of the four at
    random, which is what the official code does for each augmented sentence. ``n =
    max(1, int(alpha * number of words))``; words are split on white space.
    """
    if not isinstance(text, str) or not text.split():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if op is None:
        op = rng.choice(("sr", "ri", "rs", "rd"))
    if op not in ("sr", "ri", "rs", "rd"):
        raise ValueError(f"op must be 'sr', 'ri', 'rs', 'rd' or None, got {op!r}")
    table = synonym_table() if table is None else table
    words = text.lower().split()
    n = max(1, int(alpha * len(words)))
    if op == "sr":
        candidates = [i for i, w in enumerate(words) if _synonyms(w, table)]
        rng.shuffle(candidates)
        for i in candidates[:n]:
            words[i] = rng.choice(_synonyms(words[i], table))
    elif op == "ri":
        for _ in range(n):
            with_syn = [w for w in words if _synonyms(w, table)]
            if not with_syn:
                break
            words.insert(rng.randrange(len(words) + 1), rng.choice(_synonyms(rng.choice(with_syn), table)))
    elif op == "rs":
        for _ in range(n if len(words) > 1 else 0):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
    else:  # rd
        kept = [w for w in words if rng.random() > alpha]
        words = kept if kept else [rng.choice(words)]
    return " ".join(words)


def augment(texts: Sequence[str], alpha: float, n_aug: int, seed: int) -> list[list[str]]:
    """``n_aug`` EDA views of every text: a list (one per text) of ``n_aug`` strings."""
    if n_aug < 1:
        raise ValueError(f"n_aug must be >= 1, got {n_aug}")
    rng = random.Random(seed)
    table = synonym_table()
    return [[eda(t, alpha, rng, table=table) for _ in range(n_aug)] for t in texts]


# ------------------------------------------------------------------------------- the grammar task
_TOPICS = ("the film", "the movie", "the plot", "the acting", "the script", "the story", "the cast",
           "the ending", "the music", "the dialogue", "the direction", "the soundtrack")
_POS = ("good", "great", "wonderful", "brilliant", "clever", "funny", "moving", "charming", "beautiful",
        "exciting", "enjoyable", "delightful", "superb", "fresh", "touching", "smart")
_NEG = ("bad", "awful", "boring", "dull", "terrible", "silly", "tedious", "weak", "stupid", "clumsy",
        "predictable", "bland", "painful", "flat", "lazy", "messy")
_INTENS = ("", "really", "very", "quite", "truly", "rather", "so", "pretty")
_OPEN = ("", "honestly ,", "i think", "frankly ,", "overall ,", "to be fair ,", "in the end ,", "sadly ,",
         "as expected ,", "for me ,")
_CLOSE = ("", "at all", "in any way", "this time", "for a sequel", "for its genre", "to most viewers",
          "by any measure", "from start to finish")
_NEGATORS = ("not", "never", "hardly")


def negation_reviews(n: int, seed: int, negation_rate: float = 0.3) -> tuple[list[str], list[int]]:
    """``n`` synthetic one-clause reviews with labels (1 = positive), balanced.

    ``[opener] <topic> was [intensifier] <adjective> [closer]`` (opener and closer each with
    probability 0.3) where the adjective carries the polarity; with probability ``negation_rate``
    a negator (``not``/``never``/``hardly``) before the intensifier flips it. The label needs the negation *scope*: deleting or moving one word
    (what EDA does) can flip the meaning.
    """
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    if not 0.0 <= negation_rate <= 1.0:
        raise ValueError(f"negation_rate must be in [0, 1], got {negation_rate}")
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        negated = rng.random() < negation_rate
        adj_positive = bool(label) != negated
        adj = rng.choice(_POS if adj_positive else _NEG)
        parts = [rng.choice(_OPEN) if rng.random() < 0.3 else "", rng.choice(_TOPICS),
                 rng.choice(("was", "is", "felt", "seemed")), rng.choice(_NEGATORS) if negated else "",
                 rng.choice(_INTENS), adj, rng.choice(_CLOSE) if rng.random() < 0.3 else ""]
        texts.append(" ".join(p for p in parts if p))
        labels.append(label)
    order = list(range(n))
    rng.shuffle(order)
    return [texts[i] for i in order], [labels[i] for i in order]


# --------------------------------------------------------------------------------- LoRA, prefixes
class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) · x Aᵀ Bᵀ`` with ``A ~ Kaiming-uniform`` and ``B = 0`` (Hu et al., 2021);
    the base layer is frozen, so at initialisation the output equals the base layer's exactly."""

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float = 8.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        if r < 1:
            raise ValueError(f"r must be >= 1, got {r}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(r, base.in_features))  # (r, d_in)
        self.B = nn.Parameter(torch.zeros(base.out_features, r))  # (d_out, r)
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = alpha / r

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * (x @ self.A.t()) @ self.B.t()


def add_lora(layer: nn.Module, r: int = 4, alpha: float = 8.0, targets: Sequence[str] = ("query", "value")) -> None:
    """Replace every ``nn.Linear`` child of ``layer`` (any depth) whose name is in ``targets``
    by a :class:`LoRALinear` around it, in place."""
    found = 0
    for module in list(layer.modules()):
        for name, child in list(module.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                setattr(module, name, LoRALinear(child, r, alpha))
                found += 1
    if not found:
        raise ValueError(f"targets {tuple(targets)} name no nn.Linear inside layer")


class DeepPrefix(nn.Module):
    """Trainable prefix keys and values for ``n_layers`` layers: (n_layers, 2, m, d).

    As in the official P-tuning v2 code (``PrefixEncoder`` without reparameterisation), one
    embedding table holds all of them, initialised N(0, 1).
    """

    def __init__(self, n_layers: int, m: int, d: int) -> None:
        super().__init__()
        if min(n_layers, m, d) < 1:
            raise ValueError(f"n_layers, m and d must be >= 1, got {n_layers}, {m}, {d}")
        self.kv = nn.Parameter(torch.randn(n_layers, 2, m, d))

    def forward(self, layer: int) -> tuple[Tensor, Tensor]:
        return self.kv[layer, 0], self.kv[layer, 1]  # (m, d) each


# ------------------------------------------------------------------------------ the BERT layer
def bert_layer(layer: nn.Module, h: Tensor, keep: Tensor, n_heads: int,
               prefix: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """One ``transformers`` ``BertLayer`` in eval mode, from its own modules: (B, N, d) -> (B, N, d).

    ``keep`` (B, N) bool marks real tokens. ``prefix`` = (keys, values), each (m, d), is prepended
    to every sequence's keys and values (deep prefix tuning): the queries of the real tokens see
    ``m + N`` keys, position ids are not shifted, the prefix is always visible.
    """
    if h.ndim != 3 or keep.shape != h.shape[:2] or keep.dtype != torch.bool:
        raise ValueError(f"h must be (B, N, d) and keep a bool (B, N); got {tuple(h.shape)}, "
                         f"{tuple(keep.shape)} {keep.dtype}")
    B, N, d = h.shape
    sa = layer.attention.self
    heads = lambda x: x.view(B, -1, n_heads, d // n_heads).transpose(1, 2)  # noqa: E731  (B, H, n, Dh)
    q, k, v = heads(sa.query(h)), heads(sa.key(h)), heads(sa.value(h))
    if prefix is not None:
        pk, pv = prefix
        m = pk.shape[0]
        k = torch.cat([heads(pk.expand(B, m, d)), k], dim=2)  # (B, H, m + N, Dh)
        v = torch.cat([heads(pv.expand(B, m, d)), v], dim=2)
        keep = torch.cat([keep.new_ones(B, m), keep], dim=1)
    mask = keep[:, None, :].expand(B, N, keep.shape[1])  # (B, Nq, Nk)
    a = attention(q, k, v, mask=mask).transpose(1, 2).reshape(B, N, d)
    h = layer.attention.output.LayerNorm(layer.attention.output.dense(a) + h)
    f = layer.output.dense(layer.intermediate.intermediate_act_fn(layer.intermediate.dense(h)))
    return layer.output.LayerNorm(f + h)


@torch.no_grad()
def encode_frozen(encoder: nn.Module, tokenizer, texts: Sequence[str], n_frozen: int, max_len: int = 40,
                  batch: int = 64) -> tuple[Tensor, Tensor]:
    """Hidden states after the embeddings and the first ``n_frozen`` layers (frozen for every arm).

    Returns ``h`` (n, max_len, d) and ``keep`` (n, max_len) bool (padded to ``max_len``).
    """
    n_layers = len(encoder.encoder.layer)
    if not 0 <= n_frozen <= n_layers:
        raise ValueError(f"n_frozen must be in [0, {n_layers}], got {n_frozen}")
    if not texts:
        raise ValueError("texts must be a non-empty sequence of strings")
    encoder.eval()
    hs, keeps = [], []
    for i in range(0, len(texts), batch):
        t = tokenizer(list(texts[i:i + batch]), padding="max_length", truncation=True, max_length=max_len,
                      return_tensors="pt")
        keep = t["attention_mask"].bool()
        h = encoder.embeddings(input_ids=t["input_ids"], token_type_ids=t["token_type_ids"])
        for layer in encoder.encoder.layer[:n_frozen]:
            h = bert_layer(layer, h, keep, encoder.config.num_attention_heads)
        hs.append(h)
        keeps.append(keep)
    return torch.cat(hs), torch.cat(keeps)


class PeftClassifier(nn.Module):
    """The encoder's top layers, adapted by ``method``, and a linear head on the mean-pooled states.

    ``method``: ``"ft"`` (all weights of the top layers trainable), ``"lora"`` (rank-``r`` LoRA on
    the query and value projections, the rest frozen) or ``"prefix"`` (``m`` prefix key/value
    vectors per top layer, the layers frozen). The head is trained in every arm.
    """

    def __init__(self, encoder: nn.Module, n_top: int, n_classes: int, method: str, *, r: int = 4,
                 lora_alpha: float = 8.0, m: int = 8) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        n_layers = len(encoder.encoder.layer)
        if not 1 <= n_top <= n_layers:
            raise ValueError(f"n_top must be in [1, {n_layers}], got {n_top}")
        self.method = method
        self.n_heads = encoder.config.num_attention_heads
        d = encoder.config.hidden_size
        self.layers = nn.ModuleList(copy.deepcopy(layer) for layer in encoder.encoder.layer[n_layers - n_top:])
        for p in self.layers.parameters():
            p.requires_grad_(method == "ft")
        if method == "lora":
            for layer in self.layers:
                add_lora(layer, r, lora_alpha)
        self.prefix = DeepPrefix(n_top, m, d) if method == "prefix" else None
        self.head = nn.Linear(d, n_classes)

    def embed(self, h: Tensor, keep: Tensor) -> Tensor:
        """Sentence embedding (B, d) of the frozen lower layers' states ``h`` (B, N, d)."""
        n = int(keep.sum(1).max())  # trim the padding shared by the whole batch
        h, keep = h[:, :n], keep[:, :n]
        for i, layer in enumerate(self.layers):
            h = bert_layer(layer, h, keep, self.n_heads, None if self.prefix is None else self.prefix(i))
        return mean_pool(h, keep)

    def forward(self, h: Tensor, keep: Tensor) -> Tensor:
        return self.head(self.embed(h, keep))  # (B, n_classes)

    def body_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters other than the head."""
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("head.")]


# ----------------------------------------------------------------------------- losses, metrics
def supcon_loss(z: Tensor, y: Tensor, tau: float = 0.1) -> Tensor:
    """Supervised contrastive loss (Khosla et al., 2020, the "out" form) of embeddings ``z`` (B, d)
    with labels ``y`` (B,): for each anchor, the mean over its positives (same label, not itself)
    of ``-log softmax`` over all other examples of ``z_i·z_p / tau``, ``z`` L2-normalised.
    Anchors without a positive are skipped."""
    if z.ndim != 2 or y.shape != z.shape[:1]:
        raise ValueError(f"z must be (B, d) and y (B,), got {tuple(z.shape)} and {tuple(y.shape)}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    z = F.normalize(z, dim=-1)
    sim = z @ z.t() / tau  # (B, B)
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logp = sim.masked_fill(eye, float("-inf")).log_softmax(dim=1).masked_fill(eye, 0.0)
    pos = (y[:, None] == y[None, :]) & ~eye
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not has.any():
        return z.sum() * 0.0
    per_anchor = -(logp * pos).sum(1)[has] / n_pos[has]
    return per_anchor.mean()


def silhouette(x: Tensor, y: Tensor) -> float:
    """Mean silhouette coefficient of points ``x`` (n, d) with labels ``y`` (n,), cosine distance
    (Rousseeuw, 1987): per point ``(b - a) / max(a, b)`` with ``a`` the mean distance to its own
    class (itself excluded) and ``b`` the smallest mean distance to another class."""
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"x must be (n, d) and y (n,), got {tuple(x.shape)} and {tuple(y.shape)}")
    classes = y.unique()
    if len(classes) < 2:
        raise ValueError("y must contain at least two classes")
    x = F.normalize(x.double(), dim=-1)
    dist = (1 - x @ x.t()).clamp_min(0)  # (n, n)
    mean_to = torch.stack([dist[:, y == c].sum(1) / (y == c).sum() for c in classes], 1)  # (n, C)
    own = (y[:, None] == classes[None, :])
    size = (y[:, None] == y[None, :]).sum(1).double()
    a = (mean_to[own] * size / (size - 1).clamp_min(1))  # exclude the point itself
    b = mean_to.masked_fill(own, float("inf")).min(1).values
    s = torch.where(size > 1, (b - a) / torch.maximum(a, b).clamp_min(1e-12), torch.zeros_like(a))
    return float(s.mean())


# ------------------------------------------------------------------------------ one arm, measured
@dataclass
class Split:
    """Frozen-layer states of one task: train originals, their EDA views, test and EDA'd test."""

    train_h: Tensor  # (n, N, d)
    train_keep: Tensor  # (n, N)
    train_y: Tensor  # (n,)
    aug_h: Tensor  # (n, n_aug, N, d): views of each training example
    aug_keep: Tensor  # (n, n_aug, N)
    test_h: Tensor
    test_keep: Tensor
    test_y: Tensor
    test_aug_h: Tensor  # one heavily altered view of every test example
    test_aug_keep: Tensor


@dataclass
class ArmResult:
    method: str
    augmentation: str  # "none" or "eda"
    scl: bool
    acc: float  # clean test accuracy
    acc_aug: float  # accuracy on the EDA'd test set
    silhouette_aug: float  # silhouette of the test embeddings of the EDA'd test set
    losses: list[float] = field(default_factory=list)


def embed_all(model: PeftClassifier, h: Tensor, keep: Tensor, batch: int = 64) -> Tensor:
    """Sentence embeddings (n, d) of many examples, batched by length (less padding), in input order."""
    order = keep.sum(1).argsort()
    z = torch.empty(len(h), model.head.in_features)
    with torch.no_grad():
        for i in range(0, len(h), batch):
            idx = order[i:i + batch]
            z[idx] = model.embed(h[idx], keep[idx])
    return z


def run_arm(encoder: nn.Module, split: Split, method: str, augmentation: str, *, n_top: int, lr: float,
            steps: int, batch: int, seed: int, head_lr: float | None = None, scl: bool = False, scl_weight: float = 0.5,
            tau: float = 0.1, m: int = 8, r: int = 4, progress: bool = False) -> ArmResult:
    """Train one arm on ``split`` and measure it.

    Batches: ``batch`` originals (``augmentation="none"``), or ``batch // 2`` originals each with
    one of its EDA views (``"eda"``): the same number of sequences per step and the same number
    of steps in every arm. ``scl`` adds ``scl_weight`` x :func:`supcon_loss` on the batch's
    sentence embeddings. ``lr`` is the learning rate of the adapted parameters and, unless
    ``head_lr`` is given, of the linear head too (one learning rate, as in the official P-tuning v2
    code); AdamW, warmup 10 %, cosine decay.
    """
    if augmentation not in ("none", "eda"):
        raise ValueError(f"augmentation must be 'none' or 'eda', got {augmentation!r}")
    if batch < 2 or (augmentation == "eda" and batch % 2):
        raise ValueError(f"batch must be >= 2 (and even with augmentation), got {batch}")
    torch.manual_seed(seed)
    n_classes = int(split.train_y.max()) + 1
    model = PeftClassifier(encoder, n_top, n_classes, method, m=m, r=r)
    opt = torch.optim.AdamW([{"params": model.body_parameters(), "lr_scale": 1.0},
                             {"params": model.head.parameters(), "lr_scale": (head_lr or lr) / lr}], lr=lr,
                            weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    n, n_aug = split.aug_h.shape[:2]

    def batch_fn(step: int) -> tuple[Tensor, Tensor, Tensor]:
        if augmentation == "none":
            idx = torch.randperm(n, generator=gen)[:batch]
            return split.train_h[idx], split.train_keep[idx], split.train_y[idx]
        idx = torch.randperm(n, generator=gen)[:batch // 2]
        view = torch.randint(n_aug, (len(idx),), generator=gen)
        h = torch.cat([split.train_h[idx], split.aug_h[idx, view]])
        keep = torch.cat([split.train_keep[idx], split.aug_keep[idx, view]])
        return h, keep, split.train_y[idx].repeat(2)

    def loss_fn(model: PeftClassifier, b: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        h, keep, y = b
        z = model.embed(h, keep)
        loss = F.cross_entropy(model.head(z), y)
        return loss + scl_weight * supcon_loss(z, y, tau) if scl else loss

    hist = train(model, loss_fn, batch_fn, steps=steps, lr=lr, optimizer=opt, warmup=max(1, steps // 10),
                 progress=progress, desc=f"{method}/{augmentation}{'+scl' if scl else ''}")
    model.eval()
    z, z_aug = embed_all(model, split.test_h, split.test_keep), embed_all(model, split.test_aug_h, split.test_aug_keep)
    with torch.no_grad():
        acc, acc_aug = [float((model.head(x).argmax(-1) == split.test_y).float().mean()) for x in (z, z_aug)]
    return ArmResult(method=method, augmentation=augmentation, scl=scl, acc=acc, acc_aug=acc_aug,
                     silhouette_aug=silhouette(z_aug, split.test_y), losses=hist.losses)


# ------------------------------------------------------------------------------ the experiment
@dataclass
class Task:
    """One task's frozen-layer states, computed once: every text, its EDA views, its label."""

    name: str
    texts: list[str]
    views: list[list[str]]  # (n, n_aug) EDA views of every text
    y: Tensor  # (n,)
    h: Tensor  # (n, N, d) states of the texts after the frozen layers
    keep: Tensor  # (n, N)
    view_h: Tensor  # (n, n_aug, N, d)
    view_keep: Tensor  # (n, n_aug, N)
    test_pool: Tensor | None = None  # indices that are never trained on (None: the complement of a draw)


def prepare_task(name: str, encoder: nn.Module, tokenizer, texts: Sequence[str], labels: Sequence[int], *,
                 n_frozen: int, alpha: float, n_aug: int, seed: int, max_len: int = 40,
                 test_pool: Sequence[int] | None = None) -> Task:
    """EDA views (``n_aug`` per text, rate ``alpha``) of every text, and the frozen-layer states of
    texts and views. Views of the test texts are the "heavily altered" held-out set."""
    if len(texts) != len(labels):
        raise ValueError(f"texts and labels must have the same length, got {len(texts)} and {len(labels)}")
    views = augment(texts, alpha, n_aug, seed)
    h, keep = encode_frozen(encoder, tokenizer, texts, n_frozen, max_len)
    vh, vkeep = encode_frozen(encoder, tokenizer, [v for vs in views for v in vs], n_frozen, max_len)
    n = len(texts)
    return Task(name, list(texts), views, torch.tensor(list(labels)), h, keep,
                vh.view(n, n_aug, *vh.shape[1:]), vkeep.view(n, n_aug, -1),
                None if test_pool is None else torch.tensor(list(test_pool)))


def draw_split(task: Task, n_per_class: int, seed: int, train_pool: Sequence[int] | None = None) -> Split:
    """``n_per_class`` training examples per class drawn with ``seed`` (from ``train_pool`` if given);
    the test set is ``task.test_pool`` or, without one, every text not drawn."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.arange(len(task.y)) if train_pool is None else torch.tensor(list(train_pool))
    train_idx = []
    for c in task.y.unique():
        members = pool[task.y[pool] == c]
        if len(members) < n_per_class:
            raise ValueError(f"n_per_class={n_per_class} but class {int(c)} has {len(members)} examples")
        train_idx.append(members[torch.randperm(len(members), generator=gen)[:n_per_class]])
    tr = torch.cat(train_idx)
    if task.test_pool is not None:
        te = task.test_pool
    else:
        mask = torch.ones(len(task.y), dtype=torch.bool)
        mask[tr] = False
        te = mask.nonzero().squeeze(1)
    return Split(task.h[tr], task.keep[tr], task.y[tr], task.view_h[tr], task.view_keep[tr],
                 task.h[te], task.keep[te], task.y[te], task.view_h[te, 0], task.view_keep[te, 0])


ARMS: tuple[tuple[str, str, bool], ...] = (  # (method, augmentation, supervised contrastive loss)
    ("ft", "none", False), ("ft", "eda", False), ("lora", "none", False), ("lora", "eda", False),
    ("prefix", "none", False), ("prefix", "eda", False), ("prefix", "eda", True))


def arm_name(method: str, augmentation: str, scl: bool) -> str:
    """A short label: ``"prefix + EDA + SCL"``."""
    short = {"ft": "FT", "lora": "LoRA", "prefix": "prefix"}[method]
    return short + ("" if augmentation == "none" else " + EDA") + (" + SCL" if scl else "")


def frozen_silhouette(encoder: nn.Module, split: Split, n_top: int) -> float:
    """Silhouette of the EDA'd test sentences under the encoder before any tuning (the reference)."""
    model = PeftClassifier(encoder, n_top, 2, "ft").eval()
    return silhouette(embed_all(model, split.test_aug_h, split.test_aug_keep), split.test_y)


def run_task(encoder: nn.Module, task: Task, *, seeds: Sequence[int], n_per_class: int, lrs: dict[str, float],
             n_top: int, steps: int, batch: int, arms: Sequence[tuple[str, str, bool]] = ARMS,
             train_pool: Sequence[int] | None = None, progress: bool = True, **kw) -> list[dict[str, object]]:
    """Every arm on every inner seed (a fresh draw of the labelled examples, the initialisation and
    the batches per seed; the arms of one seed share the draw and the initialisation). Returns one
    row per (seed, arm) and one ``arm="frozen encoder"`` row per seed (silhouette only)."""
    from tqdm.auto import tqdm

    missing = {a[0] for a in arms} - set(lrs)
    if missing:
        raise ValueError(f"lrs must give a learning rate for {sorted(missing)}")
    rows: list[dict[str, object]] = []
    bar = tqdm(total=len(seeds) * len(arms), desc=task.name, disable=not progress, mininterval=0.5)
    for seed in seeds:
        split = draw_split(task, n_per_class, seed, train_pool)
        rows.append({"task": task.name, "seed": seed, "arm": "frozen encoder", "method": "none",
                     "augmentation": "none", "scl": False, "acc": float("nan"), "acc_aug": float("nan"),
                     "silhouette_aug": frozen_silhouette(encoder, split, n_top)})
        for method, aug, scl in arms:
            r = run_arm(encoder, split, method, aug, scl=scl, n_top=n_top, lr=lrs[method], steps=steps,
                        batch=batch, seed=seed, **kw)
            rows.append({"task": task.name, "seed": seed, "arm": arm_name(method, aug, scl), "method": method,
                         "augmentation": aug, "scl": scl, "acc": r.acc, "acc_aug": r.acc_aug,
                         "silhouette_aug": r.silhouette_aug})
            bar.update()
    bar.close()
    return rows


def explorer(text: str = "the film was not very funny , sadly", n_views: int = 6):
    """Type a sentence, move EDA's rate and pick an operation: its EDA views, redrawn live."""
    import ipywidgets as W
    import matplotlib.pyplot as plt

    from ..widgets import redraw_on

    box = W.Text(value=text, description="sentence", layout=W.Layout(width="32em"))
    rate = W.FloatSlider(value=0.3, min=0.05, max=0.5, step=0.05, description="alpha")
    op = W.Dropdown(options=[("any (EDA)", None), ("synonym replacement", "sr"), ("random insertion", "ri"),
                             ("random swap", "rs"), ("random deletion", "rd")], description="operation")
    seed = W.IntSlider(value=0, min=0, max=20, description="seed")

    def draw() -> None:
        if not box.value.split():
            print("type a sentence")
            return
        rng = random.Random(seed.value)
        views = [eda(box.value, rate.value, rng, op=op.value) for _ in range(n_views)]
        fig, ax = plt.subplots(figsize=(8, 0.45 * (n_views + 1)))
        ax.axis("off")
        ax.set_title(f"EDA views at alpha = {rate.value:.2f}", fontsize=10)
        for i, v in enumerate([box.value.lower()] + views):
            ax.text(0, 1 - i / (n_views + 1), ("original:  " if i == 0 else f"view {i}:  ") + v,
                    fontsize=9, family="monospace", va="top", color="k" if i == 0 else "tab:blue")

    return redraw_on([box, rate, op, seed], draw)
