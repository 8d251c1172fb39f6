"""Notebooks for readers and students, generated from the MyST chapters; the execution time table.

**As a Sphinx extension** (``book/_config.yml``: ``sphinx.local_extensions: {book_notebooks: ../scripts}``)
it runs in every ``jupyter-book build``:

* writes ``<html>/_notebooks/<part>/<slug>.ipynb`` for every executable page: the chapter as a
  Jupyter notebook whose first cell installs the companion package, pinned to this version, and
  the models and data that chapter uses (``python -m companion.assets --install part/slug``);
* puts a download link at the top of each such page (and an "Open in Colab" link when the config
  value ``companion_colab_base`` is set, e.g. to
  ``https://colab.research.google.com/github/OWNER/REPO/blob/gh-pages`` once the built site is
  published from that branch);
* prints the per-chapter execution time table from myst-nb's execution data (a chapter over
  90 s is flagged) and writes it to ``<html>/_notebooks/execution-times.json``.

**As a script** (``make student``; the student edition for a course)::

    python scripts/book_notebooks.py --out book/_build/notebooks book            # reader notebooks
    python scripts/book_notebooks.py --student --out book/_build/student book    # solutions removed

The student edition is the same notebook with every exercise solution removed: in the
``## Exercises`` section, each ``{dropdown}`` block (the written answer) and each code cell tagged
``hide-input`` (the executed solution). Each removed code cell becomes an empty code cell tagged
``student-answer``; every other cell is unchanged.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 90.0  # per chapter on 2 CPU cores
NOTEBOOK_DIR = "_notebooks"
INSTALL_TAG = "install"
ANSWER_TAG = "student-answer"
SOLUTION_TAG = "hide-input"
EXERCISES = "Exercises"
_HEADING = re.compile(r"^## +(.+?)\s*$", re.M)
_DROPDOWN = re.compile(r"^(?P<fence>:{3,}|`{3,})\{dropdown\}[^\n]*\n.*?^(?P=fence)[ \t]*(\n|\Z)", re.M | re.S)


# ------------------------------------------------------------------------------------ metadata
def project(root: Path = ROOT) -> tuple[str, str]:
    """``(distribution name, version)`` of the companion package, from ``pyproject.toml``."""
    import tomllib

    meta = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return meta["name"], meta["version"]


def is_notebook(path: Path) -> bool:
    """A MyST Markdown notebook (jupytext header with a kernelspec)?"""
    if path.suffix != ".md" or not path.is_file():
        return False
    head = path.read_text(encoding="utf-8")[:600]
    return head.startswith("---") and "kernelspec:" in head and "format_name: myst" in head


# ------------------------------------------------------------------------------ reader notebook
def install_source(docname: str, dist: str, version: str) -> str:
    """The first cell of a downloaded chapter: install the package and this chapter's assets."""
    return (
        "# Colab or a fresh Python 3.11+ environment: install the book's companion package (pinned to the\n"
        "# version this notebook was built with) and only the models and data this chapter uses.\n"
        "# Where the package is already installed (e.g. `make setup`), this cell changes nothing.\n"
        "import importlib.util, subprocess, sys\n"
        "\n"
        "if importlib.util.find_spec(\"companion\") is None:\n"
        f"    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", \"{dist}=={version}\"], check=True)\n"
        f"subprocess.run([sys.executable, \"-m\", \"companion.assets\", \"--install\", \"{docname}\"], check=True)"
    )


def reader_notebook(source: Path, docname: str, root: Path = ROOT):
    """The chapter ``source`` (MyST .md) as an nbformat notebook with the install cell first."""
    import jupytext
    import nbformat

    nb = jupytext.read(source)
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    dist, version = project(root)
    nb.cells.insert(0, nbformat.v4.new_code_cell(install_source(docname, dist, version),
                                                 metadata={"tags": [INSTALL_TAG]}))
    return nb


# ----------------------------------------------------------------------------- student edition
def _sections(text: str, current: str | None) -> list[tuple[str | None, str]]:
    """Split a Markdown cell's text at ``## `` headings: ``[(section name, text), ...]``."""
    out, start = [], 0
    for m in _HEADING.finditer(text):
        if m.start() > start:
            out.append((current, text[start:m.start()]))
        current, start = m.group(1), m.start()
    out.append((current, text[start:]))
    return out


def student_notebook(nb):
    """A copy of ``nb`` with the exercise solutions removed; returns ``(notebook, removed count)``.

    In the ``## Exercises`` section: ``{dropdown}`` blocks are cut from Markdown cells, code cells
    tagged ``hide-input`` become empty ``student-answer`` cells. Nothing else changes.
    """
    nb = copy.deepcopy(nb)
    section: str | None = None
    removed = 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts = _sections(cell.source, section)
            new = []
            for name, text in parts:
                if name == EXERCISES:
                    text, n = _DROPDOWN.subn("", text)
                    removed += n
                new.append(text)
            section = parts[-1][0]
            cell.source = "".join(new)
        elif cell.cell_type == "code" and section == EXERCISES and SOLUTION_TAG in cell.metadata.get("tags", []):
            cell.source = "# Your solution\n"
            cell.metadata["tags"] = [ANSWER_TAG]
            cell.outputs, cell.execution_count = [], None
            removed += 1
    return nb, removed


