#!/usr/bin/env bash
# Generation throughput and latency: infermq's continuous batching (a worker serving a decoder,
# driven by tools' `generate-bench` over RabbitMQ) against onnxruntime-genai on the same model and
# the same jobs (scripts/bench-generate-genai.py), on CPU. Prints one markdown table.
#
# What it does:
#  1. builds the release binaries (infermq, generate-bench);
#  2. makes the benchmark model with scripts/make-llm.py --bench $MODEL_DIR if it is missing
#     (plain past_key_values export and onnxruntime-genai builder export of the same weights);
#  3. writes a job mix (JSONL, fixed seed): prompts cut from consecutive verses of
#     models/encoder/genesis.txt to PROMPT_MIN..PROMPT_MAX tokens, max_tokens MAXTOK_MIN..MAXTOK_MAX;
#     the same file for both systems;
#  4. starts a worker on its own prefix and HTTP port serving the plain export as `bench-plain`
#     and the genai export as `bench-genai`, both with `[generate] max_active_rows = 64,
#     eos_token_ids = [0]` (pad: every job runs to its max_tokens, so both systems generate the
#     same tokens; the genai side ignores EOS the same way);
#  5. infermq at concurrency $LEVELS on bench-plain and bench-genai (the genai layout served by
#     infermq; closed loop), then the mixed case: the same $MIXED_JOBS jobs at concurrency
#     $MIXED_JOBS and at 1 (the speedup), on both;
#  6. onnxruntime-genai on the mixed jobs: Engine with dynamic batching (refused on CPU by this
#     export: the error is recorded), Engine static batching, Generator static batching at
#     $MIXED_JOBS and 1 (the Generator refuses batches over 32: recorded too); then the
#     Generator and the static Engine at each of GENAI_LEVELS (default: $LEVELS) on the same
#     slices of jobs as infermq;
#  7. stops the worker, deletes its queues, prints the table (results in $OUT/*.json).
#
# Sizes (environment): LEVELS="1 8 32 64", JOBS_PER_LEVEL="48 96 160 256" (jobs at each level; each
# level gets its own slice of the job file), MIXED_JOBS=48, GENAI_LEVELS="$LEVELS",
# INTRA_THREADS=2 (ONNX Runtime intra-op threads, both systems), MAX_ACTIVE_ROWS=64,
# MAX_WAITING_JOBS=64, MAX_PREFILL_TOKENS=512, SEED=7, PROMPT_MIN=8 PROMPT_MAX=200,
# MAXTOK_MIN=16 MAXTOK_MAX=256, STREAM_INTERVAL_MS=0 ([generate] stream_interval_ms of both
# models), MODEL_DIR=target/llm-bench, OUT=target/bench-generate, SKIP_GENAI=1 (infermq only),
# PYTHON=/tmp/llmvenv/bin/python (torch, transformers, onnxruntime, onnxruntime-genai),
# AMQP_URL. SKIP_BUILD=1 uses the binaries already built.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

LEVELS=${LEVELS:-"1 8 32 64"}
JOBS_PER_LEVEL=${JOBS_PER_LEVEL:-"48 96 160 256"}
MIXED_JOBS=${MIXED_JOBS:-48}
GENAI_LEVELS=${GENAI_LEVELS-$LEVELS}
MIXED_GENAI_BATCHES=${MIXED_GENAI_BATCHES-"8 16 32"}
INTRA_THREADS=${INTRA_THREADS:-2}
MAX_ACTIVE_ROWS=${MAX_ACTIVE_ROWS:-64}
MAX_WAITING_JOBS=${MAX_WAITING_JOBS:-64}
MAX_PREFILL_TOKENS=${MAX_PREFILL_TOKENS:-512}
SEED=${SEED:-7}
PROMPT_MIN=${PROMPT_MIN:-8}
PROMPT_MAX=${PROMPT_MAX:-200}
MAXTOK_MIN=${MAXTOK_MIN:-16}
MAXTOK_MAX=${MAXTOK_MAX:-256}
STREAM_INTERVAL_MS=${STREAM_INTERVAL_MS:-0}
MODEL_DIR=${MODEL_DIR:-target/llm-bench}
OUT=${OUT:-target/bench-generate}
PYTHON=${PYTHON:-/tmp/llmvenv/bin/python}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
target=${CARGO_TARGET_DIR:-target}
bin=$target/release/infermq
genbench=$target/release/generate-bench

