"""Vision-language models as bags of words, and NegCLIP's composition-aware hard negatives
(Yuksekgonul et al., ICLR 2023), on procedural two-object scenes.

* captions over a closed word list: "red circle left of blue square" or, for the same scene,
  "blue square right of red circle"; :func:`relation_swap` and :func:`attribute_swap` build the
  ARO-style false captions (objects swapped; colours swapped);
* :class:`TinyCLIP`: a small conv image tower (flattened, so left and right stay apart) and a
  1-layer transformer text tower, or a literal bag-of-words text tower (``text="bow"``);
* :func:`clip_loss`: symmetric InfoNCE; with ``neg_txt`` the swapped captions are extra columns
  of the image->text logits only (Eq. 1 of the chapter; the NegCLIP training code);
* :func:`tie_aware_top1`: top-1 accuracy that splits credit over tied scores, so a model that
  cannot tell two captions apart scores exactly 1/k (ARO's ``np.argmax`` takes the first index).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.scenes import COLORS, SHAPES, TwoObjectScenes, mirrored, two_object_scenes
from ..nn.transformer import TinyEncoder, TransformerConfig

Tensor = torch.Tensor

WORDS: tuple[str, ...] = ("<pad>",) + tuple(COLORS) + tuple(SHAPES) + ("left", "right", "of")
WORD_ID = {w: i for i, w in enumerate(WORDS)}
CAPTION_LEN = 6  # colour shape relation "of" colour shape
_C0 = 1  # id of the first colour word
_S0 = 1 + len(COLORS)  # id of the first shape word


def _check_tokens(tokens: Tensor, name: str = "tokens") -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.shape[1] != CAPTION_LEN \
            or tokens.is_floating_point():
        raise ValueError(f"{name} must be an integer tensor of shape (N, {CAPTION_LEN}), "
                         f"got {getattr(tokens, 'shape', tokens)!r}")


def captions(scenes: TwoObjectScenes, generator: torch.Generator | None = None, form: str = "random") -> Tensor:
    """Token ids (N, 6) of one true caption per scene.

    ``form="left"``: "A left of B" (A = the left object); ``"right"``: "B right of A"; ``"random"``:
    either, with probability 1/2 each (both describe the same scene).
    """
    if form not in ("left", "right", "random"):
        raise ValueError(f"form must be 'left', 'right' or 'random', got {form!r}")
    n = len(scenes)
    c, s = scenes.colors + _C0, scenes.shapes + _S0  # (N, 2) word ids
    left_form = torch.stack([c[:, 0], s[:, 0], torch.full((n,), WORD_ID["left"]), torch.full((n,), WORD_ID["of"]),
                             c[:, 1], s[:, 1]], dim=1)
    right_form = torch.stack([c[:, 1], s[:, 1], torch.full((n,), WORD_ID["right"]), torch.full((n,), WORD_ID["of"]),
                              c[:, 0], s[:, 0]], dim=1)
    if form == "left":
        return left_form
    if form == "right":
        return right_form
    pick = torch.rand(n, generator=generator) < 0.5
    return torch.where(pick[:, None], left_form, right_form)


def relation_swap(tokens: Tensor) -> Tensor:
    """Swap the two noun phrases: "red circle left of blue square" -> "blue square left of red circle"."""
    _check_tokens(tokens)
    return tokens[:, [4, 5, 2, 3, 0, 1]]


def attribute_swap(tokens: Tensor) -> Tensor:
    """Swap the two colours: "red circle left of blue square" -> "blue circle left of red square"."""
    _check_tokens(tokens)
    return tokens[:, [4, 1, 2, 3, 0, 5]]


def scene_key(tokens: Tensor) -> Tensor:
    """The scene a caption describes, as one integer per caption: (left object, right object).

    Both templates of one scene give the same key; a swapped caption gives a different key.
    """
    _check_tokens(tokens)
    is_left = tokens[:, 2] == WORD_ID["left"]
    first, second = tokens[:, 0:2], tokens[:, 4:6]  # (N, 2) each: colour id, shape id
    left_obj = torch.where(is_left[:, None], first, second)
    right_obj = torch.where(is_left[:, None], second, first)
    v = len(WORDS)
    return ((left_obj[:, 0] * v + left_obj[:, 1]) * v + right_obj[:, 0]) * v + right_obj[:, 1]


def scene_keys(scenes: TwoObjectScenes) -> Tensor:
    """:func:`scene_key` of the scenes themselves (equal to the key of any true caption)."""
    return scene_key(captions(scenes, form="left"))


def decode(tokens: Tensor) -> list[str]:
    """Token ids (N, 6) -> caption strings."""
    _check_tokens(tokens)
    return [" ".join(WORDS[int(t)] for t in row) for row in tokens]


# ------------------------------------------------------------------------------------- the towers
class ImageTower(nn.Module):
    """Three 3x3 convolutions (the second with stride 2), then **flatten** and a 2-layer MLP to ``dim``.

    No global average pooling: pooling over positions would make "A left of B" and "B left of A"
    the same image to the model. The MLP sees the whole canvas, so it *can* compare positions.
    """

    def __init__(self, dim: int = 64, height: int = 8, width: int = 24, channels: int = 16, hidden: int = 128) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1), nn.GELU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * channels, 2 * channels, 3, padding=1), nn.GELU())
        self.shape = (3, height, width)
        flat = 2 * channels * ((height + 1) // 2) * ((width + 1) // 2)
        self.proj = nn.Sequential(nn.Linear(flat, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or tuple(images.shape[1:]) != self.shape:
            raise ValueError(f"images must have shape (N, {', '.join(map(str, self.shape))}), got {tuple(images.shape)}")
        return self.proj(self.convs(images).flatten(1))  # (N, dim)


class TextTower(nn.Module):
    """Token embeddings + learned positions + one pre-LN transformer layer, mean-pooled, then linear."""

    def __init__(self, dim: int = 64, layers: int = 1, heads: int = 4) -> None:
        super().__init__()
        cfg = TransformerConfig(vocab_size=len(WORDS), d_model=dim, n_layers=layers, n_heads=heads, pos="learned",
                                max_len=CAPTION_LEN, embed_std=0.02)
        self.encoder = TinyEncoder(cfg)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        _check_tokens(tokens)
        return self.proj(self.encoder(tokens).mean(dim=1))  # (N, dim)


class BagOfWordsTower(nn.Module):
    """A literal bag of words: the mean of the caption's word embeddings, then linear.

    Computed as ``counts @ E / length`` so that any reordering of a caption gives bit-identical
    output (summing embeddings in another order would change the rounding).
    """

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.randn(len(WORDS), dim) * 0.02)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        _check_tokens(tokens)
        counts = F.one_hot(tokens, len(WORDS)).sum(1).to(self.embed.dtype)  # (N, V): order is gone here
        return self.proj(counts @ self.embed / CAPTION_LEN)  # (N, dim)


class TinyCLIP(nn.Module):
    """Image tower + text tower (``"transformer"`` or ``"bow"``) + a learnable logit scale.

    ``encode_image``/``encode_text`` return L2-normalised embeddings; the score of an image and a
    caption is their cosine. The logit scale starts at ln(1/0.07) and is clamped to ln(100) (CLIP).
    """

    def __init__(self, dim: int = 64, text: str = "transformer", height: int = 8, width: int = 24,
                 channels: int = 16) -> None:
        super().__init__()
        if text not in ("transformer", "bow"):
            raise ValueError(f"text must be 'transformer' or 'bow', got {text!r}")
        self.image = ImageTower(dim, height, width, channels)
        self.text = TextTower(dim) if text == "transformer" else BagOfWordsTower(dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images: Tensor) -> Tensor:
        return F.normalize(self.image(images), dim=-1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.text(tokens), dim=-1)

    def scale(self) -> Tensor:
        return self.logit_scale.clamp(max=math.log(100)).exp()


# ------------------------------------------------------------------------------------- the losses
def clip_loss(img: Tensor, txt: Tensor, scale: Tensor | float, neg_txt: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE over a batch of B matched pairs (Eq. 1); NegCLIP when ``neg_txt`` is given.

    ``img``, ``txt``: (B, d) normalised embeddings, row i of each a matched pair. ``neg_txt``: (B, d)
    embeddings of hard-negative captions; they are appended as B extra columns of the
    image->text logits (B x 2B) and never enter the text->image direction.
    """
    if img.ndim != 2 or img.shape != txt.shape:
        raise ValueError(f"img and txt must both have shape (B, d), got {tuple(img.shape)} and {tuple(txt.shape)}")
    if neg_txt is not None and neg_txt.shape != txt.shape:
        raise ValueError(f"neg_txt must have the shape of txt {tuple(txt.shape)}, got {tuple(neg_txt.shape)}")
    labels = torch.arange(img.shape[0], device=img.device)
    columns = txt if neg_txt is None else torch.cat([txt, neg_txt])  # (B or 2B, d)
    logits_i2t = scale * img @ columns.T  # (B, B) or (B, 2B)
    logits_t2i = scale * txt @ img.T  # (B, B): only the true captions
    return 0.5 * (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels))


