"""CodeGen2's objectives (Nijkamp et al., 2023) for a small byte-level code model.

* A byte tokenizer with CodeGen2's sentinels: ``<m1>``, ``<m2>``, ``<sep>``, ``<eom>``, ``<eos>``
  (and ``<pad>``, never a target).
* :func:`make_program` -- the synthetic straight-line programs of the chapter
  (``v12=3\\nv7=v12+4\\nprint(v7)\\n``) and :func:`definition_infill`, the infill test that masks a
  variable's name where it is defined (only the suffix, which uses it, tells the name).
* :func:`span_corrupt` -- within-file span corruption into CodeGen2's format, eq. (SC):
  ``x_<a1 <m1> x_b1:a2 <m2> ... <eos> <sep> <m1> x_a1:b1 <eom> <m2> x_a2:b2 <eom>``.
* :func:`mixture_batch` -- the 50/50 mixture of plain causal-LM sequences and corrupted ones,
  with per-row prefix lengths for a Prefix-LM (:class:`companion.nn.masks.PrefixLMMask`).
* :func:`infill`, :func:`prefix_only_fill`, :func:`l2r_loss` -- the evaluations.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.masks import CausalMask, Mask, PrefixLMMask

M1, M2, SEP, EOM, EOS, PAD = 256, 257, 258, 259, 260, 261
VOCAB = 262
SPECIAL_NAMES = {M1: "<m1>", M2: "<m2>", SEP: "<sep>", EOM: "<eom>", EOS: "<eos>", PAD: "<pad>"}
IDENT = re.compile(r"v\d+")


def encode(text: str) -> list[int]:
    """UTF-8 bytes of ``text`` as token ids (0..255)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return list(text.encode("utf-8"))


def decode(ids: Sequence[int] | Tensor) -> str:
    """Token ids back to text; sentinels are shown by name (``<m1>``, ``<eom>``, ...)."""
    ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    out, buf = [], bytearray()
    for i in ids:
        if i < 256:
            buf.append(i)
        else:
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            out.append(SPECIAL_NAMES.get(i, f"<{i}>"))
    out.append(buf.decode("utf-8", errors="replace"))
    return "".join(out)


# ------------------------------------------------------------------------------------------ data
def make_program(rng: random.Random, pool: int = 50, n_stmts: tuple[int, int] = (3, 6)) -> str:
    """A straight-line program: assignments ``vK=...`` over distinct names from ``v0..v{pool-1}``,
    each using earlier variables, ending with ``print(...)`` of the last one."""
    if pool < 8:
        raise ValueError(f"pool must be >= 8 names, got {pool}")
    lo, hi = n_stmts
    if not 2 <= lo <= hi:
        raise ValueError(f"n_stmts must be (lo, hi) with 2 <= lo <= hi, got {n_stmts}")
    names = rng.sample(range(pool), hi + 1)
    n = rng.randint(lo, hi)
    lines, defined = [], []
    for i in range(n):
        v = f"v{names[i]}"
        if not defined:
            rhs = str(rng.randint(0, 9))
        else:
            a = rng.choice(defined[-3:])  # recent variables: keeps every definition likely to be used
            op = rng.choice("+-*")
            b = rng.choice(defined) if rng.random() < 0.4 else str(rng.randint(1, 9))
            rhs = f"{a}{op}{b}"
        lines.append(f"{v}={rhs}")
        defined.append(v)
    lines.append(f"print({defined[-1]})")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class InfillItem:
    """One infill test: ``prefix + <m1> + suffix`` with the hidden ``answer``."""

    prefix: str
    suffix: str
    answer: str


def definition_infill(program: str, rng: random.Random, which: str = "any") -> InfillItem:
    """Mask the name of a variable at its definition; the variable is used later (in the suffix),
    never before, so the prefix alone cannot tell it. ``which="any"``: a random such variable;
    ``"printed"``: the last one, whose only use is ``print(...)``."""
    if which not in ("any", "printed"):
        raise ValueError(f"which must be 'any' or 'printed', got {which!r}")
    starts = [m for m in re.finditer(r"^(v\d+)=", program, flags=re.M)]
    used_later = [m for m in starts if re.search(rf"\b{m.group(1)}\b", program[m.end():])]
    if not used_later:
        raise ValueError("program has no variable that is defined and used later")
    m = used_later[-1] if which == "printed" else rng.choice(used_later)
    return InfillItem(program[:m.start(1)], program[m.end(1):], m.group(1))


