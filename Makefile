# Two commands: `make demo` and `make test`. Each installs what it needs into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo serve test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install  ## the member-services scenario on the embedded default
	$(VENV)/bin/tessera demo

serve: install  ## the demo, then keep the server up for exploring
	$(VENV)/bin/tessera demo --serve

test: install  ## the whole test suite
	$(PY) -m pytest -q --durations=15

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: install  ## every benchmark, printing its figures
	$(PY) bench/run_all.py

clean:
	rm -rf .tessera .pytest_cache .mypy_cache .ruff_cache
