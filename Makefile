# dropdyn: `make run` (install + main job), `make test` (install + lint + tests), `make bench`,
# `make figures [ONLY="srivastava alignment"]` (re-run the recipes behind docs/ figures and docs/results.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU wheel first (it lies on disk on the project's machines); an already-installed
# torch (e.g. a CUDA build in a reused venv) is left alone.
TORCH_FIRST ?= torch==2.13.0

.PHONY: install install-dev run test bench figures clean

# `make run` installs what a run needs; `make test` adds the developer tools (pytest, ruff, Triton's interpreter …)
install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_FIRST)" || $(PY) -m pip install -q "torch>=2.2,<3"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

run: install
	$(VENV)/bin/dropdyn run teacher-student

test: install-dev
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/bench_step.py

figures: install
	$(PY) scripts/figures.py $(if $(ONLY),--only $(ONLY))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
