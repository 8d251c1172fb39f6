"""Frozen visual Unicode embeddings (Bochkov, 2025): an input-embedding table rendered from glyph
images, fixed before training, under an ordinary causal LM.

The table (chapter eq. ``fue-table``):

1. render every token's string with a fixed font into a ``size x size`` bitmap (:func:`render_glyphs`),
2. flatten, centre, project on the top ``dim`` principal axes and L2-normalise each row
   (:func:`pca_embedding`),
3. copy it into a :class:`~companion.nn.TinyLM` whose embedding does not train (:func:`build_lm`).

Around it: a frozen random control (:func:`random_embedding`), per-layer states and a linear probe
for the "semantics emerge above the embedding" claim (:func:`layer_states`, :func:`linear_probe`),
and the paper's evaluation pitfall on a 4-way multiple-choice set (:func:`mc_items`,
:func:`mc_scores`). The font is matplotlib's bundled DejaVu Sans, so nothing is downloaded.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..nn import TinyLM, TransformerConfig

Tensor = torch.Tensor
SPACE_GLYPH = "\u2423"  # OPEN BOX, the visible space
LETTERS = "ABCD"


def font_path() -> Path:
    """The TrueType file of DejaVu Sans that ships inside matplotlib (no download)."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not path.exists():
        raise FileNotFoundError(f"matplotlib's DejaVu Sans is missing at {path}")
    return path


def byte_token_strings() -> list[str]:
    """What to draw for each of the 256 byte tokens of the book's byte-level corpus tokenizer.

    Printable ASCII and Latin-1 bytes draw their character, the space draws ``"␣"``, and every
    other byte (control codes, 0x7F-0xA0, the soft hyphen) draws its two hex digits, the way the
    paper draws a multi-character token: side by side, squeezed into one cell.
    """
    out = []
    for b in range(256):
        ch = chr(b)  # the Latin-1 reading of the byte
        if b == 0x20:
            out.append(SPACE_GLYPH)
        elif ch.isprintable() and not ch.isspace() and b != 0xAD:
            out.append(ch)
        else:
            out.append(f"{b:02X}")
    return out


@lru_cache(maxsize=8)
def _font(pixels: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(font_path()), pixels)


def render_glyphs(strings: Sequence[str], size: int = 16, threshold: float | None = 0.5) -> Tensor:
    """Draw each string in a ``size x size`` cell: returns a (V, size, size) float tensor.

    Like a line of text: one font size for every token, a common baseline (the cell spans the
    font's ascent + descent), centred horizontally; a string wider than the cell is squeezed
    horizontally into it (the paper's multi-character tokens). Drawn at 4x and shrunk with a box
    filter; ``threshold`` binarises the grey levels (the paper stores bits), ``None`` keeps them in
    [0, 1]. Deterministic: the same strings always give the same tensor.
    """
    from PIL import Image, ImageDraw

    if isinstance(strings, str) or not all(isinstance(s, str) and s for s in strings):
        raise ValueError("strings must be a sequence of non-empty strings")
    if not isinstance(size, int) or size < 4:
        raise ValueError(f"size must be an int >= 4 pixels, got {size!r}")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be None or in (0, 1), got {threshold}")
    big = 4 * size
    font = _font(big)
    ascent, descent = font.getmetrics()
    out = np.zeros((len(strings), size, size), dtype=np.float32)
    for i, s in enumerate(strings):
        width = max(big, round(font.getlength(s)))
        line = Image.new("L", (width, ascent + descent), 0)
        ImageDraw.Draw(line).text((width / 2, ascent), s, font=font, fill=255, anchor="ms")  # middle, baseline
        cell = line.resize((size, size), Image.Resampling.BOX)
        out[i] = np.asarray(cell, dtype=np.float32) / 255.0
    glyphs = torch.from_numpy(out)  # (V, size, size)
    return glyphs if threshold is None else (glyphs >= threshold).float()


