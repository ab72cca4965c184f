# Two commands on a fresh machine: `make demo` (main job on bundled data) and `make test`.
# Both create .venv and install what they need; no GPU and no network beyond PyPI.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
# The trace extra needs torch; 2.13.0 is the CPU wheel this machine kind provides locally.
TORCH ?= torch==2.13.0

.PHONY: demo test lint bench

$(VENV)/.core: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) -e ".[dev]"
	touch $@

$(VENV)/.trace: $(VENV)/.core
	$(PIP) "$(TORCH)"
	$(PIP) -e ".[dev,trace,plot]"
	touch $@

demo: $(VENV)/.core
	$(VENV)/bin/tuneplan estimate llama-3.1-8b --method qlora --seq-len 4096 --batch 2
	$(VENV)/bin/tuneplan estimate qwen2.5-7b --method full --gpus 8 --sharding zero3 --seq-len 2048
	$(VENV)/bin/tuneplan plan mistral-7b --method qlora --samples 50k --mean-tokens 600 --devices consumer --top 8
	@echo "tuneplan is installed in $(VENV): run 'source $(VENV)/bin/activate' to put it on your PATH (or call $(VENV)/bin/tuneplan)"

test: $(VENV)/.trace
	$(PY) -m pytest -q

lint: $(VENV)/.core
	$(VENV)/bin/ruff check src tests benchmarks scripts

bench: $(VENV)/.core
	$(PY) benchmarks/speed.py
