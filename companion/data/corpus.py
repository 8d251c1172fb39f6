"""The book's English text corpus for training small language models, and its tokenizers.

The corpus is the 106 Wikipedia articles of :func:`wikipedia_sample` (markup stripped) followed
by the 300 background news documents of :func:`lee_corpus` (7 duplicates dropped) -- about 3.1 M
characters of clean English prose. The split is by document and fixed: every 10th document
(index 9, 19, ...) is ``valid``, the rest ``train``. The 50 Lee *test* documents are left out, so chapters can use
their human similarity judgments without leakage.

>>> ids = encode_corpus("train", kind="byte")        # LongTensor (T,), values < 256  # doctest: +SKIP
>>> tok = corpus_tokenizer("bpe", vocab_size=4096)   # a byte-level BPE trained on the train split  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import lzma
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from .. import assets
from .gensim_data import lee_corpus, wikipedia_sample

SPLITS = ("train", "valid")
KINDS = ("byte", "bpe", "gpt2")
VALID_EVERY = 10
DOC_SEPARATOR = "\n\n"
CORPUS_VERSION = 1  # bump when the cleaning or the split changes (invalidates cached tokenizers)


@lru_cache(maxsize=1)
def _documents() -> dict[str, tuple[str, ...]]:
    docs = [a.text for a in wikipedia_sample()] + lee_corpus("background")
    docs = list(dict.fromkeys(docs))  # the Lee background set holds 7 documents twice
    held_out = {i for i in range(len(docs)) if i % VALID_EVERY == VALID_EVERY - 1}
    return {"train": tuple(d for i, d in enumerate(docs) if i not in held_out),
            "valid": tuple(d for i, d in enumerate(docs) if i in held_out)}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def corpus_documents(split: str = "train") -> list[str]:
    """The documents of one split (``"train"``: 360, ``"valid"``: 39), each a plain-text string."""
    _check_split(split)
    return list(_documents()[split])


def text_corpus(split: str = "train") -> str:
    """The whole split as one string, documents separated by a blank line."""
    _check_split(split)
    return DOC_SEPARATOR.join(_documents()[split])


class CorpusTokenizer:
    """Text <-> token ids. ``kind="byte"``: the UTF-8 bytes (256 ids, no training);
    ``"bpe"``: a byte-level BPE trained on the train split; ``"gpt2"``: GPT-2's BPE (50,257 ids)."""

    def __init__(self, kind: str, backend=None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if (backend is None) != (kind == "byte"):
            raise ValueError("backend must be a tokenizers.Tokenizer for 'bpe'/'gpt2' and None for 'byte'")
        self.kind = kind
        self.backend = backend  # a tokenizers.Tokenizer, or None for bytes

    @property
    def vocab_size(self) -> int:
        return 256 if self.backend is None else self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        if self.backend is None:
            return list(text.encode("utf-8"))
        return self.backend.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self.backend is None:
            return bytes(ids).decode("utf-8", errors="replace")
        return self.backend.decode(ids)

    def __repr__(self) -> str:
        return f"CorpusTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _byte_level_bpe(vocab: dict[str, int] | None = None, merges: list[tuple[str, str]] | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges) if vocab is not None else models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's regex split
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _gpt2_backend():
    vocab = json.loads(lzma.decompress(assets.path("gpt2-bpe", "files/gpt2/encoder.json.xz").read_bytes()))
    lines = lzma.decompress(assets.path("gpt2-bpe", "files/gpt2/vocab.bpe.xz").read_bytes()).decode("utf-8")
    merges = [tuple(line.split(" ")) for line in lines.splitlines()[1:] if line]  # line 0: "#version: 0.2"
    from tokenizers import AddedToken

    tok = _byte_level_bpe(vocab, merges)
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    return tok


def gpt2_tokenizer():
    """GPT-2's byte-level BPE (Radford et al., 2019) as a ``transformers.PreTrainedTokenizerFast``
    (50,257 ids; ``"The"`` -> 464; ``<|endoftext|>`` = 50256), built from the shipped files."""
    from transformers import PreTrainedTokenizerFast

    eot = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=_gpt2_backend(), bos_token=eot, eos_token=eot,
                                   unk_token=eot, model_max_length=1024)


def _cache_file(kind: str, vocab_size: int, suffix: str) -> Path:
    """A file in the corpus cache whose name changes whenever its inputs may change."""
    import tokenizers

    sources = "".join(assets.ASSETS[n].fingerprint() for n in ("wiki-sample", "lee-corpus", "gpt2-bpe"))
    key = hashlib.sha256(f"{sources}|{CORPUS_VERSION}|{kind}|{vocab_size}|{tokenizers.__version__}".encode())
    return assets.cache_dir() / "corpus" / f"{kind}-{vocab_size}-{key.hexdigest()[:12]}{suffix}"


def _save_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)  # atomic: a half-written file is never read


def _train_bpe(vocab_size: int):
    """A byte-level BPE trained on the train split, cached on disk (training takes a few seconds)."""
    from tokenizers import Tokenizer, pre_tokenizers, trainers

    cached = _cache_file("bpe", vocab_size, ".json")
    if cached.exists():
        return Tokenizer.from_file(str(cached))
    tok = _byte_level_bpe()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_documents()["train"], trainer)
    _save_atomic(cached, lambda p: tok.save(str(p)))
    return tok


@lru_cache(maxsize=8)
def corpus_tokenizer(kind: str = "byte", vocab_size: int = 4096) -> CorpusTokenizer:
    """A tokenizer for :func:`text_corpus`: ``"byte"`` (256 ids), ``"bpe"`` (a byte-level BPE with
    ``vocab_size`` ids trained on the train split; deterministic) or ``"gpt2"`` (GPT-2's BPE).
    ``vocab_size`` only matters for ``"bpe"``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "byte":
        return CorpusTokenizer("byte")
    if kind == "gpt2":
        return CorpusTokenizer("gpt2", _gpt2_backend())
    if not isinstance(vocab_size, int) or not 257 <= vocab_size <= 65536:
        raise ValueError(f"vocab_size must be an int in [257, 65536] for kind='bpe', got {vocab_size!r}")
    return CorpusTokenizer("bpe", _train_bpe(vocab_size))


@lru_cache(maxsize=8)
def _encoded(split: str, kind: str, vocab_size: int):
    import numpy as np
    import torch

    if kind == "byte":
        return torch.frombuffer(bytearray(text_corpus(split).encode("utf-8")), dtype=torch.uint8).long()
    cached = _cache_file(kind, vocab_size, f"-{split}.npy")  # BPE-encoding 3 M characters takes ~3 s
    if not cached.exists():
        ids = np.asarray(corpus_tokenizer(kind, vocab_size).encode(text_corpus(split)), dtype=np.uint16)

        def write(p: Path) -> None:
            with open(p, "wb") as fh:
                np.save(fh, ids)

        _save_atomic(cached, write)
    return torch.from_numpy(np.load(cached).astype(np.int64))


def encode_corpus(split: str = "train", kind: str = "byte", vocab_size: int = 4096):
    """The split as one token stream: a ``torch.LongTensor`` of shape (T,) (a fresh copy each call).

    Train/valid sizes: byte 2.86 M / 0.26 M tokens; BPE (4096) 0.80 M / 0.08 M; GPT-2 0.61 M / 0.05 M.
    """
    _check_split(split)
    corpus_tokenizer(kind, vocab_size)  # validates kind and vocab_size
    return _encoded(split, kind, vocab_size).clone()
