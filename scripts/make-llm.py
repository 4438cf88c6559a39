#!/usr/bin/env python3
"""Make `storyteller`, the toy generative model (a tiny Llama decoder) that infermq bundles and tests.

What it makes, from `models/encoder/genesis.txt` (King James Genesis, public domain):

- a byte-level BPE tokenizer (vocab 512; `<pad>`=0, `<s>`=1, `</s>`=2; encode with special tokens
  gives `<s>` + tokens), trained with the `tokenizers` package;
- a transformers `LlamaForCausalLM` (2 layers, hidden 64, 4 heads, 2 KV heads, head size 16,
  tied embeddings, 256 positions), trained briefly on CPU on packed verses, each `<s> verse </s>`,
  so that it continues Genesis-like text and ends a verse with EOS; the Hugging Face folder goes
  to `target/llm/hf` (not committed);
- `models/storyteller/1/`: the PLAIN layout (what torch.onnx.export / optimum produce): one
  `model.onnx` (fp32, weights inside) with inputs `input_ids`, `attention_mask`, `position_ids`,
  `past_key_values.{i}.key|value` and outputs `logits`, `present.{i}.key|value`, plus the
  tokenizer and config files, and `models/storyteller/README.md`;
- `tests/llm/genai/`: the same weights exported by onnxruntime-genai's model builder (fp32, cpu;
  GroupQueryAttention), with its `genai_config.json` and tokenizer files;
- `tests/llm/reference.json`: greedy continuations from transformers `generate` for a few prompts.

Then it CHECKS that ONNX Runtime reproduces every reference continuation with the plain model
(one job at a time, and all prompts as one left-padded batch) and that onnxruntime-genai's greedy
`Generator` reproduces them with the genai model. It exits non-zero if a check fails.

`--bench OUTDIR` makes a bigger model by the same recipe (same tokenizer; 4 layers, hidden 256,
8 heads, 4 KV heads, 1024 positions, briefly trained) for benchmarks, in both layouts under
OUTDIR/plain and OUTDIR/genai (and OUTDIR/hf, OUTDIR/reference.json), and runs the same checks.
Nothing in the repository is written in that mode.

Run (from the repository root; no network needed; on 2 cores the default takes 3.5 min, --bench
about 15 min with a Rust build beside it, most of it training):

    python3 -m venv /tmp/llmvenv
    /tmp/llmvenv/bin/pip install torch==2.15.0 transformers==5.25.0 tokenizers==0.23.3 \\
        onnx==1.23.2 onnxruntime==1.31.1 onnxruntime-genai==0.18.0 onnxscript==0.7.2 numpy==2.4.6
    /tmp/llmvenv/bin/python scripts/make-llm.py                          # the committed files
    /tmp/llmvenv/bin/python scripts/make-llm.py --bench target/llm-bench # the benchmark model

It was run with Python 3.11.7 and these PyPI versions: torch 2.15.0 (the default PyPI wheel, run
on CPU), transformers 5.25.0, tokenizers 0.23.3, safetensors 0.8.0, onnx 1.23.2, onnxruntime
1.31.1, onnxruntime-genai 0.18.0, onnxscript 0.7.2, numpy 2.4.6.

Determinism: fixed seeds, the tokenizer trainer on one thread, torch on 2 threads with
deterministic algorithms; a second run on the same machine gives byte-identical files.
"""

import os

# Before tokenizers/torch are imported: a single-threaded, deterministic tokenizer trainer.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse
import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GENESIS = ROOT / "models" / "encoder" / "genesis.txt"

VOCAB = 512
PAD, BOS, EOS = 0, 1, 2
SEQ = 128

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

SMALL = dict(
    hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256,
    steps=2000, batch=32, lr=3e-3,
)
BENCH = dict(
    hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
    num_key_value_heads=4, max_position_embeddings=1024,
    steps=300, batch=16, lr=2e-3,
)


def versions():
    import onnx
    import onnxruntime
    import tokenizers
    import torch
    import transformers
    out = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    try:
        import onnxruntime_genai
        out["onnxruntime-genai"] = onnxruntime_genai.__version__
    except ImportError:
        pass
    return out


