//! Activation and loss memory of OUR trainer for one micro-batch of `b` sequences of `s` tokens
//! (`T = b·s`, `s = cutoff_len`, the longest a batch can be).
//!
//! What `lf-trainer` does (the facts this module encodes):
//!
//! - **Attention** is scaled-dot-product attention with the flash / memory-efficient kernels: it
//!   saves Q, K, V, the output and an fp32 log-sum-exp (`4·a` bytes per token), no `s²` term.
//!   `flash_attn: eager` materialises fp32 scores and compute-dtype probabilities per layer:
//!   `(4 + c)·a·s` bytes per token (≈ `6·a·s²·b` in bf16).
//! - **One decoder layer saves** (bytes per token, `c` = compute-dtype bytes): two RMSNorms with an
//!   fp32 input and rstd `2·(4h + 4)`; the q/k/v input `c·h`; Q, K, V after RoPE
//!   `c·(a·d + 2·a_kv·d)`; the attention output `c·a·d` (+ log-sum-exp); the MLP input `c·h`; SwiGLU
//!   gate, up, SiLU and product `4·c·i`. In bf16 that is ≈ `16·h + 4·a_kv·d + 8·i` (planner-notes
//!   A.6). Phi-3's fused `qkv_proj` and `gate_up_proj` save the same: RoPE copies the queries and
//!   keys out of the fused output and the values are copied out (so nothing keeps the whole
//!   fused output alive); the gate and up halves are the SwiGLU's two inputs. Qwen3's and
//!   Gemma 3's per-head q/k RMSNorms add their fp32 inputs and rstd,
//!   `4·(a·d + a_kv·d) + 4·(a + a_kv)`; Gemma's two extra norms (after attention, after the
//!   MLP) `2·(4h + 4)`.
//! - **Gemma 2 soft-caps attention scores**, which only the eager path computes: its layers
//!   always materialise the scores as `flash_attn: eager` does, plus the `tanh` output
//!   (`c·a·s` bytes per token). Each LoRA-adapted linear adds its rank-`r` intermediate `c·r` (DoRA also its `c·d_out`
//!   output; dropout > 0 its dropped-out input `(c + 1)·d_in`); LoRA on a sparse layer's router
//!   and experts adds the router's and, per routed expert, each expert adapter's.
//! - **Sliding windows** shorter than the sequence add a compute-dtype `[S, S]` mask per
//!   windowed layer, saved for backward ([`window_masks`]); the window itself saves nothing.
//! - **Backward of a layer** holds its input and output gradients and the gradients of the SwiGLU
//!   branches: `2·c·h + 2·c·i` per token.
//! - **A sparse MLP** (Mixtral, Qwen3-MoE) runs each token through `k` of its `E` experts: every
//!   expert is resident (model states), the activations are those of the routed tokens —
//!   `k` SwiGLUs of the expert size per token — plus the router's logits and probabilities
//!   (`mlp_saved_bytes`, `mlp_backward_bytes`).
//! - **Gradient checkpointing** keeps only each recomputed layer's input (`c·h` per token per
//!   layer) and recomputes one layer at a time, so the peak holds the checkpoints plus one layer's
//!   saved tensors plus its backward temporaries. Without it, every layer's saved tensors stay.
//!   Under `auto` the first `r` layers are recomputed and the rest keep their saved tensors
//!   ([`activations_with`]; the planner chooses `r`).
//! - **`offload_activations`** (long-context mode) moves each recomputed layer's checkpoint to
//!   host memory after its forward and back just before its recomputation: at most two
//!   checkpoints are on the device at a time ([`OFFLOAD_DEVICE_CHECKPOINTS`]) and
//!   `recomputed·c·h` bytes per token are in host memory ([`offloaded_checkpoint_bytes`]). A
//!   recomputed layer with a dense MLP runs that MLP in tiles of `loss_chunk_size` tokens: its
//!   working set is then the attention half's saved tensors and the block output for every token
//!   (`c·h`), the layer's input and output gradients (`2·c·h`) with the attention's backward
//!   temporaries (dQ, dK, dV and the fused kernel's fp32 dQ accumulator and softmax sums), and one
//!   tile of the MLP half's saved tensors, its backward temporaries and its input and output
//!   gradients.
//! - **`neat_packing`** adds one `[B, 1, S, S]` segment mask, boolean and as a compute-dtype
//!   additive bias shared by every layer and saved for backward (`(1 + c)·b·s²` bytes); SDPA
//!   takes it with its flash kernel on the CPU and its memory-efficient kernel on CUDA, neither
//!   materialising the scores.
//! - **Transients inside a layer:** QLoRA dequantises one weight at a time to the compute dtype;
//!   DoRA materialises one adapted weight `W + s·BA` in fp32 with its compute-dtype copy for the norm.
//! - **Loss** is chunked: `loss_chunk_size` tokens of logits at a time, forward and backward of one
//!   chunk before the next. A chunk holds its logits in the compute dtype, their fp32 copy, and
//!   cross-entropy's own temporaries (log-softmax output, NLL gradient, `exp` temporary, input
//!   gradient: [`calib::CROSS_ENTROPY_TEMP_BYTES`], measured), i.e. `chunk·V·(c + 4 + 16)` bytes
//!   (`chunk·V·(4 + 16)` in fp32), plus the final hidden states and their gradient for the whole
//!   micro-batch (`2·c·T·h`) and the final norm's saved fp32 input and rstd (`(4h + 4)·T`). `loss_chunk_size: 0` computes the whole head at once: the same with
//!   `T` tokens in place of `chunk`.
//!   `stage: rm` has no logits: its value head reads one hidden state per sequence.
//!   The loss runs before the first layer is recomputed, so its peak and a layer's working set are
//!   never live together: the planner takes the larger of the two phases.