def pca_fit(images: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Mean bitmap and top ``dim`` principal axes of ``images`` (V, ...) flattened to (V, P).

    Returns ``(mean (P,), axes (dim, P))`` in float64. The axes are the right singular vectors of
    the centred matrix, each signed so that its largest-magnitude entry is positive (this makes
    them unique, and independent of the order of the pixels); axes beyond the rank are zero.
    """
    if not isinstance(images, torch.Tensor) or images.ndim < 2 or images.shape[0] < 2:
        raise ValueError(f"images must be a tensor (V >= 2, ...), got {getattr(images, 'shape', images)!r}")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    x = images.reshape(images.shape[0], -1).double()  # (V, P)
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)  # vh: (min(V, P), P)
    rank = int((s > s[0] * 1e-10).sum()) if s[0] > 0 else 0
    axes = vh[: min(dim, rank)]  # (k, P)
    axes = axes * axes.gather(1, axes.abs().argmax(1, keepdim=True)).sign()
    return mean, F.pad(axes, (0, 0, 0, dim - axes.shape[0]))  # (P,), (dim, P)


def pca_embedding(images: Tensor, dim: int) -> Tensor:
    """Frozen table from bitmaps (chapter eq. ``fue-table``): rows ``normalize((b - mean) U^T)``
    with ``(mean, U) = pca_fit(images, dim)``. A row whose projection is zero stays zero.
    Computed in float64, returned as float32 (V, dim)."""
    mean, axes = pca_fit(images, dim)
    x = images.reshape(images.shape[0], -1).double()  # (V, P)
    return F.normalize((x - mean) @ axes.T, dim=1).float()  # (V, dim)


def glyph_embedding(strings: Sequence[str], dim: int, size: int = 16) -> Tensor:
    """The frozen visual table for ``strings``: :func:`render_glyphs` then :func:`pca_embedding`, (V, dim)."""
    return pca_embedding(render_glyphs(strings, size), dim)


def collided_embedding(vocab_size: int, dim: int, n_distinct: int, seed: int = 0) -> Tensor:
    """A frozen table with only ``n_distinct`` different rows: token v gets row ``v % n_distinct`` of a
    :func:`random_embedding` (unit rows), so tokens that share a row are indistinguishable at the input.
    The control that a "frozen is no handicap" test must fail, (vocab_size, dim)."""
    if not 1 <= n_distinct <= vocab_size:
        raise ValueError(f"n_distinct must be in [1, vocab_size={vocab_size}], got {n_distinct}")
    return random_embedding(n_distinct, dim, seed)[torch.arange(vocab_size) % n_distinct]


def random_embedding(vocab_size: int, dim: int, seed: int = 0) -> Tensor:
    """The control: i.i.d. Gaussian rows, L2-normalised like the glyph table, (vocab_size, dim)."""
    if vocab_size < 1 or dim < 1:
        raise ValueError(f"vocab_size and dim must be >= 1, got {vocab_size}, {dim}")
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(vocab_size, dim, generator=g), dim=1)


def build_lm(cfg: TransformerConfig, table: Tensor | None = None, frozen: bool = True) -> TinyLM:
    """A :class:`TinyLM` whose input embedding is ``table``, frozen (``requires_grad=False``).

    ``table=None`` gives the trainable baseline (rows drawn at ``cfg.embed_std``); ``frozen=False``
    with a table gives a trainable embedding *initialised* from it (the ablation that differs from the
    frozen model only in whether the table trains). The output projection is always untied and
    trainable (the paper's setting; tying it to a frozen table would freeze the read-out too).
    """
    if not isinstance(frozen, bool):
        raise ValueError(f"frozen must be a bool, got {frozen!r}")
    if table is None and not frozen:
        raise ValueError("frozen=False needs a table to initialise the trainable embedding from")
    if cfg.tie_embeddings:
        raise ValueError("cfg.tie_embeddings must be False: a frozen input table needs its own output head")
    model = TinyLM(cfg)
    if table is not None:
        if table.shape != (cfg.vocab_size, cfg.d_model):
            raise ValueError(f"table must have shape (vocab_size, d_model) = {(cfg.vocab_size, cfg.d_model)}, "
                             f"got {tuple(table.shape)}")
        with torch.no_grad():
            model.embed.weight.copy_(table)
        model.embed.weight.requires_grad_(not frozen)
    return model


def unigram_entropy(stream: Tensor, vocab_size: int) -> float:
    """Entropy (nats/token) of the empirical token distribution of ``stream``: the loss of a
    model that ignores context, the card's reference point ``H_unigram``."""
    if not isinstance(stream, torch.Tensor) or stream.ndim != 1 or stream.numel() == 0:
        raise ValueError("stream must be a non-empty 1-D tensor of token ids")
    p = torch.bincount(stream, minlength=vocab_size).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def nearest_neighbours(table: Tensor, query: int, k: int = 5, among: Sequence[int] | None = None) -> list[int]:
    """The ``k`` rows of ``table`` (V, d) with the highest cosine similarity to row ``query``
    (itself excluded), optionally only among the ids ``among``."""
    if not 0 <= query < table.shape[0]:
        raise ValueError(f"query must be a row index in [0, {table.shape[0]}), got {query}")
    ids = torch.arange(table.shape[0]) if among is None else torch.as_tensor(list(among))
    ids = ids[ids != query]
    if not 1 <= k <= ids.numel():
        raise ValueError(f"k must be in [1, {ids.numel()}], got {k}")
    t = F.normalize(table.double(), dim=1)
    sims = t[ids] @ t[query]  # (n,)
    return ids[sims.argsort(descending=True, stable=True)[:k]].tolist()


# ---------------------------------------------------------------- what the layers know: probes


@torch.no_grad()
def layer_states(model: TinyLM, idx: Tensor) -> list[Tensor]:
    """The residual stream of ``model`` on ``idx`` (B, N): ``[embeddings, after block 1, ...,
    after block L]``, each (B, N, d_model), read with forward hooks on the model's own modules."""
    states: list[Tensor] = []
    hooks = [model.embed.register_forward_hook(lambda m, i, o: states.append(o.detach()))]
    hooks += [b.register_forward_hook(lambda m, i, o: states.append(o.detach())) for b in model.blocks]
    was_training = model.training
    model.eval()
    try:
        model(idx)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return states


@torch.no_grad()
def stream_states(model: TinyLM, stream: Tensor, window: int) -> list[Tensor]:
    """:func:`layer_states` of a long 1-D token ``stream`` (T,), read through windows of
    ``window`` tokens that overlap by half: every position after the first window sees at least
    ``window // 2`` earlier tokens. Returns ``L + 1`` tensors (T, d_model)."""
    if stream.ndim != 1 or stream.numel() < window or window < 2:
        raise ValueError(f"stream must be 1-D with at least window={window} >= 2 tokens, got {tuple(stream.shape)}")
    half, T = window // 2, stream.numel()
    starts = list(range(0, T - window + 1, half))
    if starts[-1] != T - window:
        starts.append(T - window)
    idx = torch.stack([stream[s: s + window] for s in starts])  # (W, window)
    states = layer_states(model, idx)  # each (W, window, d)
    out = [torch.empty(T, s.shape[-1]) for s in states]
    for w, s in enumerate(starts):  # each window fills what the previous one left (>= half of it)
        keep = 0 if w == 0 else starts[w - 1] + window - s
        for o, st in zip(out, states):
            o[s + keep: s + window] = st[w, keep:]
    return out


def word_end_offsets(text: str, words: Sequence[str]) -> list[int]:
    """Byte offset (in ``text.encode()``) of the last byte of each word, found left to right.

    ``words`` must occur in ``text`` in this order (as a tokenizer's output does); raises otherwise.
    """
    out, cursor = [], 0
    for w in words:
        at = text.find(w, cursor)
        if not w or at < 0:
            raise ValueError(f"word {w!r} not found in text after character {cursor}")
        cursor = at + len(w)
        out.append(len(text[:cursor].encode("utf-8")) - 1)
    return out


def linear_probe(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, n_classes: int,
                 weight_decay: float = 1e-3, steps: int = 100) -> float:
    """Test accuracy of a linear probe (chapter eq. ``fue-probe``): multinomial logistic regression
    on features standardised with the train set's statistics, L2 penalty ``weight_decay``,
    ``steps`` iterations of full-batch L-BFGS from zero (deterministic)."""
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"x_train, x_test must be (n, d) with the same d, got {tuple(x_train.shape)}, "
                         f"{tuple(x_test.shape)}")
    if y_train.shape != x_train.shape[:1] or y_test.shape != x_test.shape[:1]:
        raise ValueError("y_train, y_test must hold one label per row of x_train, x_test")
    if n_classes < 2 or int(y_train.max()) >= n_classes or int(y_test.max()) >= n_classes:
        raise ValueError(f"labels must lie in [0, n_classes={n_classes}), n_classes >= 2")
    mu, sd = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    xtr, xte = ((x_train - mu) / sd).double(), ((x_test - mu) / sd).double()
    w = torch.zeros(xtr.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, y_train) + weight_decay * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xte @ w + b).argmax(1) == y_test).double().mean())


