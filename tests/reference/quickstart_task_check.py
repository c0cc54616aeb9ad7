#!/usr/bin/env python3
"""Reference check of the quick start's task with transformers + peft (a development tool).

Fine-tunes the bundled base model with LoRA on examples/quickstart/data/opposites_train.json the way
examples/quickstart.yaml asks lf-trainer to, and prints greedy exact-match accuracy on the held-out
prompts before and after. It tells us the task is learnable at this size and budget; lf-operator's
own quick start must show a comparable gain.
"""
import json
import os
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, LlamaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "quickstart")
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 150
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(os.path.join(ROOT, "model"))
model = LlamaForCausalLM.from_pretrained(os.path.join(ROOT, "model"), torch_dtype=torch.float32)
train = json.load(open(os.path.join(ROOT, "data", "opposites_train.json")))
held = json.load(open(os.path.join(ROOT, "data", "opposites_heldout.json")))


def prompt_ids(q):
    return tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                   return_dict=False)


def accuracy(m):
    ok = 0
    for ex in held:
        ids = torch.tensor([prompt_ids(ex["instruction"])])
        out = m.generate(input_ids=ids, max_new_tokens=8, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        ok += text == ex["output"]
    return ok / len(held)


print("base accuracy", accuracy(model))
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
examples = []
for ex in train:
    p = prompt_ids(ex["instruction"])
    full = tok.apply_chat_template([{"role": "user", "content": ex["instruction"]},
                                    {"role": "assistant", "content": ex["output"]}], tokenize=True, return_dict=False)
    examples.append((full, [-100] * len(p) + full[len(p):]))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=float(os.environ.get("LR","2e-3")))
t0 = time.time()
for step in range(steps):
    batch = [examples[(step * 8 + i) % len(examples)] for i in range(8)]
    n = max(len(b[0]) for b in batch)
    ids = torch.tensor([b[0] + [tok.pad_token_id] * (n - len(b[0])) for b in batch])
    lab = torch.tensor([b[1] + [-100] * (n - len(b[1])) for b in batch])
    loss = model(input_ids=ids, labels=lab).loss
    loss.backward(); opt.step(); opt.zero_grad()
    if step % 25 == 0:
        print(f"step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
print("tuned accuracy", accuracy(model))
