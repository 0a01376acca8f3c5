# One command per task. Each creates .venv first when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

PUSHGATEWAY := /usr/bin/prometheus-pushgateway
PROMTOOL := /usr/bin/promtool

.PHONY: setup run test lint format bench bench-year budget profile clean pushgateway prometheus mutations

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev,analysis,demo]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv with the project and its pinned dependencies

run: $(STAMP) ## the demo: embedded broker, a simulated day, the job, the Parquet
	$(BIN)/party-rates demo --dir demo

lint: $(STAMP) ## ruff (check + format) and mypy
	$(BIN)/ruff check flows schemas tests bench
	$(BIN)/ruff format --check flows schemas tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format flows schemas tests bench
	$(BIN)/ruff check --fix flows schemas tests bench

test: lint pushgateway prometheus ## lint, then every test tier (the tests start their own servers)
	$(BIN)/pytest

mutations: $(STAMP) pushgateway ## each mutation in tests/mutations.py in a scratch copy: which tests catch it
	$(BIN)/python -m tests.mutations $(MUTATIONS)

pushgateway: ## the Prometheus Pushgateway the metrics tests push to (Debian package, via apt)
	@$(call apt_install,prometheus-pushgateway,$(PUSHGATEWAY),the metrics tests)

prometheus: ## Prometheus and promtool, which the monitoring tests run (Debian package, via apt)
	@$(call apt_install,prometheus,$(PROMTOOL),the monitoring tests)

# $(call apt_install,PACKAGE,BINARY,WHO NEEDS IT): install a Debian package where its binary
# is missing (as root, or through sudo); without apt, say who will fail.
define apt_install
if [ ! -x $(2) ] && command -v apt-get >/dev/null; then \
	echo "installing $(1) (apt-get)"; \
	SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1) >/dev/null 2>&1 || \
	{ $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1) >/dev/null; } || \
	echo "could not install $(1): $(3) will fail"; \
elif [ ! -x $(2) ]; then \
	echo "$(1) missing and no apt-get: $(3) will fail"; \
fi
endef

bench: $(STAMP) ## throughput and memory against the alternatives; writes bench/RESULTS.md
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-year: $(STAMP) ## a simulated year of 300 namespaces in both layouts; writes bench/LAYOUT.md
	$(BIN)/python -m bench.year $(BENCH_YEAR_ARGS)

budget: $(STAMP) ## CPU per message by stage (ablation); writes bench/BUDGET.md
	$(BIN)/python -m bench.budget $(BUDGET_ARGS)

profile: $(STAMP) ## one run under py-spy; writes bench/PROFILE.md
	$(BIN)/python -m bench.profile

clean:
	rm -rf $(VENV) demo .pytest_cache .mypy_cache .ruff_cache
