#!/usr/bin/env bash
# Worker CPU per job, by thread, with the iris ratio to the echo ceiling (BENCHMARKS.md,
# "CPU per job"): starts a release worker on the bundled models with a random queue prefix,
# then ROUNDS times `infermq-bench --model iris --jobs JOBS --rows 1 --window 256` followed by
# the same with `--echo-only` (the echo ceiling), reading the worker's /proc/<pid>/task/*/stat
# and the broker's /proc/<pid>/stat (user + system ticks) around each run.
# With PERF=1 one more worker run follows, under `perf record -e cpu-clock` (not counted in the
# figures: the profiler costs CPU too), summarised by thread, library and symbol in
# target/bench/cpu-perf.txt.
# With SYSCALLS=1 one more worker run follows under `perf stat` counting the worker's system
# calls by kind and thread (syscall tracepoints, no hardware counters needed), per job, in
# target/bench/cpu-syscalls.txt.
# Usage: scripts/bench-cpu.sh   (environment: JOBS, ROUNDS, PERF, SYSCALLS, BODY=json|binary)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-40000}
ROUNDS=${ROUNDS:-4}
. scripts/bench-lib.sh
bench_init cpubench
# shellcheck disable=SC2086 # WORKER_ENV: VAR=VALUE words for the worker's environment
bench_worker "$out/cpu-worker.log" ${WORKER_ENV:-}
body_flag=""; [ "${BODY:-json}" = binary ] && body_flag="--binary"
beam=$(pgrep -u rabbitmq -f "rabbit boot" | head -1 || true)
# The broker's ticks over the same interval (all its threads: field 14 + 15 of its stat).
broker_ticks() { [ -n "$beam" ] && awk '{print $14 + $15}' /proc/"$beam"/stat || echo 0; }
# Per-thread lines "<thread name> <utime> <stime> <context switches>" (the name is field 2 of
# stat, in parentheses), after one line for the broker.
ticks() {
  echo "broker:rabbitmq 0 $(broker_ticks) 0"
  for t in /proc/"$worker"/task/*; do
    echo "$(sed -E 's/^[0-9]+ \((.*)\) [A-Za-z] (([^ ]+ ){10})([0-9]+) ([0-9]+).*/\1 \4 \5/' "$t/stat") $(awk '/ctxt_switches/ {n += $2} END {print n}' "$t/status")"
  done 2>/dev/null
}
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
"$loadgen" --prefix "$prefix" --model iris --jobs 5000 --rows 1 --window 256 $body_flag >/dev/null   # warm-up
for round in $(seq 1 "$ROUNDS"); do
  ticks >"$out/cpu-ticks-before-$round.txt"
  "$loadgen" --prefix "$prefix" --json --model iris --jobs "$JOBS" --rows 1 --window 256 $body_flag >"$out/cpu-iris-$round.json"
  ticks >"$out/cpu-ticks-after-$round.txt"
  # The echo ceiling right after, through the same broker; its broker ticks too.
  b0=$(broker_ticks)
  "$loadgen" --prefix "$prefix" --json --model iris --jobs "$JOBS" --rows 1 --window 256 --echo-only $body_flag >"$out/cpu-echo-$round.json"
  echo "$(( $(broker_ticks) - b0 ))" >"$out/cpu-echo-broker-$round.txt"
done
if [ "${PERF:-0}" = 1 ]; then
  perf record -q -e cpu-clock -F 1999 -p "$worker" -o "$out/cpu-perf.data" 2>/dev/null &
  perf_pid=$!
  "$loadgen" --prefix "$prefix" --model iris --jobs "$JOBS" --rows 1 --window 256 $body_flag >/dev/null
  kill -INT "$perf_pid"; wait "$perf_pid" || true
fi
if [ "${SYSCALLS:-0}" = 1 ]; then
  calls=raw_syscalls:sys_enter
  for c in read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait futex sched_yield; do
    calls+=",syscalls:sys_enter_$c"
  done
  perf stat -e "$calls" --per-thread -x, -o "$out/cpu-syscalls.csv" -p "$worker" &
  perf_pid=$!
  sleep 0.5
  "$loadgen" --prefix "$prefix" --json --model iris --jobs "$JOBS" --rows 1 --window 256 $body_flag >"$out/cpu-syscalls-run.json"
  kill -INT "$perf_pid"; wait "$perf_pid" || true
  python3 - "$out" <<'PY'
