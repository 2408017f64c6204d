# The README's two commands: `make demo` (set up, run the pipeline, print metrics) and `make test`
# (ruff lint and format check, then pytest).
# Installs are pinned by requirements.lock (pip constraints), torch 2.13.0 included: the CPU build
# where a local wheel provides it, the CUDA build from PyPI elsewhere. No torchvision.
VENV ?= .venv
PYTHON ?= python3
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup demo test

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	dvc repro
	zerovlm show

test: setup
	ruff check .
	ruff format --check .
	pytest -q
