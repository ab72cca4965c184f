# Two commands on a fresh machine: `make demo` (main job on bundled data) and `make test`.
# Both create .venv and install what they need; no GPU and no network beyond PyPI.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
# The trace and probe extras need torch; 2.13.0 is the CPU wheel this machine kind provides locally
# (installed first, so bitsandbytes' torch>=2.4 is already met and no CUDA torch is pulled).
TORCH ?= torch==2.13.0

.PHONY: demo test lint bench

$(VENV)/.core: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) -e ".[dev]"
	touch $@

$(VENV)/.trace: $(VENV)/.core
	$(PIP) "$(TORCH)"
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
