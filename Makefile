# Two commands on a fresh machine: `make demo` (main job on bundled data) and `make test`.
# Both create .venv and install what they need; no GPU and no network beyond PyPI.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
# The trace and probe extras need torch, installed first so bitsandbytes' torch>=2.4 is already met.
# Here 2.13.0+cpu comes from the local wheels this machine kind provides (pip find-links). On any other
# CPU-only machine the default PyPI index gives the multi-GB CUDA build: get the CPU wheel with
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
# (= pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu); empty = pip's own index.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: demo test lint bench docs

$(VENV)/.core: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) -e ".[dev]"
	touch $@

$(VENV)/.trace: $(VENV)/.core
	$(PIP) "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) -e ".[dev,trace,plot,probe]"
	touch $@

demo: $(VENV)/.core
	$(VENV)/bin/tuneplan estimate llama-3.1-8b --method qlora --seq-len 4096 --batch 2
	$(VENV)/bin/tuneplan estimate qwen2.5-7b --method full --gpus 8 --sharding zero3 --seq-len 2048
	$(VENV)/bin/tuneplan plan mistral-7b --method qlora --samples 50k --mean-tokens 600 --devices consumer --top 8
	@echo "tuneplan is installed in $(VENV): run 'source $(VENV)/bin/activate' to put it on your PATH (or call $(VENV)/bin/tuneplan)"

# Parsers that check `tuneplan export` files in the tests. Their declared dependencies pin
# older transformers/peft/trl, so they go without dependencies into a folder of their own,
# which only tests/test_export.py puts on sys.path (CPU-only, about 10 s).
VALIDATORS := axolotl==0.19.0 llamafactory==0.9.5 torchtune==0.6.1 torchao==0.13.0 omegaconf==2.4.0 \
	antlr4-python3-runtime==4.9.3 addict==2.4.0 sentencepiece==0.2.3 tiktoken==0.14.0

$(VENV)/.export: $(VENV)/.trace
	$(PIP) -e ".[dev,trace,plot,export,web,browser,mlx]"
	$(PIP) --no-deps --upgrade --target $(VENV)/validators $(VALIDATORS)
	touch $@

test: $(VENV)/.export
	$(PY) -m pytest -q

lint: $(VENV)/.core
	$(VENV)/bin/ruff check src tests benchmarks scripts

bench: $(VENV)/.core
	$(PY) benchmarks/speed.py

# Every generated figure in README.md and docs/ (and the result files they quote), torch-free;
# tests/test_docs_current.py fails when one is stale.
docs: $(VENV)/.core
	$(PY) scripts/regen_docs.py
