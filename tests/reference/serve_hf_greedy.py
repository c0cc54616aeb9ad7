"""transformers' greedy `generate` (with each PEFT adapter) on a raw text prompt, as
`lf-trainer serve`'s /v1/completions encodes it (the tokenizer's own special tokens, BOS).

Usage: serve_hf_greedy.py MODEL_DIR PROMPT MAX_NEW_TOKENS [NAME=ADAPTER_DIR ...]
Prints {"<base dir name>" or NAME: {"text": ..., "completion_tokens": ...}} as JSON.
"""
import json
import os
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, prompt, max_new = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(model_dir)
ids = tok(prompt, return_tensors="pt").input_ids
out = {}
for entry in [None] + sys.argv[4:]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    name = os.path.basename(model_dir.rstrip("/"))
    if entry is not None:
        name, adapter = entry.split("=", 1)
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=max_new, do_sample=False)[0, ids.shape[1]:].tolist()
    eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
              else [model.generation_config.eos_token_id])
    gen = [t for t in gen if t not in eos and t != tok.pad_token_id]
    out[name] = {"text": tok.decode(gen, skip_special_tokens=True), "completion_tokens": len(gen), "ids": gen}
print(json.dumps(out))
