"""Token Prepending (Fu et al., ACL 2025): training-free sentence embeddings from a causal LM.

A PromptEOL prompt ``This sentence : <PST> "X" means in one word:"`` is fed to a decoder-only LM;
the sentence embedding is the hidden state of the **last** token at some layer (the "early exit"
readout). Under the causal mask the tokens of ``X`` never see the end of the sentence. Token
Prepending (TP) places one extra token ``<PST>`` right before ``X`` and, before each decoder
layer ``l`` with ``start <= l < end``, overwrites its state with the current last-token state
(chapter eq. 1)::

    h~^(l)_t = h^(l)_T  if t = p (the PST slot)   else  h^(l)_t ,      h^(l+1) = Layer_l(h~^(l))

so every sentence token can attend to a summary of the whole sentence from layer ``start`` on.
Nothing is trained.

This module works with any Hugging Face Llama-style model (``model.model.layers``,
``model.get_input_embeddings()``). Prompts are built as input embeddings, so ``<PST>`` needs no
new vocabulary entry: its input vector is drawn from N(0, I) as in the official code
(``embedding_layer.weight[pst] = torch.randn(d)``). Prefix and body are tokenised separately in
every arm, so the vanilla prompt is exactly the TP prompt without the PST token.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

MODES = ("vanilla", "pst", "tp")
"""``vanilla``: PromptEOL without PST. ``pst``: the PST token is in the prompt but never
overwritten (ablation: the extra token alone). ``tp``: Token Prepending (the method)."""

PROMPT_PREFIX = "This sentence :"
PROMPT_BODY = ' "{text}" means in one word:"'


def clean_sentence(text: str) -> str:
    """The official preprocessing: end with punctuation, double quotes become single quotes."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    s = text.strip()
    if s and s[-1] not in ".?\"'":
        s += "."
    s = s.replace('"', "'")
    if s.endswith("?"):
        s = s[:-1] + "."
    return s


