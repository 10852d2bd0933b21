# Two commands: `make repro` (set up + run the default study) and `make test` (set up + run the tests).
# The pinned packages live outside the clone in a shared environment keyed by a hash of
# requirements.lock, so a fresh clone (and CI) reuses it instead of reinstalling about 6 GB of wheels.
# It holds no biasloop: each checkout has its own .venv (an overlay on it, made in seconds; see
# biasloop/core/environment.py) with this checkout installed editable, so two clones never run each
# other's code. `source .venv/bin/activate` puts dvc, biasloop and mlflow on PATH.

PYTHON ?= python3
VENV_ROOT ?= $(HOME)/.cache/biasloop
REQ_HASH := $(shell cat requirements.lock | sha256sum | cut -c1-16)
VENV := $(VENV_ROOT)/venv-$(REQ_HASH)
BIN := $(VENV)/bin
CHECKOUT_VENV := .venv
CHECKOUT_READY := $(CHECKOUT_VENV)/.ready-$(REQ_HASH)
RUN := PATH="$(CURDIR)/$(CHECKOUT_VENV)/bin:$$PATH" MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: env venv plots-template data repro lint test test-fast bench bench-all chromium doctor clean-env help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# No prerequisite: the path already holds the hash of requirements.lock, and a fresh clone's newer
# file times must not trigger a rebuild of an environment that matches.
$(VENV)/.ready:
	@echo "creating $(VENV) (first time only: about 5 minutes)"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	touch $@

# Test-only wheels are kept with the other downloaded wheels: a second checkout installs them offline.
WHEELS := $(VENV_ROOT)/wheels
TEST_INSTALL := $(CHECKOUT_VENV)/bin/python -m pip install -q --no-deps --require-hashes --no-index \
  --find-links $(WHEELS) -r requirements-test.txt

# The Ray executor of studies (docs/cluster.md), installed the same way.
CLUSTER_INSTALL := $(CHECKOUT_VENV)/bin/python -m pip install -q --no-deps --require-hashes --no-index \
  --find-links $(WHEELS) -r requirements-cluster.txt

# This checkout's .venv: remade when requirements.lock (hence the shared environment), pyproject.toml
# (packages, commands), requirements-test.txt (test-only packages, installed here) or
# requirements-cluster.txt (Ray, installed here) changes. Writes nothing into the shared environment.
$(CHECKOUT_READY): pyproject.toml requirements-test.txt requirements-cluster.txt | $(VENV)/.ready
	@$(BIN)/python -m biasloop.core.environment --venv $(CHECKOUT_VENV) --shared $(VENV)
	@$(TEST_INSTALL) 2>/dev/null || { $(BIN)/python -m pip download -q --no-deps --require-hashes \
	  -r requirements-test.txt -d $(WHEELS) && $(TEST_INSTALL); }
	@$(CLUSTER_INSTALL) 2>/dev/null || { $(BIN)/python -m pip download -q --no-deps --require-hashes \
	  -r requirements-cluster.txt -d $(WHEELS) && $(CLUSTER_INSTALL); }
	@touch $@

venv: $(CHECKOUT_READY)  ## make this checkout's .venv (seconds) over the shared environment

plots-template: venv  ## dvc plots show/diff pages that open offline (vega inlined; npm once)
	@$(RUN) biasloop plots-template || echo "warning: dvc plots pages will load vega from the CDN (needs network)"

env: venv plots-template  ## create or reuse the shared environment, this checkout's .venv over it, the plots template
	@# An editable biasloop in the shared environment (left by an older `make env`) would point at one
	@# clone for all of them; .venv ignores it, and it is removed here.
	@if ls $(VENV)/lib/python*/site-packages/__editable__*biasloop* >/dev/null 2>&1; then \
	  echo "removing the editable biasloop from the shared environment (each checkout has its own .venv)"; \
	  $(BIN)/python -m pip uninstall -y -q biasloop; fi
	@echo "environment: $(CHECKOUT_VENV) over $(VENV)"

# BlazeFace (the LAION filter's face detector) ships only in the mediapipe==0.10.14 wheel: fetched once
# from PyPI (the x86-64 Linux build on every machine, so the extracted bytes match data.dvc).
MEDIAPIPE_WHEEL_GLOB := $(WHEELS)/mediapipe-0.10.14-*.whl

data: env  ## materialise data/ (same bytes on every machine, so data.dvc matches)
	@ls $(MEDIAPIPE_WHEEL_GLOB) >/dev/null 2>&1 || $(BIN)/pip download -q --no-deps --only-binary=:all: \
	  --python-version 3.11 --platform manylinux2014_x86_64 mediapipe==0.10.14 -d $(WHEELS)
	@$(RUN) biasloop data --out data --mediapipe-wheel "$$(ls $(MEDIAPIPE_WHEEL_GLOB) | head -n 1)"
	@$(RUN) dvc commit -f -q data.dvc

repro: data  ## set up and run the default pipeline (dvc repro on the glyph world)
	$(RUN) dvc repro

# chromium-driver: Debian's chromedriver, the same version as its chromium, for the tests that read element
# geometry through Selenium (the report's first screen, `mlflow ui`); never a downloaded driver or browser.
chromium:  ## Debian's Chromium and chromedriver, for the tests that open the report and `mlflow ui` headless
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; }; } || \
	  echo "warning: chromium or chromedriver could not be installed; the browser tests will be skipped"

lint: venv  ## ruff: lint and format check (config in pyproject.toml; `.venv/bin/ruff format` fixes the layout)
	$(RUN) ruff check .
	$(RUN) ruff format --check .

# pytest's exit status 5 (no test collected, e.g. a -k that matches nothing) is not a failure.
PYTEST_STATUS = status=$$?; if [ $$status -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$status

# Test workers (pytest-xdist): a file's tests stay together on one worker, in order; the long files first
# (order: tests/conftest.py). TEST_JOBS=0: one process.
TEST_JOBS ?= 2
XDIST = $(if $(filter 0,$(TEST_JOBS)),-p no:xdist,-n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder)

test: data chromium  ## set up and run the tests: the whole suite, what CI (.ci/run) runs
	$(RUN) python -m pytest -q $(XDIST) --durations=10 $(PYTEST_ARGS); $(PYTEST_STATUS)

test-fast: data  ## the inner loop: every test not marked slow (under 2 minutes on 2 cores)
	$(RUN) python -m pytest -q $(XDIST) -m "not slow" $(PYTEST_ARGS); $(PYTEST_STATUS)

bench: env  ## time the default study (cold, beside a busy process, no-op, ratio variant): benchmarks/results/pipeline.json
	$(RUN) python benchmarks/pipeline.py $(BENCH_ARGS)

bench-all: bench  ## also the component benchmarks (retrieval, embedding, generation, thread policy)
	$(RUN) python benchmarks/retrieval.py && $(RUN) python benchmarks/embedding.py && \
	  $(RUN) python benchmarks/generation.py && $(RUN) python benchmarks/threads.py

doctor: venv  ## what a newcomer needs when something is off: environment, versions, dvc status, MLflow
	@$(RUN) biasloop doctor

clean-env:  ## remove this requirements hash's shared environment and this checkout's .venv
	rm -rf $(VENV) $(CHECKOUT_VENV)