use lf_api::training::{FlashAttn, TrainingConfig};
use lf_api::ModelArchitecture;

use crate::calib;
use crate::memory::Inventory;
use crate::params;

/// Activation memory of one micro-batch, by phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Activations {
    /// Live through the whole forward/backward: layer checkpoints (GC on) or every layer's saved
    /// tensors (GC off).
    pub persistent: u64,
    /// The working set while one layer is (re)computed and back-propagated.
    pub layer_working_set: u64,
    /// Logits and loss temporaries (plus the final hidden states and their gradient).
    pub loss: u64,
}

/// Bytes one decoder layer saves for backward, per token (the `s²` term of eager attention
/// excluded).
pub fn layer_saved_bytes_per_token(arch: &ModelArchitecture, training: &TrainingConfig) -> u64 {
    let c = training.precision().compute_bytes();
    let h = arch.hidden_size;
    let q = arch.num_attention_heads * arch.head_dim();
    let kv = arch.kv_heads() * arch.head_dim();
    let lse = if eager_attention(arch, training) {
        0
    } else {
        4 * arch.num_attention_heads
    };
    let base = 2 * (4 * h + 4)
        + c * h
        + c * (q + 2 * kv)
        + c * q
        + lse
        + mlp_saved_bytes(arch, training, c);
    let qk_norm = if arch.qk_norm() {
        4 * (q + kv) + 4 * (arch.num_attention_heads + arch.kv_heads())
    } else {
        0
    };
    let block_output_norms = if arch.model_type.is_gemma() {
        2 * (4 * h + 4)
    } else {
        0
    };
    base + qk_norm + block_output_norms + lora_saved_bytes_per_token(arch, training)
}

/// [`layer_saved_bytes_per_token`] split into what the MLP half of a layer saves (its norm, the
/// MLP, Gemma's feed-forward norms and the MLP linears' LoRA intermediates) and the rest (the
/// attention half); the two add up to the whole.
fn mlp_half_saved_bytes_per_token(arch: &ModelArchitecture, training: &TrainingConfig) -> u64 {
    let c = training.precision().compute_bytes();
    let h = arch.hidden_size;
    // Llama's post-attention norm is the MLP's; Gemma's pre-feed-forward norm is, with the
    // post-feed-forward one (its post-attention norm normalises the attention output).
    let norms = if arch.model_type.is_gemma() {
        2 * (4 * h + 4)
    } else {
        4 * h + 4
    };
    norms + mlp_saved_bytes(arch, training, c) + lora_saved_bytes_per_token_of(arch, training, true)
}