# ---------------------------------------------------------------- multiple-choice scoring


class MCItem(NamedTuple):
    """A 4-way multiple-choice item as byte-token ids: a context, four continuations, the answer."""

    context: Tensor  # (n_ctx,)
    options: Tensor  # (4, n_opt)
    answer: int


def mc_items(stream: Tensor, n: int, context: int = 48, option: int = 12,
             generator: torch.Generator | None = None) -> list[MCItem]:
    """``n`` synthetic items from a text stream: "which of four continuations follows the context?"
    The correct option is the true next ``option`` tokens, the three others come from random
    places of the stream; the answer's slot is uniform over A-D."""
    if n < 1 or context < 1 or option < 1:
        raise ValueError(f"n, context and option must be >= 1, got {n}, {context}, {option}")
    if stream.ndim != 1 or stream.numel() < 4 * (context + option):
        raise ValueError("stream must be 1-D and much longer than context + option")
    g = generator or torch.Generator().manual_seed(0)
    span = stream.numel() - context - option
    items = []
    for _ in range(n):
        starts = torch.randint(0, span, (4,), generator=g).tolist()
        ctx = stream[starts[0]: starts[0] + context]
        opts = [stream[s + context: s + context + option] for s in starts]  # opts[0] is the true one
        answer = int(torch.randint(0, 4, (1,), generator=g))
        opts[0], opts[answer] = opts[answer], opts[0]
        items.append(MCItem(ctx, torch.stack(opts), answer))
    return items


