#!/usr/bin/env bash
# Reruns every end-to-end figure of BENCHMARKS.md in one go, against the local RabbitMQ:
#   1. iris, 1-row JSON jobs, in-flight window 256: worker vs. the echo ceiling (3 rounds)
#   2. mlp (256→1024→1024→10), 64-row jobs (JSON and binary): rows/s vs. raw ONNX Runtime at
#      the batch size the batcher formed, measured right after; then the same with the compute
#      core isolated (worker: runtime.instance_cpus = [last CPU], io_cpus = the others;
#      RabbitMQ's threads and the load generator moved off that CPU with taskset for the run,
#      and RabbitMQ's affinity restored after). Skipped with BENCH_ISOLATE=0 or on one CPU.
#   3. iris at half the measured maximum rate (open loop): p50/p99 latency, end to end and
#      inside the worker (infermq_end_to_end_seconds: receipt of a job to its confirmed result)
#   4. worker RSS while it answers BENCH_RSS_JOBS jobs (default 1,000,000), sampled every 5 s
# Then the criterion benches unless BENCH_CRITERION=0. Prints a summary; raw JSON goes to
# target/bench/. Usage: scripts/bench.sh   (make bench)
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench
mkdir -p "$out"
cargo build --release --quiet -p infermq --bin infermq -p infermq-tools --bin infermq-bench --bin ort-throughput
bin=target/release/infermq
loadgen=target/release/infermq-bench
prefix="bench$RANDOM$RANDOM"
port=$((20000 + RANDOM % 20000))
worker=""
# Starts a worker on the bundled models (extra environment as arguments) and waits until ready.
start_worker() {
  env "$@" INFERMQ__BROKER__PREFIX=$prefix INFERMQ__HTTP__LISTEN=127.0.0.1:$port INFERMQ__LOG__LEVEL=warn \
    $bin worker >>"$out/worker.log" 2>&1 &
  worker=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "worker not ready"; cat "$out/worker.log"; exit 1
}
stop_worker() {
  [ -n "$worker" ] && { kill -TERM "$worker" 2>/dev/null || true; wait "$worker" 2>/dev/null || true; }
  worker=""
}
beam_masks=""
restore_beam() {
  [ -z "$beam_masks" ] && return 0
  while read -r tid mask; do taskset -p "$mask" "$tid" >/dev/null 2>&1 || true; done <<<"$beam_masks"
  beam_masks=""
}
trap 'stop_worker; restore_beam; scripts/delete-prefix.sh "$prefix"' EXIT
: >"$out/worker.log"
start_worker
run() { $loadgen --prefix "$prefix" --json "$@"; }

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== 1. iris, 1-row JSON jobs, window 256, vs. echo ceiling"
for round in 1 2 3; do
  run --model iris --jobs 20000 --rows 1 --window 256 --echo >"$out/iris-echo-$round.json"
done
python3 - "$out" <<'PY'
import json, statistics, sys
rounds = [json.load(open(f"{sys.argv[1]}/iris-echo-{r}.json")) for r in (1, 2, 3)]
for r in rounds:
    echo, model = r["reports"]
    print(f"  echo {echo['jobs_per_s']:8.0f} jobs/s   worker {model['jobs_per_s']:8.0f} jobs/s   ratio {r['ratio']:.3f}   worker p50 {model['latency_ms']['p50']:.1f} ms p99 {model['latency_ms']['p99']:.1f} ms   mean batch {model['batch_size_mean']:.1f}   lost {model['lost']} dup {model['duplicated']}")
print(f"  median ratio {statistics.median(r['ratio'] for r in rounds):.3f}")
json.dump({"max_jobs_per_s": max(r["reports"][1]["jobs_per_s"] for r in rounds)}, open(f"{sys.argv[1]}/iris-max.json", "w"))
PY

