# MLServe: `make run` serves with the embedded defaults, `make test` runs
# everything CI runs. Both install what they need first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUF := .tools/node_modules/.bin/buf
INSTALLED := $(VENV)/.installed

.PHONY: install run test lint typecheck generate check-generated bench clean

install: $(INSTALLED) $(BUF)

# -qq: pip prints errors only; the two echo lines say what is going on instead.
$(INSTALLED): pyproject.toml
	@echo "make: installing MLServe and its Python packages into $(VENV) (pip; minutes the first time)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -qq --upgrade pip
	@$(BIN)/pip install -qq -e '.[dev]'
	@touch $@
	@echo "make: $(VENV) is ready ($(BIN)/mlserve)"

$(BUF):
	@echo "make: installing buf (npm) into .tools, for linting the protos"
	@npm install --prefix .tools --no-audit --no-fund --silent @bufbuild/buf

# Serving needs only the Python side; buf (npm) is for linting the protos.
# bubblewrap confines the embedded Triton; where it cannot be installed,
# `mlserve serve` says what to do instead of starting without it.
run: $(INSTALLED)
	-scripts/ensure_bubblewrap.sh
	$(BIN)/mlserve serve

generate: $(INSTALLED)
	$(BIN)/python scripts/generate_protos.py

# buf breaking compares the protos with the last released API (a git tag), so a
# change that would break a generated client fails lint.
API_BASELINE := v0.1.0

lint: install
	$(BUF) lint
	@git rev-parse -q --verify "refs/tags/$(API_BASELINE)" >/dev/null || { \
	  echo "make lint: the tag $(API_BASELINE) (the last released API) is missing: git fetch --tags"; \
	  exit 1; }
	$(BUF) breaking --against '.git#tag=$(API_BASELINE)'
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

typecheck: install
	$(BIN)/mypy

# pytest exits 5 when it collects nothing; that is not a failure of the suite.
# The store tests also run on a throwaway PostgreSQL cluster: Debian's server
# is installed first when absent (tests/support/postgres.py starts and removes it),
# and so is bubblewrap, the embedded Triton's sandbox.
test: install lint
	scripts/ensure_postgresql.sh
	scripts/ensure_bubblewrap.sh
	$(BIN)/pytest -q -ra $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

bench: $(INSTALLED)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
