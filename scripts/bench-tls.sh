#!/usr/bin/env bash
# The cost of TLS to the broker: `infermq-bench` on iris (1-row JSON jobs, window 256) with the
# worker and the load generator both on amqp:// and both on amqps://, against the same RabbitMQ
# node (scripts/tls-broker.sh: a plaintext and a TLS listener side by side), alternating, in one
# run. Prints jobs/s and latency per round; raw JSON in target/bench/tls-*.json.
# Usage: scripts/bench-tls.sh [jobs per round, default 20000] [rounds, default 2]
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-20000}
rounds=${2:-2}
out=target/bench
mkdir -p "$out"
cargo build --release --quiet -p infermq --bin infermq -p infermq-tools --bin infermq-bench
bin=${CARGO_TARGET_DIR:-target}/release/infermq
loadgen=${CARGO_TARGET_DIR:-target}/release/infermq-bench
scripts/tls-broker.sh start
eval "$(scripts/tls-broker.sh env)"
ca="$INFERMQ_TLS_CERTS/ca.pem"
port=$((20000 + RANDOM % 20000))
worker=""
prefixes=()
stop_worker() {
  [ -n "$worker" ] && { kill -TERM "$worker" 2>/dev/null || true; wait "$worker" 2>/dev/null || true; }
  worker=""
}
cleanup() {
  stop_worker
  for p in "${prefixes[@]}"; do
    rabbitmqctl -q -n "${INFERMQ_TLS_NODENAME:-infermq-tls@localhost}" list_queues name 2>/dev/null \
      | grep "^$p\." | while read -r q; do
        rabbitmqctl -q -n "${INFERMQ_TLS_NODENAME:-infermq-tls@localhost}" delete_queue "$q" >/dev/null 2>&1 || true
      done
  done
  # The TLS node goes too: left running, it holds its ports against another checkout's tests.
  scripts/tls-broker.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$rounds"); do
  for scheme in amqp amqps; do
    if [ $scheme = amqp ]; then url="amqp://guest:guest@localhost:$INFERMQ_TLS_PLAIN_PORT/%2f"
    else url="amqps://guest:guest@localhost:$INFERMQ_TLS_PORT/%2f"; fi
    prefix="benchtls$RANDOM$RANDOM"
    prefixes+=("$prefix")
    INFERMQ__BROKER__URL=$url INFERMQ__BROKER__TLS__CA_FILE=$ca INFERMQ__BROKER__PREFIX=$prefix \
      INFERMQ__HTTP__LISTEN=127.0.0.1:$port INFERMQ__LOG__LEVEL=warn INFERMQ__REPOSITORY__MODELS=iris \
      INFERMQ__TRAINING__ENABLED=false $bin worker >>"$out/tls-worker.log" 2>&1 &
    worker=$!
    for _ in $(seq 1 150); do
      curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
      sleep 0.2
    done
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "worker not ready"; tail "$out/tls-worker.log"; exit 1; }
    INFERMQ__BROKER__TLS__CA_FILE=$ca $loadgen --url "$url" --prefix "$prefix" --model iris \
      --jobs "$jobs" --rows 1 --window 256 --json >"$out/tls-$scheme-$round.json"
    stop_worker
    python3 - "$out/tls-$scheme-$round.json" "$scheme" "$round" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["reports"][-1]
print(f"  round {sys.argv[3]} {sys.argv[2]:5}  {r['jobs_per_s']:8.0f} jobs/s   p50 {r['latency_ms']['p50']:.1f} ms   p99 {r['latency_ms']['p99']:.1f} ms   lost {r['lost']}")
PY
  done
done
