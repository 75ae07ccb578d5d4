# Two entry points for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
AAPP := $(VENV)/bin/aapp
DEMO_OUT ?= demo-out

.PHONY: install test test-fast demo clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned to 2.13.0 in pyproject.toml: pip takes the CPU build, not CUDA wheels.
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

## Run every test, the real-model integration tests included (they fetch ~100 MB once).
test: install
	$(PY) -m pytest -q

## Unit tests only: no downloads.
test-fast: install
	$(PY) -m pytest -q -m "not real_model"

## End to end on the embedded default model: fetch, calibrate, prune, judge, table and plot.
demo: install
	bash scripts/demo.sh $(DEMO_OUT)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