def verses():
    return [line.rstrip("\n") for line in GENESIS.read_text(encoding="ascii").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# Tokenizer


def make_tokenizer(out: Path, max_len: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=2,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(verses(), trainer=trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    assert [tok.token_to_id(t) for t in ("<pad>", "<s>", "</s>")] == [PAD, BOS, EOS]
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)]
    )
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
        "padding_side": "left",
        "chat_template": CHAT_TEMPLATE,
    })
    write_json(out / "special_tokens_map.json", {
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
    })


def write_json(path: Path, obj):
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    # lists of numbers (token ids) on one line each
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text)
    path.write_text(text + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Model


def train_model(hf: Path, spec: dict, seed: int):
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)

    tokenizer = AutoTokenizer.from_pretrained(hf)
    stream = []
    starts = []
    for v in verses():
        starts.append(len(stream))
        stream.extend(tokenizer(v)["input_ids"] + [EOS])  # <s> verse </s>
    stream = torch.tensor(stream, dtype=torch.long)
    starts = np.array([s for s in starts if s + SEQ + 1 <= len(stream)])
    print(f"corpus: {len(starts)} verse starts, {len(stream)} tokens", flush=True)

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"],
        max_position_embeddings=spec["max_position_embeddings"],
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params} parameters", flush=True)

    steps, batch, lr = spec["steps"], spec["batch"], spec["lr"]
    warmup = max(1, steps // 20)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / warmup if s < warmup else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))),
    )
    rng = np.random.default_rng(seed)
    model.train()
    t0 = time.time()
    losses = []
    for step in range(1, steps + 1):
        idx = rng.choice(starts, size=batch)
        x = torch.stack([stream[i:i + SEQ + 1] for i in idx])
        out = model(input_ids=x[:, :-1], labels=x[:, :-1].clone())
        # labels are shifted inside the model: predicts token t+1 from tokens <= t
        loss = out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps:
            print(f"step {step:5d}  loss {np.mean(losses[-100:]):.4f}  {time.time() - t0:6.1f}s", flush=True)
    train_time = time.time() - t0
    model.eval()

    model.generation_config = GenerationConfig(
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        max_length=spec["max_position_embeddings"], do_sample=False,
    )
    model.save_pretrained(hf)
    final_loss = float(np.mean(losses[-100:]))
    return model, {"steps": steps, "batch": batch, "seq": SEQ, "final_loss": round(final_loss, 4),
                   "train_seconds": round(train_time, 1), "parameters": params}


# ---------------------------------------------------------------------------------------------
# Plain ONNX export


