#!/usr/bin/env bash
# The worker's user-space instructions per single-row iris job, by component (BENCHMARKS.md,
# "CPU per job"). Runs a release worker under `valgrind --tool=callgrind` with instrumentation
# off, warms it up, counts only while `infermq-bench --model iris --rows 1 --window 256 --jobs
# JOBS` runs, and sorts the counted functions into infermq, lapin (with amq-protocol, nom,
# flume), tokio, serde_json, glibc's allocator, memcpy and the rest.
# Instruction counts do not depend on what else the host is doing, unlike CPU time on a shared
# 2-core machine, so two builds can be compared exactly (INFERMQ_BIN=...). They leave out the
# kernel (system calls, context switches: see bench-cpu.sh SYSCALLS=1 and PERF=1), and the
# worker runs about 50 times slower under valgrind, so its batches are larger than at full speed.
# Usage: scripts/bench-instructions.sh   (environment: JOBS (4000), TOP (0: functions per group))
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-4000}
command -v callgrind_control >/dev/null || { echo "valgrind is needed (apt-get install valgrind)"; exit 2; }
. scripts/bench-lib.sh
bench_init cgbench
rm -f "$out"/callgrind.*
bench_start "$out/callgrind-worker.log" "http://127.0.0.1:$port/readyz" \
  INFERMQ__HTTP__LISTEN="127.0.0.1:$port" \
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/callgrind.%p" "$bin" worker
worker=$started
"$loadgen" --prefix "$prefix" --model iris --jobs 500 --rows 1 --window 256 >/dev/null   # warm-up
callgrind_control -i on "$worker" >/dev/null
"$loadgen" --prefix "$prefix" --json --model iris --jobs "$JOBS" --rows 1 --window 256 >"$out/callgrind-run.json"
callgrind_control -i off "$worker" >/dev/null
callgrind_control -d "$worker" >/dev/null
dump=$(ls "$out"/callgrind.*.1)
callgrind_annotate --threshold=100 --auto=no "$dump" >"$out/callgrind.txt"
python3 - "$out" "${TOP:-0}" <<'PY'
import collections, json, re, sys
out, top = sys.argv[1], int(sys.argv[2])
report = json.load(open(f"{out}/callgrind-run.json"))["reports"][0]
jobs = report["ok"]
groups, total, members = collections.Counter(), 0, collections.defaultdict(list)
def group(obj, fn):
    if "libc.so" in obj:
        if re.search(r"malloc|free|realloc|calloc|memalign|consolidate|unlink_chunk", fn):
            return "glibc allocator"
        return "memcpy/memmove" if fn.startswith("__mem") else "glibc, other"
    if "libonnxruntime" in obj:
        return "ONNX Runtime"
    if fn in ("malloc", "free", "calloc", "realloc"):
        return "glibc allocator"
    head = fn[:50]
    for pattern, name in [(r"lapin|amq_protocol|nom::|flume|cookie_factory", "lapin (+ amq-protocol, nom, flume)"),
                          (r"tokio", "tokio"), (r"serde|zmij", "serde_json"),
                          (r"futures_util|event_listener", "futures-util, event-listener"),
                          (r"infermq", "infermq"), (r"^<?ort::", "ort"), (r"prometheus", "prometheus")]:
        if re.search(pattern, head):
            return name
    if re.match(r"(alloc|core|std)::|__rust|__rdl|<?(alloc|core|std)::", head):
        return "Rust std (generic code)"
    return "other"
for line in open(f"{out}/callgrind.txt"):
    m = re.match(r"^\s*([\d,]+) \([^)]*\)\s+(.*)$", line)
    if not m:
        continue
    n, name = int(m.group(1).replace(",", "")), m.group(2)
    if "PROGRAM TOTALS" in name:
        total = n
        continue
    f = re.match(r"^(.*?):(.*?)(?: \[(.*)\])?$", name)
    if not f:
        continue
    g = group(f.group(3) or "", f.group(2))
    groups[g] += n
    members[g].append((n, f.group(2)[:100]))
print(f"  {jobs} jobs, mean batch {report['batch_size_mean']:.1f}: {total / jobs:,.0f} instructions per job")
for g, n in groups.most_common():
    print(f"    {g:38s} {n / jobs:8,.0f}  {100 * n / total:5.1f}%")
    for m, fn in sorted(members[g], reverse=True)[:top]:
        print(f"        {m / jobs:8,.0f}  {fn}")
PY
