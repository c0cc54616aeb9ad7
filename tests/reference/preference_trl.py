"""TRL's preference trainers as the reference for lf-trainer's `stage: dpo` (the parity tests of
trainer/tests/preference_parity.rs).

Usage: preference_trl.py OUT_DIR LOSS [BATCH ACCUMULATION]
       preference_trl.py OUT_DIR assets    (the model, adapter0 and twelve pairs only, no TRL run:
                                            lf-trainer's own loop tests)
  LOSS: sigmoid, hinge, ipo, orpo, simpo, or sigmoid+ftx (DPO plus pref_ftx 0.5 times the chosen
  answers' mean token NLL: TRL's loss_type ["sigmoid", "sft"] with weights [1, 0.5]), or
  sigmoid-full: DPO fine-tuning every weight (no PEFT; TRL loads its reference model from the same
  directory). Its one-step SGD run has learning rate 1000, so that the saved weights' difference
  from the start, divided by 1000, is the gradient well above the weights' fp32 rounding; it has
  no AdamW run.
  BATCH x ACCUMULATION must be 4 (default 2 x 2). TRL's ORPO NLL and its "sft" loss are token means
  over a micro-batch where LLaMA-Factory's are per-pair means, so those runs use batch 1.

Writes, all seeded:
  OUT_DIR/model          a tiny random Llama (tests/reference/trainer_make_tiny.py) and its tokenizer
  OUT_DIR/adapter0       a PEFT LoRA adapter as PEFT initialises it (A random, B zero)
  OUT_DIR/data           four preference pairs (alpaca ranking format) + dataset_info.json
  OUT_DIR/trl_ids.json   TRL's tokenisation of the pairs: [{prompt_ids, chosen_ids, rejected_ids}]
  OUT_DIR/sgd/           one step of SGD (lr 1, no clipping) from adapter0 over all four pairs
                         (one optimiser step): the adapter after it (B = -gradient, as B
                         starts at 0) and log.json, TRL's logged metrics of the step
  OUT_DIR/sgd3/          three such steps: the adapter after them and every step's metrics
  OUT_DIR/adamw/         three steps of AdamW (lr 1e-2): the adapter after them and the metrics

The batch holds every pair, so the order the sampler draws them in changes nothing.
DPO losses run on TRL's DPOTrainer, ORPO on trl.experimental's ORPOTrainer, SimPO on its
CPOTrainer with `loss_type="simpo"` and `cpo_alpha=0` (no added NLL term). beta 0.1, simpo_gamma 0.5.
Every prompt starts with the BOS word, which ORPO's and CPO's tokenisation would otherwise add.
TRL's ORPO trains its NLL term on the prompt tokens too, LLaMA-Factory's (and lf-trainer's) on the
answer only: the ORPO run's prompts are the BOS word alone, where the two coincide.
AdamW runs with adam_epsilon 1e-4 (on both sides): with 1e-8 an element whose gradient is below
the gradients' rounding makes a full step of arbitrary sign, on either side.
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

PAIRS = [
    ("<s> tell me about the cat", " the cat runs fast </s>", " dog </s>"),
    ("<s> what is the opposite of hot", " cold </s>", " the sun is very hot today </s>"),
    ("<s> write a story about a river", " the river flows near the old tree </s>", " no </s>"),
    ("<s> give me a colour", " blue </s>", " red green </s>"),
]
BETA = 0.1
SIMPO_GAMMA = 0.5
FTX = 0.5
# The loop tests' extra pairs (assets mode): 12 pairs in all.
EXTRA_PAIRS = [
    ("<s> what is the opposite of up", " down </s>", " left right up </s>"),
    ("<s> tell me about the moon", " the moon shines at night </s>", " sun </s>"),
    ("<s> which bird sings", " the small bird sings </s>", " fish swims </s>"),
    ("<s> what is the opposite of fast", " slow </s>", " very fast </s>"),
    ("<s> tell me about a star", " a star is light </s>", " dark </s>"),
    ("<s> give me a word", " happy </s>", " sad sad </s>"),
    ("<s> where is the river", " near the old stone </s>", " far </s>"),
    ("<s> what is the opposite of open", " closed </s>", " open door </s>"),
]


def write_data(data_dir, pairs=None):
    """The ranking dataset `pref` (alpaca columns) of `pairs` in `data_dir`; by default the
    current PAIRS (main() rebinds it for some modes, so not a default bound at definition)."""
    os.makedirs(data_dir, exist_ok=True)
    rows = [{"instruction": p, "chosen": c, "rejected": r} for p, c, r in (PAIRS if pairs is None else pairs)]
    with open(os.path.join(data_dir, "pref.json"), "w") as f:
        json.dump(rows, f, indent=1)
    info = {"pref": {"file_name": "pref.json", "ranking": True,
                     "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}}}
    with open(os.path.join(data_dir, "dataset_info.json"), "w") as f:
        json.dump(info, f, indent=1)


def make_adapter(model_dir, out):
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    get_peft_model(base, cfg).save_pretrained(out)


def trainer_for(loss, model, tok, dataset, out, optim, lr, steps, batch=2, accumulation=2):
    common = dict(output_dir=out, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                  learning_rate=lr, lr_scheduler_type="constant", max_grad_norm=0.0, optim=optim,
                  weight_decay=0.0, max_steps=steps, logging_steps=1, save_strategy="no", report_to="none",
                  use_cpu=True, seed=42, beta=BETA, dataloader_num_workers=0, adam_epsilon=1e-4,
                  # TRL's configs turn bf16 autocast on by default; the comparison is in fp32.
                  bf16=False, fp16=False)
    if loss in ("sigmoid", "hinge", "ipo", "sigmoid+ftx"):
        from trl import DPOConfig, DPOTrainer
        if loss == "sigmoid+ftx":
            args = DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0, FTX], **common)
        else:
            args = DPOConfig(loss_type=[loss], **common)
        return DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
    if loss == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        args = ORPOConfig(**common)
        return ORPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
    if loss == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer
        args = CPOConfig(loss_type="simpo", cpo_alpha=0.0, simpo_gamma=SIMPO_GAMMA, **common)
        return CPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
    raise SystemExit(f"unknown loss {loss}")


def token_ids(dataset):
    """The trainer's tokenisation as {prompt_ids, chosen_ids, rejected_ids} per pair."""
    rows = []
    for row in dataset:
        if "prompt_ids" in row:
            rows.append({k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")})
            continue
        prompt = row["prompt_input_ids"]
        for key in ("chosen_input_ids", "rejected_input_ids"):
            assert row[key][: len(prompt)] == prompt, "the answer sequences start with the prompt"
        rows.append({"prompt_ids": prompt, "chosen_ids": row["chosen_input_ids"][len(prompt):],
                     "rejected_ids": row["rejected_input_ids"][len(prompt):]})
    return rows


def run(loss, root, name, optim, lr, steps, batch, accumulation, full=False):
    out = os.path.join(root, name)
    tok = AutoTokenizer.from_pretrained(os.path.join(root, "model"))
    base = AutoModelForCausalLM.from_pretrained(os.path.join(root, "model"), torch_dtype=torch.float32)
    if full:
        model = base
    else:
        model = PeftModel.from_pretrained(base, os.path.join(root, "adapter0"), is_trainable=True)
    dataset = Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS])
    trainer = trainer_for(loss, model, tok, dataset, out, optim, lr, steps, batch, accumulation)
    if name == "sgd":
        with open(os.path.join(root, "trl_ids.json"), "w") as f:
            json.dump(token_ids(trainer.train_dataset), f)
    trainer.train()
    model.save_pretrained(out)
    with open(os.path.join(out, "log.json"), "w") as f:
        json.dump(trainer.state.log_history, f, indent=1)


