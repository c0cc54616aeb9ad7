"""PyTorch / transformers reference for lf-optim's update-rule tests (CPU, fp32).

Usage: optim_torch.py DIR
Reads DIR/cases.json ([{"name", "optim", "lr", "steps", "params": [names], ...hyper}]) and
DIR/inputs.safetensors ("{case}.{param}.init" and "{case}.{param}.grad{k}" for k < steps), runs
torch.optim.AdamW / torch.optim.SGD / transformers.optimization.Adafactor for `steps` steps with
the given gradients, and writes DIR/outputs.safetensors with "{case}.{param}.step{k}" (the
parameter after step k+1).
"""

import json
import sys

import torch
from safetensors.torch import load_file, save_file


def make(case, params):
    kind = case["optim"]
    if kind == "adamw":
        return torch.optim.AdamW(
            params, lr=case["lr"], betas=(case["beta1"], case["beta2"]), eps=case["eps"],
            weight_decay=case["weight_decay"], foreach=False,
        )
    if kind == "sgd":
        return torch.optim.SGD(
            params, lr=case["lr"], momentum=case["momentum"], weight_decay=case["weight_decay"], foreach=False
        )
    if kind == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            params, lr=case["lr"], scale_parameter=False, relative_step=False, warmup_init=False,
            weight_decay=case["weight_decay"],
        )
    raise ValueError(f"unknown optimiser {kind}")


def main() -> None:
    out_dir = sys.argv[1]
    cases = json.load(open(f"{out_dir}/cases.json"))
    inputs = load_file(f"{out_dir}/inputs.safetensors")
    out = {}
    for case in cases:
        name = case["name"]
        params = [torch.nn.Parameter(inputs[f"{name}.{p}.init"].clone()) for p in case["params"]]
        opt = make(case, params)
        for k in range(case["steps"]):
            for pname, p in zip(case["params"], params):
                p.grad = inputs[f"{name}.{pname}.grad{k}"].clone()
            opt.step()
            for pname, p in zip(case["params"], params):
                out[f"{name}.{pname}.step{k}"] = p.detach().clone().contiguous()
    save_file(out, f"{out_dir}/outputs.safetensors")


if __name__ == "__main__":
    main()
