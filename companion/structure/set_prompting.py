"""Set-Based Prompting (McIlroy-Young et al., 2024): order-invariant prompts for causal LMs.

A prompt ``A {B_1, ..., B_n} D`` has a prefix ``A``, an unordered set of elements ``B_i`` (e.g.
the options of a multiple-choice question) and a suffix ``D``. Two changes to an ordinary
forward pass make the model's output independent of the order of the ``B_i``:

* the **mask** (chapter eq. 1): causal, and tokens of two different elements never attend to
  each other -- :func:`companion.nn.masks.set_based`;
* the **position ids** (eq. 2): the prefix gets ``0..n_A-1``, *every* element restarts at
  ``n_A``, the suffix starts at ``n_A + max_i |B_i|``.

This module builds such prompts with a Hugging Face tokenizer, runs any Hugging Face causal LM
with an explicit 4-D attention mask and explicit position ids in three modes (:data:`MODES`),
decodes greedily under the set-based mask, and evaluates multiple-choice questions over
orderings of their options.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from companion.models import cache_kwarg
from companion.nn.masks import CausalMask, Mask, set_based

Tensor = torch.Tensor

MODES = ("normal", "set", "mask_only")
MODE_TITLES = {"normal": "causal mask, positions 0..N-1", "mask_only": "+ set mask (eq. 1)",
               "set": "+ position reset (eq. 2)"}
"""``normal``: causal mask, positions ``0..N-1``. ``set``: set mask and set positions (the
method). ``mask_only``: set mask, sequential positions (the ablation: positions leak the order)."""

BANK_PATH = Path(__file__).with_name("mcq_bank.json")


# ---------------------------------------------------------------------------------------------
# Set ids, position ids, masks
# ---------------------------------------------------------------------------------------------

def _check_set_ids(set_ids: Tensor) -> Tensor:
    """Validate ``set_ids`` ``(N,)``: -1 outside the set, the set one contiguous block in which
    every element (id >= 0) is one contiguous run. Returns it as a CPU long tensor."""
    if not isinstance(set_ids, torch.Tensor) or set_ids.dtype == torch.bool or set_ids.is_floating_point():
        raise ValueError("set_ids must be an integer tensor of shape (N,)")
    if set_ids.ndim != 1:
        raise ValueError(f"set_ids must have shape (N,), got {tuple(set_ids.shape)}")
    s = set_ids.long().cpu()
    if len(s) and int(s.min()) < -1:
        raise ValueError(f"set_ids must be -1 (outside the set) or an element id >= 0, got {int(s.min())}")
    inside = (s >= 0).nonzero().flatten()
    if len(inside):
        block = s[int(inside[0]):int(inside[-1]) + 1]
        if (block < 0).any():
            raise ValueError("set_ids must hold the set as one contiguous block (no -1 between elements)")
        runs = torch.unique_consecutive(block)
        if len(runs) != len(torch.unique(runs)):
            raise ValueError(f"every set element must be one contiguous run of tokens, got runs {runs.tolist()}")
    return s


def set_position_ids(set_ids: Tensor) -> Tensor:
    """Position ids ``(N,)`` of a set-based prompt, eq. (2), from its ``set_ids`` ``(N,)``.

    Prefix ``0..n_A-1``; every element restarts at ``n_A``; the suffix starts at
    ``n_A + max_i |B_i|``. Without a set this is ``0..N-1``.
    """
    s = _check_set_ids(set_ids)
    pos = torch.arange(len(s))  # (N,)
    inside = (s >= 0).nonzero().flatten()
    if not len(inside):
        return pos
    n_prefix, end = int(inside[0]), int(inside[-1]) + 1
    longest = 0
    for e in torch.unique(s[inside]).tolist():
        idx = (s == e).nonzero().flatten()
        pos[idx] = n_prefix + torch.arange(len(idx))
        longest = max(longest, len(idx))
    pos[end:] = n_prefix + longest + torch.arange(len(s) - end)
    return pos


def mode_mask_and_positions(set_ids: Tensor, mode: str) -> tuple[Mask, Tensor]:
    """The attention mask and the position ids ``(N,)`` that ``mode`` (one of :data:`MODES`) uses."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    s = _check_set_ids(set_ids)
    if mode == "normal":
        return CausalMask(), torch.arange(len(s))
    mask = set_based(s)  # CausalMask() & SetMask(s), eq. (1)
    return mask, (set_position_ids(s) if mode == "set" else torch.arange(len(s)))


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SetPrompt:
    """A tokenised prompt ``A {B_1..B_n} D`` with its elements laid out in a given order.

    ``order[j]`` is the index (in the caller's option list) of the element in slot ``j``.
    ``set_ids`` holds that option index for each of its tokens, so two orderings of one prompt
    carry the same multiset of ``(token, set id)`` pairs.
    """

    input_ids: Tensor  # (N,)
    set_ids: Tensor  # (N,) -1 outside the set, else the option index
    order: tuple[int, ...]
    n_prefix: int
    tokens: tuple[str, ...] = field(repr=False)  # each token decoded, newlines shown as \\n (for plots)

    def __len__(self) -> int:
        return len(self.input_ids)

    def mask(self, mode: str = "set") -> Mask:
        """The attention mask of ``mode``; ``.dense(len(prompt))`` gives the boolean ``(1, N, N)``."""
        return mode_mask_and_positions(self.set_ids, mode)[0]

    def position_ids(self, mode: str = "set") -> Tensor:
        """The position ids ``(N,)`` of ``mode``."""
        return mode_mask_and_positions(self.set_ids, mode)[1]


