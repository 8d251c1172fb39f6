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
* :func:`infill`, :func:`prefix_only_fill`, :func:`span_nll`, :func:`l2r_loss` -- the evaluations.
* :func:`train_arm` -- one arm of the experiment (causal-only, mixture, Prefix-LM + mixture), every
  attention call through the book's kernel (:func:`kernel_attention`, ``impl="auto"``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import kernels
from ..nn.masks import CausalMask, Mask, PrefixLMMask
from ..nn.transformer import TinyLM, TransformerConfig
from ..train import History, train

M1, M2, SEP, EOM, EOS, PAD = 256, 257, 258, 259, 260, 261
VOCAB = 262
BOS = EOS  # every file starts after an <eos> (the separator of the training stream), also at inference
SPECIAL_NAMES = {M1: "<m1>", M2: "<m2>", SEP: "<sep>", EOM: "<eom>", EOS: "<eos>", PAD: "<pad>"}
IDENT = re.compile(r"\b(?!print\b)[A-Za-z_]\w*")  # an identifier (``print`` is not a variable)
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")  # one-byte names (the ci profile)
V_NAMES = tuple(f"v{i}" for i in range(50))  # the card's pool of 50 names ``v0..v49``


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
def make_program(rng: random.Random, names: Sequence[str] = V_NAMES, n_stmts: tuple[int, int] = (3, 6)) -> str:
    """A straight-line program: assignments ``name=...`` over distinct names drawn from ``names``
    (the card's ``v0..v49`` by default), each using earlier variables, ending with ``print(...)`` of
    the last one."""
    if isinstance(names, str) or len(set(names)) < 8 or not all(isinstance(n, str) and IDENT.fullmatch(n) for n in names):
        raise ValueError(f"names must be >= 8 distinct identifiers, got {names!r}")
    lo, hi = n_stmts
    if not 2 <= lo <= hi or hi + 1 > len(set(names)):
        raise ValueError(f"n_stmts must be (lo, hi) with 2 <= lo <= hi < len(names), got {n_stmts}")
    names = rng.sample(sorted(set(names)), hi + 1)
    n = rng.randint(lo, hi)
    lines, defined = [], []
    for i in range(n):
        v = names[i]
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
    starts = [m for m in re.finditer(r"^(\w+)=", program, flags=re.M)]
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


def span_corrupt(program: str, rng: random.Random, max_spans: int = 2, p_ident: float = 0.5) -> list[int]:
    """CodeGen2's span corruption of one file (eq. SC): the corrupted file, ``<eos> <sep>``, then
    every masked span after its sentinel, closed by ``<eom>``."""
    if max_spans not in (1, 2):
        raise ValueError(f"max_spans must be 1 or 2 (sentinels <m1>, <m2>), got {max_spans}")
    if not 0.0 <= p_ident <= 1.0:
        raise ValueError(f"p_ident must be in [0, 1], got {p_ident}")
    spans = _spans(program, rng, rng.randint(1, max_spans), p_ident)
    sentinels = (M1, M2)[: len(spans)]
    head, tail, pos = [], [EOS, SEP], 0
    for (a, b), m in zip(spans, sentinels):
        head += encode(program[pos:a]) + [m]
        tail += [m] + encode(program[a:b]) + [EOM]
        pos = b
    return head + encode(program[pos:]) + tail


def uncorrupt(ids: Sequence[int]) -> str:
    """Invert :func:`span_corrupt`: put every span after ``<sep>`` back at its sentinel."""
    ids = list(ids)
    if SEP not in ids or ids.index(SEP) == 0 or ids[ids.index(SEP) - 1] != EOS:
        raise ValueError("ids must contain '<eos> <sep>' (the CodeGen2 span-corruption format)")
    sep = ids.index(SEP)
    head, tail = ids[: sep - 1], ids[sep + 1:]
    spans, i = {}, 0
    while i < len(tail):
        m = tail[i]
        if m not in (M1, M2) or EOM not in tail[i:]:
            raise ValueError(f"target side must be '<m_k> span <eom>' blocks, got {decode(tail)!r}")
        j = tail.index(EOM, i)
        spans[m] = tail[i + 1: j]
        i = j + 1
    out: list[int] = []
    for t in head:
        if t in (M1, M2):
            if t not in spans:
                raise ValueError(f"sentinel {SPECIAL_NAMES[t]} has no span on the target side")
            out += spans[t]
        else:
            out.append(t)
    return decode(out)


