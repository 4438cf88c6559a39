#!/usr/bin/env python3
"""Closed-loop streaming load through an infermq gateway's OpenAI-compatible API, with the
`openai` package unchanged (AsyncOpenAI, base_url = the gateway + "/v1"): the HTTP twin of
tools' `generate-bench`, on the same JSONL jobs (`{"prompt": "...", "max_tokens": N}` a line),
measured the same way, and written as the same JSON report.

Each job is one request with `stream: true` and `stream_options: {"include_usage": true}`,
`temperature: 0` (generate-bench's default), to `/v1/completions` (the prompt as is) or
`/v1/chat/completions` (the prompt as one user message: the model's chat template adds its
own tokens). --concurrency requests are kept in flight by as many asyncio tasks sharing one
client (one HTTP connection pool). Per job: time to first token (request sent → first chunk
with text), time per output token ((last chunk − first chunk) / (completion_tokens − 1), the
last chunk being the one with the finish reason) and completion tokens (from the usage chunk).
tokens/s = completion tokens / (last chunk of the run − start).

The client's own CPU time during the load (`client_cpu_s`, process time of this Python
process: parsing every chunk into pydantic objects is not free) is in the report, so that its
share of a small machine can be set against the load generator's.

Usage: bench-gateway-openai.py --url http://127.0.0.1:8000 --model M --jobs jobs.jsonl
       [--concurrency C] [--count N] [--skip K] [--route completions|chat] [--out F] [--per-job]
Exit status 1 when any job did not finish cleanly.
"""
import argparse
import asyncio
import json
import math
import sys
import time

import openai


def percentiles(values):
    """Nearest rank, as generate-bench computes them."""
    v = sorted(values)

    def at(p):
        if not v:
            return 0.0
        rank = max(1, math.ceil(p / 100 * len(v)))
        return v[min(rank, len(v)) - 1]

    mean = sum(v) / len(v) if v else 0.0
    return {
        "p50": round(at(50), 3),
        "p90": round(at(90), 3),
        "p99": round(at(99), 3),
        "mean": round(mean, 3),
        "max": round(v[-1] if v else 0.0, 3),
    }


async def one(client, args, index, spec, started):
    """Runs one job; its measurements (times as seconds since `started`)."""
    job = {"index": index, "max_tokens": spec["max_tokens"], "prompt_tokens": None,
           "completion_tokens": None, "pieces": 0, "finish_reason": None, "ttft_ms": None,
           "tpot_ms": None, "e2e_ms": None, "error": None}
    common = dict(model=args.model, max_tokens=spec["max_tokens"], temperature=args.temperature,
                  stream=True, stream_options={"include_usage": True})
    sent = time.perf_counter()
    first = last = None
    try:
        if args.route == "chat":
            stream = await client.chat.completions.create(
                messages=[{"role": "user", "content": spec["prompt"]}], **common)
        else:
            stream = await client.completions.create(prompt=spec["prompt"], **common)
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                job["prompt_tokens"] = chunk.usage.prompt_tokens
                job["completion_tokens"] = chunk.usage.completion_tokens
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            text = choice.delta.content if args.route == "chat" else choice.text
            if text:
                job["pieces"] += 1
                first = first or now
                last = now
            if choice.finish_reason:
                job["finish_reason"] = choice.finish_reason
                last = now
    except openai.APIError as e:
        job["error"] = f"{type(e).__name__}: {e}"
        return job, None
    if job["finish_reason"] is None:
        job["error"] = "unfinished: the stream ended without a finish reason"
    elif job["completion_tokens"] is None:
        job["error"] = "no-usage: no chunk carried usage.completion_tokens"
    elif first is None:
        job["error"] = "no-text: no chunk carried text"
    if job["error"]:
        return job, None
    job["ttft_ms"] = (first - sent) * 1000
    job["e2e_ms"] = (last - sent) * 1000
    if job["completion_tokens"] > 1:
        job["tpot_ms"] = (last - first) * 1000 / (job["completion_tokens"] - 1)
    return job, last - started


