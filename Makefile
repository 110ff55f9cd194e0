# Every target creates and reuses .venv; `make setup` does only the set-up.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.nexus-setup-done

.PHONY: setup test test-slow lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_env.sh
	bash scripts/setup_env.sh $(VENV)
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q -x --timeout=600

test-slow: setup
	$(PY) -m pytest -q -m slow --timeout=3600

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache
