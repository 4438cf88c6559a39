#!/usr/bin/env bash
# Streaming generation through the HTTP gateway against the same jobs sent straight to the
# queue, on one worker serving the benchmark decoder (issue #30: through the gateway ≥ 0.9× the
# direct tokens/s at 32 streaming clients). Prints one markdown table with gateway/direct ratios.
#
# What it does:
#  1. builds the release binaries (infermq, generate-bench); makes the benchmark model with
#     scripts/make-llm.py --bench $MODEL_DIR if it is missing; with CLIENT=openai, installs
#     `openai` into $PYTHON when it lacks it;
#  2. writes a job mix (JSONL, fixed seed): prompts cut from consecutive verses of
#     models/encoder/genesis.txt to PROMPT_MIN..PROMPT_MAX tokens, max_tokens
#     MAXTOK_MIN..MAXTOK_MAX; each concurrency level gets its own slice, the same slice for
#     every path;
#  3. starts a worker (own prefix and HTTP port) serving the plain export as `bench-plain` and
#     the onnxruntime-genai export as `bench-genai` (as scripts/bench-generate.sh does), both
#     with `[generate] max_active_rows = 64, eos_token_ids = [0]` (pad: every job runs to its
#     max_tokens, so every path generates the same tokens) and `stream_interval_ms =
#     $STREAM_INTERVAL_MS`, and `infermq gateway` on its own port with the same prefix
#     (`repository.path` = the models, for chat templates); the jobs go to MODEL only;
#  4. for ROUNDS rounds, at each of LEVELS: (a) direct, tools' generate-bench on the queue;
#     (b) through the gateway, with each client of CLIENT: `rust`, generate-bench --gateway
#     (one keep-alive HTTP/1.1 connection per client, the server-sent events parsed in Rust),
#     and `openai`, scripts/bench-gateway-openai.py (the `openai` package's AsyncOpenAI, one
#     task per client); both send `stream: true` and `stream_options.include_usage` to ROUTE
#     (`completions`: /v1/completions with the prompt as is, the default; `chat`:
#     /v1/chat/completions, whose template adds "user: " and "\nassistant:" to every prompt) and
#     measure as generate-bench does on the queue (TTFT: request → first chunk with text; TPOT:
#     (last chunk − first) / (completion tokens − 1); tokens from the usage chunk). CPU seconds
#     of the worker, the gateway, the broker and the load generator (its own process) are read
#     around each run; the order of the paths alternates by round, so that none always runs on
#     a machine another just warmed;
#  5. stops both, deletes the prefix's queues, prints the table (per-job results pooled over the
#     rounds: tokens/s = all tokens / all walls; percentiles over every job) and the CPU table.
#
# On a machine with few cores the load generator competes with the worker: the CPU table says
# what each client cost. The Python client parses every chunk into pydantic objects (about 7×
# generate-bench's CPU per token), so the gateway/direct ratio compares like with like with the
# Rust client, the default; CLIENT=openai (or "rust openai", a row each) measures what that
# package's users see.
#
# Sizes (environment): LEVELS="1 32", JOBS_PER_LEVEL="24 192", ROUNDS=2, ROUTE=completions,
# CLIENT=rust (rust, openai, or both: "rust openai"), MODEL=bench-genai (or bench-plain),
# STREAM_INTERVAL_MS=0, MAX_ACTIVE_ROWS=64, INTRA_THREADS=2, GATEWAY_THREADS=1
# (gateway.async_threads), SEED=11, PROMPT_MIN=8, PROMPT_MAX=200, MAXTOK_MIN=64,
# MAXTOK_MAX=128, MODEL_DIR=target/llm-bench, OUT=target/bench-gateway-generate,
# PYTHON=/tmp/llmvenv/bin/python (tokenizers; openai for CLIENT=openai), AMQP_URL.
# SKIP_BUILD=1 uses the binaries already built.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

