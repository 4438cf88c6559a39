#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers at 127.0.0.1:5672: installs Debian's package if it is
# missing, starts it if it is down, and waits (bounded) until it answers.
set -euo pipefail
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server
fi
if rabbitmq-diagnostics -q ping >/dev/null 2>&1; then exit 0; fi
echo "Starting RabbitMQ"
rabbitmq-server -detached || true
for _ in $(seq 1 120); do
  if rabbitmq-diagnostics -q ping >/dev/null 2>&1 && rabbitmq-diagnostics -q check_running >/dev/null 2>&1; then
    echo "RabbitMQ is up"; exit 0
  fi
  sleep 1
done
echo "RabbitMQ did not start within 120 s" >&2
exit 1
