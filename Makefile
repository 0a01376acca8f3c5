# One command per task. Each creates .venv first when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

PUSHGATEWAY := /usr/bin/prometheus-pushgateway

.PHONY: setup run test lint format bench profile clean pushgateway mutations

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
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

test: lint pushgateway ## lint, then every test tier (the tests start their own servers)
	$(BIN)/pytest

mutations: $(STAMP) pushgateway ## each mutation in tests/mutations.py in a scratch copy: which tests catch it
	$(BIN)/python -m tests.mutations $(MUTATIONS)

pushgateway: ## the Prometheus Pushgateway the metrics tests push to (Debian package, via apt)
	@if [ ! -x $(PUSHGATEWAY) ] && command -v apt-get >/dev/null; then \
		echo "installing prometheus-pushgateway (apt-get)"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus-pushgateway >/dev/null 2>&1 || \
		{ $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
		  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus-pushgateway >/dev/null; } || \
		echo "could not install prometheus-pushgateway: the metrics tests will fail"; \
	elif [ ! -x $(PUSHGATEWAY) ] && ! command -v prometheus-pushgateway >/dev/null; then \
		echo "prometheus-pushgateway missing and no apt-get: the metrics tests will fail"; \
	fi

bench: $(STAMP) ## throughput and memory against the alternatives; writes bench/RESULTS.md
	$(BIN)/python -m bench.run $(BENCH_ARGS)

profile: $(STAMP) ## one run under py-spy; writes bench/PROFILE.md
	$(BIN)/python -m bench.profile

clean:
	rm -rf $(VENV) demo .pytest_cache .mypy_cache .ruff_cache
