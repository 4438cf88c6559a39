#!/usr/bin/env bash
# Prepares the GPU check of BENCHMARKS.md ("GPU") on the build machine, following
# ../shared/gpu/README.md: stages the onnxruntime-gpu 1.31.1 provider (.gpu/cuda, .gpu/ort) and
# puts the check itself in .gpu/run (stripped ort-throughput, the mlp model, gpu-check.sh).
# Then, with the device tool, back to back:
#   transfer 1 (carry .gpu/cuda):            python3 .gpu/cuda/unpack.py /opt/ort .gpu/cuda
#   transfer 2 (carry .gpu/ort and .gpu/run): bash .gpu/run/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
../shared/gpu/stage.sh
cargo build --release --quiet -p infermq-tools --bin ort-throughput
rm -rf .gpu/run && mkdir -p .gpu/run
cp target/release/ort-throughput .gpu/run/ && strip .gpu/run/ort-throughput
cp models/mlp/1/model.onnx .gpu/run/mlp.onnx
cp scripts/gpu-check.sh .gpu/run/
du -sh .gpu/cuda .gpu/ort .gpu/run
