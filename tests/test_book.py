"""Structural checks of the book: table of contents, chapter anatomy, status table, offline JS,
and a full Sphinx build (without execution) that fails on any broken reference or citation."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BOOK = Path(__file__).resolve().parents[1] / "book"
ANATOMY = ["## The problem", "## The method", "## Experiment", "## Results", "## Claim check", "## Explore",
           "Deviations from the paper", "## Summary", "## Exercises", "## References"]


def toc_files() -> list[str]:
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc["parts"]:
        for ch in part["chapters"]:
            files.append(ch["file"])
            files += [s["file"] for s in ch.get("sections", [])]
    return files


def chapters() -> list[Path]:
    out = []
    for p in sorted(BOOK.rglob("*.md")):
        if "_build" in p.parts or "_vendor" in p.parts:
            continue
        head = p.read_text(encoding="utf-8")[:600]
        if "kernelspec:" in head and head.startswith("---"):
            out.append(p)
    return out


def test_toc_entries_exist_and_every_notebook_is_listed():
    listed = toc_files()
    for f in listed:
        assert (BOOK / f"{f}.md").exists() or (BOOK / f"{f}.ipynb").exists(), f"_toc.yml lists missing {f}"
    for ch in chapters():
        rel = ch.relative_to(BOOK).with_suffix("").as_posix()
        assert rel in listed, f"{rel} is not in book/_toc.yml"


@pytest.mark.parametrize("chapter", chapters(), ids=lambda p: p.stem)
def test_chapter_anatomy(chapter: Path):
    text = chapter.read_text(encoding="utf-8")
    if chapter.parent.name in ("appendix",):
        return
    card = r"(:::|```)\{admonition\} " + ("Interlude" if chapter.parent.name == "kernels" else "Paper")
    assert re.search(card, text), "paper card admonition missing"
    positions = [text.find(h) for h in ANATOMY]
    missing = [h for h, i in zip(ANATOMY, positions) if i < 0]
    assert not missing, f"{chapter.name} lacks sections {missing}"
    assert positions == sorted(positions), f"{chapter.name}: sections out of order"
    claim = text[text.find("## Claim check"):text.find("## Explore")]
    assert "ClaimCheck(" in claim or "assert " in claim, "the claim check section checks nothing"
    assert "config.setup(" in text, "chapters start with companion.config.setup()"


def test_intro_status_table_matches_chapters():
    intro = (BOOK / "intro.md").read_text(encoding="utf-8")
    rows = [r for r in intro.splitlines() if re.match(r"\| \d+ \|", r)]
    assert len(rows) == 34, f"the intro lists {len(rows)} papers, expected 34"
    written = {c.relative_to(BOOK).with_suffix("").as_posix() for c in chapters()}
    linked = set(re.findall(r"\{doc\}`([^`]+)`", "\n".join(rows)))
    assert linked <= written, f"intro links chapters that do not exist: {linked - written}"
    part_chapters = {w for w in written if w.split("/")[0] not in ("appendix", "kernels")}
    assert part_chapters <= linked, f"chapters missing from the intro's status table: {part_chapters - linked}"


def test_vendored_javascript_is_intact():
    root = BOOK / "_vendor" / "vendor"
    sums = (root / "SHA256SUMS").read_text().split("\n")
    checked = 0
    for line in filter(None, sums):
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name
        checked += 1
    assert checked >= 5
    cfg = (BOOK / "_config.yml").read_text()
    assert "vendor/mathjax/tex-chtml-full.js" in cfg and "vendor/html-manager/embed-amd.js" in cfg


@pytest.mark.skipif(shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) is None,
                    reason="jupyter-book not installed")
def test_book_builds_without_broken_references(tmp_path: Path):
    """Sphinx build with notebook execution off: every {doc}, {ref}, {cite} must resolve (-W -n)."""
    cfg = yaml.safe_load((BOOK / "_config.yml").read_text())
    cfg["execute"]["execute_notebooks"] = "off"
    # unexecuted notebooks carry no kernel language info, so myst-nb cannot name a code lexer
    cfg["sphinx"]["config"]["suppress_warnings"].append("myst-nb.lexer")
    # {glue:text} numbers come from executed cells: unexecuted, they cannot resolve
    cfg["sphinx"]["config"]["suppress_warnings"].append("mystnb.glue")
    # local extensions' paths are relative to the config file: make them absolute for the copy
    cfg["sphinx"]["local_extensions"] = {name: str((BOOK / path).resolve())
                                         for name, path in cfg["sphinx"].get("local_extensions", {}).items()}
    conf = tmp_path / "_config.yml"
    conf.write_text(yaml.safe_dump(cfg))
    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(jb), "build", str(BOOK), "--config", str(conf), "--path-output", str(tmp_path),
                           "-W", "-n", "--keep-going"], capture_output=True, text=True, timeout=600)
    warnings = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert proc.returncode == 0, "book build failed:\n" + "\n".join(warnings[-30:] or proc.stdout.splitlines()[-30:])
    html = (tmp_path / "_build" / "html")
    assert (html / "vendor" / "mathjax" / "tex-chtml-full.js").exists()
    # scripts/book_notebooks.py: one .ipynb per chapter, linked from the chapter's page
    assert (html / "_notebooks" / "structure" / "pointer-networks.ipynb").exists()
    page = (html / "structure" / "pointer-networks.html").read_text(encoding="utf-8")
    assert 'href="../_notebooks/structure/pointer-networks.ipynb" download' in page


# ------------------------------------------------------------------------------------------ claims
LEDGER = Path(__file__).resolve().parents[1] / "companion" / "ledger"
def chapter_id(path: Path) -> str:
    return path.relative_to(BOOK).with_suffix("").as_posix()


def claim_chapters() -> list[Path]:
    return [c for c in chapters() if c.parent.name != "appendix"]


def claim_section(text: str) -> str:
    return text[text.find("## Claim check"):text.find("## Explore")]


@pytest.mark.parametrize("chapter", claim_chapters(), ids=lambda p: p.stem)
def test_claim_check_goes_through_companion_claims(chapter: Path):
    """The claim check states its claims through ClaimCheck: exact checks first, then at least one
    empirical claim with controls; no bare asserts; a committed ledger with seeds 0, 1, 2."""
    sec = claim_section(chapter.read_text(encoding="utf-8"))
    cid = chapter_id(chapter)
    assert f'ClaimCheck("{cid}")' in sec, f"the claim check must open claims.ClaimCheck(\"{cid}\")"
    assert ".close()" in sec, "the claim check must end with C.close() (prints the table, checks the ledger)"
    assert not re.search(r"^\s*assert\s", sec, re.M), \
        "bare asserts in the claim check bypass the ledger: use C.exact / C.empirical"
    exact = [m.start() for m in re.finditer(r"\.exact\(", sec)]
    other = [m.start() for m in re.finditer(r"\.(empirical|not_reproduced)\(", sec)]
    if exact and other:
        assert max(exact) < min(other), "list the exact (implementation) checks before the empirical claims"
    if chapter.parent.name != "kernels":
        assert ".empirical(" in sec and "controls=" in sec, "a paper chapter needs an empirical claim with controls"
    ledger = LEDGER / f"{chapter.stem}.json"
    assert ledger.exists(), f"no ledger: run `python -m companion.claims record {cid}` and commit {ledger.name}"
    data = json.loads(ledger.read_text())
    assert data["chapter"] == cid
    seeds = sorted(r["seed"] for r in data["runs"] if r["profile"] == "ci")
    assert seeds == [0, 1, 2], f"the ledger of {cid} must hold ci seeds 0, 1, 2, has {seeds}"
    keys = {tuple((c["name"], c["kind"], c["status"]) for c in r["claims"]) for r in data["runs"] if r["profile"] == "ci"}
    assert len(keys) == 1, f"the claims of {cid} differ between seeds: a threshold that holds on some seeds only"


NUMBER = re.compile(r"(?<![\w.])(\d+\.\d{2,}|\d+\.\d+\s?%|\d+\.\d+\s?×)")
QUOTING = re.compile(r"paper|report|\{cite|Table|Fig\.|card", re.I)


def prose_numbers(text: str) -> list[tuple[str, str]]:
    """(number, line) for measured-looking numbers typed into Markdown cells: two or more decimals,
    decimal percentages or ratios (integers are usually configuration). Math, code, glue roles and lines that quote the paper are skipped."""
    import jupytext

    nb = jupytext.reads(text, fmt="myst")
    hits = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        src = re.sub(r"```.*?```", "", cell.source, flags=re.S)
        src = re.sub(r"\$\$.*?\$\$", "", src, flags=re.S)
        for line in src.splitlines():
            if QUOTING.search(line) or line.lstrip().startswith(":"):
                continue
            line = re.sub(r"\$[^$]*\$|`[^`]*`|\{[a-z:]+\}`[^`]*`|\[[^\]]*\]\([^)]*\)", "", line)
            hits += [(m.group(1), line.strip()) for m in NUMBER.finditer(line)]
    return hits


def _as_float(s: str) -> float:
    return float(re.sub(r"[%×\s]", "", s))


@pytest.mark.parametrize("chapter", claim_chapters(), ids=lambda p: p.stem)
def test_no_measured_numbers_typed_into_prose(chapter: Path):
    """Per-seed numbers come from executed cells (claims.glue); thresholds, the paper's numbers and
    configuration values that also appear in the chapter's code may be typed."""
    ledger = LEDGER / f"{chapter.stem}.json"
    allowed: set[float] = set()
    if ledger.exists():
        for run in json.loads(ledger.read_text())["runs"]:
            for c in run["claims"]:
                for x in (c.get("threshold"), c.get("paper")):
                    if isinstance(x, (int, float)):
                        allowed |= {float(x), round(100 * float(x), 6)}
    text = chapter.read_text(encoding="utf-8")
    code = "\n".join(re.findall(r"```\{code-cell\}.*?```", text, flags=re.S))  # configuration typed in code
    bad = [(n, line) for n, line in prose_numbers(text)
           if round(_as_float(n), 6) not in allowed and re.sub(r"[%×\s]", "", n) not in code]
    assert not bad, ("numbers typed into prose (use claims.glue + {glue:text}, or quote the paper on that line):\n"
                     + "\n".join(f"  {n!r}: {line[:120]}" for n, line in bad[:10]))
