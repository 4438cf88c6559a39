#!/usr/bin/env bash
# A local 3-node RabbitMQ cluster for the failover tests, beside (never touching) the default
# broker at 5672:
#   scripts/cluster.sh start    start infermq-c1..c3@localhost (AMQP 5681-5683) and cluster them
#   scripts/cluster.sh stop     stop them, by the PIDs they wrote, and remove their data
#   scripts/cluster.sh status   the cluster status as c1 sees it
#   scripts/cluster.sh urls     the AMQP URLs, comma-separated (for INFERMQ__BROKER__URL)
#   scripts/cluster.sh ctl N …  rabbitmqctl against node N (1-3), e.g. `ctl 2 stop_app`
# Data, logs, configuration and PID files live under target/cluster/ (INFERMQ_CLUSTER_DIR).
# Every node runs as the invoking user with HOME=target/cluster/home, which holds a copy of the
# default node's Erlang cookie (so `rabbitmqctl -n infermq-c1@localhost …` works too).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${INFERMQ_CLUSTER_DIR:-$ROOT/target/cluster}
RMQ_BIN=${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
NODES=(1 2 3)
amqp_port() { echo $((5680 + $1)); }
dist_port() { echo $((25680 + $1)); }
node_name() { echo "infermq-c$1@localhost"; }

die() { echo "cluster.sh: $*" >&2; exit 1; }

[ -x "$RMQ_BIN/rabbitmq-server" ] || die "no $RMQ_BIN/rabbitmq-server (install rabbitmq-server)"

cookie() {
  mkdir -p "$BASE/home"
  local target="$BASE/home/.erlang.cookie"
  [ -f "$target" ] && return 0
  local source
  for source in /var/lib/rabbitmq/.erlang.cookie "${HOME:-/nonexistent}/.erlang.cookie"; do
    if [ -r "$source" ]; then
      cp "$source" "$target"
      break
    fi
  done
  [ -f "$target" ] || head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$target"
  chmod 400 "$target"
}

# Runs a RabbitMQ tool for node $1 with that node's environment.
with_node() {
  local n=$1; shift
  local dir="$BASE/c$n"
  env HOME="$BASE/home" \
    RABBITMQ_NODENAME="$(node_name "$n")" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
    RABBITMQ_DIST_PORT="$(dist_port "$n")" \
    RABBITMQ_CONF_ENV_FILE="$BASE/rabbitmq-env.conf" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/pid" \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    "$@"
}

ctl() { local n=$1; shift; with_node "$n" "$RMQ_BIN/rabbitmqctl" -n "$(node_name "$n")" "$@"; }

node_pid() { local f="$BASE/c$1/pid"; [ -s "$f" ] && cat "$f" || true; }
node_alive() { local pid; pid=$(node_pid "$1"); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

write_config() {
  local n=$1 dir="$BASE/c$1"
  mkdir -p "$dir/mnesia" "$dir/log"
  cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
loopback_users = none
# Quorum queue leaders spread over the nodes, not all on the declaring worker's node.
queue_leader_locator = balanced
# A deliberately stopped node is no partition: keep serving with the nodes that are up.
cluster_partition_handling = ignore
log.file.level = warning
EOF
  echo '[].' >"$dir/enabled_plugins"
  echo '[].' >"$dir/advanced.config"
}

wait_running() {
  local n=$1 i
  for i in $(seq 1 120); do
    if ctl "$n" -q await_startup >/dev/null 2>&1; then return 0; fi
    node_alive "$n" || die "node c$n exited; see $BASE/c$n/log"
    sleep 1
  done
  die "node c$n did not start within 120 s; see $BASE/c$n/log"
}

start() {
  cookie
  cat >"$BASE/rabbitmq-env.conf" <<'EOF'
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
  local n
  for n in "${NODES[@]}"; do
    if node_alive "$n"; then continue; fi
    write_config "$n"
    with_node "$n" "$RMQ_BIN/rabbitmq-server" -detached >"$BASE/c$n/log/start.out" 2>&1 ||
      die "rabbitmq-server c$n failed: $(tail -5 "$BASE/c$n/log/start.out")"
  done
  for n in "${NODES[@]}"; do
    # The PID file appears once the VM runs.
    for _ in $(seq 1 60); do [ -s "$BASE/c$n/pid" ] && break; sleep 0.5; done
    wait_running "$n"
  done
  for n in 2 3; do
    if ctl 1 -q cluster_status 2>/dev/null | grep -q "infermq-c$n@localhost"; then
      if ctl 1 -q cluster_status --formatter json 2>/dev/null | grep -q "\"running_nodes\":\[[^]]*infermq-c$n@"; then
        continue
      fi
    fi
    {
      ctl "$n" -q stop_app
      ctl "$n" -q reset
      ctl "$n" -q join_cluster "$(node_name 1)"
      ctl "$n" -q start_app
    } >>"$BASE/c$n/log/join.out" 2>&1 || die "c$n did not join: $(tail -5 "$BASE/c$n/log/join.out")"
    wait_running "$n"
  done
  status
}

stop() {
  local n pid
  for n in "${NODES[@]}"; do
    pid=$(node_pid "$n")
    [ -n "$pid" ] || continue
    if kill -0 "$pid" 2>/dev/null; then
      ctl "$n" -q stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$BASE"
  echo "cluster stopped"
}

status() {
  local n
  for n in "${NODES[@]}"; do
    if node_alive "$n"; then
      echo "$(node_name "$n") pid $(node_pid "$n") amqp 127.0.0.1:$(amqp_port "$n")"
    else
      echo "$(node_name "$n") down"
    fi
  done
  node_alive 1 && ctl 1 -q cluster_status --formatter json 2>/dev/null | grep -o '"running_nodes":\[[^]]*\]' || true
}

urls() {
  local n out=()
  for n in "${NODES[@]}"; do out+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f"); done
  (IFS=,; echo "${out[*]}")
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  urls) urls ;;
  ctl) shift; [ $# -ge 2 ] || die "usage: cluster.sh ctl N COMMAND…"; ctl "$@" ;;
  *) echo "usage: $0 start|stop|status|urls|ctl N COMMAND…" >&2; exit 2 ;;
esac