async def run(args, specs):
    client = openai.AsyncOpenAI(base_url=args.url.rstrip("/") + "/v1", api_key="unused",
                                max_retries=0, timeout=args.timeout_s)
    queue = list(enumerate(specs))
    queue.reverse()
    jobs, ends = [], []
    cpu0 = time.process_time()
    started = time.perf_counter()

    async def loop():
        while queue:
            index, spec = queue.pop()
            job, end = await one(client, args, index, spec, started)
            jobs.append(job)
            if end is not None:
                ends.append(end)

    await asyncio.gather(*(loop() for _ in range(max(1, args.concurrency))))
    cpu = time.process_time() - cpu0
    wall = max(ends) if ends else time.perf_counter() - started
    await client.close()
    jobs.sort(key=lambda j: j["index"])
    return jobs, wall, cpu


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the gateway, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True)
    p.add_argument("--jobs", required=True, help="JSONL: {\"prompt\": ..., \"max_tokens\": N}")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--count", type=int, help="jobs to run (default: every line from --skip)")
    p.add_argument("--skip", type=int, default=0, help="first line of --jobs to use (0-based)")
    p.add_argument("--route", choices=["completions", "chat"], default="completions")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--timeout-s", type=float, default=600.0)
    p.add_argument("--out")
    p.add_argument("--per-job", action="store_true")
    p.add_argument("--system", default="gateway")
    p.add_argument("--mode", default="openai")
    args = p.parse_args()

    lines = [json.loads(l) for l in open(args.jobs) if l.strip()]
    count = args.count if args.count is not None else max(1, len(lines) - args.skip)
    specs = [lines[(args.skip + i) % len(lines)] for i in range(count)]
    jobs, wall, cpu = asyncio.run(run(args, specs))

    done = [j for j in jobs if j["error"] is None]
    errors = [j for j in jobs if j["error"] is not None]
    codes, reasons = {}, {}
    for j in errors:
        code = j["error"].split(":")[0]
        codes[code] = codes.get(code, 0) + 1
    for j in done:
        reasons[j["finish_reason"]] = reasons.get(j["finish_reason"], 0) + 1
    tokens = sum(j["completion_tokens"] for j in done)
    report = {
        "system": args.system,
        "mode": args.mode,
        "model": args.model,
        "route": "/v1/chat/completions" if args.route == "chat" else "/v1/completions",
        "concurrency": args.concurrency,
        "jobs": count,
        "completed": len(done),
        "errors": len(errors),
        "error_codes": codes,
        "unfinished": 0,
        "total_prompt_tokens": sum(j["prompt_tokens"] or 0 for j in done),
        "total_completion_tokens": tokens,
        "max_tokens_asked": sum(s["max_tokens"] for s in specs),
        "finish_reasons": reasons,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2) if wall > 0 else 0.0,
        "ttft_ms": percentiles([j["ttft_ms"] for j in done]),
        "tpot_ms": percentiles([j["tpot_ms"] for j in done if j["tpot_ms"] is not None]),
        "e2e_ms": percentiles([j["e2e_ms"] for j in done]),
        "client_cpu_s": round(cpu, 3),
    }
    if args.per_job:
        report["per_job"] = jobs
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    t, q = report["ttft_ms"], report["tpot_ms"]
    print(f"bench-gateway-openai {args.model} {report['route']} c={args.concurrency} jobs={count} "
          f"completed={len(done)} errors={len(errors)} tokens={tokens} wall={wall:.2f}s "
          f"{report['tokens_per_s']:.1f} tok/s ttft p50/p99 {t['p50']:.1f}/{t['p99']:.1f} ms "
          f"tpot p50/p99 {q['p50']:.2f}/{q['p99']:.2f} ms client cpu {cpu:.2f}s", file=sys.stderr)
    for j in errors[:5]:
        print(f"job {j['index']}: {j['error']}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
