//! Exact parameter counts of a Llama-family decoder and of what a fine-tuning method trains.
//!
//! The counts equal what Hugging Face `transformers` (`LlamaForCausalLM`, `MistralForCausalLM`,
//! `Qwen2ForCausalLM`, `Qwen3ForCausalLM`, `Gemma2ForCausalLM`, `Gemma3ForCausalLM`,
//! `Phi3ForCausalLM`, `MixtralForCausalLM`, `Qwen3MoeForCausalLM`) and `peft`
//! report for the same config: every expert of a sparse MLP plus its router, tied embeddings once,
//! qwen2 (and `attention_bias: true`) adds a bias to q, k and v (and o for llama/qwen3), qwen3 a
//! per-head q and k RMSNorm, Phi-3 fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`
//! (the same weights in two linears fewer, so LoRA on them adds fewer parameters), LoRA adds
//! `r·(d_in + d_out)` per adapted linear and DoRA a magnitude vector of `d_out` on top, LoRA on a
//! mixture of experts' router `r·(h + E)` and on its experts' fused parameters
//! `E·r'·(d_in + d_out)` per sparse layer (PEFT's `target_parameters`; `r' = 2r` for a
//! `gate_up_proj` named by its halves). `tests/reference/planner_param_counts.py`
//! checks them against the real libraries.

use lf_api::training::{FinetuningType, LinearModule, TrainingConfig};
use lf_api::ModelArchitecture;

/// The shape of one tensor: `(rows, cols)`, `cols = 1` for vectors.
pub type Shape = (u64, u64);

/// Parameters of one decoder layer, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerParams {
    /// The linears (q, k, v, o, then gate, up, down, or every expert's; Phi-3's qkv, o,
    /// gate_up, down), weights only.
    pub linears: u64,
    /// A sparse MLP's router (`[experts, hidden]`; never quantised).
    pub router: u64,
    /// The attention biases (qwen2, or `attention_bias`).
    pub biases: u64,
    /// The RMSNorm weights: two of `hidden_size` (four for Gemma), plus the per-head q/k norms.
    pub norms: u64,
}

impl LayerParams {
    pub fn total(&self) -> u64 {
        self.linears + self.router + self.biases + self.norms
    }
}

/// The base linear weights of decoder layer `i`, `(out, in)`: the attention's q, k, v, o, then
/// the dense MLP's gate, up, down, or, for a sparse layer
/// ([`ModelArchitecture::is_sparse_layer`]), every expert's gate, up `(I, h)` and down `(h, I)`
/// (`I` = [`ModelArchitecture::expert_intermediate_size`]). The router is [`router_shape`].
pub fn linear_shapes_at(arch: &ModelArchitecture, i: u64) -> Vec<Shape> {
    let sparse = arch.is_sparse_layer(i);
    let mut out: Vec<Shape> = arch
        .linear_modules()
        .iter()
        .copied()
        .filter(|m| !sparse || m.parent() == "self_attn")
        .map(|m| {
            let (din, dout) = arch.linear_shape(m);
            (dout, din)
        })
        .collect();
    if sparse {
        let (h, e) = (arch.hidden_size, arch.expert_intermediate_size());
        for _ in 0..arch.num_experts() {
            out.extend([(e, h), (e, h), (h, e)]);
        }
    }
    out
}

/// The router of decoder layer `i` (`(experts, hidden)`), when its MLP is sparse.
pub fn router_shape(arch: &ModelArchitecture, i: u64) -> Option<Shape> {
    arch.is_sparse_layer(i)
        .then_some((arch.num_experts(), arch.hidden_size))
}

/// Decoder layer `i`'s parameters.
pub fn layer_params_at(arch: &ModelArchitecture, i: u64) -> LayerParams {
    let linears = linear_shapes_at(arch, i).iter().map(|(o, n)| o * n).sum();
    let router = router_shape(arch, i).map(|(o, n)| o * n).unwrap_or(0);
    let biases = attention_bias_shapes(arch).iter().map(|(n, _)| n).sum();
    let norms = norm_shapes(arch).iter().map(|(n, _)| n).sum();
    LayerParams {
        linears,
        router,
        biases,
        norms,
    }
}