def _encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def build_prompt(tok, prefix: str, options: Sequence[str], suffix: str,
                 order: Sequence[int] | None = None, add_bos: bool = True) -> SetPrompt:
    """Tokenise prefix, each option and suffix **separately**; concatenate them in ``order``.

    Only the prefix gets the BOS token (when the tokenizer has one and ``add_bos``); options and
    suffix get no special tokens, so an option has the same tokens in every ordering (tokenising
    the joined string could merge tokens across a boundary that moves with the order).
    """
    if not isinstance(prefix, str) or not isinstance(suffix, str):
        raise ValueError("prefix and suffix must be strings")
    if isinstance(options, str) or len(options) < 1 or not all(isinstance(o, str) and o for o in options):
        raise ValueError("options must be a non-empty sequence of non-empty strings")
    order = tuple(range(len(options))) if order is None else tuple(int(i) for i in order)
    if sorted(order) != list(range(len(options))):
        raise ValueError(f"order must be a permutation of 0..{len(options) - 1}, got {order}")
    a = _encode(tok, prefix)
    if add_bos and tok.bos_token_id is not None:
        a = [tok.bos_token_id] + a
    elements = [_encode(tok, o) for o in options]
    if not all(elements):
        raise ValueError("every option must produce at least one token")
    ids, set_ids = list(a), [-1] * len(a)
    for i in order:
        ids += elements[i]
        set_ids += [i] * len(elements[i])
    d = _encode(tok, suffix)
    ids += d
    set_ids += [-1] * len(d)
    tokens = tuple(tok.decode([i]).replace("\n", "\\n") for i in ids)
    return SetPrompt(torch.tensor(ids), torch.tensor(set_ids), order, len(a), tokens)


# ---------------------------------------------------------------------------------------------
# Running a Hugging Face causal LM with an explicit mask and explicit positions
# ---------------------------------------------------------------------------------------------

