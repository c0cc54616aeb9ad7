"""Builds a tiny random Llama (or, with --family, Qwen3, Gemma 3 text, Mixtral, Qwen3-MoE or Phi-3) model directory and tiny
alpaca data for lf-trainer's tests.

Usage: trainer_make_tiny.py OUT_DIR [--layers N --hidden H --seq S --examples N]

Writes OUT_DIR/model (config.json, model.safetensors via transformers' save_pretrained,
tokenizer.json built with `tokenizers` (word level), tokenizer_config.json) and OUT_DIR/data
(dataset_info.json + tiny.json in alpaca format). Everything is seeded, so the same arguments give
the same files.
"""
import argparse
import json
import os
import random

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import (AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, MixtralConfig, Phi3Config, Qwen3Config,
                          Qwen3MoeConfig)

WORDS = (
    "the a an cat dog bird fish tree river stone cloud sun moon star red blue green small big old new "
    "runs jumps sings swims grows flows sits shines falls rises is was very quite rather near far over under "
    "what which who where why how tell me about write answer question story colour opposite of word give "
    "hot cold up down left right day night happy sad fast slow light dark open closed"
).split()
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def make_tokenizer(out):
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for w in WORDS + ["###", "Instruction:", "Response:", "Input:", "Below", "instruction", "task.", ",", ".", ":", "?"]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    tok.save(os.path.join(out, "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "add_bos_token": False,
        "model_max_length": 4096,
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return len(vocab)


def make_model(out, vocab, layers, hidden, seq, family="llama"):
    torch.manual_seed(0)
    heads = max(2, hidden // 64)
    # qwen3: per-head q/k norms; gemma3_text: (1 + w) norms after attention and MLP, q/k norms,
    # scaled embeddings, a window shorter than the sequences on its sliding layers.
    extra = {
        "llama": {},
        "qwen3": {"head_dim": hidden // heads},
        "gemma3_text": {"head_dim": hidden // heads, "query_pre_attn_scalar": hidden // heads,
                        "sliding_window": 16, "layer_types": ["sliding_attention"] * (layers - 1) + ["full_attention"]},
        # Mixtures of experts that train with their load-balancing loss; Qwen3-MoE's first layer dense.
        "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2, "output_router_logits": True},
        "qwen3_moe": {"head_dim": hidden // heads, "num_experts": 4, "num_experts_per_tok": 2,
                      "moe_intermediate_size": hidden, "norm_topk_prob": True, "mlp_only_layers": [0],
                      "output_router_logits": True},
        # phi3: fused qkv_proj and gate_up_proj, half of each head rotated, a window shorter than the
        # sequences, longrope whose long factors take over past 32 positions.
        "phi3": {"partial_rotary_factor": 0.5, "sliding_window": 16, "original_max_position_embeddings": 32,
                 "rope_scaling": {"rope_type": "longrope", "short_factor": [1.0 + 0.05 * i for i in range(hidden // heads // 4)],
                                  "long_factor": [1.0 + 0.5 * i for i in range(hidden // heads // 4)]}},
    }[family]
    config_class = {"llama": LlamaConfig, "qwen3": Qwen3Config, "gemma3_text": Gemma3TextConfig,
                    "mixtral": MixtralConfig, "qwen3_moe": Qwen3MoeConfig, "phi3": Phi3Config}[family]
    cfg = config_class(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2 + hidden // 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=max(512, seq),
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
        **extra,
    )
    model = AutoModelForCausalLM.from_config(cfg).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)


def make_data(out, n, seq):
    rnd = random.Random(0)
    rows = []
    for i in range(n):
        q = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(3, 12)))
        # Long answers when a long sequence is asked for (the benchmark), short ones otherwise.
        alen = rnd.randint(4, 16) if seq <= 64 else rnd.randint(seq // 3, seq // 2)
        a = " ".join(rnd.choice(WORDS) for _ in range(alen))
        rows.append({"instruction": f"tell me {q}", "input": "", "output": a})
    with open(os.path.join(out, "tiny.json"), "w") as f:
        json.dump(rows, f, indent=1)
    # Preference pairs (`stage: dpo`) of the same questions: the answer against another one. A
    # generator of its own, so that tiny.json stays what it was.
    prnd = random.Random(1)
    pairs = [{"instruction": r["instruction"], "chosen": r["output"],
              "rejected": prnd.choice(rows)["output"]} for r in rows]
    with open(os.path.join(out, "tiny_pref.json"), "w") as f:
        json.dump(pairs, f, indent=1)
    with open(os.path.join(out, "dataset_info.json"), "w") as f:
        json.dump({"tiny": {"file_name": "tiny.json"},
                   "tiny_pref": {"file_name": "tiny_pref.json", "ranking": True}}, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--family", default="llama", choices=["llama", "qwen3", "gemma3_text", "mixtral", "qwen3_moe", "phi3"])
    args = ap.parse_args()
    model_dir = os.path.join(args.out, "model")
    data_dir = os.path.join(args.out, "data")
    os.makedirs(model_dir, exist_ok=True)
    os.makedirs(data_dir, exist_ok=True)
    vocab = make_tokenizer(model_dir)
    make_model(model_dir, vocab, args.layers, args.hidden, args.seq, args.family)
    make_data(data_dir, args.examples, args.seq)
    print(json.dumps({"model": model_dir, "data": data_dir, "vocab": vocab}))


if __name__ == "__main__":
    main()