/// The largest decoder layer's parameters (every layer's, when they are alike; a sparse one's in
/// a Qwen3-MoE with dense layers).
pub fn layer_params(arch: &ModelArchitecture) -> LayerParams {
    (0..arch.num_hidden_layers)
        .map(|i| layer_params_at(arch, i))
        .max_by_key(LayerParams::total)
        .unwrap_or(layer_params_at(arch, 0))
}

/// The attention biases of one layer as `transformers` builds them
/// ([`ModelArchitecture::linear_has_bias`]): qwen2 has q, k and v biases; llama and qwen3 with
/// `attention_bias: true` have q, k, v and o biases; mistral has none.
pub fn attention_bias_shapes(arch: &ModelArchitecture) -> Vec<Shape> {
    arch.linear_modules()
        .iter()
        .copied()
        .filter(|m| arch.linear_has_bias(*m))
        .map(|m| (arch.linear_shape(m).1, 1))
        .collect()
}

/// The norms of one layer: input and post-attention (`hidden_size` each), Gemma's pre- and
/// post-feed-forward (`hidden_size` each), then qwen3's and Gemma 3's q and k norms (`head_dim`
/// each).
pub fn norm_shapes(arch: &ModelArchitecture) -> Vec<Shape> {
    let hidden_norms = if arch.model_type.is_gemma() { 4 } else { 2 };
    let mut out = vec![(arch.hidden_size, 1); hidden_norms];
    if arch.qk_norm() {
        out.extend([(arch.head_dim(), 1), (arch.head_dim(), 1)]);
    }
    out
}

/// Input embedding parameters (`V·h`).
pub fn embedding_params(arch: &ModelArchitecture) -> u64 {
    arch.vocab_size * arch.hidden_size
}

/// Output head parameters (`V·h`, 0 when tied to the embedding).
pub fn lm_head_params(arch: &ModelArchitecture) -> u64 {
    if arch.tie_word_embeddings {
        0
    } else {
        arch.vocab_size * arch.hidden_size
    }
}

/// Every parameter of the base model (what `sum(p.numel() for p in model.parameters())` prints).
pub fn model_params(arch: &ModelArchitecture) -> u64 {
    (0..arch.num_hidden_layers)
        .map(|i| layer_params_at(arch, i).total())
        .sum::<u64>()
        + embedding_params(arch)
        + lm_head_params(arch)
        + arch.hidden_size
}

/// Decoder layers trained by `finetuning_type: freeze` (the last `freeze_trainable_layers`).
pub fn freeze_trainable_layers(arch: &ModelArchitecture, training: &TrainingConfig) -> u64 {
    (training.freeze_trainable_layers as u64).min(arch.num_hidden_layers)
}

/// The linears LoRA adapts in `arch` ([`TrainingConfig::lora_targets_for`]: `all` is every
/// linear of the model's layout, Phi-3's fused ones included; on a mixture of experts the
/// attention's, its router and experts being [`expert_adapter_shapes`]). An invalid `lora_target` adapts nothing here; `TrainingConfig::validate` (run
/// when the config is parsed) and [`crate::PlannerInput::from_job`] (against the architecture)
/// report it.
pub fn lora_targets(arch: &ModelArchitecture, training: &TrainingConfig) -> Vec<LinearModule> {
    training.lora_targets_for(arch).unwrap_or_default()
}

/// The trainable tensors of the linears' adapters, as `(shape, count)` pairs: `lora_A`
/// `(r, d_in)`, `lora_B` `(d_out, r)` and, with DoRA, the magnitude `(d_out, 1)`, with AdaLoRA
/// the singular values `lora_E` `(r, 1)` (`r` = `adalora_init_r`: pruned ranks are zeroed, not
/// freed, while training), per adapted linear, in every layer that has it (a mixture of experts'
/// MLP linears are in its dense layers only).
pub fn adapter_shapes(arch: &ModelArchitecture, training: &TrainingConfig) -> Vec<(Shape, u64)> {
    let r = training.adapter_rank() as u64;
    let dense_mlp_layers = arch.num_hidden_layers - sparse_layers(arch);
    let mut out = Vec::new();
    for m in lora_targets(arch, training) {
        let layers = match m.parent() {
            "mlp" => dense_mlp_layers,
            _ => arch.num_hidden_layers,
        };
        let (din, dout) = arch.linear_shape(m);
        out.push(((r, din), layers));
        out.push(((dout, r), layers));
        if training.use_dora {
            out.push(((dout, 1), layers));
        }
        if training.use_adalora {
            out.push(((r, 1), layers));
        }
    }
    out
}