LEVELS=${LEVELS:-"1 32"}
JOBS_PER_LEVEL=${JOBS_PER_LEVEL:-"24 192"}
ROUNDS=${ROUNDS:-2}
ROUTE=${ROUTE:-completions}
CLIENT=${CLIENT:-rust}
MODEL=${MODEL:-bench-genai}
STREAM_INTERVAL_MS=${STREAM_INTERVAL_MS:-0}
MAX_ACTIVE_ROWS=${MAX_ACTIVE_ROWS:-64}
INTRA_THREADS=${INTRA_THREADS:-2}
GATEWAY_THREADS=${GATEWAY_THREADS:-1}
SEED=${SEED:-11}
PROMPT_MIN=${PROMPT_MIN:-8}
PROMPT_MAX=${PROMPT_MAX:-200}
MAXTOK_MIN=${MAXTOK_MIN:-64}
MAXTOK_MAX=${MAXTOK_MAX:-128}
MODEL_DIR=${MODEL_DIR:-target/llm-bench}
OUT=${OUT:-target/bench-gateway-generate}
PYTHON=${PYTHON:-/tmp/llmvenv/bin/python}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
target=${CARGO_TARGET_DIR:-target}
bin=$target/release/infermq
genbench=$target/release/generate-bench
model=$MODEL

read -r -a levels <<<"$LEVELS"
read -r -a level_jobs <<<"$JOBS_PER_LEVEL"
[ ${#levels[@]} -eq ${#level_jobs[@]} ] || { echo "LEVELS and JOBS_PER_LEVEL differ in length" >&2; exit 2; }
case $ROUTE in completions | chat) ;; *) echo "ROUTE is completions or chat, not $ROUTE" >&2; exit 2 ;; esac
case $MODEL in bench-plain | bench-genai) ;; *) echo "MODEL is bench-plain or bench-genai, not $MODEL" >&2; exit 2 ;; esac
read -r -a clients <<<"$CLIENT"
[ ${#clients[@]} -gt 0 ] || { echo "CLIENT names no client" >&2; exit 2; }
for client in "${clients[@]}"; do
  case $client in rust | openai) ;; *) echo "CLIENT is rust, openai or both, not $client" >&2; exit 2 ;; esac
done

t0=$(date +%s)
load0=$(cut -d" " -f1-3 /proc/loadavg)
stamp() { echo "[$(( $(date +%s) - t0 )) s, load $(cut -d" " -f1 /proc/loadavg)] $*" >&2; }

# 1. binaries and client (the model: bench_decoders below)
if [ -z "${SKIP_BUILD:-}" ]; then
  stamp "building release binaries"
  cargo build --release --quiet --bin infermq
  cargo build --release --quiet -p infermq-tools --bin generate-bench
fi
case " $CLIENT " in *" openai "*)
  "$PYTHON" -c "import openai" 2>/dev/null || "$PYTHON" -m pip install --quiet openai ;;
esac

scripts/ensure-rabbitmq.sh >/dev/null
rm -rf "$OUT"
mkdir -p "$OUT"
models=$OUT/models
bench_decoders "$models" "[generate]
max_active_rows = $MAX_ACTIVE_ROWS
max_waiting_jobs = 64
stream_interval_ms = $STREAM_INTERVAL_MS
eos_token_ids = [0]"

# 2. the job mix: every level's slice.
total=0
for n in "${level_jobs[@]}"; do total=$((total + n)); done
jobs=$OUT/jobs.jsonl
"$PYTHON" scripts/generation-jobs.py "$models/$model/1/tokenizer.json" "$jobs" "$total" "$SEED" \
  "$PROMPT_MIN" "$PROMPT_MAX" "$MAXTOK_MIN" "$MAXTOK_MAX"
stamp "wrote $total jobs to $jobs"

# 3. the worker and the gateway
prefix="gwgenbench$RANDOM$RANDOM"
wport=$((20000 + RANDOM % 20000))
gport=$((wport + 1))
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  scripts/delete-prefix.sh "$prefix"
}
trap cleanup EXIT
start() { # start LOG URL COMMAND...: in the background, waits until URL answers
  local log=$1 url=$2
  shift 2
  env INFERMQ__BROKER__PREFIX="$prefix" INFERMQ__LOG__LEVEL=warn "$@" >"$log" 2>&1 &
  started=$!
  pids+=("$started")
  for _ in $(seq 1 300); do
    curl -sf "$url" >/dev/null 2>&1 && return 0
    kill -0 "$started" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.2
  done
  curl -sf "$url" >/dev/null || { cat "$log"; exit 1; }
}
start "$OUT/worker.log" "http://127.0.0.1:$wport/readyz" \
  INFERMQ__HTTP__LISTEN="127.0.0.1:$wport" INFERMQ__RUNTIME__INTRA_THREADS="$INTRA_THREADS" \
  "$bin" worker --models "$models"
worker=$started
start "$OUT/gateway.log" "http://127.0.0.1:$gport/v2/models/$model/ready" \
  INFERMQ__REPOSITORY__PATH="$models" INFERMQ__GATEWAY__ASYNC_THREADS="$GATEWAY_THREADS" \
  INFERMQ__GATEWAY__TIMEOUT_MS=300000 "$bin" gateway --listen "127.0.0.1:$gport"
