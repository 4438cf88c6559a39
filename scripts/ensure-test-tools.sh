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
# systemd-analyze (Debian's systemd package); the TLS tests' certificates (tests/tls.rs,
# tests/gateway_auth/binary.rs): openssl.
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
# The OpenAI-compatible routes (tests/gateway_generate.rs, tests/gateway_auth.rs): the openai
# package, unchanged. Not fatal: without it those tests say SKIPPED.
if ! python3 -c "import openai" >/dev/null 2>&1; then
  python3 -m pip install --quiet openai || echo "warning: pip could not install openai" >&2
fi
if ! python3 -c "import tritonclient.http, onnxruntime, numpy" >/dev/null 2>&1; then
  # Not fatal: without them tests/gateway.rs says SKIPPED for the tritonclient test.
  python3 -m pip install --quiet "tritonclient[http]" onnxruntime==1.31.1 numpy ||
    echo "warning: pip could not install tritonclient[http], onnxruntime, numpy" >&2
fi
# The model zoo (tests/zoo.rs, scripts/make-zoo.py): real models from packages, nothing downloaded
# at test time. Exact versions: docs/ZOO.md's table names them. silero-vad and
# rapidocr-onnxruntime only for the .onnx files in their wheels (--no-deps: neither torch nor
# OpenCV is needed); rapidocr-onnxruntime because it ships its models (the newer rapidocr
# downloads them). StringNormalizer models need the en_US.UTF-8 locale.
zoo_has() {
  python3 -c "import importlib.metadata as m, sys; sys.exit(any(m.version(p) != v for p, v in (a.split('==') for a in sys.argv[1:])))" "$@" >/dev/null 2>&1
}
zoo_models="silero-vad==6.2.3 rapidocr-onnxruntime==1.4.4"
zoo_tools="onnx==1.23.2 onnxruntime==1.31.1 scikit-learn==1.8.0 skl2onnx==1.20.0 onnxmltools==1.16.0 lightgbm==4.6.0"
if ! zoo_has $zoo_models; then
  python3 -m pip install --quiet --no-deps $zoo_models
fi
if ! zoo_has $zoo_tools || ! python3 -c "import numpy" >/dev/null 2>&1; then
  python3 -m pip install --quiet $zoo_tools numpy
fi
if ! locale -a 2>/dev/null | grep -qix 'en_US.utf-\?8'; then
  if ! command -v localedef >/dev/null 2>&1 || [ ! -d /usr/share/i18n/locales ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends locales
  fi
  localedef -i en_US -c -f UTF-8 -A /usr/share/locale/locale.alias en_US.UTF-8
fi
