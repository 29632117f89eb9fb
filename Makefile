# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint bench reports install clean

# Reinstall only when the dependency pins change.
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/edgecomp run recipes/quickstart.yaml

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

# The committed reports of the shipped CPU recipes, regenerated from scratch.
reports: $(INSTALLED)
	$(BIN)/edgecomp run recipes/quickstart.yaml --force
	mkdir -p reports/quickstart
	cp runs/quickstart/report.md runs/quickstart/report.html runs/quickstart/plot.png \
	   runs/quickstart/results.json runs/quickstart/results.csv reports/quickstart/

bench: $(INSTALLED)
	$(BIN)/python benchmarks/bench_targets.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
