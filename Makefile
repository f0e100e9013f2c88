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

install: $(STAMP)

# The main job on a bundled sample: optimize, prove it, inspect and bench the result.
demo: $(STAMP)
	mkdir -p $(OUT)
	$(VENV)/bin/onnxopt inspect samples/digits_cnn.onnx
	$(VENV)/bin/onnxopt optimize samples/digits_cnn.onnx --passes simplify,fold-constants \
		-o $(OUT)/digits_simplified.onnx --report $(OUT)/digits_simplified.json
	@if $(VENV)/bin/onnxopt passes --json | grep -q '"tucker"'; then \
		$(VENV)/bin/onnxopt optimize samples/digits_cnn.onnx --config samples/pipeline.yaml \
			-o $(OUT)/digits_tucker.onnx --report $(OUT)/digits_tucker.json; \
	fi
	@if $(VENV)/bin/onnxopt --help | grep -q compare; then \
		$(VENV)/bin/onnxopt compare samples/digits_cnn.onnx $(OUT)/digits_simplified.onnx --data samples/digits_test.npz; \
	fi
	@echo "demo outputs in $(OUT)/"

test: $(STAMP)
	$(PY) -m pytest -ra -q

test-fast: $(STAMP)
	$(PY) -m pytest -ra -q -m "not shared"

lint: $(STAMP)
	$(VENV)/bin/ruff check onnxopt passes tests benchmarks

bench: $(STAMP)
	@for script in benchmarks/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(OUT) build dist *.egg-info .pytest_cache .ruff_cache