def infill_prompt(item: InfillItem) -> list[int]:
    """The infill prompt of the model card, ``prefix <m1> suffix <eos> <sep> <m1>`` (generate to ``<eom>``),
    after the ``<eos>`` that separates files in the training stream (:data:`BOS`)."""
    return [BOS] + encode(item.prefix) + [M1] + encode(item.suffix) + [EOS, SEP, M1]


def prefix_prompt(item: InfillItem) -> list[int]:
    """What a left-to-right model reads: ``<eos>`` (file start) and the prefix."""
    return [BOS] + encode(item.prefix)


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
                  prefix_lm: bool = False, length: int | None = None, p_ident: float = 0.5) -> Batch:
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
            ids = [BOS] + span_corrupt(prog, rng, p_ident=p_ident)
            p = ids.index(SEP) + 1
        else:
            ids = [BOS] + encode(prog) + [EOS]
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
def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


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
    attn_fn = kernel_attention if attn_fn is None else attn_fn
    outs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    seqs = [list(p) for p in prompts]
    for _ in range(max_new):
        x, lens = _pad(seqs)
        mask = CausalMask() if prefix_lens is None else PrefixLMMask(torch.tensor(list(prefix_lens)))
        logits = model(x.to(_device(model)), mask=mask, attn_fn=attn_fn)  # (B, N, V); right padding never reaches earlier rows
        nxt = logits[torch.arange(len(seqs)), lens - 1, :PAD].argmax(-1).cpu()  # (B,)
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


def infill(model, items: Sequence[InfillItem], prefix_lm: bool = False, max_new: int = 10, attn_fn=None,
           length_given: bool = False) -> list[str]:
    """Fill ``<m1>`` with the infill prompt (the model must have been trained on span corruption):
    greedy until a special token such as ``<eom>`` (at most ``max_new`` bytes), or, with
    ``length_given``, exactly as many tokens as the hidden span has (as :func:`prefix_only_fill`)."""
    if not length_given:
        prompts = [infill_prompt(it) for it in items]
        pl = [p.index(SEP) + 1 for p in prompts] if prefix_lm else None
        return [decode(o) for o in greedy(model, prompts, max_new, lambda t: t >= 256, pl, attn_fn)]
    fills: dict[int, str] = {}
    by_len: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        by_len.setdefault(len(encode(it.answer)), []).append(i)
    for n, idx in by_len.items():
        prompts = [infill_prompt(items[i]) for i in idx]
        pl = [p.index(SEP) + 1 for p in prompts] if prefix_lm else None
        fills.update({i: decode(g) for i, g in zip(idx, greedy(model, prompts, n, lambda t: False, pl, attn_fn))})
    return [fills[i] for i in range(len(items))]


def prefix_only_fill(model, items: Sequence[InfillItem], attn_fn=None) -> list[str]:
    """What a left-to-right model can do: continue the prefix greedily for exactly as many bytes as the
    hidden span has (the length is given to it for free)."""
    by_len: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        by_len.setdefault(len(encode(it.answer)), []).append(i)
    fills: dict[int, str] = {}
    for n, idx in by_len.items():
        gen = greedy(model, [prefix_prompt(items[i]) for i in idx], n, lambda t: False, None, attn_fn)
        fills.update({i: decode(g) for i, g in zip(idx, gen)})
    return [fills[i] for i in range(len(items))]


