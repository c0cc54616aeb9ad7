#!/usr/bin/env python3
"""Benchmark (not a test): `lf-trainer serve` under 1, 4 and 16 concurrent streams against
transformers' `generate` on the same model, run sequentially and batched, on the CPU.

Builds a small random Llama with tests/reference/trainer_make_tiny.py (word-level tokenizer), starts
`lf-trainer serve` on it, and for each concurrency level sends that many greedy streamed
`/v1/completions` at once (each a different prompt, `max_tokens` new tokens, no stop): aggregate
generated tokens/s over the wall time of the level, and the median time to first token. Then the same
prompts through transformers: `generate` one prompt at a time (sequential) and all of a level's
prompts in one left-padded batch (batched), greedy, the same number of new tokens. Prints one table;
every row is measured in this run.

Usage: scripts/bench_serve.py [--layers 8 --hidden 512 --max-tokens 64 --levels 1,4,16 --threads 2]
       [--trainer PATH] [--python PATH]
The lf-trainer binary defaults to $CARGO_TARGET_DIR (or target)/release/lf-trainer, then debug. The
reference runs in the Python reference stack (.venv), which also builds the model.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_trainer import find_trainer  # noqa: E402  (the same binary lookup)
PROMPTS = [
    "tell me about the cat", "what is the opposite of hot", "write a story about the moon",
    "the dog runs near the river", "why is the sky blue", "give me a word for happy",
    "the old tree grows very slow", "where does the bird sit", "what is the colour of the sun",
    "tell me about the big fish", "the red stone falls down", "how does the river flow",
    "write about the small star", "which cat jumps over the dog", "the new day is light",
    "answer the question about night",
]

REFERENCE = r'''
import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model_dir, levels, max_new, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
prompts = json.loads(sys.stdin.read())
torch.set_num_threads(threads)
tok = AutoTokenizer.from_pretrained(model_dir)
tok.padding_side = "left"
if tok.pad_token is None:
    tok.pad_token = tok.eos_token or tok.unk_token
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
kw = dict(max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
out = {}
with torch.no_grad():
    for n in levels:
        ps = prompts[:n]
        t = time.perf_counter()
        for p in ps:
            ids = tok(p, return_tensors="pt")
            model.generate(**ids, **kw)
        seq = time.perf_counter() - t
        t = time.perf_counter()
        batch = tok(ps, return_tensors="pt", padding=True)
        model.generate(**batch, **kw)
        bat = time.perf_counter() - t
        out[n] = {"sequential_tps": n * max_new / seq, "batched_tps": n * max_new / bat}
print(json.dumps(out))
'''


def stream(base, model, prompt, max_tokens, result):
    """One streamed greedy completion: (time to first token, tokens, seconds)."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(base + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    first, tokens, chunks = None, None, 0
    with urllib.request.urlopen(req, timeout=600) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    # The usage chunk counts the tokens; without it, one text chunk per token.
    result.append((first, tokens if tokens is not None else chunks, time.perf_counter() - start))


def wait_ready(base, proc):
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"lf-trainer serve exited {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                if json.loads(r.read())["model_loaded"]:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit("lf-trainer serve did not become ready")


def served_model(base):
    with urllib.request.urlopen(base + "/v1/models", timeout=30) as r:
        return json.loads(r.read())["data"][0]["id"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trainer")
    ap.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if max(levels) > len(PROMPTS):
        sys.exit(f"at most {len(PROMPTS)} concurrent streams")
    trainer = find_trainer(args.trainer)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory() as work:
        made = subprocess.run([args.python, os.path.join(ROOT, "tests/reference/trainer_make_tiny.py"), work,
                               "--layers", str(args.layers), "--hidden", str(args.hidden), "--seq", "256"],
                              check=True, capture_output=True, text=True, env=env)
        model_dir = json.loads(made.stdout.strip().splitlines()[-1])["model"]
        config = os.path.join(work, "serve.yaml")
        with open(config, "w") as f:
            f.write(f"model_name_or_path: {model_dir}\ntemplate: empty\n")
        port = 18000 + os.getpid() % 1000
        base = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([trainer, "serve", config, "--port", str(port), "--max-running", str(max(levels))],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(base, proc)
            model = served_model(base)
            ours = {}
            for n in levels:
                results, threads = [], []
                start = time.perf_counter()
                for p in PROMPTS[:n]:
                    t = threading.Thread(target=stream, args=(base, model, p, args.max_tokens, results))
                    t.start()
                    threads.append(t)
                for t in threads:
                    t.join()
                wall = time.perf_counter() - start
                tokens = sum(r[1] for r in results)
                ttft = statistics.median(r[0] for r in results if r[0] is not None)
                ours[n] = {"tps": tokens / wall, "ttft": ttft, "tokens": tokens}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        ref = subprocess.run([args.python, "-c", REFERENCE, model_dir, json.dumps(levels), str(args.max_tokens),
                              str(args.threads)], input=json.dumps(PROMPTS), check=True, capture_output=True,
                             text=True, env=env)
        hf = {int(k): v for k, v in json.loads(ref.stdout.strip().splitlines()[-1]).items()}
    print(f"model: llama {args.layers} layers, hidden {args.hidden}; greedy, {args.max_tokens} new tokens per stream; "
          f"{args.threads} threads")
    print(f"{'streams':>7} {'lf serve tok/s':>15} {'TTFT s':>8} {'HF sequential':>14} {'HF batched':>11} "
          f"{'vs seq':>7} {'vs batched':>10}")
    for n in levels:
        o, h = ours[n], hf[n]
        print(f"{n:>7} {o['tps']:>15.1f} {o['ttft']:>8.3f} {h['sequential_tps']:>14.1f} {h['batched_tps']:>11.1f} "
              f"{o['tps'] / h['sequential_tps']:>7.2f} {o['tps'] / h['batched_tps']:>10.2f}")


if __name__ == "__main__":
    main()
