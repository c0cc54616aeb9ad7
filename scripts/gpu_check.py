#!/usr/bin/env python3
"""The Python side of scripts/gpu-check.sh (read that script's header first).

Runs with the device image's interpreter (/opt/torch/.venv/bin/python3: torch 2.11.0+cu130,
transformers, peft, safetensors; `tokenizers` comes with transformers) or, for `--dry-run`, this
repository's .venv. Nothing here downloads anything.

  gpu_check.py env                         versions, GPU, and the SDPA kernel libtorch picks at our shapes
  gpu_check.py prepare WORK --mode M       models, data and lf-trainer configs for every step (M: device|dry)
  gpu_check.py hf-train WORK               transformers+PEFT on the benchmark model (one JSON line)
  gpu_check.py report STEP WORK [--sampler FILE ...]   the step's table (markdown) and JSON rows

Shapes. Benchmark: Llama-3-8B's (32 layers, hidden 4096, MLP 14336, 32 heads / 8 KV heads, vocab
128256, untied head) with random weights in bf16, LoRA r=16 on all linears, sequence 2048, micro-batch
1. Planner table: Llama-3.2-1B's (16 layers, hidden 2048, MLP 8192, 32/8 heads, vocab 128256, tied
embeddings), which fits LoRA, QLoRA and full fine-tuning on one 80 GB GPU. The dry run uses small
shapes with the same code paths.
"""
import argparse
import json
import math
import os
import random
import sys
import time

SHAPES = {
    # name: (layers, hidden, intermediate, heads, kv_heads, vocab, tie)
    "llama3-8b": (32, 4096, 14336, 32, 8, 128256, False),
    "llama3.2-1b": (16, 2048, 8192, 32, 8, 128256, True),
    "tiny": (2, 64, 160, 4, 2, 0, False),          # vocab 0: the tokenizer's
    "dry-bench": (4, 256, 640, 4, 2, 0, False),
    "dry-plan": (2, 128, 320, 4, 2, 0, True),
}
# Dense bf16 peak (NVIDIA datasheets, no sparsity), for MFU.
PEAK_BF16 = [("H200", 989.4e12), ("H100 PCIe", 756.0e12), ("H100 NVL", 835.0e12), ("H100", 989.4e12),
             ("A100", 312.0e12)]
WORDS = 4000          # word-level vocabulary of the synthetic tokenizer (plus specials and template words)
SYSTEM = ("Below is an instruction that describes a task. Write a response that appropriately completes "
          "the request.\n\n")


def gib(x):
    return "n/a" if x is None else f"{x / 2**30:.3f}"


# ---------------------------------------------------------------------------------------------- env

def cmd_env(args):
    import torch
    import transformers
    import peft
    import safetensors
    cuda = torch.cuda.is_available()
    info = {
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
        "transformers": transformers.__version__, "peft": peft.__version__, "safetensors": safetensors.__version__,
        "python": sys.version.split()[0], "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
        "sms": torch.cuda.get_device_properties(0).multi_processor_count if cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "torch_lib": os.path.join(os.path.dirname(torch.__file__), "lib"),
    }
    print("| item | value |\n|---|---|")
    for k, v in info.items():
        print(f"| {k} | {v} |")
    # The kernel SDPA picks (torch._fused_sdp_choice, the call lf-trainer makes through tch) for
    # causal attention with GQA (enable_gqa, as lf-trainer calls it), at our models' head shapes.
    names = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}
    dev = "cuda" if cuda else "cpu"
    rows = []
    for model in ("llama3-8b", "llama3.2-1b", "tiny"):
        L, h, _, heads, kv, _, _ = SHAPES[model]
        d = h // heads
        for seq in (512, 2048):
            for dt in ("bfloat16", "float16"):
                dtype = getattr(torch, dt)
                q = torch.zeros(1, heads, seq, d, dtype=dtype, device=dev, requires_grad=True)
                k = torch.zeros(1, kv, seq, d, dtype=dtype, device=dev, requires_grad=True)
                try:
                    choice = names.get(torch._fused_sdp_choice(q, k, k, is_causal=True, enable_gqa=True), "?")
                except Exception as e:  # noqa: BLE001 - reported, not hidden
                    choice = f"error: {e}"[:60]
                # And whether the flash kernel runs at all for this shape (forward + backward).
                ok = "n/a (cpu)"
                if cuda:
                    from torch.nn.attention import SDPBackend, sdpa_kernel
                    try:
                        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                            torch.nn.functional.scaled_dot_product_attention(
                                q, k, k, is_causal=True, enable_gqa=True).sum().backward()
                        ok = "yes"
                    except Exception as e:  # noqa: BLE001
                        ok = f"no: {str(e).splitlines()[0][:70]}"
                rows.append({"model": model, "heads": f"{heads}/{kv}", "head_dim": d, "seq": seq, "dtype": dt,
                             "chosen": choice, "flash_runs": ok})
                del q, k
    print("\nSDPA kernel chosen (causal, enable_gqa=True, requires_grad) at our shapes:\n")
    print("| model | heads/kv | head_dim | seq | dtype | chosen | flash forced runs |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['heads']} | {r['head_dim']} | {r['seq']} | {r['dtype']} | {r['chosen']} | {r['flash_runs']} |")
    print("JSON " + json.dumps({"step": "env", "info": info, "sdpa": rows}))


