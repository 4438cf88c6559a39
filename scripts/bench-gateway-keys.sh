#!/usr/bin/env bash
# What API keys cost the HTTP gateway (BENCHMARKS.md, "Gateway API keys"): three gateways in
# front of the same worker, on iris with 1-row JSON requests, closed loop with CONC connections
# (`oha -c CONC`, JOBS requests per run), ROUNDS rounds, the order rotating each round:
#   off    no keys (anonymous, on loopback)
#   keys   gateway.api_keys_file with one key (every model, requests_per_second and
#          tokens_per_minute set far above the load, so each request goes through the lookup
#          and the bucket), the key on every request as Authorization: Bearer
#   usage  the same keys and gateway.usage_log (one JSON line per request)
#   base   with BASE_BIN=/path/to/infermq only: that build's gateway, without keys (e.g. the
#          commit before API keys, to see what the anonymous path pays for its usage counters)
# Prints requests/s, p50/p99 and the gateway's CPU per request for each, and each round's ratio
# to `off`. Needs oha (cargo install oha --locked; or OHA=/path/to/oha). Raw JSON: target/bench/.
# Usage: scripts/bench-gateway-keys.sh   (environment: JOBS, CONC, ROUNDS, BASE_BIN)
set -euo pipefail
cd "$(dirname "$0")/.."
OHA=${OHA:-oha}
if ! command -v "$OHA" >/dev/null 2>&1; then
  echo "oha not found: cargo install oha --locked (or set OHA=/path/to/oha)" >&2
  exit 1
fi
JOBS=${JOBS:-20000}
CONC=${CONC:-64}
ROUNDS=${ROUNDS:-5}
. scripts/bench-lib.sh
bench_init gwkeys
bench_worker "$out/gateway-keys-bench.log"
key="sk-$(openssl rand -hex 24)"
keys=$out/gateway-keys-bench.toml
cat >"$keys" <<EOF
[[key]]
name = "bench"
sha256 = "$(printf %s "$key" | sha256sum | cut -d' ' -f1)"
models = ["*"]
requests_per_second = 1000000
tokens_per_minute = 1000000000
EOF
usage=$out/gateway-keys-bench-usage.jsonl
rm -f "$usage"*
declare -A gport gpid
start_gateway() { # start_gateway NAME PORT COMMAND [VAR=VALUE...] (COMMAND: words, no spaces in them)
  local name=$1 p=$2 command=$3
  shift 3
  # shellcheck disable=SC2086
  bench_start "$out/gateway-keys-bench.log" "http://127.0.0.1:$p/v2/health/ready" "$@" $command gateway --listen "127.0.0.1:$p"
  gport[$name]=$p
  gpid[$name]=$started
}
start_gateway off $((port + 1)) "$bin"
start_gateway keys $((port + 2)) "$bin" INFERMQ__GATEWAY__API_KEYS_FILE="$keys"
start_gateway usage $((port + 3)) "$bin" INFERMQ__GATEWAY__API_KEYS_FILE="$keys" INFERMQ__GATEWAY__USAGE_LOG="$usage"
names=(off keys usage)
if [ -n "${BASE_BIN:-}" ]; then
  # Run from / so that it reads its own compiled-in defaults, not this checkout's
  # config/default.toml (whose newer keys an older build refuses).
  start_gateway base $((port + 4)) "env -C / $BASE_BIN"
  names+=(base)
fi
body='{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[0.61,-0.23,0.94,0.17]}]}'
run() { # run NAME N OUTPUT
  local name=$1 n=$2
  "$OHA" --no-tui --output-format json -m POST -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $key" -d "$body" -n "$n" -c "$CONC" \
    "http://127.0.0.1:${gport[$name]}/v2/models/iris/infer" >"$3"
}
ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+changes'), $CONC connections, $JOBS requests per run, $ROUNDS rounds"
for name in "${names[@]}"; do run "$name" 2000 /dev/null; done   # warm-up: channels, metadata, caches
for round in $(seq 1 "$ROUNDS"); do
  for i in "${!names[@]}"; do
    name=${names[$(((round + i) % ${#names[@]}))]}
    before=$(ticks "${gpid[$name]}")
    run "$name" "$JOBS" "$out/gwkeys-$name-$round.json"
    echo "$before $(ticks "${gpid[$name]}")" >"$out/gwkeys-$name-$round.ticks"
  done
done
# Stopped, the usage gateway writes out what it holds: every request has its line.
kill -TERM "${gpid[usage]}"
wait "${gpid[usage]}" 2>/dev/null || true
python3 - "$out" "$ROUNDS" "$JOBS" "$(getconf CLK_TCK)" "$usage" "${names[@]}" <<'PY'
import json, statistics, sys
out, rounds, jobs, hz, usage = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
names = sys.argv[6:]
labels = {"off": "no keys", "keys": "API keys", "usage": "API keys + usage log", "base": "BASE_BIN, no keys"}
rows = {n: [] for n in names}
for r in range(1, rounds + 1):
    for n in names:
        report = json.load(open(f"{out}/gwkeys-{n}-{r}.json"))
        codes = report["statusCodeDistribution"]
        assert set(codes) == {"200"}, f"{n} round {r}: statuses {codes}"
        a, b = map(int, open(f"{out}/gwkeys-{n}-{r}.ticks").read().split())
        p = report["latencyPercentiles"]
        rows[n].append((report["summary"]["requestsPerSec"], p["p50"] * 1e3, p["p99"] * 1e3,
                        (b - a) / hz / jobs * 1e6))
others = [n for n in names if n != "off"]
print("| round | no keys req/s | " + " | ".join(f"{labels[n]} req/s (/ no keys)" for n in others) + " |")
print("| --- | ---: | " + " | ".join("---:" for _ in others) + " |")
for r in range(rounds):
    off = rows["off"][r][0]
    cells = " | ".join(f"{rows[n][r][0]:.0f} ({rows[n][r][0] / off:.3f})" for n in others)
    print(f"| {r + 1} | {off:.0f} | {cells} |")
ratio = lambda n: statistics.median(rows[n][r][0] / rows["off"][r][0] for r in range(rounds))
print()
print("| gateway | req/s (median) | p50 ms | p99 ms | gateway CPU µs per request | median ratio to off |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for n in names:
    med = lambda i: statistics.median(x[i] for x in rows[n])
    print(f"| {labels[n]} | {med(0):.0f} | {med(1):.2f} | {med(2):.2f} | {med(3):.0f} | {ratio(n):.3f} |")
lines = sum(1 for _ in open(usage))
expected = rounds * jobs + 2000
assert lines == expected, f"usage log: {lines} lines for {expected} requests"
print(f"\nusage log: {lines} lines, one per request ({rounds * jobs} measured and the warm-up's 2000)")
PY
