#!/usr/bin/env bash
# Stop-under-load runs: RUNS (default 30) times, two workers share the iris queue, JOBS
# (default 12000) jobs are published at once (WINDOW > 0: at most WINDOW unanswered), the first
# worker is stopped with SIGTERM about a second in, the second answers the rest. Prints the
# duplicates (answers beyond the first, by job id) and unanswered jobs per run and in total;
# exits non-zero if any run had either. WORKER_BIN runs another build of the worker (to
# compare). Needs RabbitMQ at AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f), .ort/.
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-30}
JOBS=${JOBS:-12000}
mkdir -p target
log=target/stop-runs.log
: > "$log"
failed=0
# One test process per run, so that no run inherits another's connections or state.
for run in $(seq 1 "$RUNS"); do
    out=$(env INFERMQ_STOP_RUNS=1 INFERMQ_STOP_JOBS="$JOBS" INFERMQ_STOP_WINDOW="${WINDOW:-0}" \
        ${WORKER_BIN:+INFERMQ_WORKER_BIN=$WORKER_BIN} cargo test --quiet --test fleet_term \
        sigterm_under_load_answers_each_job_once -- --exact --include-ignored --nocapture 2>&1)
    status=$?
    echo "$out" >> "$log"
    line=$(echo "$out" | grep '^stop-run ' | sed "s|^stop-run 1/1|stop-run $run/$RUNS|")
    if [ -z "$line" ]; then
        line="stop-run $run/$RUNS: failed (see $log)"
        echo "$out" | grep -A2 'panicked' | head -6
    fi
    echo "$line" | tee -a "$log.summary"
    [ "$status" -eq 0 ] || failed=1
done
awk '/^stop-run .*duplicates=/ { n++; split($3, d, "="); split($4, u, "="); dup += d[2]; un += u[2]; if (d[2] + u[2] > 0) bad++ }
     /^stop-run .*failed/ { f++ }
     END { printf "runs: %d, with duplicates or unanswered: %d, duplicates: %d, unanswered: %d, failed otherwise: %d\n", n, bad, dup, un, f }' "$log.summary"
rm -f "$log.summary"
exit "$failed"