gateway=$started
beam=$(pgrep -u rabbitmq -f "rabbit boot" | head -1 || true)
stamp "worker $worker, gateway $gateway up (prefix $prefix, ports $wport, $gport)"

# CPU ticks (user + system) of the worker, the gateway and the broker.
ticks() {
  for p in "$worker" "$gateway" "$beam"; do
    if [ -n "$p" ]; then awk '{printf "%d ", $14 + $15}' "/proc/$p/stat"; else printf '0 '; fi
  done
  echo
}
failures=0
reversed=()
direct() { # direct NAME CONCURRENCY COUNT SKIP
  local name=$1 c=$2 n=$3 skip=$4
  stamp "direct c=$c jobs=$n"
  ticks >"$OUT/$name.ticks"
  /usr/bin/time -f '%U %S' -o "$OUT/$name.time" \
    "$genbench" --prefix "$prefix" --model "$model" --jobs "$jobs" --concurrency "$c" \
    --count "$n" --skip "$skip" --system direct --mode queue --out "$OUT/$name.json" --per-job \
    >/dev/null 2>>"$OUT/client.log" || { failures=$((failures + 1)); tail -2 "$OUT/client.log" >&2; }
  ticks >>"$OUT/$name.ticks"
}
client_command() { # client_command CLIENT: the load generator's command through the gateway, in $cmd
  if [ "$1" = rust ]; then
    cmd=("$genbench" --gateway "http://127.0.0.1:$gport" --route "$ROUTE" --model "$model"
      --jobs "$jobs" --system gateway --mode rust)
  else
    cmd=("$PYTHON" scripts/bench-gateway-openai.py --url "http://127.0.0.1:$gport" --route "$ROUTE"
      --model "$model" --jobs "$jobs")
  fi
}
through_gateway() { # through_gateway CLIENT NAME CONCURRENCY COUNT SKIP
  local client=$1 name=$2 c=$3 n=$4 skip=$5
  stamp "gateway /v1 $ROUTE ($client) c=$c jobs=$n"
  client_command "$client"
  ticks >"$OUT/$name.ticks"
  /usr/bin/time -f '%U %S' -o "$OUT/$name.time" "${cmd[@]}" \
    --concurrency "$c" --count "$n" --skip "$skip" --out "$OUT/$name.json" --per-job \
    >/dev/null 2>>"$OUT/client.log" || { failures=$((failures + 1)); tail -2 "$OUT/client.log" >&2; }
  ticks >>"$OUT/$name.ticks"
}

# Warm-up (sessions, connections, channels): a few short jobs on each path, not reported.
"$genbench" --prefix "$prefix" --model "$model" --jobs "$jobs" --concurrency 4 --count 4 >/dev/null 2>&1 || true
for client in "${clients[@]}"; do
  client_command "$client"
  "${cmd[@]}" --concurrency 4 --count 4 >/dev/null 2>&1 || true
done

