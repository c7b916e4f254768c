# Two commands for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
# torch is installed first through this variable; the default is the build that the CI
# machine has on local disk. For a CUDA machine: make TORCH_SPEC="torch==2.5.1" ...
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,serve,petsird
BIN := $(VENV)/bin
# torch's and numba's OpenMP threads spin against each other on small machines unless
# idle threads sleep (2D OSEM iterations went from 0.24 s to several s without this).
export OMP_WAIT_POLICY ?= PASSIVE
STAMP := $(VENV)/.installed

.PHONY: venv demo demo-real test test-slow test-all lint bench mar clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pet_dl demo --out demo_out

# a real Siemens mMR listmode (shared data: PET_DL_TEST_DATA) imported and reconstructed
demo-real: $(STAMP)
	@test -n "$(PET_DL_TEST_DATA)" || { echo "error: set PET_DL_TEST_DATA to the shared data folder" >&2; exit 2; }
	$(BIN)/python -m pet_dl.demo_real --data "$(PET_DL_TEST_DATA)/mmr_scanner" --out demo_real_out

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
	rm -rf $(VENV) demo_out demo_real_out model_store