def layers_of(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Hugging Face causal LM (``model.model.layers``)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError("model must be a Hugging Face causal LM with model.model.layers (Llama-style)")
    return layers


@dataclass
class PromptBatch:
    """A left-padded batch of PromptEOL prompts as input embeddings."""

    inputs_embeds: Tensor  # (B, N, D)
    attention_mask: Tensor  # (B, N), 1 = real token
    position_ids: Tensor  # (B, N), 0.. from the first real token
    pst_index: Tensor  # (B,) column of the PST token (-1 when the prompt has none)


def build_batch(model: nn.Module, tokenizer, texts: Sequence[str], *, pst: Tensor | None,
                max_body_tokens: int | None = None) -> PromptBatch:
    """PromptEOL prompts for ``texts`` with (``pst`` = a (D,) vector) or without a PST token.

    Each prompt is ``[BOS] prefix [PST] body``; with left padding the last column is the last real
    token of every row. ``max_body_tokens`` truncates the sentence ``X`` (not the prompt's end).
    """
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty sequence of strings")
    emb = model.get_input_embeddings()
    d = emb.weight.shape[1]
    if pst is not None and (not isinstance(pst, Tensor) or pst.shape != (d,)):
        raise ValueError(f"pst must be None or a tensor of shape ({d},), got "
                         f"{tuple(pst.shape) if isinstance(pst, Tensor) else type(pst).__name__}")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prefix = bos + tokenizer(PROMPT_PREFIX, add_special_tokens=False)["input_ids"]
    tail = tokenizer('" means in one word:"', add_special_tokens=False)["input_ids"]
    rows: list[tuple[list[int], list[int]]] = []
    for t in texts:
        s = clean_sentence(t)
        body = tokenizer(PROMPT_BODY.format(text=s), add_special_tokens=False)["input_ids"]
        if max_body_tokens is not None and len(body) > max_body_tokens + len(tail):
            sent = tokenizer(' "' + s, add_special_tokens=False)["input_ids"][:max_body_tokens]
            body = sent + tail
        rows.append((prefix, body))
    n_pst = 0 if pst is None else 1
    lengths = [len(a) + n_pst + len(b) for a, b in rows]
    n = max(lengths)
    dev = emb.weight.device
    x = torch.zeros(len(rows), n, d, dtype=emb.weight.dtype, device=dev)  # (B, N, D)
    mask = torch.zeros(len(rows), n, dtype=torch.long, device=dev)
    pos = torch.zeros(len(rows), n, dtype=torch.long, device=dev)
    pst_index = torch.full((len(rows),), -1, dtype=torch.long)
    with torch.no_grad():
        for i, ((a, b), length) in enumerate(zip(rows, lengths)):
            off = n - length
            ea, eb = emb(torch.tensor(a, device=dev)), emb(torch.tensor(b, device=dev))  # (na, D), (nb, D)
            parts = [ea] + ([pst.to(ea)[None]] if pst is not None else []) + [eb]
            x[i, off:] = torch.cat(parts)
            mask[i, off:] = 1
            pos[i, off:] = torch.arange(length, device=dev)
            if pst is not None:
                pst_index[i] = off + len(a)
    return PromptBatch(x, mask, pos, pst_index)


@contextmanager
def token_prepending(model: nn.Module, pst_index: Tensor, start: int, end: int) -> Iterator[None]:
    """Within the ``with`` block, the inputs of decoder layers ``start <= l < end`` get their PST slot
    overwritten with the last-token state (eq. 1). ``pst_index`` (B,) gives the PST column per row.

    Implemented as forward pre-hooks; the layer input is cloned, never written in place.
    """
    layers = layers_of(model)
    if not (0 <= start < end <= len(layers)):
        raise ValueError(f"need 0 <= start < end <= {len(layers)} (number of layers), got start={start}, end={end}")
    if not isinstance(pst_index, Tensor) or pst_index.ndim != 1 or bool((pst_index < 0).any()):
        raise ValueError("pst_index must be a (B,) tensor of PST columns (>= 0): build the batch with pst=...")
    rows = torch.arange(len(pst_index))

    def hook(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]  # (B, N, D)
        if h.shape[0] != len(pst_index):
            raise ValueError(f"batch of {h.shape[0]} rows but pst_index has {len(pst_index)}")
        h = h.clone()
        h[rows, pst_index.to(h.device)] = h[:, -1].clone()  # PST slot <- current last-token state
        if args:
            return (h, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": h}

    handles = [layers[i].register_forward_pre_hook(hook, with_kwargs=True) for i in range(start, end)]
    try:
        yield
    finally:
        for hd in handles:
            hd.remove()


@torch.no_grad()
def hidden_states(model: nn.Module, batch: PromptBatch, *, mode: str = "vanilla", start: int = 1,
                  end: int = 7) -> Tensor:
    """All hidden states ``(L+1, B, N, D)`` of one batch: index 0 = input embeddings, index ``l`` =
    output of decoder layer ``l-1`` (the last one after the final norm, as in Hugging Face)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "vanilla" and bool((batch.pst_index < 0).any()):
        raise ValueError(f"mode {mode!r} needs a batch built with a PST vector")
    if mode == "vanilla" and bool((batch.pst_index >= 0).any()):
        raise ValueError("mode 'vanilla' needs a batch built with pst=None")
    kw = dict(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
              position_ids=batch.position_ids, output_hidden_states=True, use_cache=False)
    if mode == "tp":
        with token_prepending(model, batch.pst_index, start, end):
            out = model.model(**kw)
    else:
        out = model.model(**kw)
    return torch.stack(out.hidden_states)  # (L+1, B, N, D)


@torch.no_grad()
def embed(model: nn.Module, tokenizer, texts: Sequence[str], *, mode: str = "vanilla", start: int = 1,
          end: int = 7, pst: Tensor | None = None, batch_size: int = 16,
          max_body_tokens: int | None = None) -> Tensor:
    """Last-token embeddings of ``texts`` at every layer: ``(L+1, len(texts), D)`` (float32).

    ``mode`` is one of :data:`MODES`; ``pst`` is the (D,) input vector of the PST token (needed
    for ``pst`` and ``tp``). Texts are batched in order of length to keep padding small.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "vanilla" and pst is None:
        raise ValueError(f"mode {mode!r} needs pst, the (D,) input vector of the PST token")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[Tensor] = [None] * len(texts)  # type: ignore[list-item]
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        b = build_batch(model, tokenizer, [texts[i] for i in idx], pst=None if mode == "vanilla" else pst,
                        max_body_tokens=max_body_tokens)
        h = hidden_states(model, b, mode=mode, start=start, end=end)[:, :, -1].float()  # (L+1, B, D)
        for j, i in enumerate(idx):
            out[i] = h[:, j]
    return torch.stack(out, dim=1)  # (L+1, N, D)


def pair_spearman(emb: Tensor, gold: np.ndarray, pairs: np.ndarray) -> float:
    """Spearman correlation between cosine similarities of ``emb`` (N, D) and ``gold`` (N, N) over
    ``pairs`` (P, 2) of indices."""
    from scipy.stats import spearmanr

    if emb.ndim != 2:
        raise ValueError(f"emb must have shape (N, D), got {tuple(emb.shape)}")
    if gold.shape != (emb.shape[0], emb.shape[0]):
        raise ValueError(f"gold must have shape ({emb.shape[0]}, {emb.shape[0]}), got {gold.shape}")
    e = nn.functional.normalize(emb.double(), dim=-1)
    i, j = torch.as_tensor(pairs[:, 0]), torch.as_tensor(pairs[:, 1])
    cos = (e[i] * e[j]).sum(-1).numpy()
    return float(spearmanr(cos, gold[pairs[:, 0], pairs[:, 1]]).statistic)


def layer_spearman(embs: Tensor, gold: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """:func:`pair_spearman` at every layer of ``embs`` (L+1, N, D) -> (L+1,); layer 0 is NaN."""
    return np.array([np.nan] + [pair_spearman(embs[l], gold, pairs) for l in range(1, embs.shape[0])])


@torch.no_grad()
def state_change(model: nn.Module, tokenizer, text_a: str, text_b: str, *, mode: str, start: int = 1,
                 end: int = 7, pst: Tensor | None = None) -> tuple[Tensor, int]:
    """How much each token's hidden state moves when ``text_a`` becomes ``text_b`` (same token count).

    Returns ``(delta, first)``: ``delta`` (L+1, N) = max_d |h_a - h_b| per layer and position, and
    ``first``, the column of the first sentence token. Without TP the causal mask makes every column
    before the edit bit-identical; with TP the edited last word reaches them from layer ``start + 1``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    vec = None if mode == "vanilla" else pst
    if mode != "vanilla" and vec is None:
        raise ValueError(f"mode {mode!r} needs pst, the (D,) input vector of the PST token")
    ba = build_batch(model, tokenizer, [text_a], pst=vec)
    bb = build_batch(model, tokenizer, [text_b], pst=vec)
    if ba.inputs_embeds.shape != bb.inputs_embeds.shape:
        raise ValueError("text_a and text_b must have the same number of tokens (edit one word for one of equal length)")
    ha = hidden_states(model, ba, mode=mode, start=start, end=end)[:, 0]  # (L+1, N, D)
    hb = hidden_states(model, bb, mode=mode, start=start, end=end)[:, 0]
    bos = 1 if tokenizer.bos_token_id is not None else 0
    first = bos + len(tokenizer(PROMPT_PREFIX, add_special_tokens=False)["input_ids"]) + (0 if vec is None else 1)
    return (ha - hb).abs().amax(-1), first
