"""Reference tensors for lf-model's tests, from transformers + peft (CPU, fp32, tiny random models).

Usage (each mode is one invocation per Rust test file):
  model_reference.py forward OUT      tiny llama/mistral/qwen2/qwen3 models (+ tied, llama3 and linear RoPE
                                      scaling, attention bias, sliding windows shorter than the sequence,
                                      qwen3's explicit head_dim, gemma2 and gemma3 text, the multimodal
                                      Gemma3ForConditionalGeneration in both checkpoint layouts, phi3 with partial rotary,
                                      a window, longrope below and above its original context and the legacy
                                      `su` config): HF model dirs, logits of a plain and of a
                                      right-padded batch (with its attention mask), greedy generations
  model_reference.py peft-init OUT    base models (llama; qwen3; mistral with a window shorter than the
                                      batch; gemma2; gemma3 text and multimodal (LLaMA-Factory's full-path
                                      target_modules); phi3 with longrope, a window, the legacy
                                      `su` config; mixtral and qwen3_moe, with LoRA on the attention and on the
                                      routers and experts), PEFT LoRA/rsLoRA/DoRA adapters (with non-zero B and
                                      perturbed magnitudes), a batch, PEFT's summed loss and grads
  model_reference.py moe OUT          tiny mixtral (window 8) and qwen3_moe models (top-k with and without
                                      norm_topk_prob, dense mlp_only_layers, decoder_sparse_step 2): logits, every
                                      sparse layer's router logits and chosen experts, the aux and total loss of a
                                      right-padded labelled batch (with its attention mask) and every parameter's
                                      gradient of that loss, greedy generations
  model_reference.py peft-verify OUT  loads the adapters and merged exports the Rust test wrote, and
                                      reports key mismatches, logit differences, the export's class and
                                      how far its vision tower moved from the base's to OUT/verify.json
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from safetensors.torch import load_file, save_file
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma3Config, Gemma3TextConfig, LlamaConfig, MistralConfig,
                          MixtralConfig, Phi3Config, Qwen2Config, Qwen3Config, Qwen3MoeConfig, SiglipVisionConfig)

torch.set_num_threads(1)

COMMON = dict(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-5, initializer_range=0.2)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The attention of a mixture of experts (lf-model's `all` on one without dense layers; PEFT 0.22 puts
# MLP names on the fused 3-D expert parameters, and on a dense layer's linears too).
ATTENTION = TARGETS[:4]
# Phi-3's linears: q/k/v and gate/up are fused.
PHI3_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def configs():
    return {
        "llama": LlamaConfig(**COMMON),
        "mistral": MistralConfig(**COMMON, sliding_window=None),
        "qwen2": Qwen2Config(**COMMON, use_sliding_window=False, tie_word_embeddings=False),
        "llama_tied": LlamaConfig(**COMMON, tie_word_embeddings=True),
        "llama3_rope": LlamaConfig(**COMMON, rope_theta=500000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16}),
        "llama_linear": LlamaConfig(**COMMON, rope_scaling={"rope_type": "linear", "factor": 2.0}),
        "llama_bias": LlamaConfig(**COMMON, attention_bias=True),
        # Every layer attends to the last 8 positions of 24 (generation runs past it too).
        "mistral_window": MistralConfig(**COMMON, sliding_window=8),
        # head_dim 24 ≠ hidden / heads; per-head q/k norms.
        "qwen3": Qwen3Config(**COMMON, head_dim=24, tie_word_embeddings=False),
        # Layer 0 full attention, layer 1 a window of 8; biases on q/k/v/o; tied head.
        "qwen3_window": Qwen3Config(**COMMON, head_dim=16, attention_bias=True, use_sliding_window=True,
                                    sliding_window=8, max_window_layers=1, tie_word_embeddings=True),
        # The same layout written as layer_types.
        "qwen2_window": Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=8,
                                    layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=False),
        # Layer 0 sliding (window 8), layer 1 full; scores scaled by 24^-1/2 (not head_dim's); caps
        # small enough to bend the scores and logits.
        "gemma2": Gemma2Config(**COMMON, head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
                               attn_logit_softcapping=2.0, final_logit_softcapping=5.0),
        # Layers 0 and 2 sliding with the local RoPE base, layer 1 full with linear-scaled global RoPE;
        # untied head.
        "gemma3": Gemma3TextConfig(**{**COMMON, "num_hidden_layers": 3}, head_dim=16, query_pre_attn_scalar=24,
                                   sliding_window=8, tie_word_embeddings=False,
                                   layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                   rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                                       "rope_theta": 1e6},
                                                    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
        # Gemma 3's multimodal checkpoint (Gemma3ForConditionalGeneration): gemma3's text decoder with its
        # head tied, beside a one-layer SigLIP tower and the projector; saved as transformers 5 saves it
        # (`language_model.model.*`, `vision_tower.*`: the Hub's layout) ...
        "gemma3_mm": gemma3_multimodal(),
        # ... and in transformers 5's in-memory layout (`model.language_model.*`, `model.vision_tower.*`),
        # as transformers 4.52-4.57 saved it (see MULTIMODAL_V5).
        "gemma3_mm_v5": gemma3_multimodal(),
        # Fused qkv_proj and gate_up_proj, full rotary, default RoPE (Phi3Config's token ids lie outside
        # the tiny vocabulary).
        "phi3": Phi3Config(**COMMON, **PHI3_IDS),
        # Rotates the first half of each head; every layer attends to the last 8 positions; tied head.
        "phi3_window": Phi3Config(**COMMON, **PHI3_IDS, partial_rotary_factor=0.5, sliding_window=8,
                                  tie_word_embeddings=True),
        # LongRoPE past its original context of 16 (the 24-token batches use the long factors, generation
        # crosses from short to long), three quarters of each head rotated, attention factor derived from
        # 128 / 16.
        "phi3_longrope": Phi3Config(**COMMON, **PHI3_IDS, partial_rotary_factor=0.75, original_max_position_embeddings=16,
                                    rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 3.0],
                                                  "long_factor": [1.0, 2.0, 4.5, 8.0, 16.0, 40.0]}),
        # LongRoPE within its original context of 32 (short factors throughout, attention factor from 128 / 32),
        # written as the legacy `su` scaling of the Hub's Phi-3 128k checkpoints (see LEGACY_CONFIGS).
        "phi3_su": Phi3Config(**COMMON, **PHI3_IDS, original_max_position_embeddings=32,
                              rope_scaling={"rope_type": "longrope",
                                            "short_factor": [1.0, 1.05, 1.1, 1.2, 1.4, 1.7, 2.1, 2.6],
                                            "long_factor": [1.0, 1.5, 2.5, 4.0, 7.0, 12.0, 20.0, 33.0]}),
    }


def gemma3_multimodal():
    text = Gemma3TextConfig(**{**COMMON, "num_hidden_layers": 3}, head_dim=16, query_pre_attn_scalar=24,
                            sliding_window=8, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                                             "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    return Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
                        image_token_index=95, boi_token_index=93, eoi_token_index=94)


# Multimodal models whose saved weights are renamed to transformers 5's in-memory layout.
MULTIMODAL_V5 = {"gemma3_mm_v5"}


def save_v5_layout(model_dir):
    """Renames a saved multimodal checkpoint's tensors from the legacy layout transformers 5 writes
    (`language_model.model.*`) to the one it holds in memory (`model.language_model.*`)."""
    path = os.path.join(model_dir, "model.safetensors")
    tensors = load_file(path)
    renamed = {}
    for k, v in tensors.items():
        if k.startswith("language_model.lm_head."):
            k = k[len("language_model."):]
        elif k.startswith("language_model.model."):
            k = "model.language_model." + k[len("language_model.model."):]
        elif k.startswith(("vision_tower.", "multi_modal_projector.")):
            k = "model." + k
        renamed[k] = v
    assert not any(k.startswith("language_model.") for k in renamed)
    save_file(renamed, path, metadata={"format": "pt"})


def language_model_targets(model, targets):
    """LLaMA-Factory's `patch_target_modules` on a composite model: the full path of every module
    whose name contains a target, outside the vision tower and the projector."""
    return [n for n, _ in model.named_modules()
            if any(t in n for t in targets) and "vision_tower" not in n and "multi_modal_projector" not in n]


PHI3_IDS = dict(pad_token_id=None, bos_token_id=None, eos_token_id=None)
# Families whose saved config.json is rewritten in the pre-transformers-5 layout the Hub's files use.
LEGACY_CONFIGS = {"phi3_su": "su"}


def save_legacy_config(model_dir, scaling_type):
    """Rewrites a saved config.json as the Hub's Phi-3 files spell it: top-level rope_theta and a
    `rope_scaling` of type `scaling_type` instead of transformers 5's rope_parameters."""
    path = os.path.join(model_dir, "config.json")
    with open(path) as f:
        c = json.load(f)
    params = c.pop("rope_parameters")
    c["rope_theta"] = params["rope_theta"]
    c["rope_scaling"] = {"type": scaling_type, "short_factor": params["short_factor"],
                         "long_factor": params["long_factor"]}
    with open(path, "w") as f:
        json.dump(c, f, indent=2)


