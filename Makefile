# Two entry points for a fresh clone: `make demo` and `make test`. Both install the locked stack
# (requirements/lock.txt); `test-latest` and `test-oldest` try the ends of pyproject's ranges.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo-out
LOCK := requirements/lock.txt
PIP_QUIET := -q --disable-pip-version-check
# What a new transformers or torch breaks first, and the GPU check's dry run (the GPU image has the oldest stack).
STACK_TESTS := tests/pruning tests/test_generation.py tests/models/test_adapters.py tests/models/test_synthetic.py \
	tests/kernels tests/scripts/test_gpu_check.py

.PHONY: install test test-fast test-latest test-oldest demo lock clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) -c $(LOCK) -e '.[test]'
	touch $@

install: $(VENV)/.installed

## Run every test on the locked stack, the real-model integration tests included (they fetch ~100 MB once).
test: install
	$(PY) -m pytest -q

## Unit tests only: no downloads.
test-fast: install
	$(PY) -m pytest -q -m "not real_model"

## The unit tests on the newest versions pyproject.toml allows (a fresh venv each time, so a new
## upstream release shows up here before it reaches the lock).
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install $(PIP_QUIET) --upgrade -e '.[test]'
	.venv-latest/bin/python -m pip list --format=freeze | grep -iE '^(torch|transformers|triton|accelerate)=='
	.venv-latest/bin/python -m pytest -q -m "not real_model"

## The engine, generation, kernel and random-checkpoint tests and scripts/gpu_check.sh --dry on the
## oldest allowed releases (the GPU image's).
test-oldest:
	test -x .venv-oldest/bin/python || $(PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/python -m pip install $(PIP_QUIET) -c requirements/oldest.txt -e '.[test]'
	.venv-oldest/bin/python -m pip list --format=freeze | grep -iE '^(torch|transformers|triton)=='
	.venv-oldest/bin/python -m pytest -q -m "not real_model" $(STACK_TESTS)

## Rewrite the lock from a fresh resolve of pyproject.toml's ranges (then run `make test`).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install $(PIP_QUIET) -e '.[test]'
	{ sed -n '1,3p' $(LOCK); .venv-lock/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock

## End to end on the embedded default model: fetch, calibrate, prune, judge, table and plot.
demo: install
	bash scripts/demo.sh $(DEMO_OUT)

clean:
	rm -rf $(VENV) .venv-latest .venv-oldest $(DEMO_OUT) .pytest_cache
