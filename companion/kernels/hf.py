"""``attn_implementation="companion"``: the book's attention kernel inside Hugging Face models.

:func:`register` adds :func:`companion_attention_forward` to transformers' attention-function
registry (``AttentionInterface``) and its boolean-mask builder to the mask registry, so any
model whose attention goes through the registry (Llama, SmolLM2, Qwen2, Mistral, ...) runs on
:func:`companion.kernels.attention`::

    import companion.kernels.hf                 # registers "companion" (dispatch "auto")
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="companion")
    logits = model(ids).logits                  # causal, padding masks as usual
    logits = model(ids, companion_mask=CausalMask() & SetMask(set_ids), position_ids=pos).logits

``companion_mask`` (any :class:`~companion.nn.masks.Mask`) replaces the mask transformers would
build, in every layer; ``companion_impl`` picks ``"auto" | "triton" | "torch"`` for one call.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..nn.masks import CausalMask, Mask, tensor_state
from .attention import IMPLS, attention

Tensor = torch.Tensor
NAME = "companion"
_CAUSAL = CausalMask()  # one object, so its block plan is computed once for all layers and calls
_SETTINGS = {"impl": "auto"}
_LAST_MASK: list = [None, None, None]  # [weakref to HF's 4-D mask, its version, its (B, Nq, Nk) view]


def _bool_mask(attention_mask: Tensor) -> Tensor:
    """HF's 4-D mask ``(B, 1, Nq, Nk)`` (bool, or additive 0 / -inf) -> bool ``(B, Nq, Nk)``.

    Cached for the last mask seen (one per forward, shared by every layer), keyed by the tensor's
    identity and in-place version, so a mask changed in place is converted again.
    """
    ref, version, view = _LAST_MASK
    state = tensor_state(attention_mask)
    if ref is not None and ref() is attention_mask and state is not None and state[1] == version:
        return view
    if attention_mask.ndim != 4 or attention_mask.shape[1] != 1:
        raise ValueError(f"attention_mask must have shape (B, 1, Nq, Nk), got {tuple(attention_mask.shape)}")
    m = attention_mask[:, 0]
    if m.dtype != torch.bool:
        keep = m == 0
        hidden = m <= torch.finfo(m.dtype).min / 2
        if not bool((keep | hidden).all()):
            raise ValueError("attention_mask must be boolean or additive with values 0 / -inf; "
                             "the companion kernel does not add arbitrary biases")
        m = keep
    _LAST_MASK[:] = [weakref.ref(attention_mask), None if state is None else state[1], m]
    return m


def companion_attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                                attention_mask: Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                                companion_mask: Mask | None = None, companion_impl: str | None = None,
                                **kwargs) -> tuple[Tensor, None]:
    """The registry signature: q ``(B, H, Nq, D)``, k/v ``(B, Hkv, Nk, D)`` -> ``((B, Nq, H, D), None)``."""
    if dropout and module.training:
        raise ValueError(f"dropout must be 0 for the companion kernel (got {dropout}); call model.eval()")
    for name in ("softcap", "s_aux"):
        if kwargs.get(name) is not None:
            raise ValueError(f"{name} is not supported by attn_implementation='companion'")
    impl = companion_impl or _SETTINGS["impl"]
    if impl not in IMPLS:
        raise ValueError(f"companion_impl must be one of {IMPLS}, got {impl!r}")
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    mask: Mask | Tensor | None
    if companion_mask is not None:
        if not isinstance(companion_mask, Mask):
            raise ValueError(f"companion_mask must be a companion.nn.masks.Mask, got {type(companion_mask).__name__}")
        mask = companion_mask
    elif attention_mask is not None:
        mask = _bool_mask(attention_mask)
    elif is_causal and query.shape[2] > 1:
        # No mask with Nq > 1 is transformers' contract for sdpa's is_causal=True, which is aligned
        # top-left: its mask builder skips the mask only when Nq == Nk or the cache was empty
        # (q_offset == 0, a static cache's unused tail); a step against a filled cache always
        # gets a mask. So the queries are the first Nq positions and the keys past them are unused.
        if key.shape[2] > query.shape[2]:
            key, value = key[:, :, :query.shape[2]], value[:, :, :query.shape[2]]
        mask = _CAUSAL
    else:
        mask = None  # one query against its cache, or a bidirectional model: everything is visible
    out = attention(query, key, value, mask=mask, scale=scaling, impl=impl)  # (B, H, Nq, D)
    return out.transpose(1, 2).contiguous(), None


def register(impl: str = "auto") -> str:
    """Register ``attn_implementation="companion"`` (idempotent); ``impl`` is the default dispatch."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    _SETTINGS["impl"] = impl
    AttentionInterface.register(NAME, companion_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # boolean (B, 1, Nq, Nk) masks, None for plain causal
    return NAME


__all__ = ["NAME", "companion_attention_forward", "register"]

register()  # importing this module makes attn_implementation="companion" available