def mc_prompt(item: MCItem) -> Tensor:
    """The item as the paper's benchmark shows it to the model: context, four lettered options
    and ``"Answer:"`` -- the model should continue with a letter. Returns byte-token ids (n,)."""
    def text(ids: Tensor) -> str:
        return bytes(ids.tolist()).decode("utf-8", errors="replace")

    prompt = "Text: " + text(item.context) + "\nWhich continuation follows?\n"
    prompt += "".join(f"{letter}) {text(o)}\n" for letter, o in zip(LETTERS, item.options)) + "Answer:"
    return torch.tensor(list(prompt.encode("utf-8")))


@torch.no_grad()
def mc_scores(model: TinyLM, items: Sequence[MCItem]) -> dict[str, float]:
    """Accuracy of three ways to score the same items (chance = 0.25):

    * ``first_token_greedy``: generate one token after the prompt, strip whitespace, compare it with
      the answer letter (the paper's benchmark code, with greedy instead of sampled decoding);
    * ``first_token_sampled``: the same with sampling, in expectation: the mean probability of the
      answer letter as the first token (exact, no sampling noise);
    * ``loglik``: pick the option with the highest log-likelihood as a continuation of the context.
    """
    if not items:
        raise ValueError("items must not be empty")
    letter_ids = [ord(L) for L in LETTERS]
    greedy = sampled = loglik = 0.0
    for it in items:
        probs = model(mc_prompt(it)[None])[0, -1].softmax(-1)  # (V,)
        top = int(probs.argmax())
        greedy += float(chr(top).strip() == LETTERS[it.answer])
        sampled += float(probs[letter_ids[it.answer]])
        seqs = torch.cat([it.context.expand(4, -1), it.options], 1)  # (4, n_ctx + n_opt)
        logp = model(seqs[:, :-1]).log_softmax(-1)  # (4, n - 1, V)
        n_ctx = it.context.numel()
        tok = logp[:, n_ctx - 1:].gather(2, it.options[..., None])[..., 0]  # (4, n_opt)
        loglik += float(int(tok.sum(1).argmax()) == it.answer)
    n = len(items)
    return {"first_token_greedy": greedy / n, "first_token_sampled": sampled / n, "loglik": loglik / n}


# ---------------------------------------------------------------- explorer


def neighbour_explorer(strings: Sequence[str], images: Tensor, spaces: dict[str, Tensor],
                       among: Sequence[int], k: int = 8, start: str = "a"):
    """Pick a token; see its glyph and its ``k`` nearest neighbours (cosine) in each space of
    ``spaces`` (name -> (V, d) table), among the token ids ``among``. Returns an ipywidgets box."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from ..widgets import redraw_on

    among = list(among)
    if images.shape[0] != len(strings) or any(t.shape[0] != len(strings) for t in spaces.values()):
        raise ValueError("images and every table in spaces must have one row per string")
    if not spaces or len(among) <= k:
        raise ValueError(f"need at least one space and more than k={k} ids in among")
    options = [(repr(strings[i]), i) for i in among]
    first = next((i for i in among if strings[i] == start), among[0])
    pick = W.Dropdown(options=options, value=first, description="token")

    def draw() -> None:
        q = pick.value
        fig, axes = plt.subplots(len(spaces), k + 1, figsize=(1.1 * (k + 1), 1.35 * len(spaces)), squeeze=False)
        for row, (name, table) in zip(axes, spaces.items()):
            t = F.normalize(table.double(), dim=1)
            ids = [q] + nearest_neighbours(table, q, k, among)
            for ax, i in zip(row, ids):
                ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_title(f"{strings[i]}" if i == q else f"{strings[i]} {float(t[i] @ t[q]):.2f}", fontsize=8)
            row[0].set_ylabel(name, fontsize=8)
        fig.suptitle(f"nearest neighbours of {strings[q]!r} (cosine similarity above each glyph)", fontsize=9)

    return redraw_on([pick], draw, vertical=True)
