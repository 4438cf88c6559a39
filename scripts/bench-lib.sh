# Sourced by the benchmark scripts (bench-cpu.sh, bench-latency.sh, bench-gateway.sh): the
# release binaries, a random queue prefix whose queues are deleted on exit, and a worker on it;
# and by the generation benchmarks for their decoder (bench_decoders).
# After `bench_init NAME`: $bin (the worker), $loadgen (the load generator, infermq-bench),
# $prefix, $out (target/bench), $port (the worker's HTTP port).
# INFERMQ_BIN=/path/to/infermq measures that binary (e.g. to compare two builds in turn);
# INFERMQ_BENCH_BIN=/path/to/infermq-bench loads it with that load generator (default: this
# checkout's, built from tools/).

bench_init() {
  out=target/bench
  mkdir -p "$out"
  # INFERMQ_BIN / INFERMQ_BENCH_BIN: use that binary instead of building this checkout's.
  local build=()
  [ -n "${INFERMQ_BIN:-}" ] || build+=(-p infermq --bin infermq)
  [ -n "${INFERMQ_BENCH_BIN:-}" ] || build+=(-p infermq-tools --bin infermq-bench)
  [ ${#build[@]} -eq 0 ] || cargo build --release --quiet "${build[@]}"
  bin=${INFERMQ_BIN:-${CARGO_TARGET_DIR:-target}/release/infermq}
  loadgen=${INFERMQ_BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release/infermq-bench}
  prefix="$1$RANDOM$RANDOM"
  port=$((20000 + RANDOM % 20000))
  bench_pids=()
  trap 'for p in "${bench_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; scripts/delete-prefix.sh "$prefix"' EXIT
}

# bench_start LOG URL COMMAND...: starts COMMAND in the background (stopped on exit) with the
# prefix and quiet logs, sets $started to its pid, and waits until URL answers (30 s at most).
bench_start() {
  local log=$1 url=$2
  shift 2
  env INFERMQ__BROKER__PREFIX="$prefix" INFERMQ__LOG__LEVEL=warn "$@" >>"$log" 2>&1 &
  started=$!
  bench_pids+=("$started")
  for _ in $(seq 1 150); do
    curl -sf "$url" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  curl -sf "$url" >/dev/null || { cat "$log"; exit 1; }
}

# bench_worker LOG [VAR=VALUE...]: a worker on $port with the given extra environment; $worker.
bench_worker() {
  local log=$1
  shift
  : >"$log"
  bench_start "$log" "http://127.0.0.1:$port/readyz" "$@" INFERMQ__HTTP__LISTEN="127.0.0.1:$port" "$bin" worker
  worker=$started
}

# bench_decoders MODELS CONFIG: the benchmark decoder of `scripts/make-llm.py --bench` (made into
# $MODEL_DIR with $PYTHON if missing) copied to MODELS as bench-plain (the plain export) and
# bench-genai (onnxruntime-genai's builder export), each with CONFIG as its config.toml. Copies,
# so that a rebuild of $MODEL_DIR during a run changes nothing.
bench_decoders() {
  local models=$1 config=$2 layout
  if [ ! -f "$MODEL_DIR/plain/model.onnx" ] || [ ! -f "$MODEL_DIR/genai/genai_config.json" ]; then
    echo "making the benchmark model in $MODEL_DIR" >&2
    "$PYTHON" scripts/make-llm.py --bench "$MODEL_DIR"
  fi
  for layout in plain genai; do
    mkdir -p "$models/bench-$layout"
    cp -r "$MODEL_DIR/$layout" "$models/bench-$layout/1"
    printf '%s\n' "$config" >"$models/bench-$layout/config.toml"
  done
}
