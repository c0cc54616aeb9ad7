"""TRL's RewardTrainer as the reference for lf-trainer's `stage: rm` (trainer/tests/rm_parity.rs).

Usage: reward_trl.py OUT_DIR               build the assets and run TRL
       reward_trl.py OUT_DIR assets        the assets only (model, adapter0, data)
       reward_trl.py --score MODEL ADAPTER  print the rewards (JSON) transformers + PEFT give the
                                            pairs with ADAPTER loaded on MODEL as a reward model
                                            (ADAPTER `-`: MODEL is a whole reward model, as
                                            lf-trainer exports a `full`/`freeze` one)

Writes, all seeded:
  OUT_DIR/model          a tiny random Llama (tests/reference/trainer_make_tiny.py) and its tokenizer
  OUT_DIR/adapter0       a PEFT SEQ_CLS LoRA adapter on AutoModelForSequenceClassification
                         (num_labels=1): the `score` head as transformers initialises it, A as PEFT
                         does, B drawn N(0, 0.02) so that every gradient (A's too) is non-zero
  OUT_DIR/data           five preference pairs (alpaca ranking format) + dataset_info.json
  OUT_DIR/sgd/           one step of SGD with learning rate 1000 from adapter0 over all five pairs
                         (one micro-batch), grads.safetensors (every trainable gradient of that
                         step, as TRL computed it, under the adapter's names) and log.json
  OUT_DIR/sgd3/          three steps of SGD (lr 0.5): the adapter after them and every step's
                         metrics

The pad token (`<pad>`) is none of the sequences' tokens, so transformers' "last token that is not
the pad token" is each sequence's last token (its EOS), where lf-trainer reads the reward.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer_make_tiny import make_model, make_tokenizer  # noqa: E402
from preference_trl import PAIRS as DPO_PAIRS, write_data as write_pairs  # noqa: E402

from datasets import Dataset  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback  # noqa: E402

# The DPO reference's pairs and one more.
PAIRS = DPO_PAIRS + [("<s> what is the opposite of up", " down </s>", " left right up </s>")]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_data(data_dir):
    write_pairs(data_dir, PAIRS)


def reward_model(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


def make_adapter(model_dir, out):
    torch.manual_seed(1)
    model, _ = reward_model(model_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="SEQ_CLS", target_modules=TARGETS)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    peft_model.save_pretrained(out)


class Gradients(TrainerCallback):
    """Keeps every trainable gradient of the first step (before the optimiser uses it)."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.grads is None:
            self.grads = {saved_name(n): p.grad.detach().clone()
                          for n, p in self.model.named_parameters() if p.requires_grad}


def saved_name(name):
    """A parameter's name as PEFT saves it (no adapter name, the saved module's own name)."""
    return name.replace(".modules_to_save.default", "").replace(".default", "")


def run(root, name, optim, lr, steps):
    from trl import RewardConfig, RewardTrainer
    out = os.path.join(root, name)
    model, tok = reward_model(os.path.join(root, "model"))
    model = PeftModel.from_pretrained(model, os.path.join(root, "adapter0"), is_trainable=True)
    dataset = Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS])
    args = RewardConfig(output_dir=out, per_device_train_batch_size=len(PAIRS), gradient_accumulation_steps=1,
                        learning_rate=lr, lr_scheduler_type="constant", max_grad_norm=0.0, optim=optim,
                        weight_decay=0.0, max_steps=steps, logging_steps=1, save_strategy="no", report_to="none",
                        use_cpu=True, seed=42, dataloader_num_workers=0, bf16=False, fp16=False)
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
    grads = Gradients(model)
    trainer.add_callback(grads)
    trainer.train()
    model.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in grads.grads.items()}, os.path.join(out, "grads.safetensors"))
    with open(os.path.join(out, "log.json"), "w") as f:
        json.dump(trainer.state.log_history, f, indent=1)


def score(model_dir, adapter_dir):
    """With ADAPTER `-`, MODEL is a whole reward model (`…ForSequenceClassification`)."""
    if adapter_dir == "-":
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
        assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    else:
        model, tok = reward_model(model_dir)
        model = PeftModel.from_pretrained(model, adapter_dir).eval()
    rewards = []
    with torch.no_grad():
        for p, c, r in PAIRS:
            pair = []
            for text in (p + c, p + r):
                ids = tok(text, return_tensors="pt")["input_ids"]
                pair.append(model(input_ids=ids).logits[0, 0].item())
            rewards.append(pair)
    print(json.dumps(rewards))


def main():
    if sys.argv[1] == "--score":
        score(sys.argv[2], sys.argv[3])
        return
    root = sys.argv[1]
    model_dir = os.path.join(root, "model")
    os.makedirs(model_dir, exist_ok=True)
    vocab = make_tokenizer(model_dir)
    make_model(model_dir, vocab, 2, 64, 64)
    make_adapter(model_dir, os.path.join(root, "adapter0"))
    write_data(os.path.join(root, "data"))
    if sys.argv[2:] == ["assets"]:
        return
    run(root, "sgd", "sgd", 1000.0, 1)
    run(root, "sgd3", "sgd", 0.5, 3)


if __name__ == "__main__":
    main()
