"""Shared neural-network building blocks: masks, attention, positions, transformer models."""

from .attention import attention, reference_attention
from .masks import (
    AndMask, BlockSelectMask, CausalMask, DenseMask, FullMask, KeyPaddingMask, Mask, NotMask, OrMask, PrefixLMMask,
    SegmentMask, SetMask, SlidingWindowMask, TreeMask, causal, prefix_lm, segments, set_based, sliding_window,
)
from .positions import (
    LearnedPositions, SinusoidalPositions, alibi_bias, alibi_slopes, apply_rope, rope_cos_sin, sinusoidal_table,
)
from .transformer import MultiHeadAttention, TinyEncoder, TinyLM, TransformerBlock, TransformerConfig

__all__ = [
    "attention", "reference_attention",
    "Mask", "AndMask", "OrMask", "NotMask", "CausalMask", "DenseMask", "FullMask", "KeyPaddingMask",
    "PrefixLMMask", "SegmentMask", "SetMask", "SlidingWindowMask", "TreeMask", "BlockSelectMask",
    "causal", "prefix_lm", "segments", "set_based", "sliding_window",
    "LearnedPositions", "SinusoidalPositions", "alibi_bias", "alibi_slopes", "apply_rope", "rope_cos_sin",
    "sinusoidal_table",
    "MultiHeadAttention", "TinyEncoder", "TinyLM", "TransformerBlock", "TransformerConfig",
]