def additive_mask(keep: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Boolean keep-matrix ``(B, Nq, Nk)`` -> additive mask ``(B, 1, Nq, Nk)`` of 0 / dtype min.

    ``transformers`` (5.x) hands a 4-D mask unchanged to the attention function. A float mask
    is right for both ``sdpa`` (``attn_mask``) and ``eager`` (added to the scores), whereas
    ``eager`` would *add* a bool mask as 0/1. The finite minimum keeps masked rows NaN-free.
    """
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or keep.ndim != 3:
        raise ValueError("keep must be a bool tensor of shape (B, Nq, Nk)")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype}")
    zero = torch.zeros((), dtype=dtype, device=keep.device)
    return torch.where(keep, zero, torch.finfo(dtype).min)[:, None]  # (B, 1, Nq, Nk)


def _check_model(model) -> None:
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise ValueError("model must be a Hugging Face causal LM (a torch.nn.Module with a .config)")


def _check_modes(modes: str | Sequence[str]) -> list[str]:
    """``modes`` as a list, each one of :data:`MODES`."""
    out = [modes] if isinstance(modes, str) else list(modes)
    for m in out:
        if m not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {m!r}")
    return out


def _modes(mode: str | Sequence[str], n: int) -> list[str]:
    """One mode per prompt: ``mode`` repeated ``n`` times, or a sequence of exactly ``n`` modes."""
    modes = _check_modes([mode] * n if isinstance(mode, str) else mode)
    if len(modes) != n:
        raise ValueError(f"mode must be one string or one per prompt ({n}), got {len(modes)}")
    return modes


def batch_inputs(prompts: Sequence[SetPrompt], modes: Sequence[str],
                 n_shared: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Pad prompts into one batch: ``input_ids (B, L)``, boolean ``keep (B, L, L)``, ``position_ids (B, L)``.

    The first ``n_shared`` tokens of every row stay in columns ``0..n_shared-1``; the rest of
    each row is right-aligned, so every row's last token is the last column. Pad tokens sit in
    between: no query sees them (a pad query sees only itself), and since positions are explicit
    their place changes nothing.
    """
    if not prompts:
        raise ValueError("prompts must be non-empty")
    modes = _modes(modes, len(prompts))
    if not 0 <= n_shared <= min(len(p) for p in prompts):
        raise ValueError(f"n_shared must lie in [0, shortest prompt length], got {n_shared}")
    L, B = max(len(p) for p in prompts), len(prompts)
    ids = torch.zeros(B, L, dtype=torch.long)
    keep = torch.eye(L, dtype=torch.bool).repeat(B, 1, 1)
    pos = torch.zeros(B, L, dtype=torch.long)
    for b, (p, mode) in enumerate(zip(prompts, modes)):
        n = len(p)
        cols = torch.cat([torch.arange(n_shared), torch.arange(L - n + n_shared, L)])  # (n,)
        mask, positions = mode_mask_and_positions(p.set_ids, mode)
        ids[b, cols] = p.input_ids
        keep[b, cols[:, None], cols[None, :]] = mask.dense(n)[0]
        pos[b, cols] = positions
    return ids, keep, pos


@torch.no_grad()
def next_token_logits(model, prompts: Sequence[SetPrompt], mode: str | Sequence[str] = "set",
                      share_prefix: bool = True) -> Tensor:
    """Logits ``(B, V)`` of the token after each prompt under ``mode`` (one mode, or one per prompt).

    With ``share_prefix`` (the prompts must then share their prefix tokens) the prefix is run
    once and its keys/values are reused by every row. This is exact: in every mode the prefix
    attends only to itself at positions ``0..n_A-1``.
    """
    from transformers import DynamicCache

    _check_model(model)
    if not prompts or not all(isinstance(p, SetPrompt) for p in prompts):
        raise ValueError("prompts must be a non-empty sequence of SetPrompt")
    modes = _modes(mode, len(prompts))
    param = next(model.parameters())
    n_shared = 0
    if share_prefix:
        n_shared = prompts[0].n_prefix
        first = prompts[0].input_ids[:n_shared]
        if any(p.n_prefix != n_shared or not torch.equal(p.input_ids[:n_shared], first) for p in prompts):
            raise ValueError("share_prefix=True needs prompts with identical prefixes; pass share_prefix=False")
        n_shared = min(n_shared, min(len(p) for p in prompts) - 1)  # keep >= 1 token per row to run
    ids, keep, pos = (t.to(param.device) for t in batch_inputs(prompts, modes, n_shared))
    kw = cache_kwarg(model)
    cache = None
    if n_shared:
        prefix_cache = DynamicCache(config=model.config)
        model(input_ids=ids[:1, :n_shared], position_ids=pos[:1, :n_shared], use_cache=True, logits_to_keep=1,
              attention_mask=additive_mask(keep[:1, :n_shared, :n_shared], param.dtype), **{kw: prefix_cache})
        prefix_cache.batch_repeat_interleave(len(prompts))  # every layer: (B, Hkv, n_A, D)
        cache = prefix_cache
    out = model(input_ids=ids[:, n_shared:], position_ids=pos[:, n_shared:], use_cache=False, logits_to_keep=1,
                attention_mask=additive_mask(keep[:, n_shared:], param.dtype), **{kw: cache})
    return out.logits[:, -1]  # (B, V), in the model's dtype


@torch.no_grad()
def generate(model, prompt: SetPrompt, mode: str = "set", max_new_tokens: int = 8,
             eos_token_id: int | None = None) -> list[int]:
    """Greedy decoding after ``prompt`` under ``mode``; returns the new token ids.

    Each new token attends to every earlier token, and its position continues from the
    prompt's *largest* position + 1 -- not from the sequence length, which HF would infer.
    """
    from transformers import DynamicCache

    _check_model(model)
    if not isinstance(prompt, SetPrompt):
        raise ValueError("prompt must be a SetPrompt")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    param = next(model.parameters())
    ids, keep, pos = (t.to(param.device) for t in batch_inputs([prompt], [mode]))
    kw = cache_kwarg(model)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, position_ids=pos, attention_mask=additive_mask(keep, param.dtype),
                use_cache=True, logits_to_keep=1, **{kw: cache})
    new: list[int] = []
    next_pos = int(pos.max()) + 1
    while True:
        token = int(out.logits[0, -1].argmax())
        new.append(token)
        if token == eos_token_id or len(new) == max_new_tokens:
            return new
        see_all = torch.zeros(1, 1, 1, cache.get_seq_length() + 1, dtype=param.dtype, device=param.device)
        out = model(input_ids=torch.tensor([[token]], device=param.device), position_ids=torch.tensor(
            [[next_pos]], device=param.device), attention_mask=see_all, use_cache=True, **{kw: cache})
        next_pos += 1