mlp_round() { # label, taskset mask for the load generator (empty: none)
  local label=$1 mask=$2
  for body in json binary; do
    flag=""; [ $body = binary ] && flag="--binary"
    ${mask:+taskset $mask} $loadgen --prefix "$prefix" --json --model mlp --jobs 1500 --rows 64 --features 256 --window 16 $flag >"$out/mlp-$label-$body.json"
    batch=$(python3 -c "import json;r=json.load(open('$out/mlp-$label-$body.json'))['reports'][0];print(max(1,round(r['batch_size_mean'])))")
    target/release/ort-throughput models/mlp/1/model.onnx input 256 "$batch" 5 1 >"$out/ort-mlp-$label-$body.json"
    python3 - "$out" $label $body <<'PY'
import json, sys
out, label, body = sys.argv[1:]
r = json.load(open(f"{out}/mlp-{label}-{body}.json"))["reports"][0]
o = json.load(open(f"{out}/ort-mlp-{label}-{body}.json"))
print(f"  {label:8} {body:6}: worker {r['rows_per_s']:8.0f} rows/s at mean batch {r['batch_size_mean']:.1f}; raw ORT {o['rows_per_s']:8.0f} rows/s at batch {o['batch']} ({o['batch_ms']:.2f} ms/batch); ratio {r['rows_per_s']/o['rows_per_s']:.3f}; p99 {r['latency_ms']['p99']:.1f} ms; lost {r['lost']}")
PY
  done
}
echo "== 2. mlp, 64-row jobs, window 16, vs. raw ONNX Runtime (1 intra-op thread, as the worker)"
mlp_round shared ""
cpus=$(nproc)
if [ "${BENCH_ISOLATE:-1}" != 0 ] && [ "$cpus" -ge 2 ]; then
  last=$((cpus - 1)); others=$(seq -s, 0 $((last - 1))); others_mask=$(printf '0x%x' $(((1 << last) - 1)))
  beam=$(pgrep -u rabbitmq -f "rabbit boot" | head -1 || true)
  if [ -n "$beam" ]; then
    stop_worker
    start_worker INFERMQ__RUNTIME__INSTANCE_CPUS=$last INFERMQ__RUNTIME__IO_CPUS=$others
    beam_masks=$(for t in /proc/$beam/task/*; do echo "$(basename $t) $(taskset -p "$(basename $t)" | awk '{print $NF}')"; done)
    while read -r tid _; do taskset -p "$others_mask" "$tid" >/dev/null 2>&1 || true; done <<<"$beam_masks"
    echo "   (compute core isolated: worker instance_cpus=[$last] io_cpus=[$others]; RabbitMQ and the load generator on $others_mask)"
    mlp_round isolated "$others_mask"
    restore_beam
    stop_worker
    start_worker
  else
    echo "   (isolated round skipped: RabbitMQ's process not found)"
  fi
fi

echo "== 3. iris at half the maximum rate (open loop)"
rate=$(python3 -c "import json;print(int(json.load(open('$out/iris-max.json'))['max_jobs_per_s']/2))")
curl -sf "http://127.0.0.1:$port/metrics" >"$out/metrics-before.txt"
run --model iris --jobs $((rate * 5)) --rows 1 --rate "$rate" >"$out/iris-half.json"
curl -sf "http://127.0.0.1:$port/metrics" >"$out/metrics-after.txt"
run --model iris --jobs $((rate * 5)) --rows 1 --rate "$rate" --echo-only >"$out/echo-half.json"
python3 - "$out" "$rate" <<'PY'
import json, re, sys
out, rate = sys.argv[1:]
for name, label in (("iris-half", "worker"), ("echo-half", "echo  ")):
    r = json.load(open(f"{out}/{name}.json"))["reports"][0]
    l = r["latency_ms"]
    batch = f"; mean batch {r['batch_size_mean']:.1f}" if r.get("batch_size_mean") else ""
    print(f"  {label} offered {rate} jobs/s, achieved {r['jobs_per_s']:.0f}: p50 {l['p50']:.2f} ms  p90 {l['p90']:.2f} ms  p99 {l['p99']:.2f} ms  max {l['max']:.2f} ms{batch}; lost {r['lost']}")
# Inside the worker: this run's share of the worker's latency histograms for iris (buckets).
def buckets(path, metric):
    b = {}
    for line in open(path):
        m = re.match(metric + r'_bucket\{(.*)\} (\S+)', line)
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m[1])) if m else {}
        if labels.get("model") == "iris":
            le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
            b[le] = b.get(le, 0) + float(m[2])
    return b
for metric, what in (("infermq_end_to_end_seconds", "receipt to confirmed result"),
                     ("infermq_queue_wait_seconds", "receipt to batch start"),
                     ("infermq_compute_seconds", "ONNX Runtime run, per batch"),
                     ("infermq_publish_seconds", "result publish to broker confirm")):
    before, after = buckets(f"{out}/metrics-before.txt", metric), buckets(f"{out}/metrics-after.txt", metric)
    run = sorted((le, after[le] - before.get(le, 0)) for le in after)
    total = run[-1][1] if run else 0
    if total:
        shares = "  ".join(f"<={le * 1e3:g}ms {n / total:.3f}" for le, n in run if 0.0005 <= le <= 0.025)
        p99 = next(le for le, n in run if n >= 0.99 * total)
        print(f"  {metric[8:-8]:11} ({what}), {total:.0f}: {shares}; p99 <= {p99 * 1e3:g} ms")
PY
jobs=${BENCH_RSS_JOBS:-1000000}
echo "== 4. worker RSS over $jobs iris jobs (window 256)"
( while kill -0 "$worker" 2>/dev/null; do echo "$(date +%s) $(awk '/^VmRSS/ {print $2}' /proc/"$worker"/status)"; sleep 5; done ) >"$out/rss.txt" &
sampler=$!
run --model iris --jobs "$jobs" --rows 1 --window 256 --timeout-s 120 >"$out/iris-rss.json"
kill $sampler 2>/dev/null || true
python3 - "$out" <<'PY'
import json, sys
rows = [l.split() for l in open(f"{sys.argv[1]}/rss.txt") if len(l.split()) == 2]
mb = [int(r[1]) / 1024 for r in rows]
r = json.load(open(f"{sys.argv[1]}/iris-rss.json"))["reports"][0]
q = len(mb) // 4 or 1
print(f"  {r['jobs']} jobs at {r['jobs_per_s']:.0f} jobs/s, lost {r['lost']}, duplicated {r['duplicated']}")
print(f"  RSS MB: first {mb[0]:.1f}, after 1/4 {mb[q]:.1f}, at end {mb[-1]:.1f}, max {max(mb):.1f} ({len(mb)} samples)")
PY

if [ "${BENCH_CRITERION:-1}" != 0 ]; then
  echo "== criterion (codec, batching, ort_session, training)"
  cargo bench --quiet --bench codec --bench batching --bench ort_session --bench training -- --warm-up-time 1 --measurement-time 3 2>&1 \
    | tee "$out/criterion.txt" | grep -E "^[a-z_]+/|time:|thrpt:" || true
fi
