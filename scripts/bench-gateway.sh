#!/usr/bin/env bash
# The HTTP gateway against the direct queue path, on iris with 1-row JSON jobs, in the same run
# and against the same worker (BENCHMARKS.md, "HTTP gateway"):
#   1. throughput, closed loop with CONC requests in flight: `infermq-bench --window CONC`
#      straight onto the queue, then `oha -c CONC` through the gateway (ROUNDS rounds)
#   2. latency at light load, open loop at LIGHT_RATE requests/s: `infermq-bench --rate`, then
#      `oha -q`; the gateway's added p50 is the difference of the two p50s
# Needs oha (cargo install oha --locked; or OHA=/path/to/oha). Raw JSON goes to target/bench/.
# Usage: scripts/bench-gateway.sh   (environment: JOBS, CONC, ROUNDS, LIGHT_RATE, LIGHT_JOBS)
set -euo pipefail
cd "$(dirname "$0")/.."
OHA=${OHA:-oha}
if ! command -v "$OHA" >/dev/null 2>&1; then
  echo "oha not found: cargo install oha --locked (or set OHA=/path/to/oha)" >&2
  exit 1
fi
JOBS=${JOBS:-20000}
CONC=${CONC:-64}
ROUNDS=${ROUNDS:-3}
LIGHT_RATE=${LIGHT_RATE:-100}
LIGHT_JOBS=${LIGHT_JOBS:-2000}
. scripts/bench-lib.sh
bench_init gwbench
wport=$port
gport=$((port + 1))
bench_worker "$out/gateway-bench.log"
bench_start "$out/gateway-bench.log" "http://127.0.0.1:$gport/v2/models/iris/ready" "$bin" gateway --listen "127.0.0.1:$gport"
gateway=$started
url=http://127.0.0.1:$gport/v2/models/iris/infer
body='{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[0.61,-0.23,0.94,0.17]}]}'
# CPU ticks (user + system) of the worker, the gateway and the broker, for the CPU per request.
beam=$(pgrep -u rabbitmq -f "rabbit boot" | head -1 || true)
# Then the worker's context switches (all its threads) and its iris batches (rows, count).
ticks() {
  for p in "$worker" "$gateway" $beam; do awk '{printf "%d ", $14 + $15}' /proc/"$p"/stat; done
  awk '/ctxt_switches/ {n += $2} END {printf "%d ", n}' /proc/"$worker"/task/*/status
  curl -sf "http://127.0.0.1:$wport/metrics" | awk '/^infermq_batch_rows_(sum|count)\{.*model="iris"/ {printf "%d ", $2}'
  echo
}
# The gateway's jobs: requests in them (sum) and jobs (count), from its metrics.
jobs() { curl -sf "http://127.0.0.1:$gport/metrics" | awk '/^infermq_gateway_requests_per_message_(sum|count)\{model="iris"/ {printf "%d ", $2}'; echo; }
# A load generator's own CPU, in seconds (user + system), to FILE.
timed() { local file=$1; shift; /usr/bin/time -f '%U %S' -o "$file" "$@"; }
oha() { "$OHA" --no-tui --output-format json -m POST -H 'Content-Type: application/json' -d "$body" "$@" "$url"; }
direct() { "$loadgen" --prefix "$prefix" --model iris --rows 1 --json "$@"; }

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
oha -n 2000 -c "$CONC" >/dev/null   # warm-up: channels, connections, caches
echo "== 1. throughput, $CONC in flight, $JOBS requests per run"
for round in $(seq 1 "$ROUNDS"); do
  ticks >"$out/gw-direct-$round.ticks"
  timed "$out/gw-direct-$round.time" "$loadgen" --prefix "$prefix" --model iris --rows 1 --json --jobs "$JOBS" --window "$CONC" >"$out/gw-direct-$round.json"
  ticks >>"$out/gw-direct-$round.ticks"
  ticks >"$out/gw-http-$round.ticks"
  jobs >"$out/gw-http-$round.jobs"
  timed "$out/gw-http-$round.time" "$OHA" --no-tui --output-format json -m POST -H 'Content-Type: application/json' -d "$body" -n "$JOBS" -c "$CONC" "$url" >"$out/gw-http-$round.json"
  ticks >>"$out/gw-http-$round.ticks"
  jobs >>"$out/gw-http-$round.jobs"
done
echo "== 2. light load, $LIGHT_RATE requests/s, $LIGHT_JOBS requests"
direct --jobs "$LIGHT_JOBS" --rate "$LIGHT_RATE" >"$out/gw-direct-light.json"
oha -n "$LIGHT_JOBS" -c 8 -q "$LIGHT_RATE" >"$out/gw-http-light.json"
python3 - "$out" "$ROUNDS" "$(getconf CLK_TCK)" <<'PY'
import json, statistics, sys
out, rounds, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def cpu(name, n):
    """CPU per request in microseconds: worker, gateway, broker, load generator."""
    lines = [list(map(int, l.split())) for l in open(f"{out}/{name}.ticks")]
    delta = [b - a for a, b in zip(*lines)]
    used = [d / hz / n * 1e6 for d in delta[:-3]]
    switches, rows, batches = delta[-3:]
    user, system = map(float, open(f"{out}/{name}.time").read().split()[-2:])
    names = ["worker", "gateway", "broker"][: len(used)]
    parts = dict(zip(names, used))
    parts["load generator"] = (user + system) / n * 1e6
    if name.startswith("gw-direct"):
        parts.pop("gateway", None)
    return ("  ".join(f"{k} {v:.0f}" for k, v in parts.items()) + f"  (sum {sum(parts.values()):.0f});"
            f" worker: {switches / n:.2f} context switches per job, mean batch {rows / max(batches, 1):.1f}")

def direct(name):
    r = json.load(open(f"{out}/{name}.json"))["reports"][0]
    assert r["lost"] == 0 and r["ok"] == r["jobs"], f"{name}: {r['ok']}/{r['jobs']} ok, {r['lost']} lost"
    return r["jobs_per_s"], r["latency_ms"]["p50"], r["latency_ms"]["p99"]

def http(name):
    r = json.load(open(f"{out}/{name}.json"))
    codes = r["statusCodeDistribution"]
    assert set(codes) == {"200"}, f"{name}: statuses {codes}"
    p = r["latencyPercentiles"]
    return r["summary"]["requestsPerSec"], p["p50"] * 1e3, p["p99"] * 1e3

ratios = []
for i in range(1, rounds + 1):
    d, h = direct(f"gw-direct-{i}"), http(f"gw-http-{i}")
    ratios.append(h[0] / d[0])
    print(f"  direct {d[0]:8.0f} jobs/s p50 {d[1]:6.2f} ms p99 {d[2]:6.2f} ms   gateway {h[0]:8.0f} req/s p50 {h[1]:6.2f} ms p99 {h[2]:6.2f} ms   ratio {ratios[-1]:.3f}")
    n = json.load(open(f"{out}/gw-direct-{i}.json"))["reports"][0]["jobs"]
    print(f"    CPU us per job, direct:  {cpu(f'gw-direct-{i}', n)}")
    print(f"    CPU us per request, gateway: {cpu(f'gw-http-{i}', n)}")
    js = [list(map(int, l.split())) for l in open(f"{out}/gw-http-{i}.jobs")]
    if all(len(j) == 2 for j in js):
        reqs, msgs = (b - a for a, b in zip(*js))
        print(f"    gateway jobs: {msgs}, requests per job {reqs / max(msgs, 1):.1f}")
print(f"  median ratio gateway/direct {statistics.median(ratios):.3f}")
d, h = direct("gw-direct-light"), http("gw-http-light")
print(f"  light load: direct p50 {d[1]:.3f} ms p99 {d[2]:.3f} ms   gateway p50 {h[1]:.3f} ms p99 {h[2]:.3f} ms   added p50 {h[1] - d[1]:.3f} ms")
PY