# ---------------------------------------------------------------------------------------------
# Multiple-choice questions
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Question:
    """A multiple-choice question; ``options[answer]`` is right. Each option is its own label."""

    text: str
    options: tuple[str, ...]
    answer: int
    topic: str = ""

    def __post_init__(self) -> None:
        if not self.text or len(self.options) < 2:
            raise ValueError("a Question needs text and at least two options")
        if not 0 <= self.answer < len(self.options):
            raise ValueError(f"answer must index options (0..{len(self.options) - 1}), got {self.answer}")


@dataclass(frozen=True)
class Template:
    """How a question becomes ``prefix {options} suffix`` and how the answer is read off.

    ``option`` renders one option; the option's own text is its label, so no label ("A)",
    "the first") moves with the order. The model's answer is the option whose first token
    (of ``answer_lead + option``) gets the highest next-token logit after the suffix.
    """

    prefix: str = "Options:"
    option: str = "\n- {option}"
    suffix: str = "\nQuestion: {question}\nAnswer:"
    answer_lead: str = " "


def load_bank(path: str | Path | None = None) -> list[Question]:
    """The book's multiple-choice question bank (``mcq_bank.json`` next to this module)."""
    path = BANK_PATH if path is None else Path(path)
    if not path.is_file():
        raise ValueError(f"path must be a JSON question bank, {path} does not exist")
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Question(q["question"], tuple(q["options"]), int(q["answer"]), q.get("topic", ""))
            for q in data["questions"]]


def mcq_prompt(tok, question: Question, order: Sequence[int] | None = None,
               template: Template = Template()) -> SetPrompt:
    """The prompt of ``question`` with its options in ``order`` (default: the bank's order)."""
    if not isinstance(question, Question):
        raise ValueError("question must be a Question")
    options = [template.option.format(option=o) for o in question.options]
    return build_prompt(tok, template.prefix.format(question=question.text), options,
                        template.suffix.format(question=question.text), order)


def answer_token_ids(tok, question: Question, template: Template = Template()) -> Tensor:
    """First token id of each option's answer text ``(n_options,)``; they must all differ."""
    ids = [_encode(tok, template.answer_lead + o)[0] for o in question.options]
    if len(set(ids)) != len(ids):
        raise ValueError(f"options of {question.text!r} share their first answer token; make them start differently")
    return torch.tensor(ids)


