# npspulse — the two commands are `make demo` and `make test`; everything they need is set up here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR := out/demo
BENCH_VENV := .venv-quix
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp

.PHONY: install demo test unit lint bench bench-latency bench-memory soak services-start services-stop clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "npspulse needs Python >= 3.11 (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@mkdir -p $(DEMO_DIR)
	$(VENV)/bin/npspulse simulate --customers 20000 --duration 24h --seed 7 \
		--incident "region=EU|channel=app @ +14h for 60m +25pp" --malformed-rate 0.001 \
		--out $(DEMO_DIR)/stream.jsonl
	@echo "Injected incident: region=EU|channel=app, 2026-03-02 14:00-15:00 UTC, +25 pp detractors."
	$(VENV)/bin/npspulse replay $(DEMO_DIR)/stream.jsonl --out-dir $(DEMO_DIR)

# Starts a real Kafka broker (KRaft) and a real Redis on loopback, runs the whole suite, stops both.
# The dashboard's browser test needs Debian's Chromium: installed with apt once if missing.
test: $(STAMP)
	bash deploy/local/ensure-chromium.sh
	deploy/local/with-services.sh $(PY) -m pytest -q

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

# Not part of `make test`: one worker for 30 minutes at a fixed load; prints memory, lag and errors over time.
soak: $(STAMP)
	deploy/local/with-services.sh $(PY) bench/soak.py $(SOAK_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Throughput of npspulse against the raw-consume ceiling, Faust written per its docs and Quix Streams (bench/run.py,
# docs/performance.md); BENCH_EVENTS (default 50000), BENCH_CUSTOMERS, BENCH_RUNS set the size. Not part of `make test`.
# Quix Streams (the `bench` extra) pins confluent-kafka < 2.13, so it gets its own venv: .venv keeps what `make test` uses.
$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[bench]'
	@touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	deploy/local/with-services.sh $(PY) bench/run.py

# `make bench` measures the worker's event-to-alert latency at one offered load (LATENCY_RATE, default 10,000/s);
# two more tables of their own (they would take `make bench` past its 20 minutes): the latency at several offered
# loads (LATENCY_RATES, LATENCY_RUNS, BENCH_EVENTS), and the memory of the per-segment state (MEMORY_ARGS; 100k
# segments x 1.25 h takes about 30 min here, the state is in its steady state by then but for the baseline's
# cells: 24 h would take over 4 CPU hours). Not part of `make test`.
MEMORY_ARGS ?= --segments 100000 --hours 1.25

bench-latency: $(STAMP)
	deploy/local/with-services.sh $(PY) bench/latency.py

bench-memory: $(STAMP)
	$(PY) bench/memory.py $(MEMORY_ARGS)

services-start:
	deploy/local/services.sh start

services-stop:
	deploy/local/services.sh stop

clean:
	rm -rf $(VENV) $(BENCH_VENV) out .pytest_cache .ruff_cache
