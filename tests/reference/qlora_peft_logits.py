"""Logits of a QLoRA adapter on the bitsandbytes-quantised base, through transformers + PEFT.

Usage: qlora_peft_logits.py MODEL_DIR ADAPTER_DIR OUT.safetensors --ids 1,5,9 [--compute-dtype float32]

Loads MODEL_DIR with
`BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
bnb_4bit_compute_dtype=...)` on the CPU (every decoder linear becomes a bitsandbytes `Linear4bit`;
embeddings, norms and `lm_head` stay dense, as in lf-trainer), wraps it with
`PeftModel.from_pretrained(model, ADAPTER_DIR)` and writes to OUT.safetensors (all
`[1, len(ids), vocab]`, float32):

* `logits`: logits with the adapter through bitsandbytes' generic 4-bit path (`matmul_4bit`:
  `dequantize_4bit` of its own NF4 codes and double-quantised absmax, then a matmul in the compute
  dtype);
* `base_logits`: the same with the adapter disabled (so a caller can check that the adapter
  matters at the scale it compares at);
* `fused_logits`: logits with the adapter through bitsandbytes' default CPU inference. On a CPU
  with AVX512-BF16, bitsandbytes 0.50's `Linear4bit.forward` (eval mode, no grad) repacks the
  weight for its fused CPU kernel (`_convert_weight_packed_for_cpu`: double quantisation undone,
  absmax cast to **bf16**) and `gemv_4bit` casts the input to **bf16** whatever
  `bnb_4bit_compute_dtype` says; so these logits are bf16-accurate only. Without AVX512-BF16 it is
  the generic path again.

Prints one JSON line describing what ran (versions, number of 4-bit linears, whether the fused
bf16 CPU path was available). Fails if any decoder linear is not a 4-bit nf4 double-quantised
bitsandbytes layer.
"""
import argparse
import json

import bitsandbytes as bnb
import peft
import torch
import transformers
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("adapter")
    ap.add_argument("out")
    ap.add_argument("--ids", required=True, help="comma-separated token ids")
    ap.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    compute = getattr(torch, args.compute_dtype)
    torch.manual_seed(0)

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    base = AutoModelForCausalLM.from_pretrained(
        args.model, quantization_config=quant, device_map="cpu", dtype=torch.float32
    )
    linears = 0
    for name, module in base.named_modules():
        if name.split(".")[-1] in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                   "qkv_proj", "gate_up_proj"):
            if not isinstance(module, bnb.nn.Linear4bit):
                raise SystemExit(f"{name} is {type(module).__name__}, not bitsandbytes Linear4bit")
            state = module.weight.quant_state
            if state.quant_type != "nf4" or not state.nested or state.blocksize != 64:
                raise SystemExit(f"{name}: unexpected quantisation state {state.as_dict()}")
            linears += 1
    if linears == 0:
        raise SystemExit("no decoder linears found")

    model = PeftModel.from_pretrained(base, args.adapter)
    model.eval()
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    fused_available = all(m.support_avx512bf16_for_cpu for m in layers)
    ids = torch.tensor([[int(t) for t in args.ids.split(",")]], dtype=torch.long)
    with torch.no_grad():
        # The generic path first: the fused path repacks the weights in place on first use.
        for m in layers:
            m.support_avx512bf16_for_cpu = False
        logits = model(input_ids=ids).logits.float().contiguous()
        with model.disable_adapter():
            base_logits = model(input_ids=ids).logits.float().contiguous()
        for m in layers:
            m.support_avx512bf16_for_cpu = fused_available
        fused_logits = model(input_ids=ids).logits.float().contiguous()
    repacked = any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    if repacked != fused_available:
        raise SystemExit(f"expected the fused CPU path {'' if fused_available else 'not '}to repack the weights")
    save_file({"logits": logits, "base_logits": base_logits, "fused_logits": fused_logits}, args.out)
    print(
        json.dumps(
            {
                "bitsandbytes": bnb.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
                "linear4bit_layers": linears,
                "compute_dtype": args.compute_dtype,
                "lm_head": type(base.lm_head).__name__,
                "fused_bf16_cpu_path": fused_available,
                "max_abs_logit": logits.abs().max().item(),
                "adapter_effect": (logits - base_logits).abs().max().item(),
                "fused_vs_generic": (fused_logits - logits).abs().max().item(),
            }
        )
    )


if __name__ == "__main__":
    main()