/// Bytes the MLP of the costliest layer saves per token: a dense SwiGLU its input and gate, up,
/// SiLU and product (`c·h + 4·c·i`); a sparse one (Mixtral, Qwen3-MoE; lf-model's per-expert
/// loop) its input, the router logits and fp32 probabilities (`(c + 4)·E`), the top-k weights
/// and indices (`12·k`), and for each of the `k` experts a token is routed to the gathered input,
/// gate, up, SiLU and weighted output (`2·c·h + 3·c·I + 4`), plus the gate·up product (`c·I`)
/// only when the expert's `down_proj` trains (full/freeze fine-tuning, or LoRA on it): a frozen
/// `down_proj` needs no input for its backward. Measured on the CPU with PyTorch's saved-tensor
/// hooks and by peak RSS (`trainer/tests/moe_activation_memory.rs`: fp32 Mixtral-shaped model,
/// 8 experts, 2×1024 tokens, LoRA on the attention): with the product counted for frozen experts
/// the planner erred high by about a quarter.
fn mlp_saved_bytes(arch: &ModelArchitecture, training: &TrainingConfig, c: u64) -> u64 {
    let h = arch.hidden_size;
    let dense = c * h + 4 * c * arch.intermediate_size;
    if !has_sparse_layer(arch) {
        return dense;
    }
    let (e, k) = (arch.num_experts(), arch.experts_per_token());
    let down_trains = training.finetuning_type != lf_api::training::FinetuningType::Lora
        || training.expert_lora_targets_for(arch).is_ok_and(|t| t.down);
    let per_expert_intermediates = if down_trains { 4 } else { 3 };
    let sparse = c * h
        + (c + 4) * e
        + 12 * k
        + k * (2 * c * h + per_expert_intermediates * c * arch.expert_intermediate_size() + 4);
    sparse.max(if has_dense_layer(arch) { dense } else { 0 })
}

/// Backward temporaries of the costliest layer's MLP per token (besides the layer's input and
/// output gradients): a dense SwiGLU's gate and up gradients (`2·c·i`); a sparse MLP's, for each
/// routed expert, its gate and up gradients and its output's (`k·(2·c·I + c·h)`).
fn mlp_backward_bytes(arch: &ModelArchitecture, c: u64) -> u64 {
    let dense = 2 * c * arch.intermediate_size;
    if !has_sparse_layer(arch) {
        return dense;
    }
    let k = arch.experts_per_token();
    let sparse = k * (2 * c * arch.expert_intermediate_size() + c * arch.hidden_size);
    sparse.max(if has_dense_layer(arch) { dense } else { 0 })
}

fn has_sparse_layer(arch: &ModelArchitecture) -> bool {
    (0..arch.num_hidden_layers).any(|i| arch.is_sparse_layer(i))
}

fn has_dense_layer(arch: &ModelArchitecture) -> bool {
    (0..arch.num_hidden_layers).any(|i| !arch.is_sparse_layer(i))
}

/// Whether attention materialises its scores: `flash_attn: eager`, or soft-capped scores
/// (Gemma 2), which no fused kernel computes.
pub fn eager_attention(arch: &ModelArchitecture, training: &TrainingConfig) -> bool {
    training.flash_attn == FlashAttn::Eager || arch.attention_softcap().is_some()
}

/// Extra tensors LoRA/DoRA modules save per token in one layer.
fn lora_saved_bytes_per_token(arch: &ModelArchitecture, training: &TrainingConfig) -> u64 {
    lora_saved_bytes_per_token_of(arch, training, false)
        + lora_saved_bytes_per_token_of(arch, training, true)
        + expert_lora_saved_bytes_per_token(arch, training)
}

