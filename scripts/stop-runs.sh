#!/usr/bin/env bash
# Stop-under-load runs: RUNS (default 30) times, two workers share the iris queue, JOBS
# (default 12000) jobs are published at once (WINDOW > 0: at most WINDOW unanswered), the first
# worker is stopped with SIGTERM about a second in, the second answers the rest. Prints the
# duplicates (answers beyond the first, by job id) and unanswered jobs per run and in total;
# exits non-zero if any run had either. WORKER_BIN runs another build of the worker (to
# compare). Needs RabbitMQ at AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f), .ort/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-30}
JOBS=${JOBS:-12000}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
env INFERMQ_STOP_RUNS=$RUNS INFERMQ_STOP_JOBS=$JOBS INFERMQ_STOP_WINDOW=${WINDOW:-0} \
    ${WORKER_BIN:+INFERMQ_WORKER_BIN=$WORKER_BIN} cargo test --test fleet_term \
    sigterm_under_load_answers_each_job_once -- --exact --nocapture 2>&1 | tee "$log" \
    | grep --line-buffered '^stop-run '
status=${PIPESTATUS[0]}
set -e
awk '/^stop-run / { n++; split($3, d, "="); split($4, u, "="); dup += d[2]; un += u[2]; if (d[2] + u[2] > 0) bad++ }
     END { printf "runs: %d, with duplicates or unanswered: %d, duplicates: %d, unanswered: %d\n", n, bad, dup, un }' "$log"
if [ "$status" -ne 0 ]; then
    grep -E 'panicked|assertion' "$log" | head -5
fi
exit "$status"