# ------------------------------------------------------------------------------------------ prepare

def make_tokenizer(out):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for w in SYSTEM.split() + ["###", "Instruction:", "Response:", "Input:"] + [f"w{i}" for i in range(WORDS)]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                   "pad_token": "<pad>", "unk_token": "<unk>", "add_bos_token": False,
                   "model_max_length": 1 << 20}, f, indent=1)
    return len(vocab)


def make_model(out, shape, device, dtype_name, seq):
    """A random-weight Llama of `shape` (HF's own initialisation, seed 0) saved with save_pretrained."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    os.makedirs(out, exist_ok=True)
    L, h, inter, heads, kv, vocab, tie = SHAPES[shape]
    tok_vocab = make_tokenizer(out)
    vocab = vocab or tok_vocab
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=h, intermediate_size=inter, num_hidden_layers=L,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=max(8192, seq),
                      rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                      tie_word_embeddings=tie)
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    model.save_pretrained(out, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return n


def make_data(out, n, words):
    rnd = random.Random(0)
    rows = [{"instruction": "w" + " w".join(str(rnd.randrange(WORDS)) for _ in range(8)), "input": "",
             "output": "w" + " w".join(str(rnd.randrange(WORDS)) for _ in range(words))} for _ in range(n)]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "synthetic.json"), "w") as f:
        json.dump(rows, f)
    with open(os.path.join(out, "dataset_info.json"), "w") as f:
        json.dump({"synthetic": {"file_name": "synthetic.json"}}, f)


def config(path, **kv):
    base = dict(dataset="synthetic", template="alpaca", overwrite_output_dir="true", finetuning_type="lora",
                lora_rank=16, lora_target="all", lr_scheduler_type="constant", learning_rate="1.0e-4",
                logging_steps=1, save_steps=0, max_grad_norm=1.0, gradient_accumulation_steps=1,
                plot_loss="false", report_to="none", seed=0)
    base.update(kv)
    with open(path, "w") as f:
        for k, v in base.items():
            f.write(f"{k}: {v}\n")


def cmd_prepare(args):
    import torch
    work, dry = args.work, args.mode == "dry"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    os.makedirs(work, exist_ok=True)
    plan = {"mode": args.mode, "runs": {}}
    t0 = time.time()
    # Tiny: GPU vs CPU, fp32 and bf16.
    make_model(f"{work}/tiny", "tiny", "cpu", "float32", 64)
    make_data(f"{work}/tiny-data", 32, 48)
    for prec in ("bf16", "fp32"):
        for where in ("gpu", "cpu"):
            name = f"tiny-{prec}-{where}"
            config(f"{work}/{name}.yaml", model_name_or_path=f"{work}/tiny", dataset_dir=f"{work}/tiny-data",
                   output_dir=f"{work}/out/{name}", cutoff_len=64, per_device_train_batch_size=4, max_steps=6,
                   bf16="true" if prec == "bf16" else "false", flash_attn="fa2" if prec == "bf16" else "auto")
            plan["runs"][name] = {"cpu": where == "cpu"}
    # Benchmark: Llama-3-8B shape (dry: small), bf16, LoRA r=16 all linears, seq 2048 (dry 256).
    bshape, seq, steps = ("dry-bench", 256, 4) if dry else (args.bench_shape, 2048, args.bench_steps)
    n = make_model(f"{work}/bench", bshape, dev, "bfloat16", seq)
    make_data(f"{work}/bench-data", 64, seq + 64)
    config(f"{work}/bench.yaml", model_name_or_path=f"{work}/bench", dataset_dir=f"{work}/bench-data",
           output_dir=f"{work}/out/bench", cutoff_len=seq, per_device_train_batch_size=1, max_steps=steps,
           bf16="true", flash_attn="fa2")
    plan["bench"] = {"shape": bshape, "params": n, "seq": seq, "steps": steps, "batch": 1, "rank": 16}
    # Planner table: Llama-3.2-1B shape (dry: small); LoRA/QLoRA/full, cutoff 1k/4k, micro-batch 1/4.
    pshape, (c1, c4) = ("dry-plan", (128, 512)) if dry else ("llama3.2-1b", (1024, 4096))
    make_model(f"{work}/plan", pshape, dev, "bfloat16", c4)
    make_data(f"{work}/plan-data", 16, c4 + 64)
    cases = [("lora", c1, 1, {}), ("lora", c4, 1, {}), ("lora", c1, 4, {}),
             ("qlora", c1, 4, {"quantization_bit": 4}), ("full", c1, 1, {"finetuning_type": "full"}),
             ("full", c4, 1, {"finetuning_type": "full"}),
             # offload_activations: checkpoints in pinned host memory, MLPs in tiles of c1/2 tokens.
             ("lora-offload", c4, 1, {"gradient_checkpointing": "true", "offload_activations": "true",
                                      "loss_chunk_size": c1 // 2})]
    plan["planner"] = []
    for method, cut, mb, extra in cases:
        name = f"plan-{method}-{cut}-mb{mb}"
        config(f"{work}/{name}.yaml", model_name_or_path=f"{work}/plan", dataset_dir=f"{work}/plan-data",
               output_dir=f"{work}/out/{name}", cutoff_len=cut, per_device_train_batch_size=mb, max_steps=2,
               bf16="true", flash_attn="fa2", **extra)
        plan["planner"].append({"name": name, "method": method, "cutoff": cut, "micro_batch": mb})
    plan["plan_shape"] = pshape
    plan["prepare_s"] = round(time.time() - t0, 1)
    with open(f"{work}/plan.json", "w") as f:
        json.dump(plan, f, indent=1)
    print(f"prepared in {plan['prepare_s']} s in {work}: bench {bshape} ({n / 1e6:,.1f} M params), planner {pshape}")


# ----------------------------------------------------------------------------------------- hf-train

def cmd_hf_train(args):
    """transformers+PEFT on the benchmark model: the config lf-trainer runs (bench.yaml)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM
    plan = json.load(open(f"{args.work}/plan.json"))
    b = plan["bench"]
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(f"{args.work}/bench")
    rows = json.load(open(f"{args.work}/bench-data/synthetic.json"))

    def encode(row):
        src = tok(SYSTEM + "### Instruction:\n" + row["instruction"] + "\n\n### Response:\n",
                  add_special_tokens=False)["input_ids"]
        tgt = tok(row["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return (src + tgt)[:b["seq"]], ([-100] * len(src) + tgt)[:b["seq"]]

    examples = [encode(r) for r in rows]
    t_load = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(f"{args.work}/bench", dtype=torch.bfloat16, attn_implementation="sdpa",
                                             **({"device_map": dev} if cuda else {}))
    load_s = time.perf_counter() - t_load
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    lcfg = LoraConfig(r=b["rank"], lora_alpha=2 * b["rank"], lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lcfg)   # adapters in fp32 (PEFT's autocast_adapter_dtype), base bf16
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=cuda)
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    losses, times, tokens = [], [], []
    start = time.perf_counter()
    for step in range(b["steps"]):
        t = time.perf_counter()
        ids, lab = examples[order[step % len(order)]]
        ids_t = torch.tensor([ids], device=dev)
        lab_t = torch.tensor([lab], device=dev)
        with torch.autocast(dev, dtype=torch.bfloat16):
            out = model(input_ids=ids_t, labels=lab_t)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())   # synchronises
        times.append(time.perf_counter() - t)
        tokens.append(len(ids))
    total = time.perf_counter() - start
    steady = times[2:] or times
    res = {"tokens_per_second": sum(tokens) / total,
           "steady_tokens_per_second": sum(tokens[-len(steady):]) / sum(steady),
           "final_loss": losses[-1], "losses": losses, "step_seconds": times, "load_seconds": load_s,
           "peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
           "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
           "trainable_params": sum(p.numel() for p in params)}
    print("JSON " + json.dumps(res))


