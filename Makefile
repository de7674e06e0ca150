# Two commands do all set-up: `make demo` (train + sample) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench docs docs-serve results clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	# torch is pinned and installed first so no other requirement can pull a different build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,hf,docs]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lmlab train --preset tiny --run-tag demo

# One worker per core (tests that share a module fixture stay together); PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= auto
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

format: $(STAMP)
	$(BIN)/ruff format src tests bench examples
	$(BIN)/ruff check --fix src tests bench examples

bench: $(STAMP)
	$(BIN)/python bench/train_speed_vs_hf.py

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict
	@echo "site built in $(CURDIR)/site: open site/index.html in a browser (it works from disk), or run make docs-serve"

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs serve

# Regenerates docs/results.md; needs Tiny Shakespeare in $$LMLAB_DATA_DIR (or a one-time download).
results: $(STAMP)
	$(BIN)/python bench/results_page.py

clean:
	rm -rf $(VENV) runs .pytest_cache
