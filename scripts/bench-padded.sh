#!/usr/bin/env bash
# Padded batching end to end (BENCHMARKS.md "Padded batching"): the bundled encoder served with
# token inputs, pad values, length buckets of 16 tokens and BENCH_ELEMENTS (2048) padded tokens
# per batch (`max_batch_elements`; 0: none); each round publishes 2,000 one-row jobs at once with
# token lengths uniform in 8..128, then 2,000 of the varied run's mean length (68), against the
# same warm worker. Rows per batch from the worker's `infermq_batch_rows` (sum / count over each
# run), jobs/s from `infermq-bench`.
#   BENCH_ROUNDS (5), BENCH_ELEMENTS (2048), BENCH_BUCKETS ("16, 32, 48, 64, 80, 96, 112, 128";
#   empty: none), BENCH_PAD (1; 0: no pad values and no buckets, jobs batch only with jobs of
#   their exact length: the behaviour before padding). INFERMQ_BIN: measure that binary.
# Prints one JSON line per round and keeps them in target/bench/padded.jsonl.
# Usage: scripts/bench-padded.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
bench_init benchpad
rounds=${BENCH_ROUNDS:-5}
elements=${BENCH_ELEMENTS:-2048}
buckets=${BENCH_BUCKETS-16, 32, 48, 64, 80, 96, 112, 128}
repo=$out/padded-repo
rm -rf "$repo"
mkdir -p "$repo/encoder/1"
cp models/encoder/1/model.onnx "$repo/encoder/1/"
{
  echo "max_batch_size = 64"
  echo "max_queue_delay_ms = 2"
  echo "instances = 1"
  if [ "${BENCH_PAD:-1}" = 1 ]; then
    [ -n "$buckets" ] && echo "length_buckets = [$buckets]"
    echo "max_batch_elements = $elements"
    printf '[inputs.input_ids]\npad_value = 0\n[inputs.attention_mask]\npad_value = 0\n'
  fi
} >"$repo/encoder/config.toml"
bench_worker "$out/padded-worker.log" INFERMQ__REPOSITORY__PATH="$repo"

# Sum and count of the worker's batch rows for the encoder, and its seconds of compute and of
# batch assembly (padding included).
rows() {
  curl -sf "http://127.0.0.1:$port/metrics" |
    awk '/^infermq_batch_rows_sum\{.*model="encoder"/ { s += $NF }
         /^infermq_batch_rows_count\{.*model="encoder"/ { c += $NF }
         /^infermq_compute_seconds_sum\{.*model="encoder"/ { t += $NF }
         /^infermq_batch_assembly_seconds_sum\{.*model="encoder"/ { a += $NF }
         END { print s + 0, c + 0, t + 0, a + 0 }'
}

# One run: jobs/s, batches and rows per batch as JSON fields.
run() {
  local before after report
  before=$(rows)
  report=$("$loadgen" --prefix "$prefix" --model encoder --length-range "$1" --jobs 2000 --window 2000 --json 2>/dev/null)
  after=$(rows)
  python3 - "$before" "$after" "$report" <<'EOF'
import json, sys
(s0, c0, t0, a0), (s1, c1, t1, a1) = (map(float, a.split()) for a in sys.argv[1:3])
r = json.loads(sys.argv[3])["reports"][-1]
batches = c1 - c0
print(json.dumps({"jobs_per_s": r.get("jobs_per_s"), "ok": r.get("ok"), "answered": r.get("answered"),
                  "lost": r.get("lost"), "batches": int(batches),
                  "rows_per_batch": round((s1 - s0) / batches, 2) if batches else None,
                  "compute_s": round(t1 - t0, 3), "assembly_s": round(a1 - a0, 3)}))
EOF
}

jsonl=$out/padded.jsonl
: >"$jsonl"
# A first pass warms every shape up.
run 8..128 >/dev/null
for round in $(seq 1 "$rounds"); do
  varied=$(run 8..128)
  fixed=$(run 68)
  python3 - "$round" "$elements" "$varied" "$fixed" <<'EOF' | tee -a "$jsonl"
import json, sys
v, f = json.loads(sys.argv[3]), json.loads(sys.argv[4])
ratio = lambda k: round(v[k] / f[k], 3) if v[k] and f[k] else None
print(json.dumps({"round": int(sys.argv[1]), "max_batch_elements": int(sys.argv[2]),
                  "varied": v, "fixed": f, "rows_ratio": ratio("rows_per_batch"),
                  "jobs_per_s_ratio": ratio("jobs_per_s")}))
EOF
done
