# Everything runs inside .venv, created on first use: on a fresh machine
# `make demo` and `make test` each do the whole set-up themselves.
PYTHON_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.onnxopt-installed
SHARED ?= ../shared
OUT ?= out

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The recover extra's tests run in `make test`, so torch is installed there, pinned first to a
# CPU build ($(TORCH)): left to the range in pyproject.toml, pip may take a CUDA build of
# several GB. On a machine where PyPI's torch==2.13.0 is a CUDA build, pass e.g.
# TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
TORCH ?= torch==2.13.0
RECOVER_STAMP := $(VENV)/.onnxopt-recover-installed

$(RECOVER_STAMP): $(STAMP)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,recover]"
	touch $(RECOVER_STAMP)

install: $(STAMP)

# The main job on a bundled sample: inspect, then optimize three ways — each result
# validated against the original on held-out samples and benchmarked — then compare.
ONNXOPT := $(VENV)/bin/onnxopt
SAMPLE := samples/digits_cnn.onnx
DATA := samples/digits_test.npz
demo: $(STAMP)
	mkdir -p $(OUT)
	$(ONNXOPT) inspect $(SAMPLE)
	$(ONNXOPT) optimize $(SAMPLE) --config samples/pipeline.yaml --data $(DATA) \
		-o $(OUT)/digits_pipeline.onnx --report $(OUT)/digits_pipeline.json
	$(ONNXOPT) optimize $(SAMPLE) --passes simplify,tucker:energy=0.9:refit --data $(DATA) --bench \
		-o $(OUT)/digits_tucker.onnx --report $(OUT)/digits_tucker.json
	$(ONNXOPT) optimize $(SAMPLE) --passes simplify,int8 --data $(DATA) --bench --min-agreement 0.95 \
		-o $(OUT)/digits_int8.onnx --report $(OUT)/digits_int8.json
	$(ONNXOPT) compare $(SAMPLE) $(OUT)/digits_int8.onnx --data $(DATA) --min-agreement 0.95
	$(ONNXOPT) check $(OUT)/digits_pipeline.onnx $(OUT)/digits_tucker.onnx $(OUT)/digits_int8.onnx
	@echo "demo outputs and JSON reports in $(OUT)/"

test: $(RECOVER_STAMP)
	$(PY) -m pytest -ra -q

test-fast: $(RECOVER_STAMP)
	$(PY) -m pytest -ra -q -m "not shared"

lint: $(STAMP)
	$(VENV)/bin/ruff check onnxopt passes tests benchmarks

bench: $(STAMP)
	@for script in benchmarks/[!_]*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(OUT) build dist *.egg-info .pytest_cache .ruff_cache
