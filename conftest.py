"""pytest plugin glue: run the book's MyST Markdown notebooks through nbval and time them.

nbval only collects ``.ipynb``; chapters are jupytext MyST ``.md`` files with no stored outputs.
:class:`MystNotebook` reads them with jupytext and lets nbval execute every code cell in a
fresh kernel of the current environment (outputs are not compared: a chapter's checks are the
``assert`` statements in its cells). The wall time of each notebook is printed in a table at
the end of the run.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU CI: Triton kernels run in the interpreter
os.environ.setdefault("MPLBACKEND", "Agg")

NOTEBOOK_TIMES: dict[str, float] = {}


def _is_myst_notebook(path: Path) -> bool:
    if path.suffix != ".md" or "_build" in path.parts:
        return False
    with open(path, encoding="utf-8") as f:
        head = f.read(600)
    return head.startswith("---") and "kernelspec:" in head and "format_name: myst" in head


try:
    import jupytext
    from nbval.plugin import IPyNbFile

    class MystNotebook(IPyNbFile):
        """An nbval notebook collector that reads a MyST Markdown notebook with jupytext."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.compare_outputs = False  # no stored outputs: assertions in cells are the checks

        def collect(self):
            import nbformat

            real_read = nbformat.read
            nbformat.read = lambda path, as_version=4: jupytext.read(path)
            try:
                yield from super().collect()
            finally:
                nbformat.read = real_read

        def setup(self):
            self._t0 = time.perf_counter()
            super().setup()

        def teardown(self):
            super().teardown()
            rel = os.path.relpath(str(self.path), str(self.config.rootpath))
            NOTEBOOK_TIMES[rel] = time.perf_counter() - getattr(self, "_t0", time.perf_counter())

    def pytest_collect_file(file_path: Path, parent):
        if _is_myst_notebook(file_path):
            return MystNotebook.from_parent(parent, path=file_path)
        return None

except ImportError:  # nbval/jupytext missing: unit tests still run, notebooks are not collected
    pass


_USED_ASSETS: set[str] | None = None


def _unused_missing_asset(exc: BaseException) -> str | None:
    """The asset behind an ``AssetMissingError`` if no chapter in ``book/_toc.yml`` uses it, else None.

    ``make setup`` installs only the assets the book's chapters use (the registry's ``chapters``
    field); a unit test of a loader whose asset no chapter uses yet (Gemma-3, HumanEval, ...) is then
    skipped, not failed. A missing asset that a chapter uses still fails.
    """
    global _USED_ASSETS
    if type(exc).__name__ != "AssetMissingError":
        return None
    match = re.search(r"asset '([^']+)'", str(exc))
    if not match:
        return None
    if _USED_ASSETS is None:
        from companion import assets_cli

        _USED_ASSETS = set(assets_cli.select([], Path(__file__).parent / "book") or [])
    return None if match.group(1) in _USED_ASSETS else match.group(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if call.excinfo is None or rep.outcome != "failed":
        return
    name = _unused_missing_asset(call.excinfo.value)
    if name:
        rep.outcome = "skipped"
        rep.longrepr = (str(item.path), (item.location[1] or 0) + 1,
                        f"Skipped: asset {name!r} is not installed and no chapter in book/_toc.yml uses it "
                        f"(install it with: python -m companion.assets --install {name})")


def pytest_configure(config):
    if hasattr(config.option, "nbval_current_env"):
        config.option.nbval_current_env = True  # run notebooks with this environment's python


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not NOTEBOOK_TIMES:
        return
    tr = terminalreporter
    tr.section("notebook execution times (budget: 90 s each on 2 cores)")
    width = max(len(k) for k in NOTEBOOK_TIMES)
    for name, secs in sorted(NOTEBOOK_TIMES.items(), key=lambda kv: -kv[1]):
        flag = "  OVER BUDGET" if secs > 90 else ""
        tr.write_line(f"{name:<{width}}  {secs:7.1f} s{flag}")
    tr.write_line(f"{'total':<{width}}  {sum(NOTEBOOK_TIMES.values()):7.1f} s")
