#!/usr/bin/env bash
# One prediction job through the broker with the bundled CLI, and what to do with its answer.
#
#   examples/shell/predict.sh [MODEL] [REQUEST.json]      (defaults: iris, examples/requests/iris.json)
#
# Uses the same configuration as the worker (config/default.toml, INFERMQ__BROKER__URL,
# INFERMQ__BROKER__PREFIX, ...). `infermq predict` publishes with confirms and `mandatory` to
# <prefix>.predict.<model>, waits on an exclusive reply queue, prints the result on stdout and
# exits non-zero for an error result or when no worker serves the model.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-iris}
request=${2:-examples/requests/iris.json}
infermq=${INFERMQ:-infermq}
if ! command -v "$infermq" >/dev/null; then
    infermq=${CARGO_TARGET_DIR:-target}/release/infermq
fi

if result=$("$infermq" predict --model "$model" --input "$request" 2>/tmp/infermq-predict.err); then
    echo "$result"
    # The result is one JSON line; pick fields with any JSON tool, e.g.:
    if command -v python3 >/dev/null; then
        echo "$result" | python3 -c 'import json, sys; r = json.load(sys.stdin); print("version", r["model_version"], "outputs", [o["name"] for o in r["outputs"]])'
    fi
else
    status=$?
    # An error result is still printed on stdout (JSON with "error" and "code").
    [ -n "${result:-}" ] && echo "$result"
    grep -m1 '^Error' /tmp/infermq-predict.err >&2 || cat /tmp/infermq-predict.err >&2
    exit $status
fi