def export_plain(model, out: Path):
    import torch
    from transformers import DynamicCache

    cfg = model.config
    n_layers = cfg.num_hidden_layers
    kv_heads = cfg.num_key_value_heads
    head = cfg.hidden_size // cfg.num_attention_heads

    import inspect
    # transformers 5.x renamed forward's `past_key_values` to `cache` (the old name is deprecated)
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(config=self.m.config)
            for i, layer in enumerate(cache.layers):
                # Set the past directly (DynamicLayer.update would concatenate it onto an empty 1-D
                # tensor, a constant in the trace); the model's own update appends the new tokens.
                layer.device = past[2 * i].device
                layer.keys, layer.values = past[2 * i], past[2 * i + 1]
                layer.is_initialized = True
            seq = input_ids.shape[1]
            total = attention_mask.shape[1]
            q_pos = torch.arange(seq, dtype=torch.long) + (total - seq)
            k_pos = torch.arange(total, dtype=torch.long)
            allowed = (k_pos[None, :] <= q_pos[:, None])[None, None, :, :] & (attention_mask[:, None, None, :] > 0)
            bias = torch.where(allowed, torch.tensor(0.0), torch.tensor(-1e9))  # [b, 1, seq, total]
            out = self.m(input_ids=input_ids, attention_mask=bias, position_ids=position_ids,
                         use_cache=True, **{cache_arg: cache})
            presents = []
            for layer in out.past_key_values.layers:
                presents += [layer.keys, layer.values]
            return (out.logits, *presents)

    wrapper = Wrapper(model).eval()
    b, past_len, seq = 2, 3, 4
    input_ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]], dtype=torch.long)
    attention_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.long)
    position_ids = torch.tensor([[1, 2, 3, 4], [3, 4, 5, 6]], dtype=torch.long)
    past = []
    g = torch.Generator().manual_seed(0)
    for _ in range(n_layers):
        past += [torch.randn(b, kv_heads, past_len, head, generator=g), torch.randn(b, kv_heads, past_len, head, generator=g)]
    input_names = ["input_ids", "attention_mask", "position_ids"]
    output_names = ["logits"]
    dynamic_axes = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "logits": {0: "batch_size", 1: "sequence_length"},
    }
    for i in range(n_layers):
        for kind in ("key", "value"):
            input_names.append(f"past_key_values.{i}.{kind}")
            output_names.append(f"present.{i}.{kind}")
            dynamic_axes[f"past_key_values.{i}.{kind}"] = {0: "batch_size", 2: "past_sequence_length"}
            dynamic_axes[f"present.{i}.{kind}"] = {0: "batch_size", 2: "total_sequence_length"}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(
            wrapper, (input_ids, attention_mask, position_ids, *past), str(path),
            input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
            opset_version=17, do_constant_folding=True, dynamo=False,
        )
    import onnx
    m = onnx.load(str(path))
    m.producer_name = "infermq scripts/make-llm.py (torch.onnx.export)"
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def io_summary(path: Path):
    import onnx
    m = onnx.load(str(path), load_external_data=False)

    def dims(v):
        return [d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim]

    def dtype(v):
        return onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)

    lines = []
    for kind, vals in (("in", m.graph.input), ("out", m.graph.output)):
        for v in vals:
            lines.append(f"  {kind:3s} {v.name} {dtype(v)} {dims(v)}")
    ops = sorted({(n.domain or "ai.onnx") + ":" + n.op_type for n in m.graph.node})
    lines.append("  ops: " + ", ".join(ops))
    lines.append("  opsets: " + ", ".join(f"{o.domain or 'ai.onnx'}={o.version}" for o in m.opset_import))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# genai export


def export_genai(hf: Path, out: Path, cache: Path):
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
           "-p", "fp32", "-e", "cpu", "-c", str(cache)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})


# ---------------------------------------------------------------------------------------------
# References


def pick_prompts(tokenizer, bench: bool):
    """Prompts of varied lengths; the long one is a verse cut at a word boundary to ~60 tokens."""
    long_prompt = None
    for v in verses():
        if len(tokenizer(v)["input_ids"]) >= 80:
            words = v.split(" ")
            for n in range(len(words), 0, -1):
                cand = " ".join(words[:n])
                if len(tokenizer(cand)["input_ids"]) <= 60:
                    long_prompt = cand
                    break
            break
    prompts = [
        ("In the beginning", 40),
        ("And God said", 40),
        ("And", 40),
        (long_prompt, 40),
        ("Caf\u00e9 \u2014 na\u00efve \u65e5\u672c", 40),
        ("And Abraham", 200),
        ("And the LORD said unto Moses", 60),
        ("These are the generations of", 40),
    ]
    return prompts


def make_references(model, tokenizer, prompts):
    import torch
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()  # generation_config.max_length and max_new_tokens both set
    cases = []
    for prompt, max_tokens in prompts:
        ids = tokenizer(prompt)["input_ids"]
        assert ids[0] == BOS
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=False, max_new_tokens=max_tokens)
        gen = out[0, len(ids):].tolist()
        finish = "eos" if gen and gen[-1] == EOS else "length"
        assert finish == "eos" or len(gen) == max_tokens
        cases.append({
            "prompt": prompt,
            "prompt_ids": ids,
            "max_tokens": max_tokens,
            "output_ids": gen,
            "text": tokenizer.decode(gen, skip_special_tokens=True),
            "finish_reason": finish,
        })
    return cases


# ---------------------------------------------------------------------------------------------
# Checks


