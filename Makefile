# Two commands on a fresh machine (python3 + make): `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint format bench clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

DEMO_DIR ?= demo_out
DEMO_STEPS ?= 300

# Pre-trains the tiny config on the embedded synthetic videos (made on first use).
demo: $(STAMP)
	$(BIN)/python -m siammae_jax.main --config configs/siammae.py:tiny \
		--workdir $(DEMO_DIR) --config.train.steps=$(DEMO_STEPS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/model_step.py

clean:
	rm -rf $(VENV) build *.egg-info
