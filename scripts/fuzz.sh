#!/usr/bin/env bash
# The long fuzz run: every target of tests/fuzz.rs over FUZZ_ITERATIONS mutated inputs each
# (default 3,000,000, five targets: 15 million inputs), release profile, targets in parallel.
# Inputs that panic are kept in $CARGO_TARGET_DIR/fuzz-crashes/ (default target/fuzz-crashes/);
# a different FUZZ_SEED explores other inputs. Usage: scripts/fuzz.sh [iterations] [seed]
set -euo pipefail
cd "$(dirname "$0")/.."
export FUZZ_ITERATIONS="${1:-${FUZZ_ITERATIONS:-3000000}}"
if [[ -n "${2:-}" ]]; then export FUZZ_SEED="$2"; fi
echo "fuzz: ${FUZZ_ITERATIONS} inputs per target, seed ${FUZZ_SEED:-default}"
cargo test --release --test fuzz -- --nocapture
