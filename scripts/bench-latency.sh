#!/usr/bin/env bash
# Latency of the worker against the echo consumer at the same offered rate, alternating, on iris
# with 1-row JSON jobs (BENCHMARKS.md, "CPU per job"): ROUNDS times, `infermq-bench --rate RATE
# --jobs 5*RATE` against a release worker and then with `--echo-only` (half load: RATE near half
# of the maximum), then the same at 200 jobs/s, 2,000 jobs (light load). LIGHT_ONLY=1 skips the
# half-load runs.
# Usage: scripts/bench-latency.sh   (environment: RATE (3500), ROUNDS (2), LIGHT_ONLY)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
bench_init lat
rate=${RATE:-3500}
bench_worker "$out/latency-worker.log"
"$loadgen" --prefix "$prefix" --model iris --jobs 5000 --rows 1 --window 256 >/dev/null 2>&1   # warm-up
show() { # label, then the bench arguments
  local label=$1; shift
  "$loadgen" --prefix "$prefix" --json --model iris --rows 1 "$@" 2>/dev/null | python3 -c "
import json, sys
r = json.load(sys.stdin)['reports'][0]; l = r['latency_ms']
print(f'  $label {r[\"jobs_per_s\"]:6.0f} jobs/s  p50 {l[\"p50\"]:6.2f} ms  p99 {l[\"p99\"]:6.2f} ms  lost {r[\"lost\"]}')"
}
echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "${ROUNDS:-2}"); do
  echo "== round $round"
  if [ -z "${LIGHT_ONLY:-}" ]; then
    show "half  worker" --rate "$rate" --jobs $((rate * 5))
    show "half  echo  " --rate "$rate" --jobs $((rate * 5)) --echo-only
  fi
  show "light worker" --rate 200 --jobs 2000
  show "light echo  " --rate 200 --jobs 2000 --echo-only
done