def ort_session(path: Path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def kv_shape(sess):
    for i in sess.get_inputs():
        if i.name == "past_key_values.0.key":
            return i.shape[1], i.shape[3]
    raise RuntimeError("no past_key_values.0.key input")


def n_layers_of(sess):
    return sum(1 for i in sess.get_inputs() if i.name.endswith(".key"))


def run_step(sess, input_ids, mask, pos, past):
    feeds = {"input_ids": input_ids, "attention_mask": mask, "position_ids": pos}
    for i, (k, v) in enumerate(past):
        feeds[f"past_key_values.{i}.key"] = k
        feeds[f"past_key_values.{i}.value"] = v
    outs = sess.run(None, feeds)
    logits = outs[0]
    presents = [(outs[1 + 2 * i], outs[2 + 2 * i]) for i in range(len(past))]
    return logits, presents


def check_single(sess, cases):
    """One job at a time: prefill with an empty past, then one token at a time."""
    kvh, hs = kv_shape(sess)
    layers = n_layers_of(sess)
    ok = True
    all_logits = []
    for c in cases:
        ids = np.array([c["prompt_ids"]], dtype=np.int64)
        past = [(np.zeros((1, kvh, 0, hs), np.float32), np.zeros((1, kvh, 0, hs), np.float32)) for _ in range(layers)]
        mask = np.ones((1, ids.shape[1]), np.int64)
        pos = np.arange(ids.shape[1], dtype=np.int64)[None]
        got, step_logits = [], []
        for _ in range(c["max_tokens"]):
            logits, past = run_step(sess, ids, mask, pos, past)
            last = logits[0, -1]
            step_logits.append(last)
            t = int(np.argmax(last))
            got.append(t)
            if t == EOS:
                break
            ids = np.array([[t]], np.int64)
            pos = np.array([[mask.shape[1]]], np.int64)
            mask = np.ones((1, mask.shape[1] + 1), np.int64)
        all_logits.append(step_logits)
        if got != c["output_ids"]:
            ok = False
            print(f"  single MISMATCH {c['prompt']!r}: first diff at {first_diff(got, c['output_ids'])}")
    print(f"check single-job ORT greedy == transformers generate: {'OK' if ok else 'FAILED'} ({len(cases)} prompts)")
    return ok, all_logits


def check_batched(sess, cases, single_logits):
    """All prompts as one left-padded batch."""
    kvh, hs = kv_shape(sess)
    layers = n_layers_of(sess)
    b = len(cases)
    width = max(len(c["prompt_ids"]) for c in cases)
    ids = np.full((b, width), PAD, np.int64)
    mask = np.zeros((b, width), np.int64)
    for r, c in enumerate(cases):
        n = len(c["prompt_ids"])
        ids[r, width - n:] = c["prompt_ids"]
        mask[r, width - n:] = 1
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    past = [(np.zeros((b, kvh, 0, hs), np.float32), np.zeros((b, kvh, 0, hs), np.float32)) for _ in range(layers)]
    steps = max(len(c["output_ids"]) for c in cases)
    got = [[] for _ in cases]
    max_diff = 0.0
    for step in range(steps):
        logits, past = run_step(sess, ids, mask, pos, past)
        last = logits[:, -1]
        nxt = last.argmax(axis=1)
        for r, c in enumerate(cases):
            if step < len(c["output_ids"]):
                got[r].append(int(nxt[r]))
                max_diff = max(max_diff, float(np.abs(last[r] - single_logits[r][step]).max()))
        ids = nxt[:, None].astype(np.int64)
        pos = pos[:, -1:] + 1
        mask = np.concatenate([mask, np.ones((b, 1), np.int64)], axis=1)
    ok = True
    for r, c in enumerate(cases):
        if got[r] != c["output_ids"]:
            ok = False
            print(f"  batched MISMATCH row {r} {c['prompt']!r}: first diff at {first_diff(got[r], c['output_ids'])}")
    print(f"check left-padded batch of {b} (width {width}) == single jobs: {'OK' if ok else 'FAILED'}; "
          f"max |logits batched - single| = {max_diff:.3g}")
    return ok, max_diff


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b)) if len(a) != len(b) else None


