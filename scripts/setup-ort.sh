#!/usr/bin/env bash
# Installs ONNX Runtime 1.31.1 (CPU) from PyPI into .ort/ (git-ignored), where infermq finds it
# by default. Idempotent: does nothing when the library is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
lib=.ort/onnxruntime/capi/libonnxruntime.so.1.31.1
if [ -f "$lib" ]; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" onnxruntime==1.31.1
mkdir -p .ort
python3 - "$tmp" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/onnxruntime-1.31.1-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("onnxruntime/capi/libonnxruntime"):
            z.extract(name, ".ort")
PY
test -f "$lib"
echo "ONNX Runtime installed at $lib"