/// The tensors of decoder layer `i` (weights, router, biases, norms).
pub fn layer_shapes_at(arch: &ModelArchitecture, i: u64) -> Vec<Shape> {
    let mut out = linear_shapes_at(arch, i);
    out.extend(router_shape(arch, i));
    out.extend(attention_bias_shapes(arch));
    out.extend(norm_shapes(arch));
    out
}

/// The tensors of decoder layers `layers`, as `(shape, count)` pairs.
fn layers_shapes(arch: &ModelArchitecture, layers: std::ops::Range<u64>) -> Vec<(Shape, u64)> {
    let mut counts = std::collections::BTreeMap::new();
    for i in layers {
        for s in layer_shapes_at(arch, i) {
            *counts.entry(s).or_insert(0u64) += 1;
        }
    }
    counts.into_iter().collect()
}

/// Every trainable tensor of the method, as `(shape, count)` pairs (the count of identical
/// tensors), so optimiser state that depends on tensor sizes (8-bit AdamW, Adafactor) is exact.
pub fn trainable_shapes(arch: &ModelArchitecture, training: &TrainingConfig) -> Vec<(Shape, u64)> {
    let mut out = decoder_trainable_shapes(arch, training);
    // `stage: rm` trains its value head too (`score`, [1, H]).
    if training.stage == lf_api::training::Stage::Rm {
        out.push(((1, arch.hidden_size), 1));
    }
    out
}

/// [`trainable_shapes`] of the decoder (and its embeddings and LM head) alone.
fn decoder_trainable_shapes(
    arch: &ModelArchitecture,
    training: &TrainingConfig,
) -> Vec<(Shape, u64)> {
    let layers = arch.num_hidden_layers;
    match training.finetuning_type {
        FinetuningType::Full => {
            let mut out = layers_shapes(arch, 0..layers);
            out.push(((arch.vocab_size, arch.hidden_size), 1));
            if !arch.tie_word_embeddings {
                out.push(((arch.vocab_size, arch.hidden_size), 1));
            }
            out.push(((arch.hidden_size, 1), 1));
            out
        }
        FinetuningType::Freeze => {
            let k = freeze_trainable_layers(arch, training);
            layers_shapes(arch, layers - k..layers)
        }
        FinetuningType::Lora => {
            let mut out = adapter_shapes(arch, training);
            out.extend(
                expert_adapter_shapes(arch, training)
                    .into_iter()
                    .map(|s| (s, sparse_layers(arch))),
            );
            out
        }
    }
}

/// The decoder layers whose MLP is a mixture of experts.
pub fn sparse_layers(arch: &ModelArchitecture) -> u64 {
    (0..arch.num_hidden_layers)
        .filter(|&i| arch.is_sparse_layer(i))
        .count() as u64
}

/// The trainable tensors of one sparse layer's router and expert adapters
/// ([`TrainingConfig::expert_lora_targets_for`]; PEFT's `ParamWrapper` layout, see
/// [`lf_api::architecture::ExpertLoraTargets::shapes`]): none on a dense model or when
/// `lora_target` names no router or expert.
pub fn expert_adapter_shapes(arch: &ModelArchitecture, training: &TrainingConfig) -> Vec<Shape> {
    training
        .expert_lora_targets_for(arch)
        .unwrap_or_default()
        .shapes(arch, training.lora_rank as u64)
}

/// Parameters that receive gradients: all of them (full), the last `freeze_trainable_layers`
/// decoder layers (freeze), or the LoRA/DoRA adapters on the `lora_target` linears of every layer.
pub fn trainable_params(arch: &ModelArchitecture, training: &TrainingConfig) -> u64 {
    trainable_shapes(arch, training)
        .iter()
        .map(|((r, c), n)| r * c * n)
        .sum()
}

