# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint bench bench-real bench-latency bench-channels reports install clean fuzz chaos arm-check

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

# Workers take whole files (module fixtures, such as a reduced pipeline run, are built once): much of the
# suite is single-threaded Python (conversions, tracing, subprocess start-up). Two on two cores; one per core
# up to four on a larger machine (each worker's pipeline runs start export processes of their own). The
# longest files go first, in tests/conftest.py's order (--no-loadscope-reorder keeps it).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -lt 2 ] && n=2; [ $$n -gt 4 ] && n=4; echo $$n)
test: lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

# The committed reports of the shipped CPU recipes, regenerated from scratch (~7 + ~13 + ~51 + ~52 min on 2 cores).
REPORTED := quickstart ssdlite-quickstart mobilenetv2-fashion-mnist-sweep latency-quickstart
reports: $(INSTALLED)
	for name in $(REPORTED); do \
	  $(BIN)/edgecomp run recipes/$$name.yaml --force && mkdir -p reports/$$name && \
	  cp runs/$$name/report.md runs/$$name/report.html runs/$$name/plot.png \
	     runs/$$name/results.json runs/$$name/results.csv reports/$$name/ || exit 1; \
	done

# Issue #8's long versions: 1,000+ generated bad recipes; ten SIGKILLs of a running recipe (CI runs fewer).
fuzz: $(INSTALLED)
	EDGECOMP_FUZZ_EXAMPLES=1000 $(BIN)/pytest -m fuzz --hypothesis-show-statistics

chaos: $(INSTALLED)
	EDGECOMP_CHAOS_KILLS=10 $(BIN)/pytest -m chaos

bench: $(INSTALLED)
	$(BIN)/python benchmarks/bench_targets.py

# int8 of real ImageNet networks (../shared/real, or EDGECOMP_REAL=DIR) on every target: agreement with fp32 on
# the COCO128 photos, latency, the vendor's own int8 file beside them (~5 min on 2 cores).
bench-real: $(INSTALLED)
	$(BIN)/python benchmarks/bench_real_int8.py

# A latency prune target's choice against fresh timings of it, on TFLite and OpenVINO (~10 min on 2 cores).
bench-latency: $(INSTALLED)
	$(BIN)/python benchmarks/bench_latency_search.py

# Issue #19: whether channel counts that are multiples of 4/8/16 pay on each runtime: the quickstart's network
# pruned to half its MACs with round_to none/4/8/16, and a 1x1-depthwise-1x1 stack for every C in 60..72, fp32
# and int8 of every target, each part timed interleaved; ends with a computed verdict per runtime (~5 min on 2 quiet cores).
bench-channels: $(INSTALLED)
	$(BIN)/python benchmarks/bench_channels.py

# Every quickstart export (runs/quickstart from `make demo`, else a reduced run) on aarch64 under qemu
# against x86: sysroot and aarch64 wheels built once into ~/.cache/edgecomp/arm. Correctness, not speed.
arm-check: $(INSTALLED)
	$(BIN)/python -m arm.check

clean:
	rm -rf runs .pytest_cache .ruff_cache