def _spans(program: str, rng: random.Random, n_spans: int, p_ident: float = 0.5) -> list[tuple[int, int]]:
    """Up to ``n_spans`` sorted, non-overlapping spans: an identifier (prob. ``p_ident``) or 1-8 bytes."""
    idents = [(m.start(), m.end()) for m in IDENT.finditer(program)]
    out: list[tuple[int, int]] = []
    for _ in range(20):
        if len(out) == n_spans:
            break
        if rng.random() < p_ident and idents:
            a, b = rng.choice(idents)
        else:
            length = rng.randint(1, 8)
            a = rng.randint(0, max(0, len(program) - length))
            b = min(len(program), a + length)
        if b > a and all(b <= c or a >= d for c, d in out):
            out.append((a, b))
    return sorted(out)


def span_corrupt(program: str, rng: random.Random, max_spans: int = 2) -> list[int]:
    """CodeGen2's span corruption of one file (eq. SC): the corrupted file, ``<eos> <sep>``, then
    every masked span after its sentinel, closed by ``<eom>``."""
    spans = _spans(program, rng, rng.randint(1, max_spans))
    sentinels = (M1, M2)[: len(spans)]
    head, tail, pos = [], [EOS, SEP], 0
    for (a, b), m in zip(spans, sentinels):
        head += encode(program[pos:a]) + [m]
        tail += [m] + encode(program[a:b]) + [EOM]
        pos = b
    return head + encode(program[pos:]) + tail


def infill_prompt(item: InfillItem) -> list[int]:
    """The infill prompt of the model card: ``prefix <m1> suffix <eos> <sep> <m1>`` (generate to ``<eom>``)."""
    return encode(item.prefix) + [M1] + encode(item.suffix) + [EOS, SEP, M1]


@dataclass
class Batch:
    """A training batch: inputs, targets (``-100`` = no loss) and per-row prefix lengths."""

    x: Tensor  # (B, N) token ids
    y: Tensor  # (B, N) next-token targets
    prefix_len: Tensor  # (B,) bidirectional prefix of a Prefix-LM (0 for a causal decoder)

    def mask(self, prefix_lm: bool) -> Mask:
        """The attention mask: causal, or Prefix-LM with this batch's per-row prefix lengths."""
        return PrefixLMMask(self.prefix_len) if prefix_lm else CausalMask()


def mixture_batch(programs: Sequence[str], rng: random.Random, p_corrupt: float = 0.5,
                  prefix_lm: bool = False, length: int | None = None) -> Batch:
    """Rows of the CodeGen2 mixture: with probability ``p_corrupt`` a span-corrupted file, else the
    plain file + ``<eos>``. Causal decoder: loss on every next token (CodeGen2 trains on the whole
    rearranged sequence). Prefix-LM: the corrupted file up to ``<sep>`` (or a random head of a plain
    file) is the bidirectional prefix, and only the tokens after it are targets."""
    if not 0.0 <= p_corrupt <= 1.0:
        raise ValueError(f"p_corrupt must be in [0, 1], got {p_corrupt}")
    if not programs:
        raise ValueError("programs must be a non-empty sequence of strings")
    rows, prefixes = [], []
    for prog in programs:
        if rng.random() < p_corrupt:
            ids = span_corrupt(prog, rng)
            p = ids.index(SEP) + 1
        else:
            ids = encode(prog) + [EOS]
            p = rng.randint(0, len(ids) - 1)
        rows.append(ids)
        prefixes.append(p if prefix_lm else 0)
    n = max(len(r) for r in rows) if length is None else length
    if max(len(r) for r in rows) > n:
        raise ValueError(f"length {n} is shorter than the longest row ({max(len(r) for r in rows)})")
    x = torch.full((len(rows), n), PAD, dtype=torch.long)
    y = torch.full((len(rows), n), -100, dtype=torch.long)
    for i, (r, p) in enumerate(zip(rows, prefixes)):
        t = torch.tensor(r)
        x[i, : len(r)] = t
        y[i, : len(r) - 1] = t[1:]
        if p > 0:
            y[i, : p - 1] = -100  # targets inside the prefix are visible to it: no loss there
    return Batch(x, y, torch.tensor(prefixes, dtype=torch.long))