def save_model(model, model_dir, name):
    model.save_pretrained(model_dir)
    if name in LEGACY_CONFIGS:
        save_legacy_config(model_dir, LEGACY_CONFIGS[name])
    if name in MULTIMODAL_V5:
        save_v5_layout(model_dir)


def build(cfg, seed):
    torch.manual_seed(seed)
    # Gemma 2 has no SDPA path in transformers (soft-capping): its reference is eager.
    attn = "eager" if cfg.model_type == "gemma2" else "sdpa"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.2)
    return model.eval()


def forward(out):
    for i, (name, cfg) in enumerate(configs().items()):
        model = build(cfg, 100 + i)
        d = os.path.join(out, name)
        save_model(model, os.path.join(d, "model"), name)
        g = torch.Generator().manual_seed(7 + i)
        ids = torch.randint(0, cfg.get_text_config().vocab_size, (2, 24), generator=g)
        # Right padding, as lf-data batches: row 1 ends in 7 pad tokens masked out.
        padded = ids.clone()
        padded[1, 17:] = 0
        mask = torch.ones_like(padded)
        mask[1, 17:] = 0
        with torch.no_grad():
            logits = model(input_ids=ids).logits.float()
            padded_logits = model(input_ids=padded, attention_mask=mask).logits.float()
            prompt = ids[:1, :6]
            gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, min_new_tokens=12,
                                 do_sample=False, pad_token_id=0, eos_token_id=None)
        save_file({"input_ids": ids, "logits": logits.contiguous(), "generated": gen[0, 6:].contiguous(),
                   "padded_ids": padded, "padded_mask": mask, "padded_logits": padded_logits.contiguous()},
                  os.path.join(d, "reference.safetensors"))