/// [`lora_saved_bytes_per_token`] of the MLP's linears (`mlp`) or of the attention's.
fn lora_saved_bytes_per_token_of(
    arch: &ModelArchitecture,
    training: &TrainingConfig,
    mlp: bool,
) -> u64 {
    if training.finetuning_type != lf_api::training::FinetuningType::Lora {
        return 0;
    }
    let c = training.precision().compute_bytes();
    let r = training.adapter_rank() as u64;
    params::lora_targets(arch, training)
        .iter()
        .filter(|m| is_mlp_linear(**m) == mlp)
        .map(|m| {
            let (din, dout) = arch.linear_shape(*m);
            let mut bytes = c * r;
            if training.use_dora {
                bytes += c * dout;
            }
            if training.lora_dropout > 0.0 {
                bytes += (c + 1) * din;
            }
            bytes
        })
        .sum::<u64>()
}

fn is_mlp_linear(m: lf_api::training::LinearModule) -> bool {
    use lf_api::training::LinearModule as M;
    matches!(m, M::GateProj | M::UpProj | M::DownProj | M::GateUpProj)
}

/// Extra tensors LoRA on a sparse layer's router and experts saves per token (lf-model's `moe`
/// computes `s·(x·A_eᵀ)·B_eᵀ` beside each expert's product): the router's rank-`r`
/// intermediate, and for each of the `k` experts a token is routed to the intermediates of the
/// `gate_up_proj` (`r'` = `r`, or `2r` named by its halves) and `down_proj` adapters.
fn expert_lora_saved_bytes_per_token(arch: &ModelArchitecture, training: &TrainingConfig) -> u64 {
    if training.finetuning_type != lf_api::training::FinetuningType::Lora || !has_sparse_layer(arch)
    {
        return 0;
    }
    let t = training.expert_lora_targets_for(arch).unwrap_or_default();
    let (c, r, k) = (
        training.precision().compute_bytes(),
        training.lora_rank as u64,
        arch.experts_per_token(),
    );
    let router = if t.router { c * r } else { 0 };
    let gate_up = t.gate_up.map_or(0, |f| k * c * f as u64 * r);
    let down = if t.down { k * c * r } else { 0 };
    router + gate_up + down
}

/// Bytes each decoder layer's attention keeps for backward beyond a causal one's, by layer: a
/// layer whose sliding window is shorter than `cutoff_len` runs scaled-dot-product attention
/// with an explicit boolean `[S, S]` mask (lf-model's `Attention::forward`; a causal call needs
/// none), which PyTorch turns into a compute-dtype mask and saves for backward beside Q, K, V,
/// the output and the log-sum-exp (checked with PyTorch 2.13's CPU flash kernel: one extra saved
/// tensor, `[S, S]` float32 in an fp32 run), `c·S²` bytes whatever the batch size and head count.
/// No `[B, H, S, S]` scores exist either way, so a window saves no activation memory in this
/// trainer: it only adds the mask. The eager path (`flash_attn: eager`, Gemma 2's soft cap)
/// masks its scores instead and saves no mask.
pub fn window_masks(arch: &ModelArchitecture, training: &TrainingConfig) -> Vec<u64> {
    let s = training.cutoff_len as u64;
    let c = training.precision().compute_bytes();
    let eager = eager_attention(arch, training);
    arch.layer_windows()
        .unwrap_or_else(|_| vec![None; arch.num_hidden_layers as usize])
        .into_iter()
        .map(|w| match w {
            Some(w) if !eager && (w as u64) < s => c * s * s,
            _ => 0,
        })
        .collect()
}

/// Activation memory for a micro-batch of `micro_batch` examples of `cutoff_len` tokens. A
/// preference example (`stage: dpo`) is two sequences, its chosen and its rejected answer, in one
/// forward pass (`stage: kto`: the example and its KL sequence). Its reference pass runs before, without gradients, over the same sequences: it
/// keeps nothing but one log-probability per token, and its one-layer working set is below the
/// training pass's, so it adds nothing to the peak.
pub fn activations(
    arch: &ModelArchitecture,
    training: &TrainingConfig,
    inv: &Inventory,
    micro_batch: u64,
) -> Activations {
    let recomputed = training.recomputed_layers(arch.num_hidden_layers);
    activations_with(arch, training, inv, micro_batch, recomputed)
}

