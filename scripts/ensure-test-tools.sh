#!/usr/bin/env bash
# Tools the tests call: promtool and the prometheus server (Debian's prometheus package) to check
# the metrics exposition, the rules and every dashboard panel (tests/dashboards.rs),
# and Python's onnx package to check saved models with onnx.checker; pika for the fleet simulator
# (scripts/fleet-sim.py, tests/fleet_sim.rs).
set -euo pipefail
if ! python3 -c "import pika" >/dev/null 2>&1; then
  python3 -m pip install --quiet pika
fi
if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
fi
if ! python3 -c "import onnx" >/dev/null 2>&1; then
  python3 -m pip install --quiet onnx
fi