@torch.no_grad()
def span_nll(model, items: Sequence[InfillItem], mode: str = "infill", prefix_lm: bool = False,
             attn_fn=None) -> Tensor:
    """Negative log-likelihood (nats) of each hidden span's bytes, shape ``(len(items),)``.

    ``mode="infill"``: given the infill prompt ``prefix <m1> suffix <eos> <sep> <m1>`` (what a model
    trained on span corruption sees); ``"prefix"``: given the prefix only (all a left-to-right model has).
    """
    if mode not in ("infill", "prefix"):
        raise ValueError(f"mode must be 'infill' or 'prefix', got {mode!r}")
    if not items:
        raise ValueError("items must be non-empty")
    prompts = [infill_prompt(it) if mode == "infill" else prefix_prompt(it) for it in items]
    rows = [p + encode(it.answer) for p, it in zip(prompts, items)]
    x, lens = _pad(rows)
    y = torch.full_like(x, -100)
    for i, (p, r) in enumerate(zip(prompts, rows)):
        y[i, len(p) - 1: len(r) - 1] = x[i, len(p): len(r)]
    mask = PrefixLMMask(torch.tensor([p.index(SEP) + 1 for p in prompts])) if prefix_lm and mode == "infill" else CausalMask()
    logits = model(x.to(_device(model)), mask=mask, attn_fn=kernel_attention if attn_fn is None else attn_fn)
    logits = logits[..., :PAD].cpu()  # (B, N, 261): <pad> is never a target
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="none").view_as(y)
    return ce.sum(-1)


def random_span_infill(program: str, rng: random.Random, length: int) -> InfillItem:
    """Mask ``length`` bytes at a random offset >= 1 of ``program`` (the span-length figure; the prefix
    is never empty, so a left-to-right model always has a byte to continue from)."""
    if not 1 <= length < len(program):
        raise ValueError(f"length must be in [1, {len(program) - 1}], got {length}")
    a = rng.randint(1, len(program) - length)
    return InfillItem(program[:a], program[a + length:], program[a:a + length])


def print_completion(program: str) -> InfillItem:
    """The left-to-right test: the program up to ``print(`` as prefix, the printed name as answer
    (the prefix determines it: the last variable defined)."""
    k = program.rindex("print(") + len("print(")
    j = program.index(")", k)
    return InfillItem(program[:k], program[j:], program[k:j])


def exact_match(preds: Sequence[str], items: Sequence[InfillItem]) -> float:
    """Fraction of predictions equal to the hidden span."""
    if len(preds) != len(items) or not items:
        raise ValueError(f"preds ({len(preds)}) and items ({len(items)}) must be equally long and non-empty")
    return sum(p == it.answer for p, it in zip(preds, items)) / len(items)


@torch.no_grad()
def l2r_loss(model, programs: Sequence[str], prompt_lines: int = 1, prefix_lm: bool = False,
             batch: int = 128, attn_fn=None) -> float:
    """Left-to-right cross-entropy (nats per byte) of each program after its first ``prompt_lines``
    lines, given those lines as the prompt (a Prefix-LM reads the prompt bidirectionally)."""
    total, count = 0.0, 0
    for s in range(0, len(programs), batch):
        rows, starts = [], []
        for prog in programs[s:s + batch]:
            cut = len("".join(prog.splitlines(keepends=True)[:prompt_lines]).encode())
            rows.append([BOS] + encode(prog) + [EOS])
            starts.append(cut + 1)
        x, lens = _pad(rows)
        y = torch.full_like(x, -100)
        for i, (r, c) in enumerate(zip(rows, starts)):
            y[i, c - 1: len(r) - 1] = x[i, c: len(r)]
        mask = PrefixLMMask(torch.tensor(starts)) if prefix_lm else CausalMask()
        logits = model(x.to(_device(model)), mask=mask, attn_fn=kernel_attention if attn_fn is None else attn_fn).cpu()
        ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
        total += float(ce)
        count += int((y != -100).sum())
    return total / count