# ------------------------------------------------------------------------------------------- report

def read_log(out_dir):
    progress, memory = [], None
    path = os.path.join(out_dir, "trainer_log.jsonl")
    if os.path.exists(path):
        for line in open(path):
            if not line.strip():
                continue
            r = json.loads(line)
            if "memory" in r:
                memory = r["memory"]
            elif "loss" in r:
                progress.append(r)
    return progress, memory


def sampler_peak(path, baseline_path=None):
    """Peak of nvidia-smi's memory.used samples (MiB) less the idle baseline: the process's device
    memory (allocator reserved + CUDA context + library workspaces)."""
    if not path or not os.path.exists(path):
        return None
    vals = [int(x) for x in open(path).read().split() if x.isdigit()]
    if not vals:
        return None
    base = 0
    if baseline_path and os.path.exists(baseline_path):
        b = [int(x) for x in open(baseline_path).read().split() if x.isdigit()]
        base = min(b) if b else 0
    return (max(vals) - base) * 2**20


def flops_per_token(shape, seq, full=False):
    """Model FLOPs per trained token: matmuls 2N forward + 2N backward to the activations (+2N weight
    gradients for full fine-tuning), N = every linear weight including the LM head (not the embedding
    lookup); causal attention 2*S*d per layer forward, x3 with backward. Recomputation is not counted
    (this is MFU, not hardware FLOPs utilisation)."""
    L, h, inter, heads, kv, vocab, tie = SHAPES[shape]
    d_kv = h // heads * kv
    n = L * (h * h * 2 + h * d_kv * 2 + 3 * h * inter) + h * vocab
    return (6 if full else 4) * n + 3 * 2 * L * seq * h