def moe_configs():
    aux = dict(output_router_logits=True)
    return {
        # 4 experts, top-2, every layer windowed to 8 of 24 positions.
        "mixtral": MixtralConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
                                 router_aux_loss_coef=0.05, **aux),
        # 6 experts, top-3 without renormalisation; layer 1 dense (mlp_only_layers).
        "qwen3_moe": Qwen3MoeConfig(**{**COMMON, "num_hidden_layers": 3}, head_dim=16, moe_intermediate_size=40,
                                    num_experts=6, num_experts_per_tok=3, norm_topk_prob=False, mlp_only_layers=[1],
                                    router_aux_loss_coef=0.05, **aux),
        # Renormalised top-2 of 5; decoder_sparse_step 2 makes layer 0 dense, layer 1 sparse; the
        # aux loss is reported but not added (output_router_logits off).
        "qwen3_moe_norm": Qwen3MoeConfig(**COMMON, moe_intermediate_size=40, num_experts=5, num_experts_per_tok=2,
                                         norm_topk_prob=True, decoder_sparse_step=2, tie_word_embeddings=True),
    }


def moe(out):
    for i, (name, cfg) in enumerate(moe_configs().items()):
        model = build(cfg, 300 + i)
        d = os.path.join(out, name)
        model.save_pretrained(os.path.join(d, "model"))
        g = torch.Generator().manual_seed(40 + i)
        ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=g)
        padded = ids.clone()
        padded[1, 17:] = 0
        mask = torch.ones_like(padded)
        mask[1, 17:] = 0
        labels = padded.clone()
        labels[:, :6] = -100
        labels[mask == 0] = -100
        with torch.no_grad():
            plain = model(input_ids=ids, output_router_logits=True)
            padded_out = model(input_ids=padded, attention_mask=mask, labels=labels, output_router_logits=True)
            # The loss transformers trains with: the config's output_router_logits decides.
            padded_loss = model(input_ids=padded, attention_mask=mask, labels=labels).loss
            prompt = ids[:1, :6]
            gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, min_new_tokens=12,
                                 do_sample=False, pad_token_id=0, eos_token_id=None)
        # A training step on the right-padded batch as LLaMA-Factory runs it (attention mask given,
        # so the load-balancing loss leaves padding out): every parameter's gradient.
        model.train()
        model.zero_grad()
        model(input_ids=padded, attention_mask=mask, labels=labels).loss.backward()
        grads = {"grad." + n: p.grad.float().contiguous() for n, p in model.named_parameters()}
        model.eval()
        router = torch.stack([r.float() for r in plain.router_logits])
        chosen = torch.stack([torch.topk(torch.softmax(r.float(), -1), cfg.num_experts_per_tok, -1).indices
                              for r in plain.router_logits])
        save_file({"input_ids": ids, "logits": plain.logits.float().contiguous(), "router_logits": router.contiguous(),
                   "chosen": chosen.contiguous(), "aux_loss": plain.aux_loss.reshape(1).float(),
                   "padded_ids": padded, "padded_mask": mask, "labels": labels,
                   "padded_logits": padded_out.logits.float().contiguous(),
                   "padded_aux_loss": padded_out.aux_loss.reshape(1).float(),
                   "padded_loss": padded_loss.reshape(1).float(), "generated": gen[0, 6:].contiguous(), **grads},
                  os.path.join(d, "reference.safetensors"))


