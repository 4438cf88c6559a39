# infermq: `make run` serves the bundled models; `make test` runs every test.
.PHONY: setup run test lint bench models clean-ort

CARGO ?= cargo
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

setup:
	scripts/setup-ort.sh

run: setup
	scripts/ensure-rabbitmq.sh
	$(CARGO) run --release -- worker

test: setup
	scripts/ensure-rabbitmq.sh
	scripts/ensure-test-tools.sh
	mkdir -p target
	$(CARGO) test --workspace --all-targets --no-fail-fast 2>&1 | tee target/test.log
	@scripts/delete-prefix.sh test- || true
	@scripts/tls-broker.sh stop || true
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "total: %d passed, %d failed\n", p, f }' target/test.log

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	python3 scripts/module-cycles.py src

bench: setup
	scripts/ensure-rabbitmq.sh
	scripts/bench.sh

models:
	$(CARGO) run --release -p infermq-tools --bin make-models -- models

clean-ort:
	rm -rf .ort

# promtool, yamllint, kubernetes-validate, CRD schemas, hadolint, dashboards: see the script.
.PHONY: deploy-checks
deploy-checks:
	scripts/deploy-checks.sh

.PHONY: fuzz
# Long fuzz run (release, 3,000,000 inputs per target); make test runs a short one.
fuzz:
	scripts/fuzz.sh
