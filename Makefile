# Two commands for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
# torch is installed first through this variable; the default is the build that the CI
# machine has on local disk. For a CUDA machine: make TORCH_SPEC="torch==2.5.1" ...
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,serve
BIN := $(VENV)/bin
# torch's and numba's OpenMP threads spin against each other on small machines unless
# idle threads sleep (2D OSEM iterations went from 0.24 s to several s without this).
export OMP_WAIT_POLICY ?= PASSIVE
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-slow test-all lint bench mar clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pet_dl demo --out demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow" -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check pet_dl tests bench train.py infer.py

bench: $(STAMP)
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python bench/projector.py
	$(BIN)/python bench/recon.py

mar: $(STAMP)
	VENV=$(VENV) scripts/build_mar.sh

clean:
	rm -rf $(VENV) demo_out model_store
