#!/usr/bin/env python3
"""Writes the job file of the generation benchmarks (scripts/bench-generate.sh,
scripts/bench-gateway-generate.sh): TOTAL lines of JSON `{"prompt", "max_tokens"}`, each prompt
consecutive verses of models/encoder/genesis.txt cut to PROMPT_MIN..PROMPT_MAX tokens of the
model's tokenizer (<s> not counted), max_tokens MAXTOK_MIN..MAXTOK_MAX, from a fixed SEED.

    generation-jobs.py TOKENIZER_JSON OUT TOTAL SEED PROMPT_MIN PROMPT_MAX MAXTOK_MIN MAXTOK_MAX
"""
import json
import random
import sys

from tokenizers import Tokenizer

tok_path, out, total, seed, pmin, pmax, mmin, mmax = sys.argv[1:]
total, seed, pmin, pmax, mmin, mmax = map(int, (total, seed, pmin, pmax, mmin, mmax))
tok = Tokenizer.from_file(tok_path)
verses = [l.strip() for l in open("models/encoder/genesis.txt", encoding="ascii") if l.strip()]
rng = random.Random(seed)
with open(out, "w") as f:
    for _ in range(total):
        want = rng.randint(pmin, pmax)
        start = rng.randrange(len(verses))
        text, i = "", start
        while True:
            text = (text + " " + verses[i % len(verses)]).strip()
            ids = tok.encode(text, add_special_tokens=False).ids
            if len(ids) >= want:
                break
            i += 1
        prompt = tok.decode(ids[:want])
        f.write(json.dumps({"prompt": prompt, "max_tokens": rng.randint(mmin, mmax)}) + "\n")
