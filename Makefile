# WorldLand provider onboarding. `make test` installs everything it needs, then lints and tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: test lint pytest bench install system-deps clean

test: lint pytest

install: system-deps $(STAMP)

# System packages the tests use (redis-server, ...), through apt when missing.
system-deps:
	@scripts/install-system-deps.sh

$(STAMP): requirements/runtime.txt requirements/dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	PATH="$(CURDIR)/$(BIN):$$PATH" ANSIBLE_COLLECTIONS_PATH="$(CURDIR)/.collections" $(BIN)/ansible-lint --profile production --offline -q playbooks roles

pytest: install
	$(BIN)/pytest $(PYTEST_ARGS)

# Benchmarks on a private redis-server; results go to docs/benchmarks.md by hand, figures in one run.
# Then the fan-out of onboard.yml on lab hosts (root; real kubeadm joins with ../shared/kube).
bench: install
	$(BIN)/python -m bench all
	$(BIN)/python -m tests.lab.bench_onboard

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .import_linter_cache .hypothesis build *.egg-info
