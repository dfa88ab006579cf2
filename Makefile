# sysout: the two commands of the README are `make train` and `make test`; both install first.
PYTHON ?= python3
SHARED ?= $(abspath ../shared)
export SYSOUT_SHARED_DIR ?= $(SHARED)
export TIKTOKEN_CACHE_DIR ?= $(SHARED)/tiktoken
EXPERIMENT ?= quickstart
# The paper's six formulations, (a)-(f) of SPEC section 3.
PAPER_VARIANTS ?= softmax,value_bias,context_bias,kv_bias,ca_scaling,sigmoid

.PHONY: install train sweep lab massive-lab test test-slow test-all test-lab lint format clean gpu-check

# torch first, pinned to the CPU build this machine carries: a bare `torch` requirement would
# pull several GB of CUDA wheels. An existing torch (any build) is kept.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "torch==2.13.0"
	$(PYTHON) -m pip install -q -e ".[dev]"

train: install
	$(PYTHON) train.py experiment=$(EXPERIMENT) $(ARGS)

sweep: install
	$(PYTHON) train.py -m experiment=$(EXPERIMENT) attention=$(PAPER_VARIANTS) $(ARGS)

# The CPU laboratory (docs/lab.md), on Guo et al.'s Bigram-Backcopy task. Each run is train.py
# on one thread, two at a time; each finished run's files land in docs/results/<lab>/runs/ (an
# interrupted sweep resumes), then the report is written from those files alone.
# massive-lab: the residual-state peak, its controls and factors, no BOS; five seeds each.
MASSIVE_ARGS ?= --seeds 1,2,3,4,5
massive-lab: install
	$(PYTHON) -m sysout.lab.sweep --experiment massive_lab --jobs 2 $(MASSIVE_ARGS)
	$(PYTHON) -m sysout.lab.report docs/results/massive-lab

# lab: attention sinks in 600 steps, every variant (sysout's GPT-2 parametrisation).
LAB_ARGS ?= --seeds 1,2,3,4,5 --plans main
lab: install
	$(PYTHON) -m sysout.lab.sweep --experiment sink_lab --jobs 2 $(LAB_ARGS)
	$(PYTHON) -m sysout.lab.report docs/results/sink-lab

# What CI runs: everything but the long trainings (marked slow), with one end-to-end run of each
# entry point; a few minutes on 2 cores.
test: install
	$(PYTHON) -m pytest -v -m "not slow" --durations=15 $(ARGS)

# The long trainings: the sink lab at seeds 1-5 (ten 600-step runs), the trained sweep through
# evaluate.py. About half an hour on 2 idle cores.
test-slow: install
	$(PYTHON) -m pytest -v -m slow --durations=15 $(ARGS)

test-all: install
	$(PYTHON) -m pytest -v --durations=15 $(ARGS)

# The sink lab's tests alone: its pipeline and, end to end, softmax's BOS sink and sigmoid's
# absence of one at each of seeds 1-5.
test-lab: install
	$(PYTHON) -m pytest -v tests/test_sink_lab.py tests/test_lab.py $(ARGS)

# Everything a first GPU must show, in under 8 minutes (docs/gpu-check.md); a dry run at tiny
# shapes on a CPU. No install step: a lent GPU machine has no network, and the script imports
# this checkout's sysout itself.
gpu-check:
	$(PYTHON) bench/gpu_check.py $(ARGS)

# lint-imports checks the walls between sysout's packages: the import-linter contracts in
# pyproject.toml, drawn in docs/architecture.md. It analyses the sysout of this directory. It is
# called through $(PYTHON) so that it is the one `make install` put there (no script on PATH needed).
LINT_IMPORTS = $(PYTHON) -c 'import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())'

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(LINT_IMPORTS) --no-cache

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

clean:
	rm -rf outputs multirun .cache .pytest_cache .ruff_cache