def training_loss(model: TinyCLIP, batch: tuple[Tensor, Tensor, Tensor | None]) -> Tensor:
    """Loss of one batch ``(images, captions, negative captions or None)`` for :func:`companion.train.train`."""
    images, tokens, negatives = batch
    img, txt = model.encode_image(images), model.encode_text(tokens)
    neg = None if negatives is None else model.encode_text(negatives)
    return clip_loss(img, txt, model.scale(), neg)


def hard_negatives(tokens: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One composition-aware negative per caption: a relation swap or an attribute swap (1/2 each)."""
    _check_tokens(tokens)
    pick = torch.rand(tokens.shape[0], generator=generator) < 0.5
    return torch.where(pick[:, None], relation_swap(tokens), attribute_swap(tokens))


BATCHES = ("bag-free", "iid", "mirror-pairs")


def word_bag_key(scenes: TwoObjectScenes) -> Tensor:
    """One integer per scene naming the *bag of words* of its captions: its two colours and two shapes,
    unordered. A scene, its mirror and its attribute swap all share it."""
    c, s = scenes.colors.sort(1).values, scenes.shapes.sort(1).values  # (N, 2) each
    return ((c[:, 0] * len(COLORS) + c[:, 1]) * len(SHAPES) + s[:, 0]) * len(SHAPES) + s[:, 1]


def training_batch(batch: int, generator: torch.Generator, *, batches: str = "bag-free", negatives: bool = False,
                   **scene_kw) -> tuple[Tensor, Tensor, Tensor | None]:
    """One training batch ``(images, captions, hard-negative captions or None)``.

    ``batches`` decides whether two captions of the batch can have the same bag of words -- the only
    in-batch negatives that a bag-of-words model cannot reject:

    * ``"bag-free"``: no two scenes share their bag of words (order and binding are never needed);
    * ``"iid"``: independent scenes (same-bag pairs turn up by chance);
    * ``"mirror-pairs"``: ``batch/2`` scenes and their mirror images (the same two objects exchanged):
      hard-negative *images*, the paper's other ingredient.
    """
    if batches not in BATCHES:
        raise ValueError(f"batches must be one of {BATCHES}, got {batches!r}")
    if batch < 2 or (batches == "mirror-pairs" and batch % 2):
        raise ValueError(f"batch must be >= 2 (and even for batches='mirror-pairs'), got {batch}")
    if batches == "mirror-pairs":
        half = two_object_scenes(batch // 2, generator, **scene_kw)
        other = mirrored(half, generator, noise=scene_kw.get("noise", 0.05))
        scenes = TwoObjectScenes(torch.cat([half.images, other.images]), torch.cat([half.colors, other.colors]),
                                 torch.cat([half.shapes, other.shapes]))
    else:
        draw = two_object_scenes(3 * batch if batches == "bag-free" else batch, generator, **scene_kw)
        keep = torch.arange(batch)
        if batches == "bag-free":  # keep the first scene of every bag of words
            key = word_bag_key(draw)
            first = (key[:, None] == key[None, :]).long().argmax(1) == torch.arange(len(key))  # (3B,)
            keep = first.nonzero().flatten()[:batch]
            if len(keep) < batch:
                raise RuntimeError("too few distinct bags of words for this batch size: enlarge the palette")
        scenes = TwoObjectScenes(draw.images[keep], draw.colors[keep], draw.shapes[keep])
    tokens = captions(scenes, generator)
    return scenes.images, tokens, hard_negatives(tokens, generator) if negatives else None


# ------------------------------------------------------------------------------------- evaluation
def tie_aware_top1(scores: Tensor, correct: Tensor) -> Tensor:
    """Mean top-1 accuracy where a row's credit is split evenly over the options tied at its maximum.

    ``scores``: (N, k) float; ``correct``: (N, k) bool, which options count as right. A model that
    gives all k options the same score gets (number right)/k for that row, whatever their order.
    """
    if scores.ndim != 2 or correct.shape != scores.shape or correct.dtype != torch.bool:
        raise ValueError(f"scores must be (N, k) and correct a bool tensor of the same shape, "
                         f"got {tuple(scores.shape)} and {tuple(correct.shape)} {correct.dtype}")
    top = scores == scores.max(dim=1, keepdim=True).values  # (N, k) the tied maxima
    return ((top & correct).sum(1).float() / top.sum(1).float()).mean()


@torch.no_grad()
def swap_accuracy(model: TinyCLIP, images: Tensor, true_tokens: Tensor, false_tokens: Tensor) -> float:
    """ARO accuracy: how often s(image, true caption) > s(image, false caption); ties count 1/2."""
    img = model.encode_image(images)
    s_true = (img * model.encode_text(true_tokens)).sum(-1)
    s_false = (img * model.encode_text(false_tokens)).sum(-1)
    scores = torch.stack([s_false, s_true], dim=1)  # ARO's order: the false caption first
    correct = torch.tensor([[False, True]]).expand_as(scores)
    return float(tie_aware_top1(scores, correct))


@torch.no_grad()
def retrieval_r1(model: TinyCLIP, images: Tensor, tokens: Tensor, keys: Tensor) -> dict[str, float]:
    """Image->text and text->image R@1 within a pool of N pairs (tie-aware).

    A retrieved item counts as right if it shows / describes the same scene (``keys``, from
    :func:`scene_keys`): a pool can hold the same scene twice.
    """
    img, txt = model.encode_image(images), model.encode_text(tokens)
    s = img @ txt.T  # (N, N)
    same = keys[:, None] == keys[None, :]
    return {"i2t": float(tie_aware_top1(s, same)), "t2i": float(tie_aware_top1(s.T, same.T))}