def cmd_report(args):
    work = args.work
    plan = json.load(open(f"{work}/plan.json"))
    gpu = args.gpu or ""
    rows = []
    if args.step == "tiny":
        res = {}
        for prec in ("bf16", "fp32"):
            for where in ("gpu", "cpu"):
                prog, _ = read_log(f"{work}/out/tiny-{prec}-{where}")
                res[(prec, where)] = [r["loss"] for r in prog]
        print("| precision | steps | max relative loss difference GPU vs CPU | tolerance | result |\n|---|---|---|---|---|")
        ok = True
        for prec, tol in (("bf16", 2e-2), ("fp32", 1e-3)):
            a, b = res[(prec, "gpu")], res[(prec, "cpu")]
            if not a or len(a) != len(b):
                print(f"| {prec} | {len(a)} vs {len(b)} | missing | {tol} | FAIL |")
                ok = False
                continue
            diff = max(abs(x - y) / max(abs(y), 1e-9) for x, y in zip(a, b))
            good = diff <= tol
            ok &= good
            print(f"| {prec} | {len(a)} | {diff:.2e} (final {a[-1]:.4f} vs {b[-1]:.4f}) | {tol} | {'PASS' if good else 'FAIL'} |")
            rows.append({"precision": prec, "gpu": a, "cpu": b, "max_rel_diff": diff, "tolerance": tol})
        print("JSON " + json.dumps({"step": "tiny", "rows": rows, "ok": ok}))
        sys.exit(0 if ok else 1)
    if args.step == "bench":
        b = plan["bench"]
        prog, mem = read_log(f"{work}/out/bench")
        allres = json.load(open(f"{work}/out/bench/all_results.json")) if os.path.exists(f"{work}/out/bench/all_results.json") else {}
        hf = None
        if args.hf and os.path.exists(args.hf):
            lines = [l[5:] for l in open(args.hf) if l.startswith("JSON ")]
            hf = json.loads(lines[-1]) if lines else None
        peak = next((v for k, v in PEAK_BF16 if k in gpu), None)
        fpt = flops_per_token(b["shape"], b["seq"])

        def mfu(tps):
            return f"{100 * tps * fpt / peak:.1f} %" if (peak and tps) else "n/a"

        lf_steady = None
        if len(prog) > 2:
            # per-step records (logging_steps 1): tokens / seconds over the steps after the first two
            tail = [r for r in prog[2:] if r.get("throughput")]
            if tail:
                lf_steady = len(tail) / sum(1 / r["throughput"] for r in tail)   # harmonic mean = tokens/total time
        # peak_memory_bytes is the CUDA allocator's peak only when lf-trainer ran on a GPU (its memory
        # record then carries measured_peak_bytes); on the CPU it is the process's RSS: not reported.
        on_gpu = bool(mem and mem.get("measured_peak_bytes"))
        lf_peak_alloc = max([r.get("peak_memory_bytes") or 0 for r in prog] + [mem["measured_peak_bytes"]]) if on_gpu else None
        table = [("lf-trainer", allres.get("train_tokens_per_second"), lf_steady, lf_peak_alloc, None,
                  sampler_peak(args.sampler_lf, args.baseline), prog[-1]["loss"] if prog else None),
                 ("transformers+PEFT", hf and hf["tokens_per_second"], hf and hf["steady_tokens_per_second"],
                  hf and hf["peak_allocated_bytes"], hf and hf["peak_reserved_bytes"],
                  sampler_peak(args.sampler_hf, args.baseline), hf and hf["final_loss"])]
        print(f"model: {b['shape']} random weights ({b['params'] / 1e6:,.1f} M params), bf16, LoRA r={b['rank']} all "
              f"linears, seq {b['seq']}, micro-batch {b['batch']}, {b['steps']} steps, gradient checkpointing, "
              f"AdamW; GPU: {gpu or 'none (dry run: CPU)'}; MFU = model FLOPs/token ({fpt / 1e9:.3g} GFLOP) x "
              f"steady tokens/s / dense bf16 peak ({(peak or 0) / 1e12:.0f} TFLOP/s)\n")
        print("| trainer | tokens/s (whole loop) | tokens/s (steps 3+) | MFU | allocator peak GiB | reserved peak GiB | "
              "nvidia-smi peak GiB | final loss |\n|---|---|---|---|---|---|---|---|")
        for name, tps, steady, alloc, resv, smi, loss in table:
            f = lambda x: "n/a" if x is None else f"{x:.0f}"
            print(f"| {name} | {f(tps)} | {f(steady)} | {mfu(steady)} | {gib(alloc)} | {gib(resv)} | {gib(smi)} | "
                  f"{'n/a' if loss is None else f'{loss:.4f}'} |")
            rows.append({"trainer": name, "tokens_per_second": tps, "steady_tokens_per_second": steady,
                         "mfu": (steady * fpt / peak) if (peak and steady) else None, "peak_allocated_bytes": alloc,
                         "peak_reserved_bytes": resv, "nvidia_smi_peak_bytes": smi, "final_loss": loss})
        print("\nlf-trainer's reserved peak is not exposed by its build (the shim reads the allocator's allocated "
              "peak); nvidia-smi's process peak (reserved + CUDA context + workspaces) is measured the same way for "
              "both.")
        print("JSON " + json.dumps({"step": "bench", "bench": b, "gpu": gpu, "rows": rows}))
        ok = bool(prog) and hf is not None
        sys.exit(0 if ok else 1)
    if args.step == "planner":
        print(f"model: {plan['plan_shape']} random weights, bf16; 2 steps each; planned = the planner's per-GPU peak "
              "less its fixed overhead (CUDA context, fragmentation reserve), as lf-trainer logs it; measured = the CUDA "
              "caching allocator's peak of allocated bytes (max over steps)\n")
        print("| run | method | cutoff | micro-batch | planned GiB | measured GiB | planned/measured |\n|---|---|---|---|---|---|---|")
        ok = True
        for case in plan["planner"]:
            prog, mem = read_log(f"{work}/out/{case['name']}")
            planned = mem and mem.get("planned_peak_bytes")
            measured = None
            if prog and mem and mem.get("measured_peak_bytes"):   # ran on a GPU (see report bench)
                measured = max([r.get("peak_memory_bytes") or 0 for r in prog] + [mem["measured_peak_bytes"]])
            ratio = f"{planned / measured:.2f}" if (planned and measured) else "n/a"
            if not prog:
                ok = False
            print(f"| {case['name']} | {case['method']} | {case['cutoff']} | {case['micro_batch']} | {gib(planned)} | "
                  f"{gib(measured) if prog else 'run failed'} | {ratio} |")
            rows.append(dict(case, planned_peak_bytes=planned, measured_peak_bytes=measured, ran=bool(prog)))
        print("JSON " + json.dumps({"step": "planner", "rows": rows}))
        sys.exit(0 if ok else 1)
    sys.exit(f"unknown report step {args.step}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env")
    p = sub.add_parser("prepare")
    p.add_argument("work")
    p.add_argument("--mode", choices=["device", "dry"], default="device")
    p.add_argument("--bench-shape", default="llama3-8b", choices=["llama3-8b", "llama3.2-1b"])
    p.add_argument("--bench-steps", type=int, default=10)
    p = sub.add_parser("hf-train")
    p.add_argument("work")
    p = sub.add_parser("report")
    p.add_argument("step", choices=["tiny", "bench", "planner"])
    p.add_argument("work")
    p.add_argument("--gpu", default="")
    p.add_argument("--hf")
    p.add_argument("--sampler-lf")
    p.add_argument("--sampler-hf")
    p.add_argument("--baseline")
    args = ap.parse_args()
    {"env": cmd_env, "prepare": cmd_prepare, "hf-train": cmd_hf_train, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
