#!/usr/bin/env python3
"""The onnxruntime-genai baseline for `generate-bench`: the same JSONL jobs, the same report.

Runs a model in onnxruntime-genai's layout (a folder with genai_config.json) on CPU, with the jobs
of a JSONL file (`{"prompt": "...", "max_tokens": N}` per line, the file `generate-bench` reads),
greedy, and prints the JSON report `generate-bench` prints (tokens/s, TTFT and TPOT percentiles).

Prompts are tokenized by genai's own tokenizer with `<s>` put in front (og.Tokenizer ignores the
tokenizer.json post-processor that adds it; infermq's tokenizer adds it), so both systems see the
same prompt ids. With --ignore-eos (the default) every job generates exactly its max_tokens (a
per-turn minimum for the Engine, search.min_length for the Generator): the token counts match an
infermq worker configured with `eos_token_ids = [0]` (a pad id no job generates).

Modes (--mode):

- engine-dynamic: og.Engine with `engine.dynamic_batching` (continuous batching over a paged KV
  cache). Needs a model exported with paged attention; on a plain builder export it refuses: the
  report then has `"refused": "<the error, verbatim>"` and no measurement.
- engine-static: og.Engine with `engine.static_batching.max_batch_size = C` (what the Engine
  does on this model on CPU), driven closed-loop: C requests in flight, a new one begun as soon as
  one finishes. (Measured: a static engine batch admits no new request until all of its requests
  have finished, so this is batch-at-a-time behind a closed-loop API.)
- generator: og.Generator static batching: the jobs in batches of C (prompts right-padded with the
  pad id, genai masks them), each batch run until its longest job is done before the next starts.
  A job's tokens are its row's first max_tokens tokens; its last token is stamped at the step that
  produced it (what a streaming server on top would deliver), its first token at the batch's first
  step. TTFT counts from the start of its batch: the job is "published" when its batch starts.

TTFT = begin → first token, TPOT = (last − first) / (tokens − 1), tokens/s = all completion
tokens / wall time of the run (first begin → last token), as generate-bench measures them.

    /tmp/llmvenv/bin/python scripts/bench-generate-genai.py --model-dir target/llm-bench/genai \\
        --jobs jobs.jsonl --concurrency 8 --mode generator --out genai-c8.json
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np


def percentiles(values):
    v = sorted(values)

    def at(p):
        if not v:
            return 0.0
        rank = max(1, math.ceil(p / 100.0 * len(v)))
        return v[min(rank, len(v)) - 1]

    r = lambda x: round(x, 3)
    return {
        "p50": r(at(50)), "p90": r(at(90)), "p99": r(at(99)),
        "mean": r(sum(v) / len(v)) if v else 0.0, "max": r(v[-1]) if v else 0.0,
    }


def read_jobs(path, count, skip):
    jobs = []
    for n, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        job = json.loads(line)
        if int(job["max_tokens"]) < 1:
            sys.exit(f"{path} line {n + 1}: max_tokens must be >= 1")
        jobs.append({"prompt": job["prompt"], "max_tokens": int(job["max_tokens"])})
    if not jobs:
        sys.exit(f"{path} holds no job")
    if count is None:
        count = max(1, len(jobs) - skip)
    return [dict(jobs[(skip + i) % len(jobs)]) for i in range(count)]


class Job:
    __slots__ = ("index", "ids", "max_tokens", "begun", "first", "last", "tokens", "finish_reason",
                 "error", "completion_tokens")

    def __init__(self, index, ids, max_tokens):
        self.index, self.ids, self.max_tokens = index, ids, max_tokens
        self.begun = self.first = self.last = None
        self.tokens = 0
        self.finish_reason = None
        self.error = None
        self.completion_tokens = None


def run_engine(og, config, jobs, concurrency, ignore_eos, idle_timeout):
    model = og.Model(config)
    engine = og.Engine(model)
    buf = engine.create_event_buffer(max(64, 4 * concurrency))
    active = {}  # id(request) -> (request, job); the request is held so its id stays unique
    nxt = 0
    done = 0
    started = time.perf_counter()
    last_progress = started
    while done < len(jobs):
        while len(active) < concurrency and nxt < len(jobs):
            job = jobs[nxt]
            nxt += 1
            request = engine.create_request()
            options = og.TurnOptions(request)
            options.set_max_generated_tokens(job.max_tokens)
            if ignore_eos:
                options.set_min_generated_tokens(job.max_tokens)
            options.set_do_sample(False)
            job.begun = time.perf_counter()
            request.begin_turn(np.asarray(job.ids, dtype=np.int32), options)
            active[id(request)] = (request, job)
        if not engine.has_pending_requests():
            raise RuntimeError(f"the Engine has no pending request but {len(active)} jobs are unfinished")
        events = engine.run(buf)
        now = time.perf_counter()
        if events:
            last_progress = now
        elif now - last_progress > idle_timeout:
            raise RuntimeError(f"no Engine event for {idle_timeout} s")
        for event in events:
            entry = active.get(id(event.request))
            if entry is None:
                continue
            request, job = entry
            flags = event.flags
            if flags & og.EngineEventFlags.TOKEN:
                if job.first is None:
                    job.first = now
                job.last = now
                job.tokens += 1
            if flags & og.EngineEventFlags.FAILED:
                job.error = f"{event.error_code.name}"
            if flags & (og.EngineEventFlags.TURN_FINISHED | og.EngineEventFlags.FAILED):
                job.finish_reason = event.finish_reason.name
                if event.usage is not None:
                    job.completion_tokens = int(event.usage.generated_tokens)
                request.close()
                del active[id(request)]
                done += 1
    return started


def run_generator(og, model, jobs, concurrency, ignore_eos, pad_id, eos_ids):
    started = time.perf_counter()
    for b in range(0, len(jobs), concurrency):
        batch = jobs[b:b + concurrency]
        width = max(len(j.ids) for j in batch)
        steps = max(j.max_tokens for j in batch)
        ids = np.full((len(batch), width), pad_id, dtype=np.int32)
        for r, j in enumerate(batch):
            ids[r, :len(j.ids)] = j.ids  # right padding: what og.Tokenizer.encode_batch makes
        params = og.GeneratorParams(model)
        search = dict(do_sample=False, max_length=width + steps, batch_size=len(batch))
        if ignore_eos:
            search["min_length"] = width + steps
        params.set_search_options(**search)
        begun = time.perf_counter()
        for j in batch:
            j.begun = begun
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        step = 0
        ended = [False] * len(batch)
        while not generator.is_done() and step < steps:
            generator.generate_next_token()
            now = time.perf_counter()
            step += 1
            tokens = generator.get_next_tokens() if not ignore_eos else None
            for r, j in enumerate(batch):
                if ended[r]:
                    continue
                if tokens is not None and int(tokens[r]) in eos_ids:
                    ended[r] = True  # EOS is not counted as a completion token
                    continue
                if step <= j.max_tokens:
                    if j.first is None:
                        j.first = now
                    j.last = now
                    j.tokens = step
        for j in batch:
            j.completion_tokens = j.tokens
            j.finish_reason = "length" if j.tokens >= j.max_tokens else "eos"
        del generator
    return started


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", required=True, help="folder with genai_config.json")
    ap.add_argument("--jobs", required=True, help="JSONL: {\"prompt\", \"max_tokens\"} per line")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--count", type=int, help="jobs to run (default: every line once; more cycles)")
    ap.add_argument("--skip", type=int, default=0, help="first line to use (0-based)")
    ap.add_argument("--mode", choices=["engine-dynamic", "engine-static", "generator"], default="generator")
    ap.add_argument("--intra-threads", type=int, default=0,
                    help="ONNX Runtime intra-op threads of the decoder session (0: genai's default)")
    ap.add_argument("--respect-eos", action="store_true",
                    help="stop a job at EOS (default: ignore EOS, generate exactly max_tokens)")
    ap.add_argument("--no-bos", action="store_true", help="do not put <s> in front of the prompt ids")
    ap.add_argument("--idle-timeout-s", type=float, default=600.0)
    ap.add_argument("--per-job", action="store_true", help="every job's measurements in the report")
    ap.add_argument("--out", help="write the JSON report here too")
    args = ap.parse_args()

    import onnxruntime_genai as og

    concurrency = max(1, args.concurrency)
    ignore_eos = not args.respect_eos
    specs = read_jobs(args.jobs, args.count, args.skip)

    def config(extra=None):
        c = og.Config(str(args.model_dir))
        if args.intra_threads > 0:
            c.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": args.intra_threads}}}}))
        if extra:
            c.overlay(json.dumps(extra))
        return c

    base = og.Model(config())
    tokenizer = og.Tokenizer(base)
    bos = tokenizer.bos_token_id
    pad = tokenizer.pad_token_id
    jobs = []
    for i, s in enumerate(specs):
        ids = [int(t) for t in tokenizer.encode(s["prompt"])]
        if not args.no_bos and (not ids or ids[0] != bos):
            ids = [bos] + ids
        jobs.append(Job(i, ids, s["max_tokens"]))

    report = {
        "system": "onnxruntime-genai " + og.__version__,
        "mode": args.mode,
        "model": str(args.model_dir),
        "concurrency": concurrency,
        "jobs": len(jobs),
    }
    refused = None
    started = time.perf_counter()
    try:
        if args.mode == "generator":
            started = run_generator(og, base, jobs, concurrency, ignore_eos, pad,
                                    {int(t) for t in tokenizer.eos_token_ids})
        else:
            del base
            key = "dynamic_batching" if args.mode == "engine-dynamic" else "static_batching"
            cfg = config({"engine": {key: {"max_batch_size": concurrency}}})
            started = run_engine(og, cfg, jobs, concurrency, ignore_eos, args.idle_timeout_s)
    except Exception as e:  # noqa: BLE001 -- reported verbatim, never dropped
        refused = f"{type(e).__name__}: {e}"

    ttft, tpot, e2e = [], [], []
    errors, error_codes, finish = 0, {}, {}
    completed = unfinished = 0
    prompt_tokens = completion_tokens = 0
    per_job = []
    last = None
    for j in jobs:
        row = {"index": j.index, "max_tokens": j.max_tokens, "prompt_tokens": len(j.ids),
               "completion_tokens": j.completion_tokens, "pieces": j.tokens,
               "finish_reason": j.finish_reason, "ttft_ms": None, "tpot_ms": None, "e2e_ms": None,
               "error": j.error}
        if j.error:
            errors += 1
            error_codes[j.error] = error_codes.get(j.error, 0) + 1
        elif j.finish_reason is None or j.first is None:
            unfinished += 1
        else:
            completed += 1
            n = j.completion_tokens if j.completion_tokens is not None else j.tokens
            completion_tokens += n
            prompt_tokens += len(j.ids)
            finish[j.finish_reason] = finish.get(j.finish_reason, 0) + 1
            row["ttft_ms"] = (j.first - j.begun) * 1000
            row["e2e_ms"] = (j.last - j.begun) * 1000
            ttft.append(row["ttft_ms"])
            e2e.append(row["e2e_ms"])
            last = j.last if last is None else max(last, j.last)
            if n > 1:
                row["tpot_ms"] = (j.last - j.first) * 1000 / (n - 1)
                tpot.append(row["tpot_ms"])
        per_job.append(row)
    wall = (last - started) if last is not None else (time.perf_counter() - started)
    report.update({
        "completed": completed,
        "errors": errors,
        "error_codes": error_codes,
        "unfinished": unfinished,
        "total_prompt_tokens": prompt_tokens,
        "total_completion_tokens": completion_tokens,
        "max_tokens_asked": sum(j.max_tokens for j in jobs),
        "finish_reasons": finish,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(completion_tokens / wall, 2) if wall > 0 else 0.0,
        "ttft_ms": percentiles(ttft),
        "tpot_ms": percentiles(tpot),
        "e2e_ms": percentiles(e2e),
    })
    if refused:
        report["refused"] = refused
    if args.per_job:
        report["per_job"] = per_job
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(f"genai {args.mode} c={concurrency} jobs={len(jobs)} completed={completed} errors={errors} "
          f"tokens={completion_tokens} wall={wall:.2f}s {report['tokens_per_s']} tok/s "
          f"ttft p50/p99 {report['ttft_ms']['p50']:.1f}/{report['ttft_ms']['p99']:.1f} ms "
          f"tpot p50/p99 {report['tpot_ms']['p50']:.2f}/{report['tpot_ms']['p99']:.2f} ms"
          + (f" REFUSED: {refused}" if refused else ""), file=sys.stderr)
    # A refused mode is a result (recorded), not a failure of the script; errors are.
    sys.exit(1 if errors or (unfinished and not refused) else 0)


if __name__ == "__main__":
    main()
