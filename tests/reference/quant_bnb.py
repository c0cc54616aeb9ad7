"""bitsandbytes reference for lf-quant's 4-bit parity test (CPU).

Usage: quant_bnb.py DIR
Reads DIR/cases.json ([{"name", "quant_type", "double_quant"}]) and DIR/inputs.safetensors (one
weight per case name), runs bitsandbytes.functional.quantize_4bit(w, blocksize=64, quant_type,
compress_statistics=double_quant) and dequantize_4bit, and writes DIR/outputs.safetensors with, per
case, the packed codes, the QuantState.as_dict(packed=True) tensors, the nested offset, the
dequantised weight in the input dtype and in float32 (through bnb's CPU kernel, "deq", and through
its pure-PyTorch reference implementation, "deq_ref"), and the signed dynamic map.
"""

import json
import sys
import warnings

warnings.filterwarnings("ignore")

import logging

logging.disable(logging.WARNING)

import bitsandbytes.functional as F  # noqa: E402
import torch  # noqa: E402
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute  # noqa: E402
from bitsandbytes.backends.utils import _get_4bit_code  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402


def main() -> None:
    out_dir = sys.argv[1]
    cases = json.load(open(f"{out_dir}/cases.json"))
    inputs = load_file(f"{out_dir}/inputs.safetensors")
    out = {"dynamic_map": F.create_dynamic_map(signed=True).contiguous()}
    for case in cases:
        name = case["name"]
        w = inputs[name]
        packed, state = F.quantize_4bit(
            w, blocksize=64, quant_type=case["quant_type"], compress_statistics=case["double_quant"]
        )
        out[f"{name}.packed"] = packed.contiguous()
        for key, value in state.as_dict(packed=True).items():
            out[f"{name}.state.{key}"] = value.contiguous()
        if state.nested:
            out[f"{name}.offset"] = state.offset.reshape(1).contiguous()
        out[f"{name}.deq"] = F.dequantize_4bit(packed, state).contiguous()
        # bnb's reference (pure PyTorch) dequantisation: its CPU SIMD kernel mis-indexes the
        # block scales when the last dimension is a multiple of 16 but not of the block size.
        absmax = state.absmax
        if state.nested:
            absmax = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
        code = _get_4bit_code(state.quant_type, packed.device)
        out[f"{name}.deq_ref"] = _dequantize_4bit_compute(
            packed.reshape(-1), absmax, code, 64, tuple(w.shape), w.dtype
        ).contiguous()
        state.dtype = torch.float32
        out[f"{name}.deq_f32"] = F.dequantize_4bit(packed, state).contiguous()
        out[f"{name}.deq_ref_f32"] = _dequantize_4bit_compute(
            packed.reshape(-1), absmax, code, 64, tuple(w.shape), torch.float32
        ).contiguous()
    save_file(out, f"{out_dir}/outputs.safetensors")


if __name__ == "__main__":
    main()
