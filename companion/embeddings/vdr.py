"""VDR: a vocabulary-space (disentangled) bi-encoder for text and images (Zhou et al., ICLR 2024),
on the procedural two-object scenes of :mod:`companion.data.scenes` (captions from :mod:`.negclip`).

* :class:`VDRModel`: a 1-layer transformer text tower and a conv image tower whose patch features,
  like the text tokens, go through LayerNorm, then a product with the **tied word-embedding matrix**
  ``E`` (the text tower's input embeddings, ``<pad>`` dropped), then elu+1, then **max over tokens /
  patches**: each embedding is a positive vector with one dimension per word (the official
  ``VDREncoder.forward``). With ``head="dense"`` the same towers are mean-pooled and L2-normalised
  instead, with a learnable temperature: the dense CLIP-style control.
* :func:`bow`, :func:`topk_bow_mask`: the binary bag of words and the top-k OR bag-of-words mask;
* :func:`vdr_loss`: the symmetric InfoNCE (:func:`companion.embeddings.negclip.clip_loss`) on raw dot products (temperature 1)
  and VDR's 2-term loss (``semi: False`` in the official ``compute_vdr_loss``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.transformer import TinyEncoder, TransformerConfig
from .negclip import CAPTION_LEN, WORDS, _check_tokens, clip_loss

Tensor = torch.Tensor

VOCAB: tuple[str, ...] = WORDS[1:]  # the vocabulary space: every word but <pad> (the official code drops 999 ids)
V = len(VOCAB)
SHIFT = 1  # token id t is vocabulary dimension t - SHIFT


def elu1p(x: Tensor) -> Tensor:
    """ELU(x) + 1 > 0 everywhere (the official ``elu1p``)."""
    return F.elu(x) + 1


def bow(tokens: Tensor) -> Tensor:
    """Binary bag of words (N, V) of token ids (N, T) in the vocabulary space (``<pad>`` ignored)."""
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        raise ValueError(f"tokens must be an integer tensor of shape (N, T), got {getattr(tokens, 'shape', tokens)!r}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= len(WORDS)):
        raise ValueError(f"tokens must lie in [0, {len(WORDS)}), got [{int(tokens.min())}, {int(tokens.max())}]")
    counts = F.one_hot(tokens, len(WORDS)).amax(1)[:, SHIFT:]  # (N, V)
    return counts.float()


def word_query(words: list[list[str]]) -> Tensor:
    """The binary vocabulary vector (N, V) of lists of words: a bag-of-words query with no text encoder."""
    out = torch.zeros(len(words), V)
    for i, ws in enumerate(words):
        for w in ws:
            if w not in VOCAB:
                raise ValueError(f"words must come from VOCAB, got {w!r}")
            out[i, VOCAB.index(w)] = 1.0
    return out


def topk_bow_mask(z: Tensor, k: int, lexical: Tensor | None = None) -> Tensor:
    """``z`` (N, V) kept on its top-``k`` dimensions OR on the 1-entries of ``lexical`` (N, V); zero elsewhere."""
    if z.ndim != 2:
        raise ValueError(f"z must have shape (N, V), got {tuple(z.shape)}")
    if not 1 <= k <= z.shape[1]:
        raise ValueError(f"k must lie in [1, {z.shape[1]}], got {k}")
    if lexical is not None and lexical.shape != z.shape:
        raise ValueError(f"lexical must have the shape of z {tuple(z.shape)}, got {tuple(lexical.shape)}")
    keep = torch.zeros_like(z, dtype=torch.bool).scatter_(1, z.topk(k, dim=1).indices, True)
    if lexical is not None:
        keep |= lexical > 0
    return z * keep


class VDRModel(nn.Module):
    """Text tower + image tower with a vocabulary head (``head="vdr"``) or a dense head (``"dense"``).

    Text: token embeddings ``E`` (len(WORDS), dim) + learned positions + ``layers`` pre-LN
    transformer layers -> hidden states (N, 6, dim). Image: three 3x3 convolutions (the second with
    stride 2) and a 1x1 convolution to ``dim`` -> a grid of patch features (N, h*w, dim).
    VDR head, both towers: ``max_t elu1p(LN(h_t) @ E[1:].T)`` (N, V). Dense head: mean over
    tokens/patches, L2-normalised (N, dim), scored with a learnable logit scale (CLIP).
    """

    def __init__(self, head: str = "vdr", dim: int = 64, layers: int = 1, heads: int = 4, channels: int = 32) -> None:
        super().__init__()
        if head not in ("vdr", "dense"):
            raise ValueError(f"head must be 'vdr' or 'dense', got {head!r}")
        if dim < 1 or channels < 1:
            raise ValueError(f"dim and channels must be >= 1, got {dim}, {channels}")
        self.head = head
        cfg = TransformerConfig(vocab_size=len(WORDS), d_model=dim, n_layers=layers, n_heads=heads, pos="learned",
                                max_len=CAPTION_LEN, embed_std=0.02)
        self.text = TinyEncoder(cfg)
        self.image = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1), nn.GELU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.GELU(),
            nn.Conv2d(channels, dim, 1))
        self.ln_text, self.ln_image = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # used by the dense head only

    @property
    def E(self) -> Tensor:
        """The tied vocabulary matrix (V, dim): the text tower's input embeddings without ``<pad>``."""
        return self.text.embed.weight[SHIFT:]

    def text_states(self, tokens: Tensor) -> Tensor:
        _check_tokens(tokens)
        return self.text(tokens)  # (N, 6, dim)

    def image_states(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
        return self.image(images).flatten(2).transpose(1, 2)  # (N, h*w, dim)

    def vocab(self, states: Tensor, ln: nn.LayerNorm) -> Tensor:
        """The VDR read-out of states (N, T, dim): max over T of elu1p(LN(h) E^T) -> (N, V)."""
        return elu1p(ln(states) @ self.E.T).amax(dim=1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        h = self.text_states(tokens)
        return self.vocab(h, self.ln_text) if self.head == "vdr" else F.normalize(h.mean(1), dim=-1)

    def encode_image(self, images: Tensor) -> Tensor:
        h = self.image_states(images)
        return self.vocab(h, self.ln_image) if self.head == "vdr" else F.normalize(h.mean(1), dim=-1)

    def encode_query(self, tokens: Tensor, k: int = 4) -> Tensor:
        """The sparse text embedding VDR trains and retrieves with: top-``k`` OR bag-of-words (N, V).

        The dense head has no sparsification: its :meth:`encode_text` is returned unchanged.
        """
        z = self.encode_text(tokens)
        return topk_bow_mask(z, k, bow(tokens).to(z.device)) if self.head == "vdr" else z

    def image_vocab(self, images: Tensor) -> Tensor:
        """The vocabulary read-out of the image tower (N, V), whatever the head (for the dense control)."""
        return self.vocab(self.image_states(images), self.ln_image)

    def scale(self) -> Tensor:
        return self.logit_scale.clamp(max=math.log(100)).exp() if self.head == "dense" else torch.ones(())


def vdr_loss(z_txt: Tensor, z_img: Tensor, lexical: Tensor, k: int) -> Tensor:
    """VDR's loss, text as query: 1/2 [l(top-k-or-BoW(z_txt), z_img) + l(BoW_txt, z_img)] (temperature 1)."""
    return 0.5 * (clip_loss(topk_bow_mask(z_txt, k, lexical), z_img, 1.0) + clip_loss(lexical, z_img, 1.0))


def training_loss(model: VDRModel, batch: tuple[Tensor, Tensor], k: int = 4) -> Tensor:
    """Loss of one batch ``(images, captions)``: :func:`vdr_loss` for VDR, CLIP's InfoNCE for the dense head."""
    images, tokens = batch
    z_img, z_txt = model.encode_image(images), model.encode_text(tokens)
    if model.head == "dense":
        return clip_loss(z_txt, z_img, model.scale())
    return vdr_loss(z_txt, z_img, bow(tokens).to(z_txt.device), k)


def attribute_words(tokens: Tensor) -> Tensor:
    """The binary vocabulary vector (N, V) of the attribute words of captions (N, 6): two colours, two shapes.

    Both caption templates ("A left of B", "B right of A") give the same four words: positions 0, 1, 4, 5.
    """
    _check_tokens(tokens)
    return bow(tokens[:, [0, 1, 4, 5]])


def r_at_1(scores: Tensor) -> float:
    """Fraction of rows whose highest score is on the diagonal (a tie with the diagonal counts as a miss)."""
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be square (N, N), got {tuple(scores.shape)}")
    diag = scores.diagonal()[:, None]
    return float(((scores >= diag).sum(1) == 1).float().mean())


def top_words_hit(z: Tensor, truth: Tensor) -> Tensor:
    """Per row of ``z`` (N, V): are its top-m dimensions exactly the m words of ``truth`` (N, V, binary)?

    ``m`` is the number of words per row of ``truth`` (4 here: two colours, two shapes). Returns (N,) bool.
    """
    if z.shape != truth.shape or z.ndim != 2:
        raise ValueError(f"z and truth must both have shape (N, V), got {tuple(z.shape)} and {tuple(truth.shape)}")
    m = int(truth[0].sum())
    if m < 1 or not bool((truth.sum(1) == m).all()):
        raise ValueError("every row of truth must hold the same number (>= 1) of words")
    top = torch.zeros_like(truth, dtype=torch.bool).scatter_(1, z.topk(m, dim=1).indices, True)
    return (top == (truth > 0)).all(1)
