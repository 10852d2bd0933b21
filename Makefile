# Two commands: `make repro` (set up + run the default study) and `make test` (set up + run the tests).
# The virtual environment lives outside the clone, keyed by a hash of the pinned requirements, so a
# fresh clone (and CI) reuses it instead of reinstalling about 6 GB of wheels.

PYTHON ?= python3
VENV_ROOT ?= $(HOME)/.cache/biasloop
REQ_HASH := $(shell cat requirements.lock | sha256sum | cut -c1-16)
VENV := $(VENV_ROOT)/venv-$(REQ_HASH)
BIN := $(VENV)/bin
RUN := PATH="$(BIN):$$PATH" MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: env data repro test bench bench-all chromium clean-env help

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

env: $(VENV)/.ready  ## create or reuse the environment and install this checkout into it
	@$(BIN)/pip install -q --no-deps --no-build-isolation -e . > $(VENV)/editable-install.log 2>&1 || \
	  { cat $(VENV)/editable-install.log; exit 1; }
	@echo "environment: $(VENV)"

# BlazeFace (the LAION filter's face detector) ships only in the mediapipe==0.10.14 wheel: fetched once
# from PyPI (the x86-64 Linux build on every machine, so the extracted bytes match data.dvc).
WHEELS := $(VENV_ROOT)/wheels
MEDIAPIPE_WHEEL_GLOB := $(WHEELS)/mediapipe-0.10.14-*.whl

data: env  ## materialise data/ (same bytes on every machine, so data.dvc matches)
	@ls $(MEDIAPIPE_WHEEL_GLOB) >/dev/null 2>&1 || $(BIN)/pip download -q --no-deps --only-binary=:all: \
	  --python-version 3.11 --platform manylinux2014_x86_64 mediapipe==0.10.14 -d $(WHEELS)
	@$(RUN) biasloop data --out data --mediapipe-wheel "$$(ls $(MEDIAPIPE_WHEEL_GLOB) | head -n 1)"
	@$(RUN) dvc commit -f -q data.dvc

repro: data  ## set up and run the default pipeline (dvc repro on the glyph world)
	$(RUN) dvc repro

chromium:  ## Debian's Chromium, for the test that opens the report in a headless browser
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }; } || \
	  echo "warning: chromium could not be installed; the report's browser test will be skipped"

test: data chromium  ## set up and run the tests
	$(RUN) python -m pytest -q; status=$$?; if [ $$status -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$status

bench: env  ## time the default study (cold, beside a busy process, no-op, ratio variant): benchmarks/results/pipeline.json
	$(RUN) python benchmarks/pipeline.py $(BENCH_ARGS)

bench-all: bench  ## also the component benchmarks (retrieval, embedding, generation, thread policy)
	$(RUN) python benchmarks/retrieval.py && $(RUN) python benchmarks/embedding.py && \
	  $(RUN) python benchmarks/generation.py && $(RUN) python benchmarks/threads.py

clean-env:  ## remove this requirements hash's environment
	rm -rf $(VENV)
