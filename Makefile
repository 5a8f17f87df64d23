# WorldLand provider onboarding. `make test` installs everything it needs, then lints and tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Two workers, each test file on one of them (module-scoped labs stay whole; each worker's labs get their
# own subnet and names): the lab tests mostly wait on real installs and joins.
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: test lint pytest bench demo install collection system-deps clean

test: lint pytest

install: system-deps $(STAMP) collection

# The collection worldland.provider installed for this user from this tree (ansible-galaxy, offline) into
# COLLECTIONS_DIR, where Ansible looks by default: `ansible-inventory -i inventory/worldland.yml` and the
# playbooks then work from any directory. In the checkout, ansible.cfg (collections_path = ./.collections)
# and make lint still use the checkout itself, never this copy.
COLLECTIONS_DIR ?= $(HOME)/.ansible/collections
COLLECTION_STAMP := $(VENV)/.collection-stamp
COLLECTION_FILES := galaxy.yml $(shell find meta plugins roles playbooks docs -type f -not -name '*.pyc' 2>/dev/null)

collection: $(COLLECTION_STAMP)

$(COLLECTION_STAMP): $(STAMP) $(COLLECTION_FILES)
	ANSIBLE_COLLECTIONS_PATH="$(COLLECTIONS_DIR)" $(BIN)/ansible-galaxy collection install --offline --force -p "$(COLLECTIONS_DIR)" .
	@touch $@

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
# Then the fan-out of onboard.yml on lab hosts (root): with the lab's join stand-in (no kubelets), then
# with real kubeadm joins and kubelets (../shared/kube).
bench: install
	$(BIN)/python -m bench all
	$(BIN)/python -m tests.lab.bench_onboard --stand-in-join
	$(BIN)/python -m tests.lab.bench_onboard

# The whole flow end to end on HOSTS lab hosts (1-20; root: network namespaces), then torn down.
HOSTS ?= 3
demo: install
	$(BIN)/python -m demo --hosts $(HOSTS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .import_linter_cache .hypothesis build *.egg-info
