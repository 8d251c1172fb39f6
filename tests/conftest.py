"""Fixtures shared by the unit tests: a character tokenizer and tiny random Llama models."""

from __future__ import annotations

from typing import Callable

import pytest
import torch


class CharTokenizer:
    """A tokenizer stand-in: one token per character, BOS = 1 (enough for prompt-level mechanisms)."""

    bos_token_id = 1

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        ids = [2 + (ord(c) % 60) for c in text]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}

    def decode(self, ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in ids)


@pytest.fixture(scope="module")
def tok() -> CharTokenizer:
    return CharTokenizer()


@pytest.fixture(scope="session")
def tiny_llama() -> Callable[..., torch.nn.Module]:
    """A factory of small random Llamas (vocabulary 64, width 32, GQA 4/2) in eval mode."""
    transformers = pytest.importorskip("transformers")

    def make(n_layers: int = 2, max_positions: int = 128, attn: str = "sdpa", seed: int = 0) -> torch.nn.Module:
        cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2,
                                       attn_implementation=attn)
        torch.manual_seed(seed)
        return transformers.LlamaForCausalLM(cfg).eval()

    return make
