"""The generated notebooks: one per chapter with an install cell first, and the student edition with
every exercise solution removed and every other cell unchanged (scripts/book_notebooks.py)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"

pytest.importorskip("jupytext")
_spec = importlib.util.spec_from_file_location("book_notebooks", ROOT / "scripts" / "book_notebooks.py")
bn = importlib.util.module_from_spec(_spec)
sys.modules["book_notebooks"] = bn
_spec.loader.exec_module(bn)

CHAPTERS = bn.chapters(BOOK)


def _exercises(text: str) -> str:
    """The raw Markdown source of a chapter's Exercises section ('' if it has none)."""
    m = re.search(r"^## Exercises\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    return m.group(1) if m else ""


def _without_dropdowns(text: str) -> str:
    return bn._DROPDOWN.sub("", text)


def test_every_chapter_in_the_toc_gets_a_notebook():
    docs = {d for d, _ in CHAPTERS}
    assert {"structure/pointer-networks", "kernels/one-kernel-for-every-mask"} <= docs
    assert not {d for d in docs if d.endswith("/index") or d in ("intro", "how-to-read", "teaching")}


@pytest.mark.parametrize("doc,src", CHAPTERS, ids=[d for d, _ in CHAPTERS])
def test_reader_notebook_installs_the_package_and_this_chapters_assets(doc, src):
    nb = bn.reader_notebook(src, doc)
    first = nb.cells[0]
    dist, version = bn.project()
    assert first.cell_type == "code" and first.metadata["tags"] == [bn.INSTALL_TAG]
    assert f'"{dist}=={version}"' in first.source and dist != "companion"  # `companion` is taken on PyPI
    assert f'"--install", "{doc}"' in first.source
    compile(first.source, "install-cell", "exec")
    import jupytext

    original = jupytext.read(src)
    assert [c.source for c in nb.cells[1:]] == [c.source for c in original.cells]
    assert nb.metadata["kernelspec"]["name"] == "python3" and "jupytext" not in nb.metadata


@pytest.mark.parametrize("doc,src", CHAPTERS, ids=[d for d, _ in CHAPTERS])
def test_student_edition_has_no_solution_and_changes_nothing_else(doc, src):
    reader = bn.reader_notebook(src, doc)
    student, removed = bn.student_notebook(reader)
    raw = _exercises(src.read_text(encoding="utf-8"))
    expected = raw.count("{dropdown}") + raw.count(":tags: [hide-input]")
    assert removed == expected, (removed, expected)
    assert bn.solution_cells(student) == []
    assert len(student.cells) == len(reader.cells)
    section = None
    for before, after in zip(reader.cells, student.cells):
        if before.cell_type == "markdown":
            parts = bn._sections(before.source, section)
            section = parts[-1][0]
            # Markdown changes only by dropping {dropdown} blocks inside the Exercises section
            assert after.source == "".join(_without_dropdowns(t) if n == bn.EXERCISES else t for n, t in parts)
            assert after.source == before.source or any(n == bn.EXERCISES for n, _ in parts)
        elif bn.SOLUTION_TAG in before.metadata.get("tags", []) and section == bn.EXERCISES:
            assert after.metadata["tags"] == [bn.ANSWER_TAG] and after.source.startswith("#")
            assert before.source not in after.source
        else:
            assert after == before
    assert "{dropdown}" not in _exercises("\n".join(c.source for c in student.cells if c.cell_type == "markdown"))


def test_student_edition_on_a_small_notebook():
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# T\n\n## Results\n\n:::{dropdown} Details\nkept\n:::\n"),
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["hide-input"]}),  # not an exercise: kept
        nbformat.v4.new_markdown_cell("## Exercises\n\n**1.** Q?\n\n:::{dropdown} Solution\nA.\n:::\n\n**2.** R?\n"),
        nbformat.v4.new_code_cell("print(x)", metadata={"tags": ["hide-input"]}),
        nbformat.v4.new_code_cell("y = 2"),  # an exercise cell without the tag: kept
        nbformat.v4.new_markdown_cell("::::{dropdown} Solution\nB.\n::::\n\n## References\n"),
    ]
    st, removed = bn.student_notebook(nb)
    assert removed == 3
    assert st.cells[0] == nb.cells[0] and st.cells[1] == nb.cells[1] and st.cells[4] == nb.cells[4]
    assert st.cells[2].source == "## Exercises\n\n**1.** Q?\n\n\n**2.** R?\n"
    assert st.cells[3].source == "# Your solution\n" and st.cells[3].metadata["tags"] == ["student-answer"]
    assert st.cells[5].source == "\n## References\n"
    assert nb.cells[3].source == "print(x)"  # the input is not modified in place


def test_time_table_flags_a_slow_chapter():
    lines = bn.time_table({"a/fast": 12.0, "b/slow": 95.5})
    assert lines[1].startswith("b/slow") and lines[1].endswith("OVER BUDGET")
    assert "OVER" not in lines[2] and lines[-1].split()[-2] == "107.5"
