#!/usr/bin/env python3
"""Benchmark (not a test): lf-trainer vs transformers + peft on the CPU, same model, data and LoRA.

Builds a tiny-but-real Llama (8 layers, hidden 512, sequences up to 512 tokens) with
tests/reference/trainer_make_tiny.py, then trains LoRA r=16 on all linears for the same number of
steps with each trainer, one after the other, and prints tokens/s (training loop only), peak RSS of
each process (wait4's ru_maxrss) and the final loss, and the ratios.

Usage: scripts/bench_trainer.py [--steps 8] [--batch 2] [--trainer PATH] [--python PATH] [--workdir DIR]
       scripts/bench_trainer.py --budget [--threads-list 1,2] [--repeat N] ...
       scripts/bench_trainer.py --neat [--batch 8] [--repeat N] ...
The lf-trainer binary defaults to $CARGO_TARGET_DIR (or target)/release/lf-trainer, then debug.

`--budget` (issue 18): for each thread count, transformers+PEFT runs first with gradient checkpointing
on, in lf-trainer's example order, and saves its freshly initialised adapter; its measured peak RSS
becomes lf-trainer's `memory_budget_mib` under `gradient_checkpointing: auto`, and lf-trainer trains
from that same adapter. Both therefore see the same batches from the same weights, so their final
losses are comparable. Prints tokens/s, peak RSS and final loss of both, the layers lf-trainer chose
to recompute, and the ratios, one row per thread count.

`--neat` (issue 18): lf-trainer on the same examples, in the same order, with padded micro-batches and
with `neat_packing: true` (each micro-batch's examples share rows of at most `cutoff_len` tokens,
block-diagonal attention): real tokens per second (padding is never counted), peak RSS and the final
loss of each, and the ratios.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_measured(cmd, env=None):
    """Runs cmd; returns (stdout, stderr, peak RSS bytes of that process tree's largest process)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    out, err = proc.communicate()
    # ru_maxrss of RUSAGE_CHILDREN covers every child so far; each run is measured in its own
    # helper process below so the numbers do not mix.
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({proc.returncode}):\n{err[-4000:]}")
    return out, err


def measured_child(cmd, env=None):
    """Runs cmd in a fresh helper so RUSAGE_CHILDREN of that helper is cmd's alone."""
    helper = (
        "import json,resource,subprocess,sys;"
        "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
        "r=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss*1024;"
        "print(json.dumps({'rc':p.returncode,'out':p.stdout,'err':p.stderr,'rss':r}))"
    )
    out, _ = run_measured([sys.executable, "-c", helper] + cmd, env)
    res = json.loads(out)
    if res["rc"] != 0:
        sys.exit(f"{cmd[0]} failed ({res['rc']}):\n{res['err'][-4000:]}")
    return res


def find_trainer(given):
    if given:
        return given
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    for profile in ("release", "debug"):
        p = os.path.join(target, profile, "lf-trainer")
        if os.path.exists(p):
            return p
    sys.exit("lf-trainer binary not found: build it (cargo build --release -p lf-trainer) or pass --trainer")


CONFIG = """model_name_or_path: {model}
dataset: tiny
dataset_dir: {data}
template: alpaca
cutoff_len: 512
output_dir: {out}
overwrite_output_dir: true
finetuning_type: lora
lora_rank: 16
lora_target: all
per_device_train_batch_size: {batch}
gradient_accumulation_steps: 1
learning_rate: 1.0e-4
lr_scheduler_type: constant
max_steps: {steps}
logging_steps: 1
save_steps: 0
max_grad_norm: 1.0
"""

SEED = 42  # lf-trainer's default `seed`: its example order


def lf_result(out):
    """(tokens/s, final loss) of an lf-trainer run in `out`."""
    with open(os.path.join(out, "all_results.json")) as f:
        results = json.load(f)
    with open(os.path.join(out, "trainer_log.jsonl")) as f:
        # Progress records only (the `{"memory": ...}` line has no loss).
        last = [r for r in (json.loads(l) for l in f if l.strip()) if "loss" in r][-1]
    return results["train_tokens_per_second"], last["loss"]


def recompute_choice(stderr):
    """The layers lf-trainer chose to recompute, from its log line."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", stderr)  # tracing's ANSI colours
    m = re.search(r"recompute_layers=(\d+)\s+layers=(\d+)", plain)
    return f"{m.group(1)}/{m.group(2)}" if m else "?"


def run_budget(args, trainer, work, model, data):
    rows = []
    for threads in [int(t) for t in args.threads_list.split(",")]:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        best_ref, best_lf = None, None
        for _ in range(max(1, args.repeat)):
            init = os.path.join(work, f"init-adapter-{threads}")
            ref = measured_child([args.python, os.path.join(ROOT, "tests/reference/trainer_bench_reference.py"), model,
                                  os.path.join(data, "tiny.json"), "--steps", str(args.steps), "--batch",
                                  str(args.batch), "--cutoff", "512", "--rank", "16", "--lr", "1e-4",
                                  "--lf-order", str(SEED), "--save-init", init], env)
            refj = json.loads(ref["out"].strip().splitlines()[-1])
            run = (refj["tokens_per_second"], ref["rss"], refj["final_loss"])
            if best_ref is None or run[0] > best_ref[0]:
                best_ref = run
            budget_mib = ref["rss"] >> 20
            out = os.path.join(work, f"lf-out-{threads}")
            cfg = os.path.join(work, f"budget-{threads}.yaml")
            with open(cfg, "w") as f:
                f.write(CONFIG.format(model=model, data=data, out=out, batch=args.batch, steps=args.steps))
                f.write(f"seed: {SEED}\nadapter_name_or_path: {init}\n"
                        f"gradient_checkpointing: auto\nmemory_budget_mib: {budget_mib}\n")
            lf = measured_child([trainer, "train", cfg], env)
            tps, loss = lf_result(out)
            run = (tps, lf["rss"], loss, budget_mib, recompute_choice(lf["err"]))
            if best_lf is None or run[0] > best_lf[0]:
                best_lf = run
        rows.append((threads, best_ref, best_lf))
    print(f"budget mode: 8 layers, hidden 512, cutoff 512, LoRA r=16 all linears, batch {args.batch}, {args.steps} steps, "
          f"fp32 CPU; same example order and initial adapter for both; cores {os.cpu_count()}, best of {args.repeat}")
    print("transformers+PEFT: gradient checkpointing on; lf-trainer: gradient_checkpointing auto, "
          "memory_budget_mib = the reference's peak RSS")
    print(f"{'threads':>7} {'ref tok/s':>10} {'lf tok/s':>10} {'ratio':>6} {'ref RSS MiB':>12} {'lf RSS MiB':>11} "
          f"{'ratio':>6} {'recompute':>9} {'ref loss':>9} {'lf loss':>9} {'|Δloss|':>9}")
    for threads, ref, lf in rows:
        print(f"{threads:>7} {ref[0]:>10.1f} {lf[0]:>10.1f} {lf[0] / ref[0]:>6.2f} {ref[1] / 2**20:>12.1f} "
              f"{lf[1] / 2**20:>11.1f} {lf[1] / ref[1]:>6.2f} {lf[4]:>9} {ref[2]:>9.5f} {lf[2]:>9.5f} "
              f"{abs(lf[2] - ref[2]):>9.2e}")
    print("targets: tokens/s ratio >= 1.5, peak RSS ratio <= 1.0, |Δloss| <= 1e-3")


def run_neat(args, env, trainer, work, model, data):
    rows = []
    for neat in (False, True):
        best = None
        for _ in range(max(1, args.repeat)):
            out = os.path.join(work, f"neat-{neat}")
            cfg = os.path.join(work, f"neat-{neat}.yaml")
            with open(cfg, "w") as f:
                f.write(CONFIG.format(model=model, data=data, out=out, batch=args.batch, steps=args.steps))
                f.write(f"seed: {SEED}\ngradient_checkpointing: false\nneat_packing: {str(neat).lower()}\n")
            lf = measured_child([trainer, "train", cfg], env)
            tps, loss = lf_result(out)
            if best is None or tps > best[0]:
                best = (tps, lf["rss"], loss)
        rows.append((neat, best))
    print(f"neat mode: 8 layers, hidden 512, cutoff 512 (examples of about 170-260 words), LoRA r=16 all linears, "
          f"batch {args.batch}, {args.steps} steps, fp32 CPU, no recomputation; cores {os.cpu_count()}, best of {args.repeat}")
    print(f"{'micro-batches':>14} {'real tok/s':>11} {'RSS MiB':>8} {'final loss':>11}")
    for neat, (tps, rss, loss) in rows:
        print(f"{'neat_packing' if neat else 'padded':>14} {tps:>11.1f} {rss / 2**20:>8.1f} {loss:>11.5f}")
    (t0, r0, l0), (t1, r1, l1) = rows[0][1], rows[1][1]
    print(f"neat/padded: tokens/s {t1 / t0:.2f}x, peak RSS {r1 / r0:.2f}x, |Δ final loss| {abs(l1 - l0):.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--trainer")
    ap.add_argument("--python", default=os.environ.get("LF_PYTHON", os.path.join(ROOT, ".venv/bin/python")))
    ap.add_argument("--workdir")
    ap.add_argument("--threads", type=int, help="OMP/MKL threads for both trainers (default: libtorch's choice)")
    ap.add_argument("--repeat", type=int, default=1, help="alternate the two trainers this many times; best tokens/s wins")
    ap.add_argument("--budget", action="store_true", help="lf-trainer gets the reference's peak RSS as memory_budget_mib")
    ap.add_argument("--threads-list", default="1,2", help="--budget: thread counts, one row each")
    ap.add_argument("--neat", action="store_true", help="lf-trainer padded vs neat_packing on the same examples")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    trainer = find_trainer(args.trainer)
    if args.workdir:
        run(args, env, trainer, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="lf-bench-") as work:
            run(args, env, trainer, work)


def run(args, env, trainer, work):
    subprocess.run([args.python, os.path.join(ROOT, "tests/reference/trainer_make_tiny.py"), work,
                    "--layers", "8", "--hidden", "512", "--seq", "512", "--examples", str(args.examples)],
                   check=True, capture_output=True)
    model, data = os.path.join(work, "model"), os.path.join(work, "data")
    if args.budget:
        run_budget(args, trainer, work, model, data)
        return
    if args.neat:
        run_neat(args, env, trainer, work, model, data)
        return
    out = os.path.join(work, "lf-out")
    cfg = os.path.join(work, "bench.yaml")
    with open(cfg, "w") as f:
        f.write(f"""model_name_or_path: {model}
dataset: tiny
dataset_dir: {data}
template: alpaca
cutoff_len: 512
output_dir: {out}
overwrite_output_dir: true
finetuning_type: lora
lora_rank: 16
lora_target: all
per_device_train_batch_size: {args.batch}
gradient_accumulation_steps: 1
learning_rate: 1.0e-4
lr_scheduler_type: constant
max_steps: {args.steps}
logging_steps: 1
save_steps: 0
max_grad_norm: 1.0
""")
    best_lf, best_ref = None, None
    for _ in range(max(1, args.repeat)):
        lf = measured_child([trainer, "train", cfg], env)
        with open(os.path.join(out, "all_results.json")) as f:
            results = json.load(f)
        with open(os.path.join(out, "trainer_log.jsonl")) as f:
            # Progress records only (the `{"memory": ...}` line has no loss).
            last = [r for r in (json.loads(l) for l in f if l.strip()) if "loss" in r][-1]
        run = (results["train_tokens_per_second"], lf["rss"], last["loss"])
        if best_lf is None or run[0] > best_lf[0]:
            best_lf = run
        ref = measured_child([args.python, os.path.join(ROOT, "tests/reference/trainer_bench_reference.py"), model,
                              os.path.join(data, "tiny.json"), "--steps", str(args.steps), "--batch", str(args.batch),
                              "--cutoff", "512", "--rank", "16", "--lr", "1e-4"], env)
        refj = json.loads(ref["out"].strip().splitlines()[-1])
        run = (refj["tokens_per_second"], ref["rss"], refj["final_loss"])
        if best_ref is None or run[0] > best_ref[0]:
            best_ref = run
    rows = [
        ("lf-trainer",) + best_lf,
        ("transformers+peft",) + best_ref,
    ]
    print(f"config: 8 layers, hidden 512, cutoff 512, LoRA r=16 all linears, batch {args.batch}, {args.steps} steps, fp32 CPU, "
          f"gradient checkpointing on; cores {os.cpu_count()}, threads {args.threads or 'default'}, best of {args.repeat}")
    print(f"{'trainer':<20}{'tokens/s':>12}{'peak RSS MiB':>15}{'final loss':>12}")
    for name, tps, rss, loss in rows:
        print(f"{name:<20}{tps:>12.1f}{rss / 2**20:>15.1f}{loss:>12.4f}")
    print(f"ratio tokens/s (lf/ref): {rows[0][1] / rows[1][1]:.2f}  (target >= 1.25)")
    print(f"ratio peak RSS (lf/ref): {rows[0][2] / rows[1][2]:.2f}  (target <= 0.60)")


if __name__ == "__main__":
    main()