def batch(vocab):
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, vocab, (3, 20), generator=g)
    labels = ids.clone()
    labels[:, :6] = -100              # prompt
    labels[1, 15:] = -100             # right padding
    ids[1, 15:] = 0
    return ids, labels


def summed_loss(logits, labels):
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")


def peft_name(name):
    return name.replace(".default.weight", ".weight").replace("lora_magnitude_vector.weight", "lora_magnitude_vector") \
        if "lora_magnitude_vector" not in name else name.replace(".default.weight", "").replace(".default", "")


# variant: (base model family, LoraConfig extras); bases live in OUT/base/<family>.
VARIANTS = {
    "lora": ("llama", {}),
    "rslora": ("llama", {"use_rslora": True}),
    "dora": ("llama", {"use_dora": True}),
    "qwen3_lora": ("qwen3", {}),
    "qwen3_dora": ("qwen3", {"use_dora": True}),
    "mistral_window_lora": ("mistral_window", {}),
    "gemma2_lora": ("gemma2", {}),
    "gemma3_dora": ("gemma3", {"use_dora": True}),
    # Mixtures of experts, attention adapters; the loss includes router_aux_loss_coef × aux_loss.
    "mixtral_lora": ("mixtral", {"target_modules": ATTENTION}),
    "qwen3_moe_dora": ("qwen3_moe", {"use_dora": True, "target_modules": ATTENTION}),
    # LoRA on the router and experts (transformers 5's MixtralTopKRouter.weight and fused 3-D expert
    # parameters, which PEFT wraps with ParamWrapper): transformers 4's names, which PEFT's conversion
    # maps to target_parameters (w1+w3 fused into gate_up_proj at rank 2r, alpha 2α; w2; gate) ...
    "mixtral_experts_lora": ("mixtral", {"target_modules": ATTENTION + ["w1", "w3", "w2", "gate"]}),
    # ... the parameters by their own names (gate_up_proj at rank r, no down_proj: its wrapper is the
    # outer one), with rsLoRA ...
    "qwen3_moe_experts_rslora": ("qwen3_moe", {"use_rslora": True, "target_modules": ["q_proj", "v_proj"],
                                               "target_parameters": ["gate_up_proj", "gate.weight"]}),
    # ... and down_proj alone: the experts' parameter and, since PEFT 0.22, layer 1's dense
    # down_proj too (0.21's conversion moved the name out of target_modules).
    "qwen3_moe_down_lora": ("qwen3_moe", {"target_modules": ["down_proj"]}),
    # The 20-token batch is past phi3_longrope's original context (long factors) and phi3_window's window.
    "phi3_lora": ("phi3_longrope", {}),
    "phi3_dora": ("phi3_window", {"use_dora": True}),
    "phi3_su_rslora": ("phi3_su", {"use_rslora": True}),
    # The multimodal Gemma 3, LoRA on its language model's linears as LLaMA-Factory targets them (full
    # module paths; see language_model_targets), in both checkpoint layouts.
    "gemma3_mm_lora": ("gemma3_mm", {}),
    "gemma3_mm_v5_dora": ("gemma3_mm_v5", {"use_dora": True}),
}