def check_genai(genai_dir: Path, cases, single_logits):
    import onnxruntime_genai as og
    model = og.Model(str(genai_dir))
    tok = og.Tokenizer(model)
    ok = True
    tok_ok = True
    for r, c in enumerate(cases):
        # og.Tokenizer ignores tokenizer.json's TemplateProcessing: it gives the ids without `<s>`
        enc = [int(t) for t in tok.encode(c["prompt"])]
        if enc != c["prompt_ids"][1:]:
            tok_ok = False
            print(f"  genai tokenizer differs on {c['prompt']!r}: {enc} vs {c['prompt_ids'][1:]}")
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(c["prompt_ids"]) + c["max_tokens"], batch_size=1)
        gen = og.Generator(model, params)
        gen.append_tokens(np.array(c["prompt_ids"], dtype=np.int32))
        got = []
        margin = None
        while not gen.is_done():
            gen.generate_next_token()
            t = int(gen.get_next_tokens()[0])
            step = len(got)
            got.append(t)
            if step < len(c["output_ids"]) and t != c["output_ids"][step] and margin is None:
                lg = np.array(gen.get_logits()).reshape(-1)
                ref = single_logits[r][step]
                margin = (step, float(lg[t] - lg[c["output_ids"][step]]),
                          float(ref[c["output_ids"][step]] - ref[t]))
        if got != c["output_ids"]:
            ok = False
            print(f"  genai MISMATCH {c['prompt']!r}: first diff at {first_diff(got, c['output_ids'])}; "
                  f"(step, genai margin, plain margin) = {margin}; got {got[:12]}... want {c['output_ids'][:12]}...")
    print(f"check onnxruntime-genai greedy Generator == transformers generate: {'OK' if ok else 'FAILED'} "
          f"({len(cases)} prompts); og.Tokenizer.encode == HF ids less the leading <s>: {'OK' if tok_ok else 'DIFFERS'}")
    return ok


# ---------------------------------------------------------------------------------------------


def sha(path: Path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sizes(folder: Path):
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", metavar="OUTDIR", help="make the bigger benchmark model under OUTDIR instead")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--steps", type=int, help="training steps (default: 2000, or 300 with --bench)")
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    if args.bench:
        spec = dict(BENCH)
        work = Path(args.bench).resolve()
        hf = work / "hf"
        plain = work / "plain"
        genai = work / "genai"
        ref_path = work / "reference.json"
    else:
        spec = dict(SMALL)
        work = ROOT / "target" / "llm"
        hf = work / "hf"
        plain = ROOT / "models" / "storyteller" / "1"
        genai = ROOT / "tests" / "llm" / "genai"
        ref_path = ROOT / "tests" / "llm" / "reference.json"
    if args.steps:
        spec["steps"] = args.steps
    if hf.exists():
        shutil.rmtree(hf)
    hf.mkdir(parents=True)

    make_tokenizer(hf, spec["max_position_embeddings"])
    tokenizer = AutoTokenizer.from_pretrained(hf)
    assert tokenizer("In the beginning")["input_ids"][0] == BOS
    model, stats = train_model(hf, spec, args.seed)

    # Reload what was saved, so the references come from the files that were exported.
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(hf, attn_implementation="eager").eval()

    cases = make_references(model, tokenizer, pick_prompts(tokenizer, args.bench))
    for c in cases:
        print(f"  {c['prompt']!r} -> {c['text']!r} [{c['finish_reason']}, {len(c['output_ids'])} tokens]")

    if plain.exists():
        shutil.rmtree(plain)
    export_plain(model, plain)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json",
                 "generation_config.json"):
        shutil.copyfile(hf / name, plain / name)
    print("plain model.onnx:\n" + io_summary(plain / "model.onnx"))

    export_genai(hf, genai, work / "genai-cache")
    print("genai model.onnx:\n" + io_summary(genai / "model.onnx"))

    ver = versions()
    ref = {
        "model": ("storyteller (benchmark size)" if args.bench else "storyteller")
        + f": LlamaForCausalLM, {spec['num_hidden_layers']} layers, hidden {spec['hidden_size']}, "
        f"{spec['num_attention_heads']} heads, {spec['num_key_value_heads']} KV heads, vocab {VOCAB}, "
        f"{stats['parameters']} parameters, trained {stats['steps']} steps on Genesis (KJV)",
        "made_by": "scripts/make-llm.py: greedy transformers generate (do_sample=False), fp32, eager attention; "
        + ", ".join(f"{k} {v}" for k, v in ver.items()),
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "cases": cases,
    }
    ref_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(ref_path, ref)

    sess = ort_session(plain / "model.onnx")
    ok1, single_logits = check_single(sess, cases)
    ok2, max_diff = check_batched(sess, cases, single_logits)
    ok3 = check_genai(genai, cases, single_logits)

    if not args.bench:
        write_readme(plain.parent / "README.md", spec, stats, plain)

    print(json.dumps(stats))
    for folder in (plain, genai):
        print(folder, json.dumps(sizes(folder)))
    print("sha256 plain model.onnx", sha(plain / "model.onnx"))
    print("sha256 hf model.safetensors", sha(hf / "model.safetensors"))
    if not (ok1 and ok2 and ok3):
        sys.exit(1)