read -r -a levels <<<"$LEVELS"
read -r -a level_jobs <<<"$JOBS_PER_LEVEL"
[ ${#levels[@]} -eq ${#level_jobs[@]} ] || { echo "LEVELS and JOBS_PER_LEVEL differ in length" >&2; exit 2; }

t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s, load $(cut -d" " -f1 /proc/loadavg)] $*" >&2; }

# 1. binaries
if [ -z "${SKIP_BUILD:-}" ]; then
  stamp "building release binaries"
  cargo build --release --quiet --bin infermq
  cargo build --release --quiet -p infermq-tools --bin generate-bench
fi

# 2. the model
scripts/ensure-rabbitmq.sh >/dev/null
rm -rf "$OUT"
mkdir -p "$OUT"
models=$OUT/models
bench_decoders "$models" "[generate]
max_active_rows = $MAX_ACTIVE_ROWS
max_waiting_jobs = $MAX_WAITING_JOBS
max_prefill_tokens = $MAX_PREFILL_TOKENS
stream_interval_ms = $STREAM_INTERVAL_MS
eos_token_ids = [0]"

# 3. the job mix: total jobs = every level's slice + the mixed case.
total=$MIXED_JOBS
for n in "${level_jobs[@]}"; do total=$((total + n)); done
jobs=$OUT/jobs.jsonl
"$PYTHON" scripts/generation-jobs.py "$models/bench-plain/1/tokenizer.json" "$jobs" "$total" "$SEED" \
  "$PROMPT_MIN" "$PROMPT_MAX" "$MAXTOK_MIN" "$MAXTOK_MAX"
stamp "wrote $total jobs to $jobs"

# 4. the worker
prefix="genbench$RANDOM$RANDOM"
port=$((20000 + RANDOM % 20000))
worker=
cleanup() {
  if [ -n "$worker" ]; then kill -TERM "$worker" 2>/dev/null || true; wait "$worker" 2>/dev/null || true; fi
  scripts/delete-prefix.sh "$prefix"
}
trap cleanup EXIT
INFERMQ__BROKER__PREFIX=$prefix INFERMQ__HTTP__LISTEN=127.0.0.1:$port INFERMQ__LOG__LEVEL=warn \
  INFERMQ__RUNTIME__INTRA_THREADS=$INTRA_THREADS \
  "$bin" worker --models "$models" >"$OUT/worker.log" 2>&1 &
worker=$!
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  kill -0 "$worker" 2>/dev/null || { cat "$OUT/worker.log"; exit 1; }
  sleep 0.2
done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$OUT/worker.log"; exit 1; }
stamp "worker $worker up (prefix $prefix, port $port)"

failures=0
gb() { # gb NAME MODEL CONCURRENCY COUNT SKIP
  local name=$1 model=$2 c=$3 n=$4 skip=$5
  stamp "infermq $model c=$c jobs=$n"
  "$genbench" --url "$AMQP_URL" --prefix "$prefix" --model "$model" --jobs "$jobs" \
    --concurrency "$c" --count "$n" --skip "$skip" --mode "continuous $model" \
    --out "$OUT/$name.json" --per-job >/dev/null 2>>"$OUT/generate-bench.log" \
    || { failures=$((failures + 1)); tail -2 "$OUT/generate-bench.log" >&2; }
}
genai() { # genai NAME MODE CONCURRENCY COUNT SKIP
  local name=$1 mode=$2 c=$3 n=$4 skip=$5
  stamp "onnxruntime-genai $mode c=$c jobs=$n"
  "$PYTHON" scripts/bench-generate-genai.py --model-dir "$models/bench-genai/1" --jobs "$jobs" \
    --concurrency "$c" --count "$n" --skip "$skip" --mode "$mode" --intra-threads "$INTRA_THREADS" \
    --out "$OUT/$name.json" --per-job >/dev/null 2>>"$OUT/genai.log" \
    || { failures=$((failures + 1)); tail -2 "$OUT/genai.log" >&2; }
}

# Warm-up (first sessions, allocator): 2 short jobs on each model, not reported.
"$genbench" --prefix "$prefix" --model bench-plain --jobs "$jobs" --concurrency 2 --count 2 >/dev/null 2>&1 || true
"$genbench" --prefix "$prefix" --model bench-genai --jobs "$jobs" --concurrency 2 --count 2 >/dev/null 2>&1 || true

# 5. infermq: the levels (each on its own slice of the jobs), then the mixed case (the last
# MIXED_JOBS lines).
skip=0
for i in "${!levels[@]}"; do
  gb "infermq-c${levels[$i]}" bench-plain "${levels[$i]}" "${level_jobs[$i]}" "$skip"
  gb "infermq-genai-c${levels[$i]}" bench-genai "${levels[$i]}" "${level_jobs[$i]}" "$skip"
  skip=$((skip + level_jobs[i]))
done
mixed_skip=$skip
gb "infermq-mixed-c$MIXED_JOBS" bench-plain "$MIXED_JOBS" "$MIXED_JOBS" "$mixed_skip"
gb "infermq-genai-mixed-c$MIXED_JOBS" bench-genai "$MIXED_JOBS" "$MIXED_JOBS" "$mixed_skip"
gb "infermq-mixed-c1" bench-plain 1 "$MIXED_JOBS" "$mixed_skip"
gb "infermq-genai-mixed-c1" bench-genai 1 "$MIXED_JOBS" "$mixed_skip"

# Stop the worker before the genai runs: they get the machine to themselves, as the worker did.
kill -TERM "$worker" 2>/dev/null || true
wait "$worker" 2>/dev/null || true
worker=
stamp "worker stopped"

# 6. onnxruntime-genai on the mixed jobs, then the levels.
if [ -z "${SKIP_GENAI:-}" ]; then
genai "genai-dynamic-mixed-c$MIXED_JOBS" engine-dynamic "$MIXED_JOBS" "$MIXED_JOBS" "$mixed_skip"
genai "genai-engine-mixed-c$MIXED_JOBS" engine-static "$MIXED_JOBS" "$MIXED_JOBS" "$mixed_skip"
genai "genai-generator-mixed-c$MIXED_JOBS" generator "$MIXED_JOBS" "$MIXED_JOBS" "$mixed_skip"
genai "genai-generator-mixed-c1" generator 1 "$MIXED_JOBS" "$mixed_skip"
for b in $MIXED_GENAI_BATCHES; do
  genai "genai-generator-mixed-b$b" generator "$b" "$MIXED_JOBS" "$mixed_skip"
done
if [ -n "$GENAI_LEVELS" ]; then
  skip=0
  for i in "${!levels[@]}"; do
    case " $GENAI_LEVELS " in *" ${levels[$i]} "*)
      genai "genai-generator-c${levels[$i]}" generator "${levels[$i]}" "${level_jobs[$i]}" "$skip"
      genai "genai-engine-c${levels[$i]}" engine-static "${levels[$i]}" "${level_jobs[$i]}" "$skip" ;;
    esac
    skip=$((skip + level_jobs[i]))
  done