def base_dir(out, variant):
    return os.path.join(out, "base", VARIANTS[variant][0])


def peft_init(out):
    from peft import LoraConfig, get_peft_model
    cfgs = {**configs(), **moe_configs()}
    for family in sorted({f for f, _ in VARIANTS.values()}):
        save_model(build(cfgs[family], 5), os.path.join(out, "base", family), family)
    ids, labels = batch(cfgs["llama"].vocab_size)
    save_file({"input_ids": ids, "labels": labels}, os.path.join(out, "batch.safetensors"))
    for k, (variant, (family, extra)) in enumerate(VARIANTS.items()):
        model = AutoModelForCausalLM.from_pretrained(base_dir(out, variant), dtype=torch.float32)
        targets = PHI3_TARGETS if cfgs[family].model_type == "phi3" else TARGETS
        if cfgs[family].model_type == "gemma3":
            targets = language_model_targets(model, targets)
        lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                          **{"target_modules": targets, **extra})
        model = get_peft_model(model, lcfg)
        g = torch.Generator().manual_seed(20 + k)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
                elif "lora_magnitude_vector" in name:
                    p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        d = os.path.join(out, variant)
        model.save_pretrained(os.path.join(d, "init"))
        model.train()
        output = model(input_ids=ids)
        loss = summed_loss(output.logits, labels)
        # A mixture of experts with output_router_logits adds its weighted load-balancing loss (no
        # attention mask: lf-model's trainer passes none).
        aux = output.aux_loss * model.config.router_aux_loss_coef if getattr(output, "aux_loss", None) is not None else 0
        (loss + aux).backward()
        ref = {"loss_sum": loss.detach().reshape(1)}
        for name, p in model.named_parameters():
            if p.requires_grad:
                ref["grad." + peft_name(name)] = p.grad.contiguous()
        save_file(ref, os.path.join(d, "reference.safetensors"))


def peft_verify(out):
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    ids, _ = batch(96)
    report = {}
    for variant in VARIANTS:
        d = os.path.join(out, variant)
        model = AutoModelForCausalLM.from_pretrained(base_dir(out, variant), dtype=torch.float32)
        lcfg = LoraConfig.from_pretrained(os.path.join(d, "trained"))
        model = get_peft_model(model, lcfg)
        result = set_peft_model_state_dict(model, load_file(os.path.join(d, "trained", "adapter_model.safetensors")))
        missing = [k for k in result.missing_keys if "lora_" in k]
        model.eval()
        ours = load_file(os.path.join(d, "ours.safetensors"))["logits"]
        with torch.no_grad():
            peft_logits = model(input_ids=ids).logits.float()
            merged = model.merge_and_unload()
            merged_logits = merged(input_ids=ids).logits.float()
            exported = AutoModelForCausalLM.from_pretrained(os.path.join(d, "merged"), dtype=torch.float32).eval()
            export_logits = exported(input_ids=ids).logits.float()
        scale = peft_logits.abs().max().item()
        # A multimodal export: its vision tower and projector must be the base's, bit for bit.
        base = AutoModelForCausalLM.from_pretrained(base_dir(out, variant), dtype=torch.float32).state_dict()
        outside = {k: v for k, v in exported.state_dict().items() if "vision_tower" in k or "multi_modal_projector" in k}
        report[variant] = {
            "export_class": type(exported).__name__,
            "passthrough_tensors": len(outside),
            "passthrough_max_diff": max([(v - base[k]).abs().max().item() for k, v in outside.items()], default=0.0),
            "unexpected_keys": list(result.unexpected_keys),
            "missing_keys": missing,
            "peft_vs_ours": (peft_logits - ours).abs().max().item() / scale,
            "export_vs_merge": (export_logits - merged_logits).abs().max().item() / scale,
            "export_vs_peft": (export_logits - peft_logits).abs().max().item() / scale,
        }
    with open(os.path.join(out, "verify.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    {"forward": forward, "moe": moe, "peft-init": peft_init, "peft-verify": peft_verify}[mode](out)
