#!/usr/bin/env bash
# Compares the per-message cost of two AMQP 0-9-1 clients (lapin, amqprs) on infermq's echo
# workload: builds echo-lapin / echo-amqprs, then for RUNS rounds (alternating lapin, amqprs)
# starts one echo consumer on a fresh random-prefix queue, drives it with
# `infermq-bench --rows 1 --window 256 --jobs JOBS --json`, and measures over the bench run:
#   jobs/s (bench JSON), echo CPU µs/msg (utime+stime of the echo process), echo context
#   switches/msg (voluntary+nonvoluntary over all its threads), broker CPU µs/msg (RabbitMQ beam).
# Before each measured run it waits (polling every 10 s, at most MAX_WAIT_S in all) until no
# other infermq worker/gateway/bench runs and the 1-minute load average is below MAX_LOAD.
#
# Env: RUNS (4), JOBS (40000), MAX_LOAD (3), MAX_WAIT_S (600), INFERMQ (../../target/release/infermq),
#      CARGO_TARGET_DIR (/work/amqp-target), RESULTS (results TSV, default /tmp/amqp-clients-<time>.tsv)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
RUNS=${RUNS:-4}
JOBS=${JOBS:-40000}
MAX_LOAD=${MAX_LOAD:-3}
MAX_WAIT_S=${MAX_WAIT_S:-600}
INFERMQ_BENCH=${INFERMQ_BENCH:-$repo/target/release/infermq-bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/amqp-target}
RESULTS=${RESULTS:-/tmp/amqp-clients-$(date -u +%Y%m%dT%H%M%S).tsv}
logdir=$(mktemp -d /tmp/amqp-clients.XXXXXX)

[ -x "$INFERMQ_BENCH" ] || { echo "missing $INFERMQ_BENCH (cargo build --release -p infermq-tools --bin infermq-bench in $repo)" >&2; exit 1; }

echo "== build" >&2
(cd "$here" && cargo build --release --bins) >&2

clk_tck=$(getconf CLK_TCK)
broker_pid=$(pgrep -u rabbitmq -f "rabbit boot" | head -n1)
[ -n "$broker_pid" ] || { echo "RabbitMQ beam process not found" >&2; exit 1; }

# utime+stime ticks of one process (fields 14, 15; parsed after the comm's closing paren).
cpu_ticks() { local s; s=$(cat "/proc/$1/stat"); s=${s##*) }; set -- $s; echo $(( ${12} + ${13} )); }
# voluntary+nonvoluntary context switches summed over the process's threads.
ctx_switches() {
  awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { n += $2 } END { print n + 0 }' \
    /proc/"$1"/task/*/status 2>/dev/null
}
load1() { cut -d' ' -f1 /proc/loadavg; }

waited=0
stopped_early=0
wait_quiet() {
  while :; do
    local busy=""
    if pgrep -fa 'release/infermq (worker|gateway)' >/dev/null; then busy="infermq worker/gateway running"; fi
    if pgrep -fa 'infermq-bench' >/dev/null; then busy="${busy:+$busy; }another infermq-bench running"; fi
    local l; l=$(load1)
    if awk -v l="$l" -v m="$MAX_LOAD" 'BEGIN { exit !(l >= m) }'; then busy="${busy:+$busy; }load $l"; fi
    [ -z "$busy" ] && return 0
    if [ "$waited" -ge "$MAX_WAIT_S" ]; then
      echo "waited ${waited}s in all for a quiet machine ($busy): stopping" >&2
      return 1
    fi
    echo "waiting: $busy (waited ${waited}s)" >&2
    sleep 10
    waited=$((waited + 10))
  done
}

printf 'run\tclient\tjobs_per_s\techo_us_per_msg\tctxsw_per_msg\tbroker_us_per_msg\tload1\tok\tlost\techo_threads\n' > "$RESULTS"

one_run() {
  local run=$1 client=$2
  local prefix="acb$RANDOM$RANDOM" model=echo
  local queue="$prefix.predict.$model"
  local elog="$logdir/$run-$client.log" json="$logdir/$run-$client.json"
  "$CARGO_TARGET_DIR/release/echo-$client" "$queue" >"$elog" 2>&1 &
  local epid=$!
  local i
  for i in $(seq 1 300); do
    grep -q '^consuming' "$elog" 2>/dev/null && break
    kill -0 "$epid" 2>/dev/null || { cat "$elog" >&2; return 1; }
    sleep 0.1
  done
  grep -q '^consuming' "$elog" || { echo "echo-$client did not start" >&2; kill -TERM "$epid"; return 1; }

  local l; l=$(load1)
  local e0 c0 b0 e1 c1 b1 threads
  e0=$(cpu_ticks "$epid"); c0=$(ctx_switches "$epid"); b0=$(cpu_ticks "$broker_pid")
  "$INFERMQ_BENCH" --prefix "$prefix" --model "$model" --rows 1 --window 256 --jobs "$JOBS" --json >"$json"
  e1=$(cpu_ticks "$epid"); c1=$(ctx_switches "$epid"); b1=$(cpu_ticks "$broker_pid")
  threads=$(ls /proc/"$epid"/task | wc -l)

  kill -TERM "$epid"
  wait "$epid" || echo "echo-$client exited with $?" >&2
  "$repo/scripts/delete-prefix.sh" "$prefix"

  local jps ok lost
  jps=$(jq -r '.reports[0].jobs_per_s' "$json")
  ok=$(jq -r '.reports[0].ok' "$json")
  lost=$(jq -r '.reports[0].lost' "$json")
  awk -v run="$run" -v c="$client" -v jps="$jps" -v n="$JOBS" -v hz="$clk_tck" \
      -v de=$((e1 - e0)) -v dc=$((c1 - c0)) -v db=$((b1 - b0)) -v l="$l" -v ok="$ok" -v lost="$lost" -v th="$threads" \
      'BEGIN { printf "%s\t%s\t%.0f\t%.1f\t%.2f\t%.1f\t%s\t%s\t%s\t%s\n",
               run, c, jps, de * 1e6 / hz / n, dc / n, db * 1e6 / hz / n, l, ok, lost, th }' >> "$RESULTS"
  tail -n1 "$RESULTS" >&2
}

for run in $(seq 1 "$RUNS"); do
  for client in lapin amqprs; do
    wait_quiet || { echo "stopped early; partial results in $RESULTS" >&2; stopped_early=1; break 2; }
    echo "== run $run: $client (load $(load1))" >&2
    one_run "$run" "$client"
  done
done

echo
column -t -s $'\t' "$RESULTS"
echo
echo "median per client:"
for client in lapin amqprs; do
  awk -F'\t' -v c="$client" '
    function median(a, n,   i, j, t) {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    NR > 1 && $2 == c { n++; j[n] = $3; e[n] = $4; x[n] = $5; b[n] = $6 }
    END { if (n) printf "%-7s runs=%d jobs_per_s=%.0f echo_us_per_msg=%.1f ctxsw_per_msg=%.2f broker_us_per_msg=%.1f\n",
                 c, n, median(j, n), median(e, n), median(x, n), median(b, n) }' "$RESULTS"
done
echo "results: $RESULTS; logs and bench JSON: $logdir"
[ "$stopped_early" = 0 ] || exit 2