# 4. the rounds: at each level, direct then each client through the gateway on the same slice
# (the order reversed every other round, so that no path always runs on a machine another just
# warmed).
for round in $(seq 1 "$ROUNDS"); do
  skip=0
  for i in "${!levels[@]}"; do
    c=${levels[$i]} n=${level_jobs[$i]}
    paths=(direct "${clients[@]}")
    if [ $((round % 2)) -eq 0 ]; then
      for ((j = ${#paths[@]} - 1; j >= 0; j--)); do reversed+=("${paths[$j]}"); done
      paths=("${reversed[@]}") reversed=()
    fi
    for path in "${paths[@]}"; do
      if [ "$path" = direct ]; then
        direct "direct-c$c-r$round" "$c" "$n" "$skip"
      else
        through_gateway "$path" "gateway-$path-c$c-r$round" "$c" "$n" "$skip"
      fi
    done
    skip=$((skip + n))
  done
done

# 5. the tables
stamp "done"
"$PYTHON" - "$OUT" "$(getconf CLK_TCK)" "$ROUTE" "$LEVELS" "$CLIENT" <<'EOF'
import json, math, sys
from pathlib import Path
out, hz, route, levels, clients = (Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                   sys.argv[4].split(), sys.argv[5].split())
paths = ["direct"] + [f"gateway-{c}" for c in clients]
endpoint = f"/v1/{'chat/completions' if route == 'chat' else 'completions'}"
labels = {"direct": "direct (generate-bench → queue)",
          "gateway-rust": f"gateway (generate-bench → {endpoint})",
          "gateway-openai": f"gateway (openai → {endpoint})"}

def nearest(values, p):
    v = sorted(values)
    return v[min(max(1, math.ceil(p / 100 * len(v))), len(v)) - 1] if v else float("nan")

def pooled(path, c):
    """Every round of one path at one level: reports, per-job measurements, CPU seconds."""
    files = sorted(out.glob(f"{path}-c{c}-r*.json"))
    reports = [json.loads(f.read_text()) for f in files]
    jobs = [j for r in reports for j in r.get("per_job", []) if not j.get("error")]
    cpu = {"worker": 0.0, "gateway": 0.0, "broker": 0.0, "client": 0.0}
    for f in files:
        before, after = (list(map(int, l.split())) for l in (out / f"{f.stem}.ticks").read_text().splitlines())
        for k, a, b in zip(("worker", "gateway", "broker"), before, after):
            cpu[k] += (b - a) / hz
        # The Python client's own count covers the load only (not its imports); generate-bench's
        # whole process (/usr/bin/time) is hardly more than its load.
        report = json.loads(f.read_text())
        user, system = map(float, (out / f"{f.stem}.time").read_text().split()[-2:])
        cpu["client"] += report.get("client_cpu_s", user + system)
    if path == "direct":
        cpu["gateway"] = None
    return reports, jobs, cpu

print(f"| path | clients | runs | jobs | tokens | tokens/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | gateway / direct tokens/s |")
print("|---|---:|---:|---:|---:|---:|---|---|---:|")
cpu_rows = []
for c in levels:
    tps = {}
    for path in paths:
        reports, jobs, cpu = pooled(path, c)
        if not reports:
            continue
        tokens = sum(r["total_completion_tokens"] for r in reports)
        wall = sum(r["wall_s"] for r in reports)
        tps[path] = tokens / wall if wall else 0.0
        ttft = [j["ttft_ms"] for j in jobs]
        tpot = [j["tpot_ms"] for j in jobs if j["tpot_ms"] is not None]
        errors = sum(r["errors"] + r.get("unfinished", 0) for r in reports)
        prompt = sum(r["total_prompt_tokens"] for r in reports)
        r = f"{tps[path] / tps['direct']:.2f}" if path != "direct" and tps.get("direct") else ""
        note = f" ({errors} errors)" if errors else ""
        print(f"| {labels[path]}{note} | {c} | {len(reports)} | {sum(x['jobs'] for x in reports)} | {tokens} | "
              f"{tps[path]:.0f} | {nearest(ttft, 50):.1f} / {nearest(ttft, 99):.1f} | "
              f"{nearest(tpot, 50):.2f} / {nearest(tpot, 99):.2f} | {r} |")
        per_k = {k: (v / tokens * 1000 if v is not None and tokens else None) for k, v in cpu.items()}
        cpu_rows.append((path, c, wall, cpu, per_k, prompt))
print()
print("CPU seconds per 1,000 completion tokens (and share of the run's wall time, 1.00 = one core):")
print()
# Tokens per CPU second of the worker: what the ratio would be were the worker's cores its own
# (the load generator and the gateway elsewhere), as long as the worker's CPU is what bounds it.
print("| path | clients | worker | gateway | broker | load generator | all | prompt tokens | tokens per worker CPU s | gateway / direct |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
per_worker = {}
for path, c, wall, cpu, per_k, prompt in cpu_rows:
    per_worker[path, c] = 1000 / per_k["worker"] if per_k["worker"] else 0.0
    direct = per_worker.get(("direct", c))
    r = f"{per_worker[path, c] / direct:.2f}" if path != "direct" and direct else ""
    cell = lambda k: "-" if per_k[k] is None else f"{per_k[k]:.2f} ({cpu[k] / wall:.2f})"
    total = sum(v for v in cpu.values() if v is not None)
    all_k = sum(v for v in per_k.values() if v is not None)
    print(f"| {path} | {c} | {cell('worker')} | {cell('gateway')} | {cell('broker')} | {cell('client')} | "
          f"{all_k:.2f} ({total / wall:.2f}) | {prompt} | {per_worker[path, c]:.0f} | {r} |")
EOF
echo
echo "model $MODEL (stream_interval_ms $STREAM_INTERVAL_MS), route $ROUTE, clients: $CLIENT"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average at the start: $load0, at the end: $(cut -d' ' -f1-3 /proc/loadavg); results: $OUT/*.json"
exit $((failures > 0))
