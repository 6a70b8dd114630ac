# Two commands on a fresh machine (python3 + make): `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-notebook test-interop mutation lint format bench clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

DEMO_DIR ?= demo_out

# Pre-trains the tiny config on the embedded synthetic videos, then measures what
# it learned on held-out videos (QUICK=1: the ~3-minute version).
demo: $(STAMP)
	$(BIN)/python -m siammae_jax.demo --workdir $(DEMO_DIR) $(if $(QUICK),--quick)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two pytest workers (pytest-xdist), a test file each at a time: XLA compiles,
# which dominate this suite, use one core each (TEST_WORKERS=0: one process).
TEST_WORKERS ?= 2

test: lint
	$(BIN)/python -m pytest -q -rs --durations=15 -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Executes notebooks/siammae_colab.ipynb end to end with its smallest (CI) settings.
test-notebook: $(STAMP)
	$(BIN)/python -m pytest -q -m notebook

# PyTorch/timm round trips; installs the torch extra (torch 2.14.1 + torchvision 0.29.1).
test-interop: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,torch]'
	$(BIN)/python -m pytest -q -m interop tests/test_interop_timm.py tests/test_interop_evaluate.py

# Mutation testing of the modules whose bugs change published numbers or lose data
# (MODULE=siammae_jax/datasets/davis.py for one, BUDGET=seconds per module); writes
# build/mutation/report.md. Not part of `make test` or CI.
mutation: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,mutation]'
	$(BIN)/python benchmarks/mutation.py $(if $(MODULE),--module $(MODULE)) $(if $(BUDGET),--budget $(BUDGET))

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/model_step.py

clean:
	rm -rf $(VENV) build *.egg-info
