# infermq: `make run` serves the bundled models; `make test` runs every test.
.PHONY: setup run test lint bench models clean-ort

CARGO ?= cargo

setup:
	scripts/setup-ort.sh

run: setup
	scripts/ensure-rabbitmq.sh
	$(CARGO) run --release -- worker

test: setup
	scripts/ensure-rabbitmq.sh
	scripts/ensure-test-tools.sh
	$(CARGO) test --all-targets --no-fail-fast
	$(CARGO) test --doc

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

bench: setup
	scripts/ensure-rabbitmq.sh
	scripts/bench.sh

models:
	$(CARGO) run --release --bin make-models -- models

clean-ort:
	rm -rf .ort
