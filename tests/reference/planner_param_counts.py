"""Reference parameter counts for lf-planner (operator/planner/tests/param_reference.rs).

Reads a JSON list of cases on stdin: {"name", "config": <config.json dict>, "method": "full"|"freeze"|"lora",
"rank", "targets": [...], "target_parameters": [...] (a mixture of experts' fused expert parameters), "dora": bool, "freeze_layers": int}. Builds each model with Hugging Face
transformers on the `meta` device (no memory, no weights), applies the method exactly as PEFT /
LLaMA-Factory do, and prints a JSON list of {"name", "total", "trainable"} on stdout, where total is the
base model's parameter count (tied weights counted once) and trainable the parameters with
requires_grad after the method is applied.
"""

import json
import sys
import warnings

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()


def count(params):
    seen = set()
    total = 0
    for p in params:
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def build(case):
    config = AutoConfig.for_model(**case["config"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model


def run(case):
    model = build(case)
    total = count(model.parameters())
    method = case["method"]
    if method == "full":
        trainable = count(p for p in model.parameters() if p.requires_grad)
    elif method == "freeze":
        for p in model.parameters():
            p.requires_grad_(False)
        k = case["freeze_layers"]
        layers = model.model.layers
        for layer in list(layers)[len(layers) - k:] if k > 0 else []:
            for p in layer.parameters():
                p.requires_grad_(True)
        trainable = count(p for p in model.parameters() if p.requires_grad)
    elif method == "lora":
        from peft import AdaLoraConfig, LoraConfig, get_peft_model

        common = dict(target_modules=case["targets"], target_parameters=case.get("target_parameters") or None, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
        if case.get("adalora"):
            init_r, target_r = case["adalora"]
            lora = AdaLoraConfig(init_r=init_r, target_r=target_r, total_step=100, lora_alpha=2 * init_r, **common)
        else:
            lora = LoraConfig(r=case["rank"], lora_alpha=2 * case["rank"], use_dora=case.get("dora", False), **common)
        peft_model = get_peft_model(model, lora)
        # AdaLoRA's `ranknum` (one scalar per adapted linear) is a constant, not a weight; on the
        # meta device PEFT leaves it requires_grad, on a real one it is frozen.
        weights = [(n, p) for n, p in peft_model.named_parameters() if "ranknum" not in n]
        trainable = count(p for _, p in weights if p.requires_grad)
        all_params = count(p for _, p in weights)
        assert all_params == total + trainable, (all_params, total, trainable)
    else:
        raise SystemExit(f"unknown method {method}")
    return {"name": case["name"], "total": total, "trainable": trainable}


def main():
    cases = json.load(sys.stdin)
    print(json.dumps([run(c) for c in cases]))


if __name__ == "__main__":
    main()