def write_readme(path: Path, spec, stats, plain: Path):
    size = (plain / "model.onnx").stat().st_size
    kv = spec["num_key_value_heads"]
    hs = spec["hidden_size"] // spec["num_attention_heads"]
    text = f"""# `storyteller`: a toy generative model

A tiny decoder-only language model (Llama architecture) for tests of text generation: it
continues Genesis-like text ("In the beginning", "And God said") and ends a verse with `</s>`.
It is a toy: {spec['num_hidden_layers']} layers, hidden size {spec['hidden_size']}, {spec['num_attention_heads']} attention heads,
{kv} key/value heads of size {hs}, feed-forward {spec['intermediate_size']}, {spec['max_position_embeddings']} positions, vocabulary {VOCAB}, tied
embeddings: {stats['parameters']:,} parameters. It was trained {stats['steps']} steps (batches of {stats['batch']} x {stats['seq']} tokens
of packed verses, AdamW) on `../encoder/genesis.txt`, to a training loss of {stats['final_loss']}.

`1/model.onnx` ({size:,} bytes, fp32, weights inside, opset 17; the tied embedding is stored twice,
as the Gather table and as the transposed lm_head MatMul weight) is exported with
`torch.onnx.export` (TorchScript exporter, eager attention, the causal and padding mask built
from `attention_mask` inside the graph) in the plain layout that optimum and transformers.js use:

| name | type | shape |
| --- | --- | --- |
| `input_ids` | INT64 | `[batch_size, sequence_length]` |
| `attention_mask` | INT64 | `[batch_size, total_sequence_length]` (past + new; 0 for left padding) |
| `position_ids` | INT64 | `[batch_size, sequence_length]` |
| `past_key_values.{{i}}.key`, `.value` (i = 0..{spec['num_hidden_layers'] - 1}) | FP32 | `[batch_size, {kv}, past_sequence_length, {hs}]` (empty, past 0, on the first call) |
| `logits` (output) | FP32 | `[batch_size, sequence_length, {VOCAB}]` |
| `present.{{i}}.key`, `.value` (outputs) | FP32 | `[batch_size, {kv}, total_sequence_length, {hs}]` |

Beside it: `tokenizer.json` (byte-level BPE trained on the same text; `<pad>` = 0, `<s>` = 1,
`</s>` = 2; encoding adds `<s>` in front), `tokenizer_config.json` (with a small `chat_template`:
one `role: content` line per message, then `assistant:`), `special_tokens_map.json`, and the
Hugging Face `config.json` and `generation_config.json` (eos 2).

The same weights in onnxruntime-genai's layout (GroupQueryAttention) are in `tests/llm/genai/`,
and greedy reference continuations in `tests/llm/reference.json`.

## How it was made

`python3 scripts/make-llm.py` (in a venv with the versions its docstring lists) trains the
tokenizer and the model with fixed seeds, writes this folder, `tests/llm/genai/` and
`tests/llm/reference.json`, and checks that ONNX Runtime (one job, and a left-padded batch) and
onnxruntime-genai reproduce the references token for token.

## Licence

The training text is the King James Version of Genesis, public domain (see
`../encoder/README.md`). The model and tokenizer are derived from it and made by this project.
"""
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
