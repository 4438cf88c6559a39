#!/usr/bin/env bash
# Tools the tests call: promtool and the prometheus server (Debian's prometheus package) to check
# the metrics exposition, the rules and every dashboard panel (tests/dashboards.rs),
# and Python's onnx package to check saved models with onnx.checker; pika and PyYAML for the fleet
# simulator, which also runs prometheus (scripts/fleet-sim.py, tests/fleet_sim.rs).
set -euo pipefail
if ! python3 -c "import pika" >/dev/null 2>&1; then
  python3 -m pip install --quiet pika
fi
if ! python3 -c "import yaml" >/dev/null 2>&1; then
  python3 -m pip install --quiet pyyaml
fi
if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
fi
if ! python3 -c "import onnx" >/dev/null 2>&1; then
  python3 -m pip install --quiet onnx
fi
# The deploy hardening check (scripts/check-deploy-security.sh): kubernetes-validate (PyPI) and
# systemd-analyze (Debian's systemd package); the TLS test's certificates: openssl.
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  python3 -m pip install --quiet kubernetes-validate
fi
if ! command -v systemd-analyze >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd openssl
fi
# The gateway tests (tests/gateway.rs): curl, and Triton's HTTP client checked against ONNX
# Runtime's Python package (same version as .ort/).
if ! command -v curl >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl
fi
if ! python3 -c "import tritonclient.http, onnxruntime, numpy" >/dev/null 2>&1; then
  # Not fatal: without them tests/gateway.rs says SKIPPED for the tritonclient test.
  python3 -m pip install --quiet "tritonclient[http]" onnxruntime==1.31.1 numpy ||
    echo "warning: pip could not install tritonclient[http], onnxruntime, numpy" >&2
fi