def orderings(n: int, how: str = "all", generator: torch.Generator | None = None) -> list[tuple[int, ...]]:
    """Orderings of ``n`` options.

    ``"all"``: the ``n!`` permutations in lexicographic order. ``"cyclic"``: the ``n`` rotations
    of a random ordering (each option visits each slot once). ``"reversed"``: a random ordering
    and its reverse (the official repository's protocol). Random draws use ``generator``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if how == "all":
        return list(itertools.permutations(range(n)))
    if how not in ("cyclic", "reversed"):
        raise ValueError(f"how must be 'all', 'cyclic' or 'reversed', got {how!r}")
    base = torch.randperm(n, generator=generator).tolist()
    if how == "reversed":
        return [tuple(base), tuple(reversed(base))]
    return [tuple(base[(i + s) % n] for i in range(n)) for s in range(n)]


@dataclass
class QuestionResult:
    """One question under every evaluated ordering and mode.

    Per mode: ``option_logits`` ``(n_orderings, n_options)`` in the question's option order,
    ``choice`` the chosen option per ordering, ``top_token`` the greedy token over the whole
    vocabulary per ordering, ``max_abs_diff`` the largest |logit difference| over the whole
    vocabulary between any ordering and the first.
    """

    question: Question
    orderings: list[tuple[int, ...]]
    option_logits: dict[str, Tensor] = field(default_factory=dict)
    choice: dict[str, Tensor] = field(default_factory=dict)
    top_token: dict[str, Tensor] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)

    def correct(self, mode: str) -> Tensor:
        """Bool ``(n_orderings,)``: was the chosen option the right one?"""
        return self.choice[mode] == self.question.answer

    def flipped(self, mode: str) -> bool:
        """Did the chosen option change across the orderings?"""
        return bool((self.choice[mode] != self.choice[mode][0]).any())


def evaluate(model, tok, questions: Sequence[Question], modes: Sequence[str] = MODES, how: str = "all",
             generator: torch.Generator | None = None, template: Template = Template(),
             batch_size: int = 64, progress: bool = True) -> list[QuestionResult]:
    """Score every question under every ordering (see :func:`orderings`) and every mode.

    Prompts of consecutive questions are batched (about ``batch_size`` prompts per forward
    pass; a question is never split). When the prompts share their prefix, its keys/values
    are computed once per batch (:func:`next_token_logits`).
    """
    if not questions or not all(isinstance(q, Question) for q in questions):
        raise ValueError("questions must be a non-empty sequence of Question")
    modes = _check_modes(modes)
    if not modes:
        raise ValueError("modes must name at least one mode")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results: list[QuestionResult] = []
    pending: list[tuple[QuestionResult, list[SetPrompt]]] = []

    def flush() -> None:
        prompts = [p for _, ps in pending for p in ps]
        prefix = prompts[0].input_ids[:prompts[0].n_prefix]
        shared = all(torch.equal(p.input_ids[:p.n_prefix], prefix) for p in prompts)
        logits = next_token_logits(model, prompts, [m for res, _ in pending for m in modes
                                                    for _ in res.orderings], share_prefix=shared).cpu()
        start = 0
        for res, ps in pending:
            per_mode = logits[start:start + len(ps)].view(len(modes), len(res.orderings), -1)  # (M, O, V)
            start += len(ps)
            answer_ids = answer_token_ids(tok, res.question, template)
            for m, lg in zip(modes, per_mode):
                res.option_logits[m] = lg[:, answer_ids]  # (O, n_options)
                res.choice[m] = res.option_logits[m].argmax(-1)
                res.top_token[m] = lg.argmax(-1)
                res.max_abs_diff[m] = float((lg - lg[:1]).abs().max())
        pending.clear()

    bar = tqdm(total=len(questions), desc="questions", disable=not progress, mininterval=0.5)
    for q in questions:
        res = QuestionResult(q, orderings(len(q.options), how, generator))
        prompts = [mcq_prompt(tok, q, o, template) for o in res.orderings]
        if pending and sum(len(ps) for _, ps in pending) + len(prompts) * len(modes) > batch_size:
            done = len(pending)
            flush()
            bar.update(done)
        pending.append((res, prompts * len(modes)))  # rows: mode-major, then ordering
        results.append(res)
    done = len(pending)
    flush()
    bar.update(done)
    bar.close()
    return results


def summarize(results: Sequence[QuestionResult], mode: str) -> dict[str, Any]:
    """Accuracy (mean over questions and orderings, i.e. E_π[acc(π)]), accuracy by the slot the
    right answer occupies in the prompt (``acc_by_slot[k]``: slot k from the top, over every
    (question, ordering) with the answer there), the flip rate, and the largest logit difference."""
    if not results:
        raise ValueError("results must be non-empty")
    _check_modes([mode])
    correct = torch.cat([r.correct(mode).float() for r in results])  # (Q * O,)
    slots = torch.tensor([o.index(r.question.answer) for r in results for o in r.orderings])  # (Q * O,)
    n_slots = max(len(r.question.options) for r in results)
    return {
        "accuracy": float(correct.mean()),
        "acc_by_slot": [float(correct[slots == k].mean()) if bool((slots == k).any()) else float("nan")
                        for k in range(n_slots)],
        "flip_rate": sum(r.flipped(mode) for r in results) / len(results),
        "max_abs_diff": max(r.max_abs_diff[mode] for r in results),
    }


# ---------------------------------------------------------------------------------------------
# Figures and the explorer
# ---------------------------------------------------------------------------------------------

def plot_mask_and_positions(prompt: SetPrompt, modes: Sequence[str] = ("normal", "mask_only", "set"), axes=None):
    """One column per mode: the attention mask (dark = may attend) over the prompt's tokens and,
    below it, each token's position id, coloured by set element (grey: prefix/suffix)."""
    import matplotlib.pyplot as plt

    from companion.viz import plot_mask

    if not isinstance(prompt, SetPrompt):
        raise ValueError("prompt must be a SetPrompt")
    modes = _check_modes(modes)
    if axes is None:
        _, axes = plt.subplots(2, len(modes), figsize=(4.4 * len(modes), 8.0), squeeze=False,
                               gridspec_kw={"height_ratios": [3, 1.2]}, layout="constrained")
    n = len(prompt)
    colours = ["0.55" if e < 0 else f"C{e % 10}" for e in prompt.set_ids.tolist()]
    for col, mode in enumerate(modes):
        plot_mask(prompt.mask(mode).dense(n)[0], ax=axes[0][col], title=MODE_TITLES.get(mode, mode),
                  labels=list(prompt.tokens))
        ax = axes[1][col]
        ax.bar(range(n), prompt.position_ids(mode).tolist(), color=colours)
        ax.set_xticks(range(n), list(prompt.tokens), rotation=90, fontsize=7)
        ax.set_xlim(-0.5, n - 0.5)
        ax.set_ylim(0, n)  # the same scale in every column, so the reset shows
        ax.set_ylabel("position id")
        ax.set_title("position ids (colour: set element)", fontsize=9)
    return axes