# ------------------------------------------------------------------------------------------ the arms
ARMS = {  # arm -> (probability of a span-corrupted row, Prefix-LM attention)
    "causal": (0.0, False),
    "mixture": (0.5, False),
    "prefix-lm": (0.5, True),
}


def kernel_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None = None) -> Tensor:
    """The book's attention kernel with ``impl="auto"``: the Triton kernel for CUDA tensors when
    triton is importable, the PyTorch reference elsewhere (every arm's attention goes through it)."""
    return kernels.attention(q, k, v, mask=mask, impl="auto")


def new_model(d_model: int = 64, n_layers: int = 2, n_heads: int = 4, seed: int = 0) -> TinyLM:
    """A byte-level causal decoder over :data:`VOCAB` (same seed -> same initial weights for every arm)."""
    torch.manual_seed(seed)
    return TinyLM(TransformerConfig(vocab_size=VOCAB, d_model=d_model, n_layers=n_layers, n_heads=n_heads))


def train_arm(arm: str, *, steps: int, batch: int, lr: float, seed: int, names: Sequence[str] = V_NAMES,
              n_stmts: tuple[int, int] = (3, 6), p_ident: float = 0.5, model_kw: dict | None = None,
              eval_fn: Callable | None = None, eval_every: int = 100, progress: bool = True,
              device: str | torch.device = "cpu") -> tuple[TinyLM, History]:
    """Train one arm on a fresh stream of programs (the same stream for every arm with the same seed).

    ``"causal"``: plain files only; ``"mixture"``: CodeGen2's 50/50 causal + span corruption, causal
    decoder; ``"prefix-lm"``: the same mixture with a bidirectional prefix (the corrupted file up to
    ``<sep>``, or a random head of a plain file). Loss: next-token cross-entropy on every target token
    (targets inside a Prefix-LM's prefix excepted).
    """
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {tuple(ARMS)}, got {arm!r}")
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be >= 1, got steps={steps}, batch={batch}")
    p_corrupt, prefix_lm = ARMS[arm]
    model = new_model(seed=seed, **(model_kw or {})).to(device)
    programs, corrupt = random.Random(seed), random.Random(seed + 1)  # file stream, corruption draws

    def batch_fn(step: int) -> Batch:
        files = [make_program(programs, names, n_stmts) for _ in range(batch)]
        return mixture_batch(files, corrupt, p_corrupt=p_corrupt, prefix_lm=prefix_lm, p_ident=p_ident)

    def loss_fn(m: TinyLM, b: Batch) -> Tensor:
        return m.loss(b.x.to(device), b.y.to(device), mask=b.mask(prefix_lm), attn_fn=kernel_attention)

    hist = train(model, loss_fn, batch_fn, steps=steps, lr=lr, warmup=50, eval_fn=eval_fn,
                 eval_every=eval_every, desc=arm, progress=progress)
    return model, hist


def evaluate(model: TinyLM, arm: str, tests: dict[str, Sequence[InfillItem]], l2r_programs: Sequence[str]) -> dict[str, float]:
    """Every score of one arm: for each test set ``name``, ``em_<name>`` with the arm's own way of
    filling (the infill prompt for the span-corruption arms, prefix-only continuation for the causal
    arm) and ``em_prefix_<name>`` (prefix-only, every arm); ``l2r_ce`` (nats per byte after the first
    line) and ``l2r_em`` (completing ``print(`` with the right name)."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {tuple(ARMS)}, got {arm!r}")
    _, prefix_lm = ARMS[arm]
    out = {}
    for name, items in tests.items():
        prefix = exact_match(prefix_only_fill(model, items), items)
        out[f"em_prefix_{name}"] = prefix
        out[f"em_{name}"] = prefix if arm == "causal" else exact_match(infill(model, items, prefix_lm), items)
    out["l2r_ce"] = l2r_loss(model, l2r_programs, prefix_lm=prefix_lm)
    pc = [print_completion(p) for p in l2r_programs]
    out["l2r_em"] = exact_match(prefix_only_fill(model, pc), pc)
    return out