def main():
    global PAIRS
    root, loss = sys.argv[1], sys.argv[2]
    full = loss.endswith("-full")
    loss = loss.removesuffix("-full")
    if loss == "assets":
        PAIRS = PAIRS + EXTRA_PAIRS
    if loss == "orpo":
        PAIRS = [("<s>", chosen, rejected) for _, chosen, rejected in PAIRS]
    batch, accumulation = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (2, 2)
    assert loss == "assets" or batch * accumulation == len(PAIRS), "every step holds every pair"
    model_dir = os.path.join(root, "model")
    os.makedirs(model_dir, exist_ok=True)
    vocab = make_tokenizer(model_dir)
    make_model(model_dir, vocab, 2, 64, 64)
    make_adapter(model_dir, os.path.join(root, "adapter0"))
    write_data(os.path.join(root, "data"))
    if loss == "assets":
        return
    if full:
        run(loss, root, "sgd", "sgd", 1000.0, 1, batch, accumulation, full=True)
        run(loss, root, "sgd3", "sgd", 1.0, 3, batch, accumulation, full=True)
        return
    run(loss, root, "sgd", "sgd", 1.0, 1, batch, accumulation)
    run(loss, root, "sgd3", "sgd", 1.0, 3, batch, accumulation)
    run(loss, root, "adamw", "adamw_torch", 1e-2, 3, batch, accumulation)


if __name__ == "__main__":
    main()