import collections, json, re, sys
out = sys.argv[1]
jobs = json.load(open(f"{out}/cpu-syscalls-run.json"))["reports"][0]["ok"]
by = collections.defaultdict(collections.Counter)
for line in open(f"{out}/cpu-syscalls.csv"):
    f = line.strip().split(",")
    if len(f) < 4 or not f[1].replace(".", "").isdigit():
        continue
    thread = re.sub(r"-\d+$", "", f[0].strip())
    event = f[3].split(":")[-1].replace("sys_enter_", "")
    by[thread][event] += float(f[1])
with open(f"{out}/cpu-syscalls.txt", "w") as txt:
    for thread, counts in sorted(by.items(), key=lambda kv: -kv[1]["sys_enter"]):
        if counts["sys_enter"] < 0.01 * jobs:
            continue
        kinds = "  ".join(f"{k} {v / jobs:.2f}" for k, v in counts.most_common() if v and k != "sys_enter")
        line = f"{thread}: {counts['sys_enter'] / jobs:.2f} system calls per job ({kinds})"
        print("  " + line)
        txt.write(line + "\n")
PY
fi
python3 - "$out" "$ROUNDS" "$(getconf CLK_TCK)" <<'PY'
import collections, json, re, statistics, sys
out, rounds, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def load(path):
    t = collections.Counter()
    for line in open(path):
        name, user, system, switches = line.rsplit(" ", 3)
        # Group threads by role: tokio-runtime-w, lapin-io-loop, infer-iris-0 -> infer-iris, ...
        role = re.sub(r"-\d+$", "", name)
        t[role] += int(user) + int(system)
        t["switches:" + role] += int(switches)
    return t
def split(t):
    broker = t.pop("broker:rabbitmq", 0)
    return t, broker
per_job, ratios = [], []
for r in range(1, rounds + 1):
    (before, b0), (after, b1) = split(load(f"{out}/cpu-ticks-before-{r}.txt")), split(load(f"{out}/cpu-ticks-after-{r}.txt"))
    model = json.load(open(f"{out}/cpu-iris-{r}.json"))["reports"][0]
    echo = json.load(open(f"{out}/cpu-echo-{r}.json"))["reports"][0]
    ratio = model["jobs_per_s"] / echo["jobs_per_s"]
    echo_broker = int(open(f"{out}/cpu-echo-broker-{r}.txt").read()) / hz / echo["ok"] * 1e6
    jobs = model["ok"]
    switches = {k[9:]: (after[k] - before.get(k, 0)) / jobs for k in after if k.startswith("switches:")}
    used = {k: after[k] - before.get(k, 0) for k in after if not k.startswith("switches:")}
    total = sum(used.values())
    us = total / hz / jobs * 1e6
    per_job.append(us); ratios.append(ratio)
    threads = "  ".join(f"{k} {v / hz / jobs * 1e6:.1f}" for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v)
    print(f"  round {r}: worker {model['jobs_per_s']:.0f} jobs/s, echo {echo['jobs_per_s']:.0f}, ratio {ratio:.3f}, "
          f"lost {model['lost']} dup {model['duplicated']}, mean batch {model['batch_size_mean']:.1f}; "
          f"worker CPU {us:.1f} us/job ({threads}); broker {(b1 - b0) / hz / jobs * 1e6:.1f} us/job (echo run: {echo_broker:.1f})")
    print("    context switches per job: " + "  ".join(f"{k} {v:.2f}" for k, v in sorted(switches.items(), key=lambda kv: -kv[1])))
print(f"  median: {statistics.median(per_job):.1f} us/job, ratio {statistics.median(ratios):.3f}")
PY
if [ -f "$out/cpu-perf.data" ] && [ "${PERF:-0}" = 1 ]; then
  for sort in comm dso comm,dso,symbol; do
    echo "# by $sort"
    perf report -i "$out/cpu-perf.data" --no-children --sort "$sort" --percent-limit 0.5 --stdio 2>/dev/null | grep -E '^ +[0-9]' | cut -c1-140
  done >"$out/cpu-perf.txt" || true
  echo "  profile: $out/cpu-perf.txt (top entries below)"
  head -40 "$out/cpu-perf.txt"
fi
