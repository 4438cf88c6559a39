#!/usr/bin/env bash
# Memory and throughput of a large model loaded N times by each way ONNX Runtime offers
# (tools/src/bin/ort-memory.rs), one process per figure so each Pss and peak is that configuration's.
#   BENCH_LAYERS (6) x BENCH_WIDTH (4096): the MatMul chain (6 x 4096 = 384 MiB of weights),
#   written by make-large-model to target/large-models/{embedded,external}/ unless present.
#   BENCH_INSTANCES ("1 2 4"), BENCH_BATCHES ("1,32"), BENCH_SECONDS (3) per batch size,
#   BENCH_MODES (every mode), BENCH_LAYOUTS ("embedded external"), BENCH_PROFILE (release).
# Prints one JSON line per figure (layout added) and keeps them in target/bench/large.jsonl.
# Usage: scripts/bench-large.sh
set -euo pipefail
cd "$(dirname "$0")/.."
layers=${BENCH_LAYERS:-6}
width=${BENCH_WIDTH:-4096}
profile=${BENCH_PROFILE:-release}
modes=${BENCH_MODES:-"bytes path path-noprepack path-shared-prepack shared-session"}
flag=$([ "$profile" = release ] && echo --release || true)
cargo build $flag --quiet -p infermq-tools --bin ort-memory --bin make-large-model
bin=target/$profile
dir=target/large-models/${layers}x${width}
mkdir -p target/bench
out=target/bench/large.jsonl
: >"$out"
for layout in ${BENCH_LAYOUTS:-embedded external}; do
  [ -f "$dir/$layout/model.onnx" ] || "$bin/make-large-model" "$dir/$layout" "$layers" "$width" "$layout"
  for mode in $modes; do
    # Bytes in memory cannot carry external data (ONNX Runtime looks in the working directory).
    [ "$layout/$mode" = external/bytes ] && continue
    for n in ${BENCH_INSTANCES:-1 2 4}; do
      "$bin/ort-memory" "$dir/$layout/model.onnx" "$mode" "$n" "${BENCH_BATCHES:-1,32}" "${BENCH_SECONDS:-3}" |
        sed "s/^{/{\"layout\":\"$layout\",/" | tee -a "$out"
    done
  done
done
