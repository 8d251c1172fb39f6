"""Claim checks that can fail, and the book's reproduction ledger.

Every chapter states what it checks through one :class:`ClaimCheck`, in three kinds:

* :meth:`ClaimCheck.exact` -- an **implementation check**: an invariance, an equivalence to a special
  case, identical greedy output. It can fail only through a bug.
* :meth:`ClaimCheck.empirical` -- the paper's result at this scale, tested against a threshold
  (from the paper, the card, or fixed before looking at seeds). It names one or more **controls**
  (the baseline or ablation the paper compares against, same budget) and applies the *same* test
  to each: the claim holds only if the method passes and every control fails.
* :meth:`ClaimCheck.not_reproduced` -- a claim of the paper that does not hold at this scale:
  measured value, why, and the ``gpu`` configuration that would test it. Recorded, never asserted.

An implementation check that cannot run on this machine (the Triton kernel where ``triton`` does
not install) is stated with :meth:`ClaimCheck.not_run`: it keeps its place in the claim list, says
why it did not run, and agrees with a ledger entry where it holds.

A chapter ends its claim check with :meth:`ClaimCheck.close`, which prints the table, and checks
the run against the committed ledger (``companion/ledger/<slug>.json``): a claim that went missing,
appeared, or changed kind or status fails the chapter. ``python -m companion.claims record SLUG``
runs a chapter on seeds 0, 1, 2 and writes its ledger file; ``python -m companion.claims`` prints
the whole ledger::

    C = claims.ClaimCheck("structure/pointer-networks")
    C.exact("masked positions get zero probability", bool(p_masked.max() == 0), detail=f"max {p_masked.max()}")
    C.empirical("hull accuracy at n=50 (trained on n<=10)", value=acc_ptr, threshold=0.6, op=">=",
                source="card", controls={"seq2seq + attention": acc_s2s}, paper=0.72)
    C.not_reproduced("TSP tour length within 5% of optimal", value=gap, paper=0.05, why="...", gpu="...")
    C.close()
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from . import config

KINDS = ("exact", "empirical", "not reproduced")
STATUSES = ("holds", "reproduced", "reproduced at reduced scale", "not reproduced", "not run")
OPS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}
LEDGER_DIR = Path(__file__).resolve().parent / "ledger"
RECORD_ENV = "BOOK_CLAIMS_RECORD"  # set to 1 by `record`: write the ledger instead of checking against it
SEEDS = (0, 1, 2)


@dataclass
class Claim:
    """One checked claim as it appears in the ledger."""

    name: str
    kind: str
    status: str
    value: float | bool | None = None
    threshold: float | None = None
    op: str | None = None
    source: str | None = None
    controls: dict[str, float] = field(default_factory=dict)
    paper: float | str | None = None
    unit: str = ""
    detail: str = ""
    why: str = ""
    gpu: str = ""

    def key(self) -> tuple[str, str, str]:
        """What must agree between a run and the ledger: name, kind, status (not values).

        An exact check that did not run here (:meth:`ClaimCheck.not_run`) agrees with one that holds.
        """
        return (self.name, self.kind, _ledger_status(self.kind, self.status))


def _ledger_status(kind: str, status: str) -> str:
    """The status compared with the ledger: an exact check that was not run counts as one that holds."""
    return "holds" if kind == "exact" and status == "not run" else status


def _number(x: Any, what: str) -> float:
    """``x`` as a finite float (tensors and numpy scalars included), or a ValueError naming ``what``."""
    if hasattr(x, "item"):
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{what} must be a real number, got {type(x).__name__} {x!r}")
    x = float(x)
    if math.isnan(x):
        raise ValueError(f"{what} is NaN")
    return x


def _fmt(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if x == 0 or 1e-3 <= abs(x) < 1e5:
            return f"{x:.4g}"
        return f"{x:.2e}"
    return str(x)


def slug_of(chapter: str) -> str:
    """The ledger key of a chapter id ``"<part>/<slug>"`` (or a path to its ``.md``)."""
    return Path(chapter).with_suffix("").name


class ClaimCheck:
    """The claims of one chapter for one run (profile and seed from :mod:`companion.config`).

    ``chapter`` is ``"<part>/<slug>"`` as in ``book/_toc.yml``. ``scale`` says whether an
    empirical claim that holds here holds at the paper's scale (``"paper"``) or at a reduced one
    (``"reduced"``, the default for the ``ci`` profile).
    """

    def __init__(self, chapter: str, *, scale: str | None = None) -> None:
        if not isinstance(chapter, str) or chapter.count("/") != 1 or chapter.endswith(".md"):
            raise ValueError(f"chapter must be '<part>/<slug>' as in book/_toc.yml, got {chapter!r}")
        if scale not in (None, "reduced", "paper"):
            raise ValueError(f"scale must be 'reduced' or 'paper', got {scale!r}")
        self.chapter = chapter
        self.slug = slug_of(chapter)
        self.profile = config.profile()
        self.seed = config.seed()
        self.scale = scale or ("paper" if self.profile == "gpu" else "reduced")
        self.claims: list[Claim] = []
        self.closed = False

    # ----------------------------------------------------------------------------- the three kinds
    def _add(self, claim: Claim) -> Claim:
        if self.closed:
            raise RuntimeError(f"claims of {self.chapter} are closed; add claims before close()")
        if any(c.name == claim.name for c in self.claims):
            raise ValueError(f"claim name {claim.name!r} is used twice in {self.chapter}")
        if not claim.name.strip():
            raise ValueError("name must be a non-empty sentence saying what is checked")
        self.claims.append(claim)
        return claim

    def exact(self, name: str, ok: bool, *, detail: str = "", value: float | None = None) -> Claim:
        """An implementation check: ``ok`` must be true; a failure means a bug. Raises AssertionError."""
        if hasattr(ok, "item"):
            ok = ok.item()
        if not isinstance(ok, bool):
            raise TypeError(f"ok must be a bool (the checked condition), got {type(ok).__name__}")
        claim = self._add(Claim(name=name, kind="exact", status="holds", value=value, detail=detail))
        print(f"[exact]     {'holds ' if ok else 'FAILS '} {name}" + (f"  ({detail})" if detail else ""))
        if not ok:
            claim.status = "fails"
            raise AssertionError(f"Implementation check failed in {self.chapter}: {name}."
                                 + (f" {detail}." if detail else "") + " This is a bug, not a result.")
        return claim

    def not_run(self, name: str, *, why: str) -> Claim:
        """An implementation check that cannot run on this machine; ``why`` says what is missing.

        Use it only for a missing prerequisite of the platform (e.g. ``triton`` where it does not
        install), never for a check that is inconvenient: the same check must run, and hold, where
        the prerequisite exists (the ledger records it there).
        """
        if not isinstance(why, str) or not why.strip():
            raise ValueError(f"claim {name!r}: why must say what this machine lacks to run the check")
        claim = self._add(Claim(name=name, kind="exact", status="not run", detail=why))
        print(f"[exact]     not run {name}  ({why})")
        return claim

    def empirical(self, name: str, *, value: float, threshold: float, op: str = ">=", source: str,
                  controls: Mapping[str, float], paper: float | str | None = None, unit: str = "",
                  detail: str = "") -> Claim:
        """The paper's claim at this scale: ``value op threshold`` must hold and must fail for every control.

        ``source`` says where the threshold comes from ("paper, Table 2", "card", "fixed before
        seeds"). ``controls`` maps each control arm's name to its value under the same metric.
        Raises AssertionError naming the claim, the values and the threshold when the method fails
        the test or a control passes it (then the test is no evidence for the claim).
        """
        if op not in OPS:
            raise ValueError(f"op must be one of {tuple(OPS)}, got {op!r}")
        if not isinstance(source, str) or not source.strip():
            raise ValueError("source must say where the threshold comes from (paper, card, fixed before seeds)")
        if not isinstance(controls, Mapping) or not controls:
            raise ValueError(f"claim {name!r}: controls must map at least one control arm to its value")
        v = _number(value, f"value of {name!r}")
        t = _number(threshold, f"threshold of {name!r}")
        ctl = {str(k): _number(x, f"control {k!r} of {name!r}") for k, x in controls.items()}
        status = "reproduced" if self.scale == "paper" else "reproduced at reduced scale"
        claim = self._add(Claim(name=name, kind="empirical", status=status, value=v, threshold=t, op=op,
                                source=source, controls=ctl, paper=paper, unit=unit, detail=detail))
        test = OPS[op]
        passing = [k for k, x in ctl.items() if test(x, t)]
        ok = test(v, t) and not passing
        ctl_txt = ", ".join(f"{k} {_fmt(x)}" for k, x in ctl.items())
        print(f"[empirical] {'holds ' if ok else 'FAILS '} {name}: {_fmt(v)}{unit} {op} {_fmt(t)}{unit} "
              f"({source}); controls: {ctl_txt}" + (f"; paper: {_fmt(paper)}" if paper is not None else ""))
        if not test(v, t):
            claim.status = "fails"
            raise AssertionError(f"Claim not reproduced in {self.chapter} (seed {self.seed}): {name}. "
                                 f"Measured {_fmt(v)}{unit}, needed {op} {_fmt(t)}{unit} ({source}); "
                                 f"controls: {ctl_txt}. Do not move the threshold: record it with "
                                 f"not_reproduced() and say why.")
        if passing:
            claim.status = "fails"
            raise AssertionError(f"Claim is no evidence in {self.chapter} (seed {self.seed}): {name}. The method "
                                 f"passes ({_fmt(v)}{unit} {op} {_fmt(t)}{unit}) but so does the control "
                                 f"{', '.join(repr(k) for k in passing)} ({ctl_txt}): make the task harder "
                                 f"until the control fails the same test.")
        return claim

    def not_reproduced(self, name: str, *, value: float | None, why: str, gpu: str,
                       paper: float | str | None = None, threshold: float | None = None, op: str | None = None,
                       controls: Mapping[str, float] | None = None, unit: str = "") -> Claim:
        """A claim of the paper that does not hold here: printed and recorded, never asserted.

        ``why`` explains the gap; ``gpu`` names the configuration that would test it
        (e.g. ``"BOOK_PROFILE=gpu: 12 layers, 20k steps"``).
        """
        if not why.strip() or not gpu.strip():
            raise ValueError(f"claim {name!r}: why and gpu must say why it fails here and what would test it")
        if op is not None and op not in OPS:
            raise ValueError(f"op must be one of {tuple(OPS)}, got {op!r}")
        v = None if value is None else _number(value, f"value of {name!r}")
        ctl = {str(k): _number(x, f"control {k!r} of {name!r}") for k, x in (controls or {}).items()}
        claim = self._add(Claim(name=name, kind="not reproduced", status="not reproduced", value=v,
                                threshold=None if threshold is None else float(threshold), op=op,
                                controls=ctl, paper=paper, unit=unit, why=why, gpu=gpu))
        print(f"[not reproduced] {name}: measured {_fmt(v)}{unit}"
              + (f" (paper: {_fmt(paper)})" if paper is not None else "") + f". Why: {why} To test it: {gpu}")
        return claim

    # ----------------------------------------------------------------------------- closing a run
    def close(self) -> "ClaimCheck":
        """Print the table, then record the run (``record``) or check it against the committed ledger.

        Raises AssertionError when a paper chapter has no empirical claim that holds, or when the
        run's claims (names, kinds, statuses) disagree with the ledger for this profile.
        """
        self.closed = True
        self.display()
        part = self.chapter.split("/")[0]
        if part not in ("kernels", "appendix") and not any(c.kind == "empirical" for c in self.claims):
            raise AssertionError(f"{self.chapter} has no empirical claim with a control: the paper's headline "
                                 "claim must be tested against the baseline it is compared with.")
        if os.environ.get(RECORD_ENV) == "1":
            self._record()
        else:
            self._check_against_ledger()
        return self

    def run_record(self) -> dict[str, Any]:
        """This run as it is written to the ledger."""
        from .device import pick_device

        return {"seed": self.seed, "profile": self.profile, "device": describe_device(pick_device()),
                "date": _dt.date.today().isoformat(), "claims": [asdict(c) for c in self.claims]}

    def _record(self) -> None:
        path = LEDGER_DIR / f"{self.slug}.json"
        data = load_chapter(self.slug) or {"chapter": self.chapter, "runs": []}
        data["chapter"] = self.chapter
        data["runs"] = [r for r in data["runs"] if (r["profile"], r["seed"]) != (self.profile, self.seed)]
        data["runs"].append(self.run_record())
        data["runs"].sort(key=lambda r: (r["profile"], r["seed"]))
        LEDGER_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
        print(f"recorded seed {self.seed} ({self.profile}) in {path}")

    def _check_against_ledger(self) -> None:
        data = load_chapter(self.slug)
        if data is None:
            if not LEDGER_DIR.exists():  # the package was installed without its ledger: nothing to compare
                return
            raise AssertionError(f"{self.chapter} has no ledger file {self.slug}.json: run "
                                 f"`python -m companion.claims record {self.chapter}` and commit it.")
        runs = [r for r in data["runs"] if r["profile"] == self.profile]
        if not runs:
            print(f"(no {self.profile} runs in the ledger for {self.chapter}: nothing to compare)")
            return
        ref = next((r for r in runs if r["seed"] == self.seed), runs[0])
        want = [(c["name"], c["kind"], _ledger_status(c["kind"], c["status"])) for c in ref["claims"]]
        got = [c.key() for c in self.claims]
        if got != want:
            missing = [w for w in want if w not in got]
            new = [g for g in got if g not in want]
            raise AssertionError(f"{self.chapter} (seed {self.seed}) disagrees with its ledger "
                                 f"(seed {ref['seed']}): missing or changed {missing}; new or changed {new}. "
                                 f"If the change is intended, rerun `python -m companion.claims record "
                                 f"{self.chapter}` and commit the ledger.")
        print(f"ledger: {len(got)} claims agree with companion/ledger/{self.slug}.json")

    def display(self) -> None:
        """The claims of this run as a table (HTML in a notebook, text otherwise)."""
        rows = [_row(c) for c in self.claims]
        header = ["kind", "claim", "measured", "test", "controls", "paper", "status"]
        try:
            from IPython import get_ipython
            from IPython.display import HTML, display

            if get_ipython() is not None:
                display(HTML(_html_table(header, rows)))
                return
        except ImportError:
            pass
        print(_text_table(header, rows))


def _row(c: Claim) -> list[str]:
    test = f"{c.op} {_fmt(c.threshold)} ({c.source})" if c.op and c.threshold is not None and c.source else (
        f"{c.op} {_fmt(c.threshold)}" if c.op and c.threshold is not None else "")
    ctl = "; ".join(f"{k}: {_fmt(v)}" for k, v in c.controls.items())
    return [c.kind, c.name, _fmt(c.value) + (c.unit or ""), test, ctl, _fmt(c.paper), c.status]


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th style='text-align:left'>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{_esc(x)}</td>" for x in r) + "</tr>"
                   for r in rows)
    return f"<table class='claims-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _text_table(header: list[str], rows: list[list[str]], max_width: int = 60) -> str:
    cut = [[x if len(x) <= max_width else x[: max_width - 1] + "…" for x in r] for r in [header] + rows]
    widths = [max(len(r[i]) for r in cut) for i in range(len(header))]
    lines = ["  ".join(x.ljust(w) for x, w in zip(r, widths)) for r in cut]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def describe_device(device: Any) -> str:
    """A short name of the device a run used ("cpu", "cuda: NVIDIA H100 80GB HBM3")."""
    import torch

    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return str(getattr(device, "type", device))


def glue(name: str, value: Any) -> Any:
    """Store ``value`` for the chapter's prose (``{glue:text}`name:.3f```) without displaying it.

    Numbers in Markdown cells come from here, never typed by hand. Outside a notebook build the
    value is returned unchanged.
    """
    if hasattr(value, "item"):
        value = value.item()
    try:
        from myst_nb import glue as _glue

        _glue(name, value, display=False)
    except Exception:  # noqa: BLE001 - myst-nb missing or no IPython kernel: nothing to store
        pass
    return value


# --------------------------------------------------------------------------------- the ledger
def load_chapter(slug: str) -> dict[str, Any] | None:
    """The committed ledger of one chapter (by slug), or None."""
    path = LEDGER_DIR / f"{slug_of(slug)}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def load_ledger() -> list[dict[str, Any]]:
    """Every committed chapter ledger, sorted by chapter id."""
    if not LEDGER_DIR.exists():
        return []
    out = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(LEDGER_DIR.glob("*.json"))]
    return sorted(out, key=lambda d: d["chapter"])


def ledger_rows(ledger: list[dict[str, Any]] | None = None) -> list[dict[str, str]]:
    """One row per (chapter, claim): kind, paper, threshold, seeds 0/1/2 (ci), controls, gpu, status."""
    rows = []
    for chap in load_ledger() if ledger is None else ledger:
        ci = {r["seed"]: r for r in chap["runs"] if r["profile"] == "ci"}
        gpu = [r for r in chap["runs"] if r["profile"] == "gpu"]
        first = ci.get(0) or (next(iter(ci.values())) if ci else (gpu[0] if gpu else None))
        if first is None:
            continue
        for c in first["claims"]:
            def value_in(run: dict[str, Any] | None, name: str = c["name"]) -> str:
                if run is None:
                    return "—"
                hit = next((x for x in run["claims"] if x["name"] == name), None)
                if hit is None:
                    return "—"
                if hit["value"] is None and hit["kind"] == "exact":
                    return hit["status"]
                return _fmt(hit["value"])

            def controls_in(run: dict[str, Any] | None, name: str = c["name"]) -> str:
                hit = None if run is None else next((x for x in run["claims"] if x["name"] == name), None)
                return "; ".join(f"{k}: {_fmt(v)}" for k, v in (hit or {}).get("controls", {}).items())

            test = f"{c['op']} {_fmt(c['threshold'])}" if c.get("op") and c.get("threshold") is not None else ""
            if c.get("source"):
                test += f" ({c['source']})"
            g = gpu[0] if gpu else None
            rows.append({
                "chapter": chap["chapter"], "claim": c["name"], "kind": c["kind"], "paper": _fmt(c.get("paper")),
                "threshold": test,
                **{f"seed {s}": value_in(ci.get(s)) for s in SEEDS},
                "controls (seed 0)": controls_in(ci.get(0)),
                "gpu": "not run" if g is None else f"{value_in(g)} ({g['device']}, {g['date']})",
                "status": c["status"],
                "why": c.get("why", ""),
            })
    return rows


LEDGER_COLUMNS = ["chapter", "claim", "kind", "paper", "threshold", "seed 0", "seed 1", "seed 2",
                  "controls (seed 0)", "gpu", "status"]


def ledger_table(html: bool = True) -> Any:
    """The reproduction ledger as an HTML table (for the book page) or plain text (terminal)."""
    rows = ledger_rows()
    body = [[r[k] for k in LEDGER_COLUMNS] for r in rows]
    if not html:
        return _text_table(LEDGER_COLUMNS, body, max_width=48)
    from IPython.display import HTML

    return HTML(_html_table(LEDGER_COLUMNS, body))


def ledger_summary() -> dict[str, int]:
    """How many claims of the ledger have each status."""
    out: dict[str, int] = {}
    for r in ledger_rows():
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


# --------------------------------------------------------------------------------- command line
def _chapter_path(chapter: str, book: Path) -> Path:
    path = Path(chapter)
    if path.suffix == ".md" and path.exists():
        return path
    cand = book / f"{chapter}.md"
    if not cand.exists():
        raise SystemExit(f"no chapter {chapter!r}: expected book/<part>/<slug>.md")
    return cand


def record(chapters: list[str], seeds: list[int], profile: str = "ci") -> int:
    """Execute each chapter once per seed (through pytest/nbval) with recording on; returns the exit code."""
    root = Path.cwd()
    book = root / "book"
    worst = 0
    for chapter in chapters:
        path = _chapter_path(chapter, book)
        for s in seeds:
            env = dict(os.environ, BOOK_SEED=str(s), BOOK_PROFILE=profile, **{RECORD_ENV: "1"})
            print(f"== {path} seed {s} ({profile})", flush=True)
            rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)], env=env)
            worst = max(worst, rc)
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m companion.claims", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd")
    rec = sub.add_parser("record", help="run chapters on several seeds and write their ledger files")
    rec.add_argument("chapters", nargs="+", help="chapter ids '<part>/<slug>' or paths to book/<part>/<slug>.md")
    rec.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    rec.add_argument("--profile", default="ci", choices=config.PROFILES)
    sub.add_parser("summary", help="count the claims by status")
    args = ap.parse_args(argv)
    if args.cmd == "record":
        return record(args.chapters, args.seeds, args.profile)
    if args.cmd == "summary":
        for k, v in sorted(ledger_summary().items()):
            print(f"{v:4d}  {k}")
        return 0
    print(ledger_table(html=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