fi
fi

# 7. the table
stamp "done"
"$PYTHON" - "$OUT" "$MIXED_JOBS" <<'EOF'
import json, sys
from pathlib import Path
out, mixed = Path(sys.argv[1]), sys.argv[2]
order = (sorted(out.glob("infermq-c*.json"), key=lambda p: int(p.stem.split("-c")[-1]))
         + sorted(out.glob("infermq-genai-c*.json"), key=lambda p: int(p.stem.split("-c")[-1]))
         + [out / f"infermq-mixed-c{mixed}.json", out / "infermq-mixed-c1.json",
            out / f"infermq-genai-mixed-c{mixed}.json", out / "infermq-genai-mixed-c1.json",
            out / f"genai-dynamic-mixed-c{mixed}.json",
            out / f"genai-engine-mixed-c{mixed}.json", out / f"genai-generator-mixed-c{mixed}.json",
            out / "genai-generator-mixed-c1.json"]
         + sorted(out.glob("genai-generator-mixed-b*.json"), key=lambda p: int(p.stem.split("-b")[-1]))
         + sorted(out.glob("genai-generator-c*.json"), key=lambda p: int(p.stem.split("-c")[-1]))
         + sorted(out.glob("genai-engine-c*.json"), key=lambda p: int(p.stem.split("-c")[-1])))
