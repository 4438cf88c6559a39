#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers at 127.0.0.1:5672: installs Debian's package if it is
# missing, starts it if it is down, and waits (bounded) until it answers.
set -euo pipefail
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server
fi
# `ping` answers even while AMQP does not: check that the listener answers a protocol header
# with a connection.start frame (frame type 1).
amqp_answers() {
  timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672; printf "AMQP\x00\x00\x09\x01" >&3; head -c 1 <&3' 2>/dev/null | od -An -tx1 | grep -q 01
}
if rabbitmq-diagnostics -q ping >/dev/null 2>&1 && amqp_answers; then exit 0; fi
echo "Starting RabbitMQ"
rabbitmq-server -detached || true
for _ in $(seq 1 120); do
  if rabbitmq-diagnostics -q check_running >/dev/null 2>&1 && amqp_answers; then
    echo "RabbitMQ is up"; exit 0
  fi
  sleep 1
done
echo "RabbitMQ did not start within 120 s" >&2
exit 1
