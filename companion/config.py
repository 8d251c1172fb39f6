"""Run profiles, seeds and thread counts shared by every chapter.

Two profiles exist:

* ``ci``  (default): sized so a chapter executes in <= 90 s on 2 CPU cores.
* ``gpu``: closer to the paper's setting; meant for one GPU (H100-class) and a few minutes.

The profile comes from the environment variable ``BOOK_PROFILE`` and the seed from
``BOOK_SEED`` (default 0), so anyone can rerun a chapter on another seed:
``BOOK_SEED=3 jupyter nbconvert --execute ...``. Claim checks must hold for any seed.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

PROFILES = ("ci", "gpu")
T = TypeVar("T")


def profile() -> str:
    """The active profile name, read from ``BOOK_PROFILE`` (default ``"ci"``)."""
    name = os.environ.get("BOOK_PROFILE", "ci").strip().lower() or "ci"
    if name not in PROFILES:
        raise ValueError(f"BOOK_PROFILE must be one of {PROFILES}, got {name!r}")
    return name


def seed() -> int:
    """The active seed, read from ``BOOK_SEED`` (default 0)."""
    raw = os.environ.get("BOOK_SEED", "0").strip() or "0"
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"BOOK_SEED must be an integer, got {raw!r}") from None


def pick(ci: T, gpu: T) -> T:
    """Return ``ci`` or ``gpu`` depending on the active profile."""
    return gpu if profile() == "gpu" else ci


def seed_everything(value: int | None = None) -> int:
    """Seed Python, NumPy and torch (CPU and CUDA). Returns the seed used."""
    value = seed() if value is None else int(value)
    random.seed(value)
    np.random.seed(value % (2**32))
    torch.manual_seed(value)
    return value


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count (default: ``OMP_NUM_THREADS`` or all cores, max 8).

    Running several torch processes with the default thread count on a 2-core machine is the
    biggest CPU slowdown measured for this book, hence one explicit setting.
    """
    if n is None:
        env = os.environ.get("OMP_NUM_THREADS")
        n = int(env) if env and env.isdigit() else min(os.cpu_count() or 1, 8)
    if n < 1:
        raise ValueError(f"n must be >= 1 thread, got {n}")
    torch.set_num_threads(n)
    return n


@dataclass(frozen=True)
class Settings:
    """What a chapter needs to know about the run: profile, seed, device and threads."""

    profile: str
    seed: int
    device: torch.device
    threads: int

    def pick(self, ci: T, gpu: T) -> T:
        """Return ``ci`` or ``gpu`` depending on this run's profile."""
        return gpu if self.profile == "gpu" else ci


def setup(seed_value: int | None = None, threads: int | None = None) -> Settings:
    """One call at the top of a chapter: seed everything, set threads, pick the device."""
    from .device import pick_device

    used_seed = seed_everything(seed_value)
    n = set_threads(threads)
    # Subnormal floats make small-model training on x86 CPUs up to ~20x slower (measured here: a
    # 2-layer TinyLM step 4.1 s -> 0.2 s of CPU); flushing them to zero changes nothing visible.
    torch.set_flush_denormal(True)
    return Settings(profile=profile(), seed=used_seed, device=pick_device(), threads=n)
