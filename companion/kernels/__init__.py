"""Triton kernels of the book. Each op has one anatomy (see the kernel interlude chapter):

a plain-PyTorch ``reference``, the ``@triton.jit`` kernels, a host wrapper that validates its
inputs, an autograd function and a dispatcher ``impl="auto" | "triton" | "torch"``.

* :mod:`companion.kernels.attention` -- one block-sparse flash-attention kernel for every
  :class:`~companion.nn.masks.Mask` (forward, backward, split-KV decoding).
* :mod:`companion.kernels.hf` -- ``attn_implementation="companion"`` for Hugging Face models
  (imported on demand: it imports ``transformers``).

Without CUDA, Triton runs kernels in its interpreter, which needs ``TRITON_INTERPRET=1``
*before* ``triton`` is imported; ``companion/__init__.py`` sets it (unless already set).
Triton itself is imported lazily (:func:`triton_module`): where it is not installed (macOS,
Windows) this package still imports, ``impl="auto"`` uses the PyTorch reference and
``impl="triton"`` raises :class:`TritonUnavailableError` saying how to install it.
"""

from .attention import (
    IMPLS, NOT_RUN_WITHOUT_TRITON, BlockPlan, KernelMask, TritonUnavailableError, attention, block_plan, describe_mask, reference,
    set_autotune, triton_attention, triton_available, triton_module,
)

__all__ = [
    "IMPLS", "NOT_RUN_WITHOUT_TRITON", "BlockPlan", "KernelMask", "TritonUnavailableError", "attention", "block_plan", "describe_mask",
    "reference", "set_autotune", "triton_attention", "triton_available", "triton_module",
]
