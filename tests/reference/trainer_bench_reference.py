"""The transformers + peft side of scripts/bench_trainer.py: trains the same LoRA configuration on
the same alpaca file and prints one JSON line {tokens_per_second, final_loss, steps, tokens, seconds}.

Usage: trainer_bench_reference.py MODEL_DIR DATA_FILE --steps N --batch B --cutoff L --rank R --lr LR

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--cutoff", type=int, default=512)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
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
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    pad = tok.pad_token_id
    tokens = 0
    loss = float("nan")
    start = time.perf_counter()
    for step in range(args.steps):
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
