#!/usr/bin/env bash
# The GPU check, run on the GPU host from the repository root in transfer 2 (see
# scripts/gpu-stage.sh): unpacks ONNX Runtime's CUDA provider, then measures the mlp model
# (256→1024→1024→10) on the CPU EP (all cores) and the CUDA EP (required: no silent fallback) at
# batch 1–1024: rows/s and median batch latency after 20 warm-up runs, each both as the worker
# runs today (host tensors in and out) and with IoBinding to buffers allocated once by ONNX Runtime
# (pinned host memory for CUDA; `ort-throughput ... iobinding` checks the bound output equals a
# plain run's). Then the generation engine (generate-throughput) on the toy decoder in both
# layouts, CPU and CUDA, at 1, 8, 32 and 64 concurrent greedy jobs: tokens/s, time to first
# token and per output token, and a digest of the texts (equal on both EPs when CUDA gives the
# CPU's greedy tokens). Writes $OUT/gpu.jsonl, $OUT/generate.jsonl and $OUT/card.txt and prints
# tables.
# GPU_CHECK_EPS="cpu" runs the CPU half only (to test the script).
set -euo pipefail
run=$(dirname "$0")
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
eps=${GPU_CHECK_EPS:-cpu cuda}
seconds=${GPU_CHECK_SECONDS:-3}
if [[ " $eps " == *" cuda "* ]]; then
  python3 .gpu/ort/unpack.py /opt/ort .gpu/ort
  export ORT_DYLIB_PATH=/opt/ort/libonnxruntime.so.1.31.1
  LD_LIBRARY_PATH=$(find /opt /usr/local /usr/lib -xdev \( -name 'libcublasLt.so.13' -o -name 'libcudnn.so.9' -o -name 'libcufft.so.12' -o -name 'libcurand.so.10' -o -name 'libcudart.so.13' -o -name 'libcuda.so.1' \) -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
  export LD_LIBRARY_PATH
  nvidia-smi -L | tee "$out/card.txt"
fi
: >"$out/gpu.jsonl"
for batch in 1 8 32 64 128 256 512 1024; do
  for ep in $eps; do
    threads=1; [ "$ep" = cpu ] && threads=$(nproc)
    for io in plain iobinding; do
      "$run/ort-throughput" "$run/mlp.onnx" input 256 "$batch" "$seconds" "$threads" "$ep" "$io" | tee -a "$out/gpu.jsonl"
    done
  done
done
python3 - "$out/gpu.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'batch':>6} {'ep':>5} {'io':>10} {'rows/s':>12} {'batch ms':>9}")
for r in rows:
    print(f"{r['batch']:>6} {r['ep']:>5} {r.get('io', 'plain'):>10} {r['rows_per_s']:>12.0f} {r['batch_ms']:>9.3f}")
PY

: >"$out/generate.jsonl"
for model in storyteller genai; do
  for ep in $eps; do
    "$run/generate-throughput" "$run/$model/1" "$ep" 64 64 1 8 32 64 |
      python3 -c "import json, sys; [print(json.dumps(dict(json.loads(l), model='$model'))) for l in sys.stdin]" |
      tee -a "$out/generate.jsonl"
  done
done
python3 - "$out/generate.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'model':>12} {'ep':>5} {'conc':>5} {'tokens/s':>10} {'ttft p50':>9} {'tpot p50':>9} {'digest':>17}")
for r in rows:
    print(f"{r['model']:>12} {r['ep']:>5} {r['concurrency']:>5} {r['tokens_per_s']:>10.0f} {r['ttft_p50_ms']:>9.2f} {r['tpot_p50_ms']:>9.3f} {r['text_digest']:>17}")
PY
