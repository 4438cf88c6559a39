#!/usr/bin/env bash
# Large models served by the worker, one worker process per figure, against the local RabbitMQ:
# load time (the worker's `load_ms`, warm-up included), Pss (/proc/PID/smaps_rollup) and peak
# (VmHWM) of the whole worker once ready, and the first two jobs after ready (their
# `compute_ms`, the batch's run inside ONNX Runtime, and the client's round trip), with warm-up
# on and off.
#   BENCH_MODELS ("chain mlp"): chain = make-large-model's MatMul chain, BENCH_LAYERS (6) x
#   BENCH_WIDTH (4096) = 384 MiB, external data, written to target/large-models/ unless there;
#   mlp = models/mlp. BENCH_INSTANCES ("1 2 4"), BENCH_WARMUP ("true false"),
#   BENCH_BATCH (32: max_batch_size; a job is 1 row), BENCH_ROUNDS (1): each figure this many
#   times, in turn.
# Prints one JSON line per figure and keeps them in target/bench/large-worker.jsonl. Queues are
# declared under a random prefix and deleted (that prefix only) on exit. The model files are read
# from the page cache after the first figure (nothing drops it).
# Usage: scripts/bench-large-worker.sh
set -euo pipefail
cd "$(dirname "$0")/.."
layers=${BENCH_LAYERS:-6}
width=${BENCH_WIDTH:-4096}
cargo build --release --quiet -p infermq --bin infermq -p infermq-tools --bin make-large-model
bin=target/release
out=target/bench
mkdir -p "$out"
prefix="benchlarge$RANDOM$RANDOM"
port=$((20000 + RANDOM % 20000))
repo=$out/large-repo-$prefix
worker=""
cleanup() {
  [ -n "$worker" ] && { kill -TERM "$worker" 2>/dev/null || true; wait "$worker" 2>/dev/null || true; }
  rm -rf "$repo"
  timeout 60 rabbitmqctl list_queues name -q 2>/dev/null | grep "^$prefix\." | while read -r q; do
    timeout 30 rabbitmqctl delete_queue "$q" </dev/null >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
chain=target/large-models/${layers}x${width}/external
[ -f "$chain/model.onnx" ] || "$bin/make-large-model" "$chain" "$layers" "$width" external >/dev/null
jsonl=$out/large-worker.jsonl
: >"$jsonl"
for model in ${BENCH_MODELS:-chain mlp}; do
  case $model in
    chain) input=x; cols=$width; files=$chain ;;
    mlp) input=input; cols=256; files=models/mlp/1 ;;
    *) echo "unknown model $model" >&2; exit 1 ;;
  esac
  body=$out/large-$model-job.json
  python3 -c "import json,sys; print(json.dumps({'inputs':[{'name':'$input','shape':[1,$cols],'datatype':'FP32','data':[((i%7)-3)/7 for i in range($cols)]}]}))" >"$body"
  for round in $(seq 1 "${BENCH_ROUNDS:-1}"); do
  for n in ${BENCH_INSTANCES:-1 2 4}; do
    for warm in ${BENCH_WARMUP:-true false}; do
      rm -rf "$repo" && mkdir -p "$repo/$model/1"
      # Hard links: the weights are not copied, and they are not symlinks (which are refused
      # when they lead outside the version directory).
      cp -l "$files"/* "$repo/$model/1/" 2>/dev/null || cp "$files"/* "$repo/$model/1/"
      printf 'max_batch_size = %s\ninstances = %s\nwarmup = %s\n' "${BENCH_BATCH:-32}" "$n" "$warm" >"$repo/$model/config.toml"
      log=$out/large-worker-$model-$n-$warm.log
      started=$(date +%s.%N)
      INFERMQ__REPOSITORY__PATH=$repo INFERMQ__BROKER__PREFIX=$prefix INFERMQ__HTTP__LISTEN=127.0.0.1:$port \
        INFERMQ__RUNTIME__EXECUTION_PROVIDERS=cpu INFERMQ__LOG__FORMAT=json "$bin/infermq" worker >"$log" 2>&1 &
      worker=$!
      for _ in $(seq 1 1500); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
        kill -0 "$worker" 2>/dev/null || { cat "$log"; exit 1; }
        sleep 0.2
      done
      ready=$(date +%s.%N)
      pss=$(awk '/^Pss:/ {print $2}' "/proc/$worker/smaps_rollup")
      hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$worker/status")
      jobs=()
      for job in 1 2; do
        t0=$(date +%s%N)
        answer=$(INFERMQ__BROKER__PREFIX=$prefix "$bin/infermq" predict --model "$model" --input "$body")
        t1=$(date +%s%N)
        jobs+=("$(python3 -c 'import json, sys
a = json.loads(sys.argv[1])
print(json.dumps({"compute_ms": a["parameters"]["compute_ms"], "round_trip_ms": round((int(sys.argv[3]) - int(sys.argv[2])) / 1e6, 1)}))' "$answer" "$t0" "$t1")")
      done
      kill -TERM "$worker"; wait "$worker" || true; worker=""
      python3 - "$log" "$model" "$n" "$warm" "$pss" "$hwm" "$started" "$ready" "${jobs[0]}" "${jobs[1]}" "$(du -sb "$repo/$model/1" | cut -f1)" <<'PY' | tee -a "$jsonl"
import json, sys
log, model, n, warm, pss, hwm, started, ready, first, second, size = sys.argv[1:]
load_ms = next(json.loads(l)["fields"].get("load_ms") for l in open(log) if "Model version loaded" in l)
print(json.dumps({"model": model, "files_mib": round(int(size) / 2**20, 1), "instances": int(n), "warmup": warm == "true",
    "load_ms": load_ms, "ready_s": round(float(ready) - float(started), 2),
    "pss_mib": round(int(pss) / 1024, 1), "peak_mib": round(int(hwm) / 1024, 1),
    "first_job": json.loads(first), "second_job": json.loads(second)}))
PY
    done
  done
  done
done
