# MLServe: `make run` serves with the embedded defaults, `make test` runs
# everything CI runs. Both install what they need first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUF := .tools/node_modules/.bin/buf
INSTALLED := $(VENV)/.installed

.PHONY: install run test lint typecheck generate check-generated bench docs clean

TS_PROTO := .tools/node_modules/.bin/protoc-gen-ts_proto
# Pinned: the committed TypeScript stubs are what this version writes.
TS_PROTO_VERSION := 2.18.0

NODE_CLIENT := clients/node/node_modules/.package-lock.json

# TypeScript and what the TypeScript stubs import: the test that they compile.
TSC := .tools/node_modules/.bin/tsc
TS_CHECK_PACKAGES := typescript@5.9.3 @types/node@20.19.43 @grpc/grpc-js@1.14.3 @bufbuild/protobuf@2.17.0

install: $(INSTALLED) $(BUF) $(TS_PROTO) $(TSC) $(NODE_CLIENT)

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

$(TS_PROTO):
	@echo "make: installing ts-proto $(TS_PROTO_VERSION) (npm) into .tools, for the TypeScript stubs"
	@npm install --prefix .tools --no-audit --no-fund --silent ts-proto@$(TS_PROTO_VERSION)

$(TSC): $(TS_PROTO)
	@echo "make: installing TypeScript (npm) into .tools, to compile the TypeScript stubs in a test"
	@npm install --prefix .tools --no-audit --no-fund --silent $(TS_CHECK_PACKAGES)

# The Node client's packages (@grpc/grpc-js, @grpc/proto-loader), as locked.
$(NODE_CLIENT): clients/node/package-lock.json
	@echo "make: installing the Node client's packages (npm ci) into clients/node"
	@npm ci --prefix clients/node --no-audit --no-fund --silent

# Serving needs only the Python side; buf (npm) is for linting the protos.
# bubblewrap confines the embedded Triton; where it cannot be installed,
# `mlserve serve` says what to do instead of starting without it.
run: $(INSTALLED)
	-scripts/ensure_bubblewrap.sh
	$(BIN)/mlserve serve

# Python stubs, then Triton's vendored protos and the TypeScript and Go stubs
# (Go's plugins from Debian: scripts/ensure_go.sh installs them when absent).
generate: install
	$(BIN)/python scripts/generate_protos.py
	scripts/ensure_go.sh
	$(BIN)/python scripts/generate_polyglot.py

# buf breaking compares the protos with the last released API, so a change that
# would break a generated client fails lint. The release is kept as a buf image
# in api-baseline/ (made by `buf build .git#tag=v0.1.0 -o ...`): a clone without
# tags checks the same contract. A new release adds its image and moves this.
API_BASELINE := api-baseline/v0.1.0.binpb

lint: install
	$(BUF) lint
	$(BUF) breaking --against $(API_BASELINE)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

typecheck: install
	$(BIN)/mypy

# pytest exits 5 when it collects nothing; that is not a failure of the suite.
# The store tests also run on a throwaway PostgreSQL cluster: Debian's server
# is installed first when absent (tests/support/postgres.py starts and removes it),
# and so is bubblewrap, the embedded Triton's sandbox.
# Two pytest workers (pytest-xdist), one test module each at a time: the
# integration tests mostly wait on the processes they start, so two of them
# share this 2-core machine well. PYTEST_WORKERS=0 runs the suite in one process.
# A failed test is run once more (pytest-rerunfailures) before the suite fails:
# on a shared machine a real process can miss a deadline once. Each rerun is
# listed as RERUN in the summary with the traceback of its failed try, so a
# flaky test is reported, not hidden;
# PYTEST_RERUNS=0 turns it off.
PYTEST_WORKERS ?= 2
PYTEST_RERUNS ?= 1
test: install lint
	scripts/ensure_postgresql.sh
	scripts/ensure_bubblewrap.sh
	scripts/ensure_go.sh
	$(BIN)/pytest -q -raR -n $(PYTEST_WORKERS) --dist loadfile --reruns $(PYTEST_RERUNS) --rerun-show-tracebacks $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

bench: $(INSTALLED)
	$(BIN)/python -m bench

# The README's pictures: its mermaid diagrams drawn with Graphviz (docs/diagrams.py)
# and the drift chart drawn with the real assay code (docs/drift_picture.py).
docs: $(INSTALLED)
	scripts/ensure_graphviz.sh
	$(BIN)/python docs/diagrams.py
	$(BIN)/python docs/drift_picture.py

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