/// [`activations`] with the first `recomputed` decoder layers recomputed (at most all of them)
/// and the others keeping their saved tensors: the persistent part is `recomputed` layer inputs
/// plus the kept layers' saved tensors; a recomputation's one-layer working set counts only when
/// no layer is kept (otherwise the top kept layer's tensors, freed by its backward before the
/// first recomputation, already stand for it).
pub fn activations_with(
    arch: &ModelArchitecture,
    training: &TrainingConfig,
    inv: &Inventory,
    micro_batch: u64,
    recomputed: u64,
) -> Activations {
    let offload = training.offload_activations.enabled();
    activations_offloaded(arch, training, inv, micro_batch, recomputed, offload)
}

/// What CUDA's fused attention backward (flash / memory-efficient) allocates per token beyond
/// dQ, dK and dV: the fp32 dQ accumulator and per-head softmax sums, and under grouped-query
/// attention dK and dV expanded to the query heads (`4·q + 4·a + 2·c·(q − kv)`). PyTorch's CPU
/// flash backward accumulates per thread block instead.
pub fn fused_attention_backward_bytes_per_token(
    arch: &ModelArchitecture,
    training: &TrainingConfig,
) -> u64 {
    let c = training.precision().compute_bytes();
    let q = arch.num_attention_heads * arch.head_dim();
    let kv = arch.kv_heads() * arch.head_dim();
    4 * q + 4 * arch.num_attention_heads + 2 * c * q.saturating_sub(kv)
}

/// Checkpoints `offload_activations` keeps on the device at once, counted as the upper bound of
/// its two moments: in backward the one being recomputed; in the gradient-free forward the
/// layer input being copied out and the output it becomes.
pub const OFFLOAD_DEVICE_CHECKPOINTS: u64 = 2;

/// How many of the first decoder layers a run recomputes as its config says (`recompute_layers`
/// filled in or not): every one under ZeRO-3, which gathers each layer again for its
/// recomputation whatever `gradient_checkpointing` says.
pub fn configured_recomputation(training: &TrainingConfig, layers: u64, stage: u8) -> u64 {
    if stage >= 3 {
        layers
    } else {
        training.recomputed_layers(layers)
    }
}

/// Host bytes of the offloaded checkpoints of one micro-batch (`offload_activations`): every
/// recomputed layer's input, `c·h` per token.
pub fn offloaded_checkpoint_bytes(
    arch: &ModelArchitecture,
    training: &TrainingConfig,
    micro_batch: u64,
    recomputed: u64,
) -> u64 {
    let tokens = training.stage.sequences_per_example() * micro_batch * training.cutoff_len as u64;
    recomputed.min(arch.num_hidden_layers)
        * tokens
        * training.precision().compute_bytes()
        * arch.hidden_size
}

/// Whether a recomputed layer runs its MLP in tiles under `offload_activations`: a model without
/// sparse layers (a router's load-balancing loss needs every token's logits at once), with tiles
/// (`loss_chunk_size` > 0) shorter than the micro-batch's `tokens`.
/// (The trainer decides per layer; with any sparse layer the planner models none tiled, which can
/// only over-count a model that mixes dense and sparse layers.)
pub fn tiles_mlp(arch: &ModelArchitecture, training: &TrainingConfig, tokens: u64) -> bool {
    lf_api::training::mlp_tile(training.loss_chunk_size, tokens, has_sparse_layer(arch)).is_some()
}

