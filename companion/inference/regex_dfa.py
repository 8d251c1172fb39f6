"""A small regular-expression compiler used as an incremental constraint for constrained decoding.

* :class:`RegexDFA` -- Thompson NFA, lazy subset construction, and removal of dead states by
  co-reachability, so that a prefix is accepted exactly when some completion matches: an exact,
  incremental character-level prefix check.
* :class:`TokenConstraint` -- lifts a :class:`RegexDFA` to the token ids of a tokenizer (each token
  a string), counts constraint calls, and can simulate an expensive checker (``cost_s``).

Used by the AWRS chapter (:mod:`companion.inference.awrs`); any chapter that constrains
generation with a regular language can use it.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
from torch import Tensor

DEAD = -1  # the DFA state of strings that can no longer be completed
UNIVERSE = frozenset(chr(i) for i in range(32, 127)) | frozenset("\n\t")  # characters '.' and [^...] range over
_ESCAPES = {"d": frozenset("0123456789"), "s": frozenset(" \n\t"), "n": frozenset("\n"), "t": frozenset("\t"),
            "w": frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")}


# ----------------------------------------------------------------------------------------------
# A regular expression as an incremental character automaton
# ----------------------------------------------------------------------------------------------

class _Parser:
    """Recursive descent over a regex subset: literals, escapes, ``.``, ``[...]``, ``(...)``, ``|``,
    and the quantifiers ``* + ?  {m}  {m,}  {m,n}``. Produces a small AST of tuples."""

    def __init__(self, pattern: str) -> None:
        self.s, self.i = pattern, 0

    def error(self, what: str) -> ValueError:
        return ValueError(f"pattern: {what} at position {self.i} of {self.s!r}")

    def peek(self) -> str | None:
        return self.s[self.i] if self.i < len(self.s) else None

    def take(self) -> str:
        if self.i >= len(self.s):
            raise self.error("unexpected end")
        self.i += 1
        return self.s[self.i - 1]

    def parse(self):
        node = self.alt()
        if self.i != len(self.s):
            raise self.error("unbalanced ')'")
        return node

    def alt(self):
        branches = [self.seq()]
        while self.peek() == "|":
            self.take()
            branches.append(self.seq())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def seq(self):
        items = []
        while self.peek() not in (None, "|", ")"):
            items.append(self.quantified(self.atom()))
        return ("cat", items)

    def atom(self):
        ch = self.take()
        if ch == "(":
            node = self.alt()
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.take()
            return node
        if ch == "[":
            return ("set", self.char_class())
        if ch == ".":
            return ("set", UNIVERSE - {"\n"})
        if ch == "\\":
            e = self.take()
            return ("set", _ESCAPES.get(e, frozenset(e)))
        if ch in "*+?{":
            raise self.error(f"quantifier {ch!r} without an operand")
        return ("set", frozenset(ch))

    def char_class(self) -> frozenset:
        negate = self.peek() == "^"
        if negate:
            self.take()
        chars: set[str] = set()
        first = True
        while first or self.peek() != "]":
            first = False
            c = self.take()
            if c == "\\":
                e = self.take()
                chars |= _ESCAPES.get(e, {e})
                continue
            if self.peek() == "-" and self.i + 1 < len(self.s) and self.s[self.i + 1] != "]":
                self.take()
                hi = self.take()
                if ord(hi) < ord(c):
                    raise self.error(f"bad range {c}-{hi}")
                chars |= {chr(k) for k in range(ord(c), ord(hi) + 1)}
            else:
                chars.add(c)
        self.take()  # ']'
        return frozenset(UNIVERSE - chars) if negate else frozenset(chars)

    def quantified(self, node):
        while self.peek() in ("*", "+", "?", "{"):
            q = self.take()
            if q == "*":
                node = ("rep", node, 0, None)
            elif q == "+":
                node = ("rep", node, 1, None)
            elif q == "?":
                node = ("rep", node, 0, 1)
            else:
                end = self.s.find("}", self.i)
                if end < 0:
                    raise self.error("missing '}'")
                body, self.i = self.s[self.i:end], end + 1
                lo, _, hi = body.partition(",")
                try:
                    m = int(lo)
                    n = m if "," not in body else (None if hi.strip() == "" else int(hi))
                except ValueError:
                    raise self.error(f"bad repetition {{{body}}}") from None
                if n is not None and n < m:
                    raise self.error(f"bad repetition {{{body}}}")
                node = ("rep", node, m, n)
        return node


class RegexDFA:
    """A regular expression as a lazily built DFA over characters, with dead states removed.

    ``step(state, ch)`` returns :data:`DEAD` as soon as no completion of the string can match, so
    ``prefix(s)`` is the exact prefix-viability check AWRS needs and ``complete(s)`` is full match.
    DFA states are sets of NFA states that can still reach the accepting state (co-reachable).
    """

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"pattern must be a non-empty str, got {pattern!r}")
        self.pattern = pattern
        self._eps: list[list[int]] = []
        self._edges: list[list[tuple[frozenset, int]]] = []
        start, self._accept = self._build(_Parser(pattern).parse())
        self._live = self._coreachable()
        self._sets: list[frozenset] = []
        self._ids: dict[frozenset, int] = {}
        self._delta: dict[tuple[int, str], int] = {}
        self.start = self._intern(self._closure({start}))

    # -- Thompson construction -----------------------------------------------------------------
    def _new(self) -> int:
        self._eps.append([])
        self._edges.append([])
        return len(self._eps) - 1

    def _build(self, node) -> tuple[int, int]:
        kind = node[0]
        s, e = self._new(), self._new()
        if kind == "set":
            self._edges[s].append((node[1], e))
        elif kind == "cat":
            cur = s
            for item in node[1]:
                a, b = self._build(item)
                self._eps[cur].append(a)
                cur = b
            self._eps[cur].append(e)
        elif kind == "alt":
            for item in node[1]:
                a, b = self._build(item)
                self._eps[s].append(a)
                self._eps[b].append(e)
        else:  # ("rep", node, m, n)
            _, sub, m, n = node
            cur = s
            for _ in range(m):
                a, b = self._build(sub)
                self._eps[cur].append(a)
                cur = b
            if n is None:  # a loop
                a, b = self._build(sub)
                self._eps[cur] += [a, e]
                self._eps[b].append(cur)
            else:  # n - m optional copies, each may skip to the end
                for _ in range(n - m):
                    a, b = self._build(sub)
                    self._eps[cur] += [a, e]
                    cur = b
            self._eps[cur].append(e)
        return s, e

    def _coreachable(self) -> frozenset:
        back: list[list[int]] = [[] for _ in self._eps]
        for q, targets in enumerate(self._eps):
            for t in targets:
                back[t].append(q)
        for q, edges in enumerate(self._edges):
            for cs, t in edges:
                if cs:
                    back[t].append(q)
        seen, todo = {self._accept}, [self._accept]
        while todo:
            for q in back[todo.pop()]:
                if q not in seen:
                    seen.add(q)
                    todo.append(q)
        return frozenset(seen)

    def _closure(self, states: set[int]) -> frozenset:
        out, todo = set(states), list(states)
        while todo:
            for t in self._eps[todo.pop()]:
                if t not in out:
                    out.add(t)
                    todo.append(t)
        return frozenset(out & self._live)

    def _intern(self, states: frozenset) -> int:
        if not states:
            return DEAD
        if states not in self._ids:
            self._ids[states] = len(self._sets)
            self._sets.append(states)
        return self._ids[states]

    # -- the automaton -------------------------------------------------------------------------
    def step(self, state: int, ch: str) -> int:
        """The state after reading ``ch`` (:data:`DEAD` if no completion can match any more)."""
        if state == DEAD:
            return DEAD
        key = (state, ch)
        nxt = self._delta.get(key)
        if nxt is None:
            moved = {t for q in self._sets[state] for cs, t in self._edges[q] if ch in cs}
            nxt = self._delta[key] = self._intern(self._closure(moved))
        return nxt

    def run(self, text: str, state: int | None = None) -> int:
        """The state after reading ``text`` from ``state`` (default: the start state)."""
        state = self.start if state is None else state
        for ch in text:
            state = self.step(state, ch)
            if state == DEAD:
                return DEAD
        return state

    def accepting(self, state: int) -> bool:
        return state != DEAD and self._accept in self._sets[state]

    def prefix(self, text: str) -> bool:
        """Can ``text`` still be extended into a full match?"""
        return self.run(text) != DEAD

    def complete(self, text: str) -> bool:
        """Does ``text`` match the whole pattern?"""
        return self.accepting(self.run(text))

    @property
    def n_states(self) -> int:
        """DFA states built so far (the DFA is built lazily)."""
        return len(self._sets)


class TokenConstraint:
    """The Boolean potential of a character DFA on token sequences, with a call counter.

    ``token_strings[v]`` is the text of token ``v`` (``None``: a token the constraint cannot spell,
    e.g. a special token; always rejected); tokens in ``eos_ids`` end the string and are accepted iff
    the text so far is a complete match. A constraint *state* is the DFA state after the context.
    ``cost_s`` > 0 makes every call busy-wait that long, to simulate an expensive checker (the
    paper's regime: an incremental parser at tens of microseconds per call).
    """

    def __init__(self, dfa: RegexDFA, token_strings: Sequence[str | None], eos_ids: Sequence[int],
                 cost_s: float = 0.0) -> None:
        if not isinstance(dfa, RegexDFA):
            raise ValueError(f"dfa must be a RegexDFA, got {type(dfa).__name__}")
        if len(token_strings) == 0:
            raise ValueError("token_strings must hold one entry per token id, got an empty sequence")
        if not eos_ids or any(not 0 <= int(e) < len(token_strings) for e in eos_ids):
            raise ValueError(f"eos_ids must be non-empty token ids in [0, {len(token_strings)}), got {list(eos_ids)}")
        self.dfa = dfa
        self.strings = list(token_strings)
        self.eos = frozenset(int(e) for e in eos_ids)
        if not isinstance(cost_s, (int, float)) or not 0 <= cost_s < 1:
            raise ValueError(f"cost_s must be a number of seconds in [0, 1), got {cost_s!r}")
        self.cost_s = float(cost_s)
        self.calls = 0

    @property
    def vocab_size(self) -> int:
        return len(self.strings)

    def start(self) -> int:
        return self.dfa.start

    def accepts(self, state: int, token: int) -> bool:
        """One constraint evaluation: complete check for EOS, prefix check for other tokens."""
        self.calls += 1
        if self.cost_s:
            until = time.perf_counter() + self.cost_s
            while time.perf_counter() < until:  # busy-wait: a simulated expensive checker
                pass
        if token in self.eos:
            return self.dfa.accepting(state)
        text = self.strings[token]
        return text is not None and text != "" and self.dfa.run(text, state) != DEAD

    def advance(self, state: int, token: int) -> int:
        """The DFA state after appending ``token`` (EOS leaves it unchanged)."""
        if token in self.eos:
            return state
        text = self.strings[token]
        return DEAD if text is None else self.dfa.run(text, state)

    def mask(self, state: int) -> Tensor:
        """Full-vocabulary masking: evaluate the constraint on every token (``|V|`` calls) -> (V,) bool."""
        return torch.tensor([self.accepts(state, v) for v in range(len(self.strings))], dtype=torch.bool)
