"""Reference tensors for the load-balancing loss of a mixture of experts on packed rows, from
transformers 5 (CPU, fp32; the tiny Mixtral and Qwen3-MoE of model_reference.py's `moe` mode).

Usage:
  moe_packing_reference.py packing OUT

For each family, OUT/<family>/model and OUT/<family>/reference.safetensors with two batches, each
built as LLaMA-Factory builds it:

- `neat_packing` (`neat.*`): several examples per row, position ids restarting at 0 at each example
  (and at the right padding), each example's first label masked (lf-data's `collate_packed`);
  LLaMA-Factory's attention mask holds segment indices (1, 2, 3, ... per example, 0 on padding).
  transformers attends block-diagonally when given the position ids without a mask (its
  `find_packed_sequence_indices`, what LLaMA-Factory's flash-attention path passes after dropping
  the padding), so the forward here is that; the load-balancing loss over the real tokens is
  `load_balancing_loss_func(..., attention_mask=segments > 0)`. Also recorded: the same function
  given the raw segment indices (a token of the k-th example weighs k), given no mask (padding
  counted), and whether the model's own forward with LLaMA-Factory's 4-D block-diagonal mask (its
  eager/sdpa path) computes a loss at all. The total loss `CE + router_aux_loss_coef * aux` and
  every parameter's gradient of it.
- `packing` (`pack.*`): examples concatenated into rows that attend across their boundaries,
  right-padded, the attention mask 1 on the rows' tokens and 0 on padding: the model's own
  `aux_loss` and `loss` given that mask, and its `aux_loss` given LLaMA-Factory's mask (which
  marks the padding it appends 1, "more efficient flash_attn").
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func  # noqa: E402

from model_reference import build, moe_configs  # noqa: E402

FAMILIES = ("mixtral", "qwen3_moe")
# Example lengths per row; rows are right-padded to S.
NEAT_ROWS = [[7, 5, 6], [9, 4]]
S = 20


def neat_batch(vocab, g):
    ids = torch.zeros(len(NEAT_ROWS), S, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    pos = torch.zeros_like(ids)
    seg = torch.zeros_like(ids)
    for r, lengths in enumerate(NEAT_ROWS):
        start = 0
        for k, n in enumerate(lengths):
            ids[r, start:start + n] = torch.randint(1, vocab, (n,), generator=g)
            labels[r, start + 1:start + n] = ids[r, start + 1:start + n]
            pos[r, start:start + n] = torch.arange(n)
            seg[r, start:start + n] = k + 1
            start += n
        pos[r, start:] = torch.arange(S - start)
    return ids, labels, pos, seg


def cross_entropy(logits, labels):
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                             labels[:, 1:].reshape(-1), ignore_index=-100)


def four_d_mask(seg):
    """LLaMA-Factory's `prepare_4d_attention_mask`: causal within a segment, 0 / min elsewhere."""
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
    causal = torch.tril(torch.ones(seg.shape[1], seg.shape[1], dtype=torch.bool))
    allowed = same & causal
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None]


def neat(model, cfg, g):
    ids, labels, pos, seg = neat_batch(cfg.vocab_size, g)
    e, k = model.num_experts, model.num_experts_per_tok
    model.zero_grad()
    out = model(input_ids=ids, position_ids=pos, use_cache=False, output_router_logits=True)
    aux = load_balancing_loss_func(out.router_logits, e, k, (seg > 0).long())
    ce = cross_entropy(out.logits, labels)
    total = ce + cfg.router_aux_loss_coef * aux
    total.backward()
    grads = {"neat.grad." + n: p.grad.float().contiguous() for n, p in model.named_parameters()}
    model.zero_grad()
    with torch.no_grad():
        by_segment = load_balancing_loss_func(out.router_logits, e, k, seg)
        unmasked = load_balancing_loss_func(out.router_logits, e, k, None)
        try:
            model(input_ids=ids, attention_mask=four_d_mask(seg), position_ids=pos, use_cache=False,
                  output_router_logits=True)
            four_d = 1
        except RuntimeError:
            four_d = 0
    return {"neat.ids": ids, "neat.labels": labels, "neat.position_ids": pos, "neat.segments": seg,
            "neat.logits": out.logits.detach().float().contiguous(),
            "neat.aux_loss": aux.detach().reshape(1), "neat.aux_loss_by_segment": by_segment.reshape(1),
            "neat.aux_loss_unmasked": unmasked.reshape(1), "neat.loss": total.detach().reshape(1),
            "neat.four_d_mask_runs": torch.tensor([four_d]), **grads}


def packed(model, cfg, g):
    ids = torch.randint(1, cfg.vocab_size, (2, S), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0
    ids[1, 14:] = 0
    labels = ids.clone()
    labels[:, :3] = -100
    labels[mask == 0] = -100
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels, output_router_logits=True)
        ones = model(input_ids=ids, attention_mask=torch.ones_like(mask), output_router_logits=True)
    return {"pack.ids": ids, "pack.mask": mask, "pack.labels": labels, "pack.aux_loss": out.aux_loss.reshape(1),
            "pack.loss": out.loss.reshape(1), "pack.aux_loss_padding_marked": ones.aux_loss.reshape(1)}


def packing(out):
    configs = moe_configs()
    for i, name in enumerate(FAMILIES):
        cfg = configs[name]
        model = build(cfg, 500 + i)
        d = os.path.join(out, name)
        model.save_pretrained(os.path.join(d, "model"))
        g = torch.Generator().manual_seed(60 + i)
        tensors = {**neat(model, cfg, g), **packed(model, cfg, g)}
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "reference.safetensors"))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "packing":
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(1)
    packing(sys.argv[2])
