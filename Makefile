# One Makefile for the monorepo. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PACKAGES := $(sort $(patsubst packages/%/pyproject.toml,%,$(wildcard packages/*/pyproject.toml)))
PROJECTS := shared tests/example_paper $(addprefix packages/,$(PACKAGES))
# Re-install only when a pyproject or the constraints change.
STAMP := $(VENV)/.installed-$(shell cat constraints.txt $(addsuffix /pyproject.toml,$(PROJECTS)) | sha256sum | cut -c1-16)
SCALE ?= paper
FULL ?=
DATA_DIR ?=
OUT ?=
PYTEST_ARGS ?=
JOBS ?= 2
export WANDB_MODE ?= disabled
export PYTHONUNBUFFERED := 1

.PHONY: help install test test-slow lint demo report bench clean distclean check-results

help: ## List the targets
	@echo "Usage: make <target> [VAR=value]"
	@grep -hE '^[a-zA-Z_%-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-22s %s\n", $$1, $$2}'
	@echo "Papers: $(if $(PACKAGES),$(PACKAGES),(none yet))"
	@echo "Variables: SCALE=paper|cpu (reproduce-*), DATA_DIR=..., OUT=..., FULL=1 (demo), JOBS=2, PYTEST_ARGS=..."

install: $(STAMP) ## Create .venv and install shared/ and every package editable under constraints.txt (idempotent)

$(STAMP):
	@test -x $(BIN)/python || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@$(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python 3.11+ needed; set PYTHON=..." >&2; exit 2; }
	@echo "installing shared/ and $(words $(PACKAGES)) package(s) into $(VENV) (first time: a few minutes)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt \
		pytest pytest-xdist ruff hatchling $(addprefix -e ,$(PROJECTS))
	@rm -f $(VENV)/.installed-*; touch $@

test: install ## The fast suite (not slow, not gpu): unit tests, contract tests, CPU end-to-end runs (JOBS=2 workers)
	$(BIN)/pytest -n $(JOBS) --durations=15 $(PYTEST_ARGS)

test-slow: install ## Everything but GPU tests (adds cherry-pick installs into empty venvs, DDP for every package)
	$(BIN)/pytest -n $(JOBS) -m "not gpu" --durations=15 $(PYTEST_ARGS)

lint: install ## ruff check over the whole repository
	$(BIN)/ruff check .

demo: install ## Every paper's `reproduce --scale cpu --quick` in turn (FULL=1: the full CPU analogues), then the report
	@if [ -z "$(PACKAGES)" ]; then echo "no paper packages yet"; exit 0; fi; \
	start=$$(date +%s); n=$(words $(PACKAGES)); i=0; failed=""; \
	for p in $(PACKAGES); do \
		i=$$((i+1)); t0=$$(date +%s); \
		echo "==> [$$i/$$n] $$p: reproduce --scale cpu $(if $(FULL),,--quick) (offline CPU-scale analogue)"; \
		if $(BIN)/$$p reproduce --scale cpu $(if $(FULL),,--quick) --out results/$$p; then \
			echo "==> [$$i/$$n] $$p done in $$(( $$(date +%s) - t0 )) s"; \
		else echo "==> [$$i/$$n] $$p FAILED after $$(( $$(date +%s) - t0 )) s"; failed="$$failed $$p"; fi; \
	done; \
	echo "==> demo finished in $$(( $$(date +%s) - start )) s$${failed:+; failed:$$failed}"; \
	if $(BIN)/python -c 'import reprokit.report' 2>/dev/null; then $(MAKE) --no-print-directory report; fi; \
	test -z "$$failed"

report: install ## Build the static HTML report under reports/ from results/
	$(BIN)/python -m reprokit.report --results results --packages packages --out reports

reproduce-%: ## The paper's protocol: make reproduce-<paper> [SCALE=paper|cpu] [DATA_DIR=...] [OUT=...]
	@if [ ! -f packages/$*/pyproject.toml ]; then \
		echo "error: unknown paper '$*'; choose one of: $(if $(PACKAGES),$(PACKAGES),(none yet))" >&2; exit 2; fi
	@case "$(SCALE)" in paper|cpu) ;; *) echo "error: SCALE must be paper or cpu, got '$(SCALE)'" >&2; exit 2;; esac
	@$(MAKE) --no-print-directory install
	$(BIN)/$* reproduce --scale $(SCALE) $(if $(DATA_DIR),--data_dir $(DATA_DIR)) --out $(if $(OUT),$(OUT),results/$*)

check-results: install ## Compare results/<paper> with packages/<paper>/expected for every paper
	@status=0; for p in $(PACKAGES); do \
		if [ -d results/$$p ]; then echo "== $$p"; $(BIN)/python -m reprokit.results check results/$$p packages/$$p/expected || status=1; fi; \
	done; exit $$status

bench: install ## Run every benchmarks/<paper>/bench_*.py; JSON goes to benchmarks/results/
	@for f in benchmarks/*/bench_*.py; do [ -e "$$f" ] || continue; echo "==> $$f"; $(BIN)/python $$f || exit 1; done

clean: ## Remove runs/, results/, reports/ and caches (keeps .venv)
	rm -rf runs results reports benchmarks/results lightning_logs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

distclean: clean ## clean, and remove .venv
	rm -rf $(VENV)