def solution_cells(nb) -> list[int]:
    """Indices of the cells of ``nb`` that hold an exercise solution (for tests and checks)."""
    found, section = [], None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            parts = _sections(cell.source, section)
            if any(name == EXERCISES and _DROPDOWN.search(text) for name, text in parts):
                found.append(i)
            section = parts[-1][0]
        elif cell.cell_type == "code" and section == EXERCISES and SOLUTION_TAG in cell.metadata.get("tags", []):
            found.append(i)
    return found


# -------------------------------------------------------------------------------------- writing
def chapters(book: Path) -> list[tuple[str, Path]]:
    """``(docname, source)`` of every executable page in ``book/_toc.yml``."""
    sys.path.insert(0, str(ROOT))
    from companion.assets_cli import toc_chapters

    out = []
    for doc in toc_chapters(book):
        src = book / f"{doc}.md"
        if is_notebook(src):
            out.append((doc, src))
    return out


def write_notebooks(book: Path, out: Path, student: bool = False) -> list[Path]:
    """Write one .ipynb per chapter of ``book`` under ``out`` (``student``: solutions removed)."""
    import nbformat

    written = []
    for doc, src in chapters(book):
        nb = reader_notebook(src, doc)
        if student:
            nb, _ = student_notebook(nb)
        target = out / f"{doc}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
        written.append(target)
    return written


def time_table(times: dict[str, float | None], budget: float = BUDGET_S,
               failed: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Lines of the per-chapter execution time table, slowest first; ``OVER BUDGET`` past ``budget``,
    ``FAILED`` for a chapter whose execution failed."""
    if not times:
        return []
    width = max(len(k) for k in times)
    lines = [f"notebook execution times (budget: {budget:.0f} s each on 2 cores)"]
    for name, secs in sorted(times.items(), key=lambda kv: -(kv[1] or 0)):
        flag = "  OVER BUDGET" if (secs or 0) > budget else ""
        flag += "  FAILED" if name in failed else ""
        lines.append(f"{name:<{width}}  {secs if secs is not None else float('nan'):7.1f} s{flag}")
    lines.append(f"{'total':<{width}}  {sum(s or 0 for s in times.values()):7.1f} s")
    return lines


# ------------------------------------------------------------------------------ sphinx extension
def _page_notebook(app, pagename: str) -> bool:
    try:
        return is_notebook(Path(app.env.doc2path(pagename)))
    except Exception:  # noqa: BLE001 -- generated pages (genindex, search) have no source
        return False


def _html_page_context(app, pagename, templatename, context, doctree):
    if doctree is None or not _page_notebook(app, pagename):
        return
    rel = "../" * pagename.count("/") + f"{NOTEBOOK_DIR}/{pagename}.ipynb"
    colab = app.config.companion_colab_base.rstrip("/")
    links = f'<a class="reference external" href="{rel}" download>download this chapter as a Jupyter notebook</a>'
    if colab:
        links += (f' or <a class="reference external" href="{colab}/{NOTEBOOK_DIR}/{pagename}.ipynb">'
                  "open it in Colab</a>")
    banner = (f'<div class="admonition tip companion-notebook"><p>Run it yourself: {links} (.ipynb). '
              "Its first cell installs the companion package and this chapter's models and data.</p></div>")
    context["body"] = banner + context.get("body", "")


def _build_finished(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    from sphinx.util import logging

    log = logging.getLogger(__name__)
    out = Path(app.outdir) / NOTEBOOK_DIR
    book = Path(app.srcdir)
    docs = sorted(d for d in app.env.found_docs if _page_notebook(app, d))
    import nbformat

    for doc in docs:
        target = out / f"{doc}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(reader_notebook(book / f"{doc}.md", doc), target)
    times: dict[str, float | None] = {}
    failed: set[str] = set()
    try:
        from myst_nb.sphinx_ import NbMetadataCollector

        for doc in docs:
            data = NbMetadataCollector.get_exec_data(app.env, doc) if doc in app.env.all_docs else None
            if data:
                times[doc] = data.get("runtime")
                if not data.get("succeeded", True):
                    failed.add(doc)
    except Exception as err:  # noqa: BLE001 -- the table is a report; never fail the build over it
        log.info(f"book_notebooks: no execution data ({err})")
    (out / "execution-times.json").write_text(json.dumps(
        {d: {"seconds": t, "succeeded": d not in failed} for d, t in times.items()}, indent=1, sort_keys=True))
    log.info(f"book_notebooks: {len(docs)} notebooks written to {out}")
    for line in time_table(times, failed=failed):
        log.info(line)


def setup(app):
    app.add_config_value("companion_colab_base", "", "html")
    app.connect("html-page-context", _html_page_context)
    app.connect("build-finished", _build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# ------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the book's chapters as .ipynb notebooks.")
    parser.add_argument("book", nargs="?", default=str(ROOT / "book"), help="the book folder (with _toc.yml)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--student", action="store_true", help="remove the exercise solutions")
    args = parser.parse_args(argv)
    written = write_notebooks(Path(args.book), Path(args.out), student=args.student)
    print(f"{len(written)} {'student ' if args.student else ''}notebooks written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