/// The largest single trainable tensor (elements).
pub fn largest_trainable_tensor(arch: &ModelArchitecture, training: &TrainingConfig) -> u64 {
    trainable_shapes(arch, training)
        .iter()
        .map(|((r, c), _)| r * c)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::preset;

    #[test]
    fn published_counts() {
        let cases = [
            ("meta-llama/Llama-2-7b-hf", 6_738_415_616u64),
            ("meta-llama/Llama-2-13b-hf", 13_015_864_320),
            ("meta-llama/Llama-2-70b-hf", 68_976_648_192),
            ("meta-llama/Meta-Llama-3-8B", 8_030_261_248),
            ("meta-llama/Llama-3.1-8B", 8_030_261_248),
            ("meta-llama/Llama-3.2-3B", 3_212_749_824),
            ("meta-llama/Llama-3.2-1B", 1_235_814_400),
            ("meta-llama/Llama-3.1-70B", 70_553_706_496),
        ];
        for (name, expected) in cases {
            let arch = preset(name).unwrap_or_else(|| panic!("no preset {name}"));
            assert_eq!(model_params(&arch), expected, "{name}");
        }
    }

    #[test]
    fn published_qwen_and_mistral_sizes() {
        // Counts printed by transformers for these configs (model cards: 7.24B, 7.62B, 0.49B).
        assert_eq!(
            model_params(&preset("mistralai/Mistral-7B-v0.1").unwrap()),
            7_241_732_096
        );
        assert_eq!(
            model_params(&preset("Qwen/Qwen2.5-7B").unwrap()),
            7_615_616_512
        );
        assert_eq!(
            model_params(&preset("Qwen/Qwen2.5-0.5B").unwrap()),
            494_032_768
        );
    }

    #[test]
    fn published_qwen3_sizes() {
        // transformers' counts for the Hub's config.json (model cards: 8.2B, 14.8B, 32.8B).
        for (name, expected) in [
            ("Qwen/Qwen3-8B", 8_190_735_360u64),
            ("Qwen/Qwen3-14B", 14_768_307_200),
            ("Qwen/Qwen3-32B", 32_762_123_264),
        ] {
            assert_eq!(model_params(&preset(name).unwrap()), expected, "{name}");
        }
    }

    #[test]
    fn mixture_of_experts_sizes() {
        // Every expert is resident (model cards: 46.7B and 30.5B total).
        for (name, expected) in [
            ("mistralai/Mixtral-8x7B-v0.1", 46_702_792_704u64),
            ("Qwen/Qwen3-30B-A3B", 30_532_122_624),
        ] {
            assert_eq!(model_params(&preset(name).unwrap()), expected, "{name}");
        }
        // LoRA on a mixture of experts adapts the attention only, `all` included.
        let arch = preset("mistralai/Mixtral-8x7B-v0.1").unwrap();
        let all = TrainingConfig::from_yaml_str("lora_rank: 8").unwrap();
        let targets: Vec<&str> = lora_targets(&arch, &all).iter().map(|m| m.name()).collect();
        assert_eq!(targets, ["q_proj", "k_proj", "v_proj", "o_proj"]);
        let mlp = TrainingConfig::from_yaml_str("lora_target: q_proj,up_proj").unwrap();
        assert!(lora_targets(&arch, &mlp).is_empty());
        // The router and experts as PEFT adapts them (target_parameters): per layer the router
        // 16·(4096 + 8), gate_up_proj at rank 32 (w1 + w3) 8·32·(4096 + 2·14336), down_proj
        // 8·16·(14336 + 4096); 352,849,920 with q and v, as PEFT counts
        // (tests/param_reference.rs).
        let experts = TrainingConfig::from_yaml_str(
            "lora_rank: 16\nlora_target: q_proj,v_proj,w1,w2,w3,gate",
        )
        .unwrap();
        let per_layer = 16 * (4096 + 8)
            + 8 * 32 * (4096 + 2 * 14336)
            + 8 * 16 * (14336 + 4096)
            + 16 * (4096 + 4096)
            + 16 * (4096 + 1024);
        assert_eq!(trainable_params(&arch, &experts), 32 * per_layer);
        assert_eq!(trainable_params(&arch, &experts), 352_849_920);
    }

    #[test]
    fn published_gemma_sizes() {
        // Gemma 2's model cards (9.24B, 27.2B); Gemma 3's text decoder alone (the 12B and 27B
        // checkpoints add a 0.4B vision tower lf-model does not load).
        for (name, expected) in [
            ("google/gemma-2-9b", 9_241_705_984u64),
            ("google/gemma-2-27b", 27_227_128_320),
            ("google/gemma-3-12b-pt", 11_766_034_176),
            ("google/gemma-3-27b-pt", 27_009_346_304),
        ] {
            assert_eq!(model_params(&preset(name).unwrap()), expected, "{name}");
        }
    }

    #[test]
    fn published_phi_sizes() {
        // transformers' counts for the Hub's config.json (model cards: 3.8B, 14B, 14.7B, 3.8B).
        for (name, expected) in [
            ("microsoft/Phi-3-mini-4k-instruct", 3_821_079_552u64),
            ("microsoft/Phi-3.5-mini-instruct", 3_821_079_552),
            ("microsoft/Phi-3-medium-128k-instruct", 13_960_238_080),
            ("microsoft/phi-4", 14_659_507_200),
            ("microsoft/Phi-4-mini-instruct", 3_836_021_760),
        ] {
            assert_eq!(model_params(&preset(name).unwrap()), expected, "{name}");
        }
        // LoRA on the fused linears: r·(h + q + 2kv) + r·(q + h) + r·(h + 2i) + r·(i + h) per layer.
        let phi3 = preset("Phi-3-mini-4k-instruct").unwrap();
        let lora = TrainingConfig {
            lora_rank: 16,
            ..Default::default()
        };
        let per_layer = 16 * ((3072 + 9216) + (3072 + 3072) + (3072 + 16384) + (8192 + 3072));
        assert_eq!(trainable_params(&phi3, &lora), 32 * per_layer);
    }

    #[test]
    fn lora_counts() {
        let l3 = preset("meta-llama/Meta-Llama-3-8B").unwrap();
        let l2 = preset("meta-llama/Llama-2-7b-hf").unwrap();
        let lora = |rank: u32, target: &str| TrainingConfig {
            lora_rank: rank,
            lora_target: target.into(),
            ..Default::default()
        };
        assert_eq!(trainable_params(&l3, &lora(16, "all")), 41_943_040);
        assert_eq!(trainable_params(&l2, &lora(8, "q_proj,v_proj")), 4_194_304);
        assert_eq!(trainable_params(&l3, &lora(32, "all")), 83_886_080);
        assert_eq!(trainable_params(&l2, &lora(8, "all")), 19_988_480);
        // F12: PEFT prints all = base + adapters.
        assert_eq!(
            model_params(&l3) + trainable_params(&l3, &lora(16, "all")),
            8_072_204_288
        );
    }

    #[test]
    fn a_reward_model_trains_its_value_head_too() {
        let l3 = preset("meta-llama/Meta-Llama-3-8B").unwrap();
        let lora = TrainingConfig {
            lora_rank: 16,
            lora_target: "all".into(),
            ..Default::default()
        };
        let rm = TrainingConfig {
            stage: lf_api::training::Stage::Rm,
            ..lora.clone()
        };
        assert_eq!(
            trainable_params(&l3, &rm),
            trainable_params(&l3, &lora) + 4096
        );
    }

    #[test]
    fn full_and_freeze() {
        let l3 = preset("meta-llama/Llama-3.2-1B").unwrap();
        let full = TrainingConfig {
            finetuning_type: FinetuningType::Full,
            ..Default::default()
        };
        assert_eq!(trainable_params(&l3, &full), model_params(&l3));
        let freeze = TrainingConfig {
            finetuning_type: FinetuningType::Freeze,
            freeze_trainable_layers: 2,
            ..Default::default()
        };
        assert_eq!(
            trainable_params(&l3, &freeze),
            2 * layer_params(&l3).total()
        );
    }
}