def explorer(model, tok, questions: Sequence[Question], template: Template = Template()):
    """Pick a question and one of the orderings of its options; see the option probabilities
    under normal and set-based prompting (the set-based bars never move)."""
    import ipywidgets as W
    import matplotlib.pyplot as plt

    if not questions or not all(isinstance(q, Question) for q in questions):
        raise ValueError("questions must be a non-empty sequence of Question")
    pick = W.Dropdown(options=[(q.text, i) for i, q in enumerate(questions)], description="question",
                      layout=W.Layout(width="420px"))
    order = W.Dropdown(description="order", layout=W.Layout(width="420px"))
    out = W.Output()

    def fill_orders(*_):
        q = questions[pick.value]
        order.options = [(" · ".join(q.options[i] for i in o), o) for o in orderings(len(q.options), "all")]
        order.index = 0

    def draw(*_):
        q = questions[pick.value]
        prompt = mcq_prompt(tok, q, order.value, template)
        logits = next_token_logits(model, [prompt, prompt], ["normal", "set"])[:, answer_token_ids(tok, q, template)]
        probs = torch.softmax(logits.float(), dim=-1).cpu()  # (2, n_options)
        with out:
            out.clear_output(wait=True)
            fig, axes = plt.subplots(1, 2, figsize=(8.4, 2.8), sharey=True)
            for ax, p, name in zip(axes, probs, ("normal prompting", "set-based prompting")):
                ax.bar(range(len(q.options)), p.tolist(),
                       color=["C2" if i == q.answer else "C7" for i in range(len(q.options))])
                ax.set_xticks(range(len(q.options)), q.options)
                ax.set_title(f"{name}: answers {q.options[int(p.argmax())]!r}", fontsize=10)
            axes[0].set_ylabel("probability among options")
            fig.suptitle("options in the prompt: " + " · ".join(q.options[i] for i in order.value), fontsize=9)
            plt.show()

    def new_question(_):
        order.unobserve(draw, names="value")  # refilling the orderings must not draw twice
        fill_orders()
        order.observe(draw, names="value")
        draw()

    fill_orders()
    draw()
    pick.observe(new_question, names="value")
    order.observe(draw, names="value")
    return W.VBox([pick, order, out])