# ------------------------------------------------------------------------------------------ evaluation
def _pad(rows: list[list[int]]) -> tuple[Tensor, Tensor]:
    n = max(len(r) for r in rows)
    x = torch.full((len(rows), n), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, : len(r)] = torch.tensor(r)
    return x, torch.tensor([len(r) for r in rows])


@torch.no_grad()
def greedy(model, prompts: list[list[int]], max_new: int, stop: Callable[[int], bool],
           prefix_lens: Sequence[int] | None = None, attn_fn=None) -> list[list[int]]:
    """Greedy continuation of each prompt (no KV cache) until ``stop(token)`` or ``max_new`` tokens.

    ``prefix_lens`` gives each prompt a bidirectional prefix (Prefix-LM); new tokens are causal.
    """
    outs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    seqs = [list(p) for p in prompts]
    for _ in range(max_new):
        x, lens = _pad(seqs)
        mask = CausalMask() if prefix_lens is None else PrefixLMMask(torch.tensor(list(prefix_lens)))
        logits = model(x, mask=mask, attn_fn=attn_fn)  # (B, N, V); right padding never reaches earlier rows
        nxt = logits[torch.arange(len(seqs)), lens - 1, :PAD].argmax(-1)  # (B,)
        for i, t in enumerate(nxt.tolist()):
            if done[i]:
                continue
            if stop(t):
                done[i] = True
            else:
                outs[i].append(t)
                seqs[i].append(t)
        if all(done):
            break
    return outs


def infill(model, items: Sequence[InfillItem], prefix_lm: bool = False, max_new: int = 6, attn_fn=None) -> list[str]:
    """Fill ``<m1>`` with the infill prompt (the model must have been trained on span corruption)."""
    prompts = [infill_prompt(it) for it in items]
    pl = [p.index(SEP) + 1 for p in prompts] if prefix_lm else None
    outs = greedy(model, prompts, max_new, lambda t: t >= 256, pl, attn_fn)
    return [decode(o) for o in outs]


def prefix_only_fill(model, items: Sequence[InfillItem], max_new: int = 6) -> list[str]:
    """What a left-to-right model can do: continue the prefix and read the name up to ``=``."""
    outs = greedy(model, [encode(it.prefix) for it in items], max_new, lambda t: t == ord("=") or t >= 256)
    return [decode(o) for o in outs]


def exact_match(preds: Sequence[str], items: Sequence[InfillItem]) -> float:
    """Fraction of predictions equal to the hidden span."""
    if len(preds) != len(items) or not items:
        raise ValueError(f"preds ({len(preds)}) and items ({len(items)}) must be equally long and non-empty")
    return sum(p == it.answer for p, it in zip(preds, items)) / len(items)


@torch.no_grad()
def l2r_loss(model, programs: Sequence[str], prompt_lines: int = 1, prefix_lm: bool = False,
             batch: int = 128) -> float:
    """Left-to-right cross-entropy (nats per byte) of each program after its first ``prompt_lines``
    lines, given those lines as the prompt (a Prefix-LM reads the prompt bidirectionally)."""
    total, count = 0.0, 0
    for s in range(0, len(programs), batch):
        rows, starts = [], []
        for prog in programs[s:s + batch]:
            cut = len("".join(prog.splitlines(keepends=True)[:prompt_lines]).encode())
            rows.append(encode(prog) + [EOS])
            starts.append(cut)
        x, lens = _pad(rows)
        y = torch.full_like(x, -100)
        for i, (r, c) in enumerate(zip(rows, starts)):
            y[i, c - 1: len(r) - 1] = x[i, c: len(r)]
        mask = PrefixLMMask(torch.tensor(starts)) if prefix_lm else CausalMask()
        logits = model(x, mask=mask)
        ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
        total += float(ce)
        count += int((y != -100).sum())
    return total / count
