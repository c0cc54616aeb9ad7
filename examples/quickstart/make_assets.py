#!/usr/bin/env python3
"""Builds the quick start's bundled base model and datasets from this project's own data.

Everything here is generated: a word list of opposites, a small plain-text corpus written from it,
a byte-level BPE tokenizer trained on that corpus, and a 1M-parameter Llama-architecture model
pre-trained on it with Hugging Face `transformers` (a development-time tool: the product never runs
Python). The fine-tuning task is answering "what is the opposite of X" in a chat format the base
model has never seen; held-out words are never in the fine-tuning data, only in the pre-training
corpus, so the accuracy gain measures instruction following on top of pre-trained knowledge.

Run from the repository root:  .venv/bin/python examples/quickstart/make_assets.py
The output is deterministic for a given torch version (seeded).
"""
import json
import os
import random
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = os.path.join(HERE, "model")
DATA_DIR = os.path.join(HERE, "data")
SEED = 1234

PAIRS = [
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
    ("light", "dark"), ("open", "closed"), ("old", "new"), ("rich", "poor"), ("early", "late"),
    ("hard", "soft"), ("high", "low"), ("long", "short"), ("full", "empty"), ("wet", "dry"),
    ("strong", "weak"), ("loud", "quiet"), ("clean", "dirty"), ("thick", "thin"), ("near", "far"),
    ("left", "right"), ("inside", "outside"), ("day", "night"), ("win", "lose"), ("push", "pull"),
    ("buy", "sell"), ("true", "false"), ("first", "last"), ("heavy", "empty"), ("sweet", "sour"),
    ("black", "white"), ("north", "south"), ("east", "west"), ("front", "back"), ("start", "finish"),
    ("above", "below"), ("before", "after"), ("friend", "enemy"), ("give", "take"), ("young", "aged"),
    ("wide", "narrow"), ("deep", "shallow"), ("brave", "afraid"), ("sharp", "dull"), ("cheap", "costly"),
    ("simple", "complex"), ("awake", "asleep"), ("arrive", "leave"), ("laugh", "cry"), ("float", "sink"),
    ("summer", "winter"), ("top", "bottom"), ("on", "off"), ("yes", "no"), ("always", "never"),
    ("more", "less"), ("alive", "dead"), ("rough", "smooth"), ("tall", "tiny"), ("safe", "risky"),
]
# "heavy" has no unique antonym in this list; keep the mapping a function by fixing it here.
PAIRS = [(a, "light") if a == "heavy" else (a, b) for a, b in PAIRS]
HELD_OUT = 12  # pairs used only for evaluation (both directions)

QUESTIONS_TRAIN = [
    "What is the opposite of {w}?",
    "Give the opposite of {w}.",
    "Opposite of {w}?",
    "Tell me the opposite of the word {w}.",
]
QUESTION_EVAL = "What is the opposite of {w}?"

FILLER = [
    "the {a} cat sat by the door .", "a {a} day in the town .", "we saw a {a} tree .",
    "my friend is {a} today .", "the road was {a} and {b} .", "it is {a} , not {b} .",
]


def corpus(pairs, rng):
    lines = []
    for a, b in pairs:
        for x, y in ((a, b), (b, a)):
            lines += [
                f"the opposite of {x} is {y} .",
                f"{y} is the opposite of {x} .",
                f"what is the opposite of {x} ? {y} .",
                f"opposite of {x} : {y} .",
            ]
            lines += [rng.choice(FILLER).format(a=x, b=y) for _ in range(2)]
    rng.shuffle(lines)
    return lines


def build_tokenizer(lines):
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|pad|>", "<|begin_of_text|>", "<|end_of_text|>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Teach the tokenizer the words' chat spellings too (capitalised questions, punctuation).
    extra = [q.format(w=w) for a, b in PAIRS for w in (a, b) for q in QUESTIONS_TRAIN]
    tok.train_from_iterator(lines + extra, trainer=trainer)
    return tok, specials


CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}<|assistant|> {{ message['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def main():
    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    os.makedirs(MODEL_DIR, exist_ok=True)
    os.makedirs(DATA_DIR, exist_ok=True)

    lines = corpus(PAIRS, rng)
    tok, specials = build_tokenizer(lines)
    pad_id, bos_id, eos_id = (tok.token_to_id(s) for s in specials[:3])
    tok.save(os.path.join(MODEL_DIR, "tokenizer.json"))
    with open(os.path.join(MODEL_DIR, "tokenizer_config.json"), "w") as f:
        json.dump({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": "<|pad|>",
            "add_bos_token": False, "add_eos_token": False,
            "model_max_length": 256, "chat_template": CHAT_TEMPLATE,
        }, f, indent=2)

    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=352, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=bos_id, eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    model = LlamaForCausalLM(config)
    ids = [[bos_id] + tok.encode(line).ids + [eos_id] for line in lines]
    flat = [t for seq in ids for t in seq]
    block, batch = 64, 32
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = int(os.environ.get("LF_PRETRAIN_STEPS", "600"))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.05)
    data = torch.tensor(flat)
    t0 = time.time()
    for step in range(steps):
        starts = torch.randint(0, len(flat) - block - 1, (batch,))
        x = torch.stack([data[s:s + block] for s in starts])
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step(); opt.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            print(f"pretrain step {step} loss {out.loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    model = model.to(torch.bfloat16)
    model.save_pretrained(MODEL_DIR, safe_serialization=True)

    # Fine-tuning data: the train pairs with several phrasings; held-out pairs only in the eval file.
    train_pairs, held_pairs = PAIRS[HELD_OUT:], PAIRS[:HELD_OUT]
    train = []
    for a, b in train_pairs:
        for x, y in ((a, b), (b, a)):
            for q in QUESTIONS_TRAIN:
                train.append({"instruction": q.format(w=x), "input": "", "output": y})
    rng.shuffle(train)
    held = [{"instruction": QUESTION_EVAL.format(w=x), "input": "", "output": y}
            for a, b in held_pairs for x, y in ((a, b), (b, a))]
    with open(os.path.join(DATA_DIR, "opposites_train.json"), "w") as f:
        json.dump(train, f, indent=1)
    with open(os.path.join(DATA_DIR, "opposites_heldout.json"), "w") as f:
        json.dump(held, f, indent=1)
    with open(os.path.join(DATA_DIR, "dataset_info.json"), "w") as f:
        json.dump({
            "opposites": {"file_name": "opposites_train.json", "formatting": "alpaca"},
            "opposites_heldout": {"file_name": "opposites_heldout.json", "formatting": "alpaca"},
        }, f, indent=2)
    print(f"wrote {len(train)} training and {len(held)} held-out examples; "
          f"model {sum(p.numel() for p in model.parameters()):,} parameters")


if __name__ == "__main__":
    main()
