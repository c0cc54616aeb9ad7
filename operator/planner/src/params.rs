//! Exact parameter counts of a Llama-family decoder and of what a fine-tuning method trains.
//!
//! The counts equal what Hugging Face `transformers` (`LlamaForCausalLM`, `MistralForCausalLM`,
//! `Qwen2ForCausalLM`, `Qwen3ForCausalLM`) and `peft` report for the same config: tied embeddings are counted once,
//! qwen2 (and `attention_bias: true`) adds a bias to q, k and v (and o for llama/qwen3), qwen3 a
//! per-head q and k RMSNorm, LoRA adds `r·(d_in + d_out)` per
//! adapted linear and DoRA a magnitude vector of `d_out` on top. `tests/reference/planner_param_counts.py`
//! checks them against the real libraries.

use lf_api::training::{FinetuningType, LinearModule, TrainingConfig};
use lf_api::ModelArchitecture;

/// The shape of one tensor: `(rows, cols)`, `cols = 1` for vectors.
pub type Shape = (u64, u64);

/// Parameters of one decoder layer, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerParams {
    /// The seven linears (q, k, v, o, gate, up, down), weights only.
    pub linears: u64,
    /// The attention biases (qwen2, or `attention_bias`).
    pub biases: u64,
    /// The RMSNorm weights: two of `hidden_size` (four for Gemma), plus the per-head q/k norms.
    pub norms: u64,
}

impl LayerParams {
    pub fn total(&self) -> u64 {
        self.linears + self.biases + self.norms
    }
}

/// One decoder layer's parameters.
pub fn layer_params(arch: &ModelArchitecture) -> LayerParams {
    let linears = LinearModule::ALL
        .iter()
        .map(|m| {
            let (i, o) = arch.linear_shape(*m);
            i * o
        })
        .sum();
    let biases = attention_bias_shapes(arch).iter().map(|(n, _)| n).sum();
    let norms = norm_shapes(arch).iter().map(|(n, _)| n).sum();
    LayerParams {
        linears,
        biases,
        norms,
    }
}

/// The attention biases of one layer as `transformers` builds them
/// ([`ModelArchitecture::linear_has_bias`]): qwen2 has q, k and v biases; llama and qwen3 with
/// `attention_bias: true` have q, k, v and o biases; mistral has none.
pub fn attention_bias_shapes(arch: &ModelArchitecture) -> Vec<Shape> {
    LinearModule::ALL
        .into_iter()
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
    arch.num_hidden_layers * layer_params(arch).total()
        + embedding_params(arch)
        + lm_head_params(arch)
        + arch.hidden_size
}

/// Decoder layers trained by `finetuning_type: freeze` (the last `freeze_trainable_layers`).
pub fn freeze_trainable_layers(arch: &ModelArchitecture, training: &TrainingConfig) -> u64 {
    (training.freeze_trainable_layers as u64).min(arch.num_hidden_layers)
}

/// The linears LoRA adapts. An invalid `lora_target` adapts nothing here; `TrainingConfig::validate`
/// (run when the config is parsed) reports it.
pub fn lora_targets(training: &TrainingConfig) -> Vec<LinearModule> {
    training.lora_targets().unwrap_or_default()
}

/// The trainable tensors of one decoder layer's adapters: `lora_A` `(r, d_in)`, `lora_B`
/// `(d_out, r)` and, with DoRA, the magnitude `(d_out, 1)`, per adapted linear.
pub fn adapter_shapes(arch: &ModelArchitecture, training: &TrainingConfig) -> Vec<Shape> {
    let r = training.lora_rank as u64;
    let mut out = Vec::new();
    for m in lora_targets(training) {
        let (din, dout) = arch.linear_shape(m);
        out.push((r, din));
        out.push((dout, r));
        if training.use_dora {
            out.push((dout, 1));
        }
    }
    out
}

/// The tensors of one decoder layer (weights, biases, norms).
pub fn layer_shapes(arch: &ModelArchitecture) -> Vec<Shape> {
    let mut out: Vec<Shape> = LinearModule::ALL
        .iter()
        .map(|m| {
            let (i, o) = arch.linear_shape(*m);
            (o, i)
        })
        .collect();
    out.extend(attention_bias_shapes(arch));
    out.extend(norm_shapes(arch));
    out
}

/// Every trainable tensor of the method, as `(shape, count)` pairs (the count of identical
/// tensors), so optimiser state that depends on tensor sizes (8-bit AdamW, Adafactor) is exact.
pub fn trainable_shapes(arch: &ModelArchitecture, training: &TrainingConfig) -> Vec<(Shape, u64)> {
    let layers = arch.num_hidden_layers;
    match training.finetuning_type {
        FinetuningType::Full => {
            let mut out: Vec<(Shape, u64)> = layer_shapes(arch)
                .into_iter()
                .map(|s| (s, layers))
                .collect();
            out.push(((arch.vocab_size, arch.hidden_size), 1));
            if !arch.tie_word_embeddings {
                out.push(((arch.vocab_size, arch.hidden_size), 1));
            }
            out.push(((arch.hidden_size, 1), 1));
            out
        }
        FinetuningType::Freeze => {
            let k = freeze_trainable_layers(arch, training);
            layer_shapes(arch)
                .into_iter()
                .map(|s| (s, k))
                .filter(|(_, n)| *n > 0)
                .collect()
        }
        FinetuningType::Lora => adapter_shapes(arch, training)
            .into_iter()
            .map(|s| (s, layers))
            .collect(),
    }
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
