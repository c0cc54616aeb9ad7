"""PEFT's AdaLoRA as the reference for lf-model's (trainer/model/tests/adalora.rs).

Usage:
  adalora_peft.py train OUT    a tiny llama (OUT/base), a PEFT AdaLoRA adapter with random singular
                               values (OUT/init, nothing pruned yet), the batch; then STEPS steps of SGD
                               on it with `update_and_allocate` after each, as PEFT's docs prescribe:
                               the first step's loss (cross-entropy mean + orthogonality regulariser)
                               and gradients, every step's loss and rank pattern, the final full-rank
                               parameters, PEFT's saved adapter (OUT/peft_trained) and its logits
  adalora_peft.py verify OUT   loads the adapter the Rust test saved (OUT/ours) into the base with PEFT
                               and reports missing/unexpected keys, the rank pattern and the logit
                               difference against the Rust model's logits (OUT/verify.json)
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_reference import COMMON, batch, build  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

torch.set_num_threads(1)

# Crosses tinit (2), masks at every deltaT (2) of the budgeting phase, the final mask at
# total - tfinal = 8 and the re-applied pattern after it.
SETTINGS = dict(target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], init_r=4, target_r=2,
                tinit=2, tfinal=2, deltaT=2, total_step=10, lora_alpha=8, lora_dropout=0.0,
                orth_reg_weight=0.5, beta1=0.85, beta2=0.85, task_type="CAUSAL_LM")
STEPS = 10
LR = 0.5


def name_of(n):
    return n.replace(".default", "")


def train(out):
    from peft import AdaLoraConfig, get_peft_model
    base = os.path.join(out, "base")
    build(LlamaConfig(**COMMON), 5).save_pretrained(base)
    ids, labels = batch(COMMON["vocab_size"])
    save_file({"input_ids": ids, "labels": labels}, os.path.join(out, "batch.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, AdaLoraConfig(**SETTINGS))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            # Non-zero singular values (PEFT starts them at 0), so A and B get gradients at once.
            if "lora_E" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model.save_pretrained(os.path.join(out, "init"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=LR)
    steps = []
    for step in range(STEPS):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        if step == 0:
            first = {"loss": loss.detach().reshape(1)}
            for n, p in model.named_parameters():
                if p.requires_grad:
                    first["grad." + name_of(n)] = p.grad.detach().clone()
            save_file(first, os.path.join(out, "first_step.safetensors"))
        opt.step()
        model.base_model.update_and_allocate(step)
        opt.zero_grad()
        pattern = model.peft_config["default"].rank_pattern
        steps.append({"loss": loss.item(),
                      "pattern": {name_of(k): v for k, v in pattern.items()} if pattern else None})
    final = {name_of(n): p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    save_file(final, os.path.join(out, "final.safetensors"))
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    save_file({"logits": logits}, os.path.join(out, "peft_logits.safetensors"))
    model.save_pretrained(os.path.join(out, "peft_trained"))
    with open(os.path.join(out, "steps.json"), "w") as f:
        json.dump(steps, f)


def verify(out):
    from peft import PeftModel
    from peft.utils import load_peft_weights
    ids, _ = batch(COMMON["vocab_size"])
    base = AutoModelForCausalLM.from_pretrained(os.path.join(out, "base"), dtype=torch.float32)
    ours_dir = os.path.join(out, "ours")
    model = PeftModel.from_pretrained(base, ours_dir)
    result = model.load_adapter(ours_dir, adapter_name="check")
    model.set_adapter("default")
    model.eval()
    saved = load_peft_weights(ours_dir)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    ours = load_file(os.path.join(out, "ours_logits.safetensors"))["logits"]
    ranks = {k: int(v.shape[0]) for k, v in saved.items() if k.endswith("lora_E")}
    report = {
        "missing_keys": [k for k in result.missing_keys if "lora_" in k],
        "unexpected_keys": list(result.unexpected_keys),
        "ranks": ranks,
        "peft_vs_ours": (logits - ours).abs().max().item() / logits.abs().max().item(),
    }
    with open(os.path.join(out, "verify.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    {"train": train, "verify": verify}[mode](out)