/// [`activations_with`] with `offload_activations` as `offload` says (the planner's choice under
/// `auto`).
pub fn activations_offloaded(
    arch: &ModelArchitecture,
    training: &TrainingConfig,
    inv: &Inventory,
    micro_batch: u64,
    recomputed: u64,
    offload: bool,
) -> Activations {
    let c = inv.compute_bytes;
    let s = training.cutoff_len as u64;
    let sequences = training.stage.sequences_per_example() * micro_batch;
    let tokens = sequences * s;
    let h = arch.hidden_size;
    let layers = arch.num_hidden_layers;
    let softcap_tanh = if arch.attention_softcap().is_some() {
        c
    } else {
        0
    };
    let eager = if eager_attention(arch, training) {
        (4 + c + softcap_tanh) * arch.num_attention_heads * s
    } else {
        0
    };
    let saved = tokens * (layer_saved_bytes_per_token(arch, training) + eager);
    let backward = tokens * (2 * c * h + mlp_backward_bytes(arch, c));
    let mut transient = 0;
    if training.quantization_bit.is_some()
        && training.finetuning_type == lf_api::training::FinetuningType::Lora
    {
        transient += c * inv.largest_linear;
    }
    if training.use_dora && training.finetuning_type == lf_api::training::FinetuningType::Lora {
        transient += (4 + c) * inv.largest_adapted;
    }
    let recomputed = recomputed.min(layers);
    let kept = layers - recomputed;
    // Sliding windows shorter than the sequence: each such layer's `[S, S]` mask
    // (`window_masks`), kept for backward by the layers that are not recomputed.
    let masks = window_masks(arch, training);
    let kept_masks: u64 = masks.iter().skip(recomputed as usize).sum();
    let largest_mask = masks.iter().copied().max().unwrap_or(0);
    if largest_mask > 0 {
        // The boolean mask the compute-dtype one is made from.
        transient += s * s;
    }
    // `neat_packing`: one `[B, 1, S, S]` segment mask, boolean and as the compute-dtype bias
    // every layer shares.
    let packing_mask = if training.neat_packing {
        (1 + c) * sequences * s * s
    } else {
        0
    };
    let offload = offload && recomputed > 0;
    let device_checkpoints = if offload {
        recomputed.min(OFFLOAD_DEVICE_CHECKPOINTS)
    } else {
        recomputed
    };
    let persistent = device_checkpoints * tokens * c * h + kept * saved + packing_mask + kept_masks;
    let one_layer = if offload && tiles_mlp(arch, training, tokens) {
        // The attention half for every token, its output (the MLP's input), and one tile of the
        // MLP half: its saved tensors, gate/up gradients, its input's gradient and its output.
        let tile = training.loss_chunk_size as u64;
        let mlp_half = mlp_half_saved_bytes_per_token(arch, training);
        let attention_half = saved - tokens * mlp_half;
        // Backward then holds the layer's input and output gradients and the attention's: dQ,
        // dK, dV, and the fused kernel's fp32 dQ accumulator and per-head softmax sums (CUDA's
        // flash / memory-efficient backward). Untiled, the MLP's gate and up gradients outweigh
        // the attention's; tiled, they are one tile's. (The trainer frees the layer's output
        // gradient before the attention half's backward, so the two gradients are the MLP
        // half's input gradient and the attention half's.)
        let q = arch.num_attention_heads * arch.head_dim();
        let kv = arch.kv_heads() * arch.head_dim();
        // The attention output's gradient (`c·q`) is live beside them.
        let attention_backward =
            c * (q + 2 * kv) + c * q + fused_attention_backward_bytes_per_token(arch, training);
        attention_half
            + tokens * c * h
            + tile * (mlp_half + 2 * c * arch.intermediate_size + 2 * c * h)
            + tokens * (2 * c * h + attention_backward)
            + transient
    } else {
        backward + transient + saved
    };
    let layer_working_set = if kept == 0 {
        one_layer + largest_mask
    } else {
        backward + transient
    };
    let vocab = arch.vocab_size;
    // The final hidden states and their gradient, and what the final norm saves for its
    // backward (its fp32 input and rstd).
    let hidden = 2 * c * tokens * h + (4 * h + 4) * tokens;
    let per_logit = c + if c == 4 { 0 } else { 4 } + calib::CROSS_ENTROPY_TEMP_BYTES;
    let chunk = match training.loss_chunk_size {
        0 => tokens,
        n => (n as u64).min(tokens),
    };
    // `stage: rm` scores the final hidden states with a one-output value head: no vocabulary
    // logits.
    let logits = if training.stage == lf_api::training::Stage::Rm {
        0
    } else {
        chunk * vocab * per_logit
    };
    let loss = logits + hidden;
    Activations {
        persistent,
        layer_working_set,
        loss,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::preset;

    fn plan(yaml: &str, micro_batch: u64) -> Activations {
        let arch = preset("meta-llama/Meta-Llama-3-8B").expect("preset");
        let t: TrainingConfig = serde_yaml::from_str(yaml).expect("training config");
        let inv = Inventory::new(&arch, &t);
        activations(&arch, &t, &inv, micro_batch)
    }

    #[test]
    fn neat_packing_adds_one_shared_mask() {
        let base = "finetuning_type: lora\nlora_rank: 16\nbf16: true\ncutoff_len: 1024\n";
        for ckpt in ["true", "false"] {
            let plain = plan(&format!("{base}gradient_checkpointing: {ckpt}"), 2);
            let packed = plan(
                &format!("{base}gradient_checkpointing: {ckpt}\nneat_packing: true"),
                2,
            );
            // Boolean + bf16 bias, 2 rows of 1024².
            assert_eq!(packed.persistent - plain.persistent, 3 * 2 * 1024 * 1024);
            assert_eq!(packed.layer_working_set, plain.layer_working_set);
        }
    }

    #[test]
    fn a_preference_example_is_two_sequences() {
        let lora = "finetuning_type: lora\nlora_rank: 16\nbf16: true\ncutoff_len: 1024\n";
        let sft = plan(&format!("stage: sft\n{lora}"), 2);
        let dpo = plan(&format!("stage: dpo\n{lora}"), 1);
        assert_eq!(dpo, sft);
        assert!(plan(&format!("stage: dpo\n{lora}"), 2).persistent > sft.persistent);
    }

    #[test]
    fn windows_shorter_than_the_sequence_add_their_masks() {
        // Mistral-7B-v0.1 (window 4096) and v0.3 (none): the same shape otherwise.
        let v01 = preset("mistralai/Mistral-7B-v0.1").expect("preset");
        let v03 = preset("mistralai/Mistral-7B-v0.3").expect("preset");
        assert_eq!(v01.layer_windows().unwrap(), vec![Some(4096); 32]);
        assert_eq!(v03.layer_windows().unwrap(), vec![None; 32]);
        let run = |arch: &ModelArchitecture, yaml: &str| {
            let t: TrainingConfig = serde_yaml::from_str(yaml).expect("training config");
            let inv = Inventory::new(arch, &t);
            activations(arch, &t, &inv, 1)
        };
        let at = |cutoff: u64, ckpt: bool, extra: &str| {
            format!("bf16: true\ncutoff_len: {cutoff}\ngradient_checkpointing: {ckpt}\n{extra}")
        };
        // Within the window the attention is causal: nothing more.
        let (a, b) = (
            run(&v01, &at(4096, false, "")),
            run(&v03, &at(4096, false, "")),
        );
        assert_eq!(
            (a.persistent, a.layer_working_set),
            (b.persistent, b.layer_working_set)
        );
        // Past it: one bf16 [S, S] mask kept per layer (32 × 2 × 8192² bytes = 4 GiB) ...
        let s = 8192u64;
        let (a, b) = (run(&v01, &at(s, false, "")), run(&v03, &at(s, false, "")));
        assert_eq!(a.persistent - b.persistent, 32 * 2 * s * s);
        // ... and, recomputing every layer, one layer's mask and its boolean source at a time.
        let (a, b) = (run(&v01, &at(s, true, "")), run(&v03, &at(s, true, "")));
        assert_eq!(a.persistent, b.persistent);
        assert_eq!(a.layer_working_set - b.layer_working_set, 2 * s * s + s * s);
        // The eager path masks its scores: no extra mask is kept.
        let (a, b) = (
            run(&v01, &at(s, false, "flash_attn: eager")),
            run(&v03, &at(s, false, "flash_attn: eager")),
        );
        assert_eq!(a.persistent, b.persistent);
    }
}
