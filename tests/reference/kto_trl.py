"""TRL's KTOTrainer as the reference for lf-trainer's `stage: kto` (trainer/tests/kto_parity.rs).

Usage: kto_trl.py OUT_DIR

Writes, all seeded:
  OUT_DIR/model          a tiny random Llama (tests/reference/trainer_make_tiny.py) and its tokenizer
  OUT_DIR/adapter0       a PEFT LoRA adapter as PEFT initialises it (A random, B zero): TRL's reference
                         is a frozen copy of the starting adapter, lf-trainer's (LLaMA-Factory's) the
                         base with the adapter off, which coincide at B = 0
  OUT_DIR/data           six unpaired examples (alpaca, a `kto_tag` column) + dataset_info.json
  OUT_DIR/trl_ids.json   TRL's tokenisation: [{prompt_ids, completion_ids, KL_completion_ids, label}]
  OUT_DIR/sgd/           one step of SGD (lr 1, no clipping) from adapter0 over the six examples
                         (B = -gradient after it, as B starts at 0) and log.json, TRL's logged
                         metrics of the step
  OUT_DIR/sgd3/          three such steps: the adapter after them and every step's metrics
  OUT_DIR/adamw/         three steps of AdamW (lr 1e-2, adam_epsilon 1e-4): the adapter and metrics

Settings: beta 0.1, desirable_weight 1.0, undesirable_weight 1.5 (LLaMA-Factory's
kto_chosen_weight / kto_rejected_weight), batch 6 without accumulation: each step is one
micro-batch holding every example, so the KL estimate covers the same six mismatched sequences
on both sides whatever order the sampler draws the examples in (TRL samples sequentially,
lf-trainer shuffles). Every prompt starts with the BOS word and every completion ends with EOS.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer_make_tiny import make_model, make_tokenizer  # noqa: E402

from datasets import Dataset  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

EXAMPLES = [
    ("<s> tell me about the cat", " the cat runs fast </s>", True),
    ("<s> what is the opposite of hot", " the sun is very hot today </s>", False),
    ("<s> write a story about a river", " the river flows near the old tree </s>", True),
    ("<s> give me a colour", " blue </s>", True),
    ("<s> what is the opposite of up", " left right up </s>", False),
    ("<s> tell me about the moon", " the moon shines at night </s>", True),
]
BETA = 0.1
DESIRABLE_WEIGHT = 1.0
UNDESIRABLE_WEIGHT = 1.5


def write_data(data_dir):
    os.makedirs(data_dir, exist_ok=True)
    rows = [{"instruction": p, "output": c, "kto_tag": t} for p, c, t in EXAMPLES]
    with open(os.path.join(data_dir, "feedback.json"), "w") as f:
        json.dump(rows, f, indent=1)
    info = {"feedback": {"file_name": "feedback.json",
                         "columns": {"prompt": "instruction", "response": "output", "kto_tag": "kto_tag"}}}
    with open(os.path.join(data_dir, "dataset_info.json"), "w") as f:
        json.dump(info, f, indent=1)


def make_adapter(model_dir, out):
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    get_peft_model(base, cfg).save_pretrained(out)


def run(root, name, optim, lr, steps):
    from trl import KTOConfig, KTOTrainer
    out = os.path.join(root, name)
    tok = AutoTokenizer.from_pretrained(os.path.join(root, "model"))
    base = AutoModelForCausalLM.from_pretrained(os.path.join(root, "model"), torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, os.path.join(root, "adapter0"), is_trainable=True)
    dataset = Dataset.from_list([{"prompt": p, "completion": c, "label": t} for p, c, t in EXAMPLES])
    args = KTOConfig(output_dir=out, per_device_train_batch_size=6, gradient_accumulation_steps=1,
                     learning_rate=lr, lr_scheduler_type="constant", max_grad_norm=0.0, optim=optim,
                     weight_decay=0.0, max_steps=steps, logging_steps=1, save_strategy="no", report_to="none",
                     use_cpu=True, seed=42, beta=BETA, desirable_weight=DESIRABLE_WEIGHT,
                     undesirable_weight=UNDESIRABLE_WEIGHT, dataloader_num_workers=0, adam_epsilon=1e-4,
                     bf16=False, fp16=False)
    trainer = KTOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
    if name == "sgd":
        rows = [{k: row[k] for k in ("prompt_ids", "completion_ids", "KL_completion_ids", "label")}
                for row in trainer.train_dataset]
        with open(os.path.join(root, "trl_ids.json"), "w") as f:
            json.dump(rows, f)
    trainer.train()
    model.save_pretrained(out)
    with open(os.path.join(out, "log.json"), "w") as f:
        json.dump(trainer.state.log_history, f, indent=1)


def main():
    root = sys.argv[1]
    model_dir = os.path.join(root, "model")
    os.makedirs(model_dir, exist_ok=True)
    vocab = make_tokenizer(model_dir)
    make_model(model_dir, vocab, 2, 64, 64)
    make_adapter(model_dir, os.path.join(root, "adapter0"))
    write_data(os.path.join(root, "data"))
    run(root, "sgd", "sgd", 1.0, 1)
    run(root, "sgd3", "sgd", 1.0, 3)
    run(root, "adamw", "adamw_torch", 1e-2, 3)


if __name__ == "__main__":
    main()
