#!/usr/bin/env bash
# A second RabbitMQ node with a TLS listener (and a plaintext one beside it), for the TLS tests. It never touches the
# default broker at 127.0.0.1:5672: its own node name, ports, data and log directories under
# target/tls-broker/, and it is stopped by its own PID.
#
#   scripts/tls-broker.sh start   # make certificates (openssl), start the node, wait until it answers
#   scripts/tls-broker.sh stop    # stop the node (rabbitmqctl shutdown, then its PID)
#   scripts/tls-broker.sh env     # print the variables the tests read
#
# Certificates (made at start, in target/tls-broker/certs/):
#   ca.pem, server.pem/.key  the CA and the broker's certificate, valid for DNS:localhost only
#                            (so amqps://127.0.0.1 is a wrong host name)
#   client.pem/.key          a client certificate with CN=infermq-tls-client (EXTERNAL login)
#   other-ca.pem             a CA that signed nothing the broker uses (the wrong-CA case)
#
# Exit status 2: RabbitMQ or openssl is missing, or this user cannot run the node as the
# rabbitmq user; the tests print that and skip.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${INFERMQ_TLS_BROKER_DIR:-$ROOT/target/tls-broker}
# The node runs as the rabbitmq user: when it cannot reach the checkout (e.g. under /root),
# keep the node's files in /tmp instead.
if [ -z "${INFERMQ_TLS_BROKER_DIR:-}" ] && [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1 \
  && ! su rabbitmq -s /bin/sh -c "test -x '$ROOT'" 2>/dev/null; then
  DIR=/tmp/infermq-tls-broker
fi
NODE=${INFERMQ_TLS_NODENAME:-infermq-tls@localhost}
TLS_PORT=${INFERMQ_TLS_PORT:-5691}
# A plaintext listener on the same node: the amqp:// side of the TLS cost benchmark, and the
# "amqps:// at a plaintext port" case.
PLAIN_PORT=${INFERMQ_TLS_PLAIN_PORT:-5692}
DIST_PORT=${INFERMQ_TLS_DIST_PORT:-25691}
CLIENT_CN=infermq-tls-client

ctl() { rabbitmqctl -q -n "$NODE" "$@"; }

make_certs() {
  local c=$DIR/certs
  mkdir -p "$c"
  [ -f "$c/client.pem" ] && return 0
  local days=30 subj=/O=infermq-test
  openssl req -x509 -newkey rsa:2048 -nodes -days $days -subj "$subj/CN=infermq test CA" \
    -keyout "$c/ca.key" -out "$c/ca.pem" 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -days $days -subj "$subj/CN=infermq other CA" \
    -keyout "$c/other-ca.key" -out "$c/other-ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "$subj/CN=localhost" \
    -keyout "$c/server.key" -out "$c/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$c/server.ext"
  openssl x509 -req -in "$c/server.csr" -CA "$c/ca.pem" -CAkey "$c/ca.key" -CAcreateserial \
    -days $days -extfile "$c/server.ext" -out "$c/server.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "$subj/CN=$CLIENT_CN" \
    -keyout "$c/client.key" -out "$c/client.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$c/client.ext"
  openssl x509 -req -in "$c/client.csr" -CA "$c/ca.pem" -CAkey "$c/ca.key" -CAcreateserial \
    -days $days -extfile "$c/client.ext" -out "$c/client.pem" 2>/dev/null
  # rustls reads PKCS#8 keys; openssl 3 writes PKCS#8 already, this makes sure.
  openssl pkcs8 -topk8 -nocrypt -in "$c/client.key" -out "$c/client.pk8" 2>/dev/null
  mv "$c/client.pk8" "$c/client.key"
}

answers() {
  timeout 5 openssl s_client -connect "127.0.0.1:$TLS_PORT" -CAfile "$DIR/certs/ca.pem" \
    -verify_return_error </dev/null >/dev/null 2>&1
}

start() {
  command -v rabbitmq-server >/dev/null && command -v openssl >/dev/null || {
    echo "tls-broker: rabbitmq-server or openssl is not installed" >&2; exit 2; }
  if [ "$(id -u)" != 0 ] && [ "$(id -un)" != rabbitmq ]; then
    echo "tls-broker: needs root or the rabbitmq user to start a RabbitMQ node" >&2; exit 2
  fi
  make_certs
  if [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null && answers; then return 0; fi
  for port in "$TLS_PORT" "$PLAIN_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "tls-broker: port $port is taken by another program (INFERMQ_TLS_PORT, INFERMQ_TLS_PLAIN_PORT)" >&2
      exit 1
    fi
  done
  mkdir -p "$DIR/mnesia" "$DIR/log"
  cat >"$DIR/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$PLAIN_PORT
listeners.ssl.default = 127.0.0.1:$TLS_PORT
ssl_options.cacertfile = $DIR/certs/ca.pem
ssl_options.certfile = $DIR/certs/server.pem
ssl_options.keyfile = $DIR/certs/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
ssl_cert_login_from = common_name
EOF
  echo '[rabbitmq_auth_mechanism_ssl].' >"$DIR/enabled_plugins"
  [ "$(id -u)" = 0 ] && chown -R rabbitmq: "$DIR"
  RABBITMQ_NODENAME=$NODE RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_DIST_PORT=$DIST_PORT \
    RABBITMQ_MNESIA_BASE=$DIR/mnesia RABBITMQ_LOG_BASE=$DIR/log \
    RABBITMQ_CONFIG_FILE=$DIR/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE=$DIR/enabled_plugins \
    RABBITMQ_PID_FILE=$DIR/pid RABBITMQ_ADVANCED_CONFIG_FILE=$DIR/advanced.config \
    rabbitmq-server -detached
  for _ in $(seq 1 120); do
    if ctl await_startup >/dev/null 2>&1 && answers; then
      ctl add_user "$CLIENT_CN" "unused-$RANDOM$RANDOM" >/dev/null 2>&1 || true
      ctl clear_password "$CLIENT_CN" >/dev/null
      ctl set_permissions -p / "$CLIENT_CN" '.*' '.*' '.*' >/dev/null
      echo "tls-broker: $NODE answers TLS at 127.0.0.1:$TLS_PORT"
      return 0
    fi
    sleep 1
  done
  echo "tls-broker: $NODE did not start within 120 s; see $DIR/log" >&2
  exit 1
}

stop() {
  [ -f "$DIR/pid" ] || return 0
  local pid
  pid=$(cat "$DIR/pid")
  ctl shutdown >/dev/null 2>&1 || true
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill "$pid" 2>/dev/null || true
  rm -f "$DIR/pid"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env)
    echo "INFERMQ_TLS_PORT=$TLS_PORT"
    echo "INFERMQ_TLS_PLAIN_PORT=$PLAIN_PORT"
    echo "INFERMQ_TLS_CERTS=$DIR/certs"
    echo "INFERMQ_TLS_CLIENT_CN=$CLIENT_CN"
    ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 64 ;;
esac
