# Everything runs on local real services (no Docker needed): Kafka jars from Maven Central,
# Debian's redis-server. `make test` and `make demo` install what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install deps test unit sdk-test fuzz chaos test-cluster demo bench bench-cluster bench-quality lint compose-config clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

deps:
	bash infra/install-deps.sh

test: lint deps sdk-test
	$(VENV)/bin/pytest

# the browser snippet's unit tests (Node's test runner, jsdom from sdk/js/package-lock.json: make deps)
sdk-test:
	cd sdk/js && node --test test/*.test.js

# a longer fuzz campaign than `make test` runs (3000 cases, fixed seeds): FUZZ_CASES cases from a fresh seed
# (printed; FUZZ_SEED=<n> replays one), through the collector and straight to Kafka
FUZZ_CASES ?= 30000
fuzz: install deps
	FUZZ_CASES=$(FUZZ_CASES) FUZZ_SEED=$${FUZZ_SEED:-$$RANDOM$$RANDOM} CI=true $(VENV)/bin/pytest -q -s tests/integration/test_fuzz.py

# no Kafka or Redis needed: the tests outside tests/integration/ and every module's doctests
unit: install
	$(VENV)/bin/pytest --ignore=tests/integration

# the fault scenarios with Kafka stopped for a full minute (make test stops it for 15 s): docs/guarantees.md
chaos: install deps
	CI=true CHAOS_KAFKA_OUTAGE_S=60 $(VENV)/bin/pytest -q -s tests/integration/test_chaos.py tests/integration/test_faults.py

# a Redis Cluster (3 masters, 3 replicas) and a 3-broker Kafka on loopback, with failures; then the part of
# the integration suite that runs on a cluster (REDIS_CLUSTER=1: its Redis is a 3-master cluster): docs/cluster.md
CLUSTER_SUITE := $(addprefix tests/integration/,test_pipeline.py test_identity.py test_reward_join.py \
	test_attribution.py test_profile_hash.py test_apply_ops.py test_segments.py test_next_best_action.py \
	test_explain.py test_isolation.py test_limits.py test_cli.py test_learning_loop.py test_consent.py \
	test_learner_snapshots.py test_contact_policy.py test_segment_api.py test_auth.py)
test-cluster: install deps
	CI=true $(VENV)/bin/pytest -q -m cluster tests/cluster
	REDIS_CLUSTER=1 CI=true $(VENV)/bin/pytest -q $(CLUSTER_SUITE)

demo: install deps
	$(PY) -m infra.demo $(DEMO_ARGS)

bench: install deps
	$(PY) -m bench.run $(BENCH_ARGS)

# offline quality (OBD replay, MovieLens prequential), then the simulator driving the whole system
# (with off-policy estimates from its own decision logs), value arbitration against click-only ranking, what
# caps and "nothing now" cost in clicks and save in contacts, and the learner's speed
bench-cluster: install deps
	$(PY) -m bench.cluster_scaling $(BENCH_ARGS)

bench-quality: install deps
	$(PY) -m bench.quality $(BENCH_ARGS)
	$(PY) -m bench.simulator $(BENCH_ARGS)
	$(PY) -m bench.value_arbitration
	$(PY) -m bench.contact_policy_sim
	$(PY) -m bench.learning_speed $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

compose-config:
	bash infra/install-deps.sh compose
	docker compose -f infra/docker-compose.yml --env-file infra/.env.example config --quiet

clean:
	bash infra/kafka.sh stop || true
	bash infra/redis.sh stop || true