rows = {}
print("| system | mode | concurrency | jobs | tokens | tokens/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | notes |")
print("|---|---|---:|---:|---:|---:|---|---|---|")
for p in order:
    if not p.exists():
        continue
    r = json.loads(p.read_text())
    rows[p.stem] = r
    notes = []
    if "-mixed-" in p.stem:
        notes.append("mixed")
    if r.get("refused"):
        notes.append("refused: " + r["refused"])
    if not r.get("refused") and (r.get("errors") or r.get("unfinished")):
        notes.append(f"errors {r.get('errors')} unfinished {r.get('unfinished')} {r.get('error_codes')}")
    system = r["system"].split(" ")[0]
    if r.get("refused"):
        print(f"| {system} | {r['mode']} | {r['concurrency']} | {r['jobs']} | - | - | - | - | {'; '.join(notes)} |")
        continue
    t, q = r["ttft_ms"], r["tpot_ms"]
    print(f"| {system} | {r['mode']} | {r['concurrency']} | {r['jobs']} | {r['total_completion_tokens']} | "
          f"{r['tokens_per_s']:.0f} | {t['p50']:.0f} / {t['p99']:.0f} | {q['p50']:.2f} / {q['p99']:.2f} | {'; '.join(notes)} |")
def speed(a, b):
    if a in rows and b in rows and rows[b]["tokens_per_s"]:
        return rows[a]["tokens_per_s"] / rows[b]["tokens_per_s"]
s1 = speed(f"infermq-mixed-c{mixed}", "infermq-mixed-c1")
s1g = speed(f"infermq-genai-mixed-c{mixed}", "infermq-genai-mixed-c1")
s2 = speed(f"genai-generator-mixed-c{mixed}", "genai-generator-mixed-c1")
s3 = speed(f"infermq-mixed-c{mixed}", f"genai-generator-mixed-c{mixed}")
s4 = speed(f"infermq-mixed-c{mixed}", f"genai-engine-mixed-c{mixed}")
print()
if s1: print(f"infermq mixed {mixed} jobs, plain layout: concurrency {mixed} vs 1: {s1:.2f}x tokens/s")
if s1g: print(f"infermq mixed {mixed} jobs, genai layout: concurrency {mixed} vs 1: {s1g:.2f}x tokens/s")
if s2: print(f"onnxruntime-genai Generator mixed {mixed} jobs: batches of {mixed} vs 1: {s2:.2f}x tokens/s")
if s3: print(f"infermq continuous vs genai Generator static batching, mixed {mixed} at {mixed}: {s3:.2f}x tokens/s")
best = max((k for k in rows if k.startswith("genai-generator-mixed-") and rows[k]["tokens_per_s"]),
           key=lambda k: rows[k]["tokens_per_s"], default=None)
if best:
    s6 = speed(f"infermq-mixed-c{mixed}", best)
    s6g = speed(f"infermq-genai-mixed-c{mixed}", best)
    print(f"infermq continuous ({mixed} at once, plain layout) vs genai's best Generator batching of the same jobs ({best}): {s6:.2f}x tokens/s")
    if s6g: print(f"infermq continuous ({mixed} at once, genai layout) vs genai's best Generator batching of the same jobs ({best}): {s6g:.2f}x tokens/s")
s5 = speed(f"genai-engine-mixed-c{mixed}", "genai-generator-mixed-c1")
if s5: print(f"onnxruntime-genai Engine static batching mixed {mixed} at {mixed} vs Generator at 1: {s5:.2f}x tokens/s")
if s4: print(f"infermq continuous vs genai Engine static batching, mixed {mixed} at {mixed}: {s4:.2f}x tokens/s")
EOF
echo "results: $OUT/*.json; machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
exit $((failures > 0))
