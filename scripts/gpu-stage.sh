#!/usr/bin/env bash
# Prepares the GPU check of BENCHMARKS.md ("GPU") on the build machine, following
# ../shared/gpu/README.md: stages the onnxruntime-gpu 1.31.1 provider (.gpu/cuda, .gpu/ort) and
# puts the check itself in .gpu/run (stripped ort-throughput and generate-throughput, the mlp
# model, the toy decoder in both layouts, gpu-check.sh).
# Then, with the device tool, back to back:
#   transfer 1 (carry .gpu/cuda):            python3 .gpu/cuda/unpack.py /opt/ort .gpu/cuda
#   transfer 2 (carry .gpu/ort and .gpu/run): bash .gpu/run/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
../shared/gpu/stage.sh
cargo build --release --quiet -p infermq-tools --bin ort-throughput --bin generate-throughput
rm -rf .gpu/run && mkdir -p .gpu/run/storyteller .gpu/run/genai
cp target/release/ort-throughput target/release/generate-throughput .gpu/run/
strip .gpu/run/ort-throughput .gpu/run/generate-throughput
cp models/mlp/1/model.onnx .gpu/run/mlp.onnx
cp -r models/storyteller/1 .gpu/run/storyteller/1
cp -r tests/llm/genai .gpu/run/genai/1
cp scripts/gpu-check.sh .gpu/run/
du -sh .gpu/cuda .gpu/ort .gpu/run
