# scredge developer entry points. `make test` needs nothing but python3 >= 3.10.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is installed first and pinned exactly, so the extras' range (>=2.9,<2.15) is
# already satisfied and pip never swaps in a multi-GB CUDA build on a CPU machine.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= export,ort,dev

.PHONY: test venv lint engine clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@echo "== setting up $(VENV) (first run only: about two minutes) ..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

test: venv
	$(VENV)/bin/ruff check core scr_ref export runtime plugins tests benchmarks tools
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check core scr_ref export runtime plugins tests benchmarks tools

engine: venv
	@echo "== [1/3] export the tiny model to artifacts/tiny, verified against the reference"
	@mkdir -p artifacts
	$(VENV)/bin/scredge export --preset tiny --seed 0 --out artifacts/tiny --force
	@echo "== [2/3] build the best engine this machine allows, checked against the export"
	$(VENV)/bin/scredge build artifacts/tiny
	@echo "== [3/3] a short generation (torch-free runtime)"
	$(VENV)/bin/scredge generate artifacts/tiny --prompt "The " --max-new-tokens 48 --stream

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis artifacts
