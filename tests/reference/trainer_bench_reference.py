"""The transformers + peft side of scripts/bench_trainer.py: trains the same LoRA configuration on
the same alpaca file and prints one JSON line {tokens_per_second, final_loss, steps, tokens, seconds}.

Usage: trainer_bench_reference.py MODEL_DIR DATA_FILE --steps N --batch B --cutoff L --rank R --lr LR
       [--lf-order SEED] [--save-init DIR]

`--lf-order SEED` visits the examples in lf-trainer's order (its SplitMix64 Fisher-Yates permutation
seeded by SEED + epoch, lf-data's sampler.rs) instead of Python's shuffle; `--save-init DIR` saves
PEFT's freshly initialised adapter to DIR before training, so lf-trainer can start from the same
weights (`adapter_name_or_path`): with both, the two trainers see the same batches from the same
weights, and their losses are comparable step by step.

Prompts use LLaMA-Factory's `alpaca` template text; prompt tokens are masked with -100 and the loss
is the mean over label tokens of each step, as in lf-trainer. Gradient checkpointing is on (the
LLaMA-Factory default, and lf-trainer's). The timed region is the training loop only.
"""
import argparse
import json
import random
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, LlamaForCausalLM

SYSTEM = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"


def encode(tok, row, cutoff):
    prompt = SYSTEM + "### Instruction:\n" + row["instruction"] + "\n\n### Response:\n"
    src = tok(prompt, add_special_tokens=False)["input_ids"]
    tgt = tok(row["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = (src + tgt)[:cutoff]
    labels = ([-100] * len(src) + tgt)[:cutoff]
    return ids, labels


MASK = (1 << 64) - 1


def splitmix(z):
    z = (z + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def lf_permutation(n, seed):
    """lf-data's `permutation(n, seed)`."""
    p = list(range(n))
    state = splitmix(seed & MASK)
    for i in range(n - 1, 0, -1):
        state = splitmix(state)
        j = state % (i + 1)
        p[i], p[j] = p[j], p[i]
    return p


def lf_batch(n, batch, step, seed):
    """The example indices lf-trainer trains on at optimiser step `step` (one process, no
    accumulation): epoch e's permutation seeded by seed + e, cut into batches."""
    per_epoch = -(-n // batch)
    epoch, b = divmod(step, per_epoch)
    perm = lf_permutation(n, seed + epoch)
    return perm[b * batch:min((b + 1) * batch, n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--cutoff", type=int, default=512)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lf-order", type=int, help="lf-trainer's example order with this seed")
    ap.add_argument("--save-init", help="save the initial adapter here (PEFT format)")
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.model)
    rows = json.load(open(args.data))
    examples = [encode(tok, r, args.cutoff) for r in rows]
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    cfg = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, cfg)
    if args.save_init:
        model.save_pretrained(args.save_init)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    pad = tok.pad_token_id
    tokens = 0
    loss = float("nan")
    start = time.perf_counter()
    for step in range(args.steps):
        if args.lf_order is not None:
            idx = lf_batch(len(examples), args.batch, step, args.lf_order)
        else:
            idx = [order[(step * args.batch + i) % len(order)] for i in range(args.batch)]
        batch = [examples[i] for i in idx]
        L = max(len(b[0]) for b in batch)
        ids = torch.tensor([b[0] + [pad] * (L - len(b[0])) for b in batch])
        lab = torch.tensor([b[1] + [-100] * (L - len(b[1])) for b in batch])
        att = torch.tensor([[1] * len(b[0]) + [0] * (L - len(b[0])) for b in batch])
        out = model(input_ids=ids, attention_mask=att, labels=lab)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = out.loss.item()
        tokens += sum(len(b[0]) for b in batch)
    seconds = time.perf_counter() - start
    print(json.dumps({"tokens_per_second": tokens / seconds, "final_loss": loss, "steps": args.steps,
                      "tokens": tokens, "seconds": seconds}))


if __name__ == "__main__":
    main()
