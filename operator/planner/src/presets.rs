//! Built-in architectures of common models, so a FineTuneJob can be planned from its model name
//! alone.
//!
//! Values are those of each model's public `config.json` (only the keys that change the
//! arithmetic are kept). Instruct/chat variants share their base model's shape and are listed as
//! aliases. Names match case-insensitively, with or without the organisation prefix.

use lf_api::architecture::{ModelType, MoeKeys, Multimodal, RopeScaling, WindowKeys};
use lf_api::ModelArchitecture;

struct Shape {
    model_type: ModelType,
    vocab: u64,
    hidden: u64,
    intermediate: u64,
    layers: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: Option<u64>,
    max_positions: u64,
    eps: f64,
    theta: f64,
    tied: bool,
    /// Llama 3.x `rope_scaling` factor (type `llama3`, low 1, high 4, original 8192).
    llama3_rope_factor: Option<f64>,
    /// Gemma's keys (none for the other families).
    gemma: Option<GemmaKeys>,
    /// Phi-3's `partial_rotary_factor` (Phi-4-mini).
    partial_rotary: Option<f64>,
    /// The mixture-of-experts keys (none for dense families).
    experts: Option<ExpertKeys>,
    /// `sliding_window` (Mistral-7B-v0.1's 4096; `null` in most files).
    window: Option<i64>,
}

/// The `config.json` keys of a mixture of experts (every layer sparse).
struct ExpertKeys {
    /// `num_local_experts` / `num_experts`.
    experts: u64,
    /// `num_experts_per_tok`.
    per_token: u64,
    /// Qwen3-MoE's `moe_intermediate_size` and `norm_topk_prob`.
    qwen3: Option<(u64, bool)>,
    router_aux_loss_coef: f64,
}

/// The `config.json` keys only Gemma has.
struct GemmaKeys {
    query_pre_attn_scalar: f64,
    /// `(attn_logit_softcapping, final_logit_softcapping)` (Gemma 2).
    softcaps: Option<(f64, f64)>,
    /// Gemma 3: `rope_local_base_freq` and the full layers' `linear` RoPE factor.
    local_theta_and_linear_factor: Option<(f64, f64)>,
    /// Gemma 3's `sliding_window_pattern`: every n-th layer full, the others windowed.
    window_pattern: Option<u64>,
}

impl Shape {
    fn build(&self) -> ModelArchitecture {
        ModelArchitecture {
            model_type: self.model_type,
            vocab_size: self.vocab,
            hidden_size: self.hidden,
            intermediate_size: self.intermediate,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            num_key_value_heads: Some(self.kv_heads),
            head_dim: self.head_dim,
            max_position_embeddings: self.max_positions,
            rms_norm_eps: self.eps,
            rope_theta: self.theta,
            rope_scaling: self
                .llama3_rope_factor
                .map(|factor| RopeScaling {
                    rope_type: "llama3".into(),
                    factor,
                    low_freq_factor: Some(1.0),
                    high_freq_factor: Some(4.0),
                    original_max_position_embeddings: Some(8192),
                    short_factor: None,
                    long_factor: None,
                    attention_factor: None,
                })
                .or_else(|| {
                    let (_, factor) = self.gemma.as_ref()?.local_theta_and_linear_factor?;
                    Some(RopeScaling {
                        rope_type: "linear".into(),
                        factor,
                        low_freq_factor: None,
                        high_freq_factor: None,
                        original_max_position_embeddings: None,
                        short_factor: None,
                        long_factor: None,
                        attention_factor: None,
                    })
                }),
            tie_word_embeddings: self.tied,
            attention_bias: false,
            query_pre_attn_scalar: self.gemma.as_ref().map(|g| g.query_pre_attn_scalar),
            attn_logit_softcapping: self.gemma.as_ref().and_then(|g| g.softcaps).map(|c| c.0),
            final_logit_softcapping: self.gemma.as_ref().and_then(|g| g.softcaps).map(|c| c.1),
            rope_local_base_freq: self
                .gemma
                .as_ref()
                .and_then(|g| g.local_theta_and_linear_factor)
                .map(|l| l.0),
            moe: self
                .experts
                .as_ref()
                .map(|e| MoeKeys {
                    num_local_experts: Some(e.experts),
                    num_experts_per_tok: Some(e.per_token),
                    moe_intermediate_size: e.qwen3.map(|q| q.0),
                    norm_topk_prob: e.qwen3.map(|q| q.1),
                    router_aux_loss_coef: Some(e.router_aux_loss_coef),
                    ..MoeKeys::default()
                })
                .unwrap_or_default(),
            windows: WindowKeys {
                sliding_window: self.window,
                sliding_window_pattern: self.gemma.as_ref().and_then(|g| g.window_pattern),
                ..WindowKeys::default()
            },
            // Every Gemma 3 preset (4B and up) is a `Gemma3ForConditionalGeneration` checkpoint
            // on the Hub: the text decoder is fine-tuned, the vision tower is not loaded.
            multimodal: (self.model_type == ModelType::Gemma3Text).then_some(Multimodal::Gemma3),
            partial_rotary_factor: self.partial_rotary,
            torch_dtype: Some("bfloat16".into()),
            bos_token_id: None,
            eos_token_id: None,
        }
    }
}

#[allow(clippy::too_many_arguments)]
const fn llama(
    vocab: u64,
    hidden: u64,
    intermediate: u64,
    layers: u64,
    heads: u64,
    kv_heads: u64,
    max_positions: u64,
    theta: f64,
) -> Shape {
    Shape {
        model_type: ModelType::Llama,
        vocab,
        hidden,
        intermediate,
        layers,
        heads,
        kv_heads,
        head_dim: None,
        max_positions,
        eps: 1e-5,
        theta,
        tied: false,
        llama3_rope_factor: None,
        gemma: None,
        experts: None,
        window: None,
        partial_rotary: None,
    }
}

#[allow(clippy::too_many_arguments)]
const fn qwen2(
    vocab: u64,
    hidden: u64,
    intermediate: u64,
    layers: u64,
    heads: u64,
    kv_heads: u64,
    max_positions: u64,
    tied: bool,
) -> Shape {
    Shape {
        model_type: ModelType::Qwen2,
        vocab,
        hidden,
        intermediate,
        layers,
        heads,
        kv_heads,
        head_dim: None,
        max_positions,
        eps: 1e-6,
        theta: 1_000_000.0,
        tied,
        llama3_rope_factor: None,
        gemma: None,
        experts: None,
        window: None,
        partial_rotary: None,
    }
}

/// A dense Qwen3: head_dim 128, RoPE θ 10⁶, ε 1e-6, 40 960 positions (`Qwen3ForCausalLM`).
const fn qwen3(hidden: u64, intermediate: u64, layers: u64, heads: u64, tied: bool) -> Shape {
    let mut s = qwen2(151936, hidden, intermediate, layers, heads, 8, 40960, tied);
    s.model_type = ModelType::Qwen3;
    s.head_dim = Some(128);
    s
}

/// A Gemma 2: vocabulary 256 000, 8192 positions, RoPE θ 10⁴, soft caps 50 (scores) and 30
/// (logits), tied head (`Gemma2ForCausalLM`).
const fn gemma2(
    hidden: u64,
    intermediate: u64,
    layers: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    query_pre_attn_scalar: f64,
) -> Shape {
    Shape {
        model_type: ModelType::Gemma2,
        vocab: 256_000,
        hidden,
        intermediate,
        layers,
        heads,
        kv_heads,
        head_dim: Some(head_dim),
        max_positions: 8192,
        eps: 1e-6,
        theta: 10_000.0,
        tied: true,
        llama3_rope_factor: None,
        gemma: Some(GemmaKeys {
            query_pre_attn_scalar,
            softcaps: Some((50.0, 30.0)),
            local_theta_and_linear_factor: None,
            window_pattern: None,
        }),
        experts: None,
        // Gemma 2's config.json: `sliding_window: 4096` on every other layer (the even ones).
        window: Some(4096),
        partial_rotary: None,
    }
}

/// Gemma 3's text decoder (`text_config` of the multimodal checkpoints, `Gemma3ForCausalLM`):
/// vocabulary 262 208, 131 072 positions, global RoPE θ 10⁶ with `linear` factor 8, local θ 10⁴,
/// tied head.
const fn gemma3(
    hidden: u64,
    intermediate: u64,
    layers: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    query_pre_attn_scalar: f64,
) -> Shape {
    Shape {
        model_type: ModelType::Gemma3Text,
        vocab: 262_208,
        hidden,
        intermediate,
        layers,
        heads,
        kv_heads,
        head_dim: Some(head_dim),
        max_positions: 131_072,
        eps: 1e-6,
        theta: 1_000_000.0,
        tied: true,
        llama3_rope_factor: None,
        gemma: Some(GemmaKeys {
            query_pre_attn_scalar,
            softcaps: None,
            local_theta_and_linear_factor: Some((10_000.0, 8.0)),
            window_pattern: Some(6),
        }),
        experts: None,
        // Gemma 3's text_config: `sliding_window: 1024`, `sliding_window_pattern: 6` (5 local
        // layers to 1 global).
        window: Some(1024),
        partial_rotary: None,
    }
}

/// A Phi-3 / Phi-4 (`Phi3ForCausalLM`): fused `qkv_proj` and `gate_up_proj`, RMSNorm ε 1e-5,
/// untied head. The 128k-context variants' `longrope` factor lists are left out: they change no
/// count and no byte.
#[allow(clippy::too_many_arguments)]
const fn phi3(
    vocab: u64,
    hidden: u64,
    intermediate: u64,
    layers: u64,
    heads: u64,
    kv_heads: u64,
    max_positions: u64,
    theta: f64,
) -> Shape {
    let mut s = llama(
        vocab,
        hidden,
        intermediate,
        layers,
        heads,
        kv_heads,
        max_positions,
        theta,
    );
    s.model_type = ModelType::Phi3;
    s
}

/// Phi-4-mini: 24 heads of 128 over a 3072 hidden size, three quarters of each rotated, a
/// 200 064-token vocabulary tied to the head.
/// A Phi-3 4k model: every layer attends to the last 2047 positions (`sliding_window: 2047` in
/// Phi-3-mini-4k-instruct's and Phi-3-medium-4k-instruct's config.json). The 128k variants' files
/// give windows no shorter than their 131072-token context, which window nothing, so those
/// presets carry none.
const fn phi3_4k(
    vocab: u64,
    hidden: u64,
    intermediate: u64,
    layers: u64,
    heads: u64,
    kv_heads: u64,
) -> Shape {
    let mut s = phi3(
        vocab,
        hidden,
        intermediate,
        layers,
        heads,
        kv_heads,
        4096,
        10_000.0,
    );
    s.window = Some(2047);
    s
}

const fn phi4_mini() -> Shape {
    let mut s = phi3(200_064, 3072, 8192, 32, 24, 8, 131_072, 10_000.0);
    s.tied = true;
    s.partial_rotary = Some(0.75);
    s
}

const fn with_llama3_rope(mut s: Shape, factor: f64, head_dim: Option<u64>, tied: bool) -> Shape {
    s.llama3_rope_factor = Some(factor);
    s.head_dim = head_dim;
    s.tied = tied;
    s
}

const fn mistral(vocab: u64, theta: f64) -> Shape {
    let mut s = llama(vocab, 4096, 14336, 32, 32, 8, 32768, theta);
    s.model_type = ModelType::Mistral;
    s
}

/// Mistral-7B-v0.1: every layer attends to the last 4096 positions (`sliding_window: 4096`;
/// v0.2 and v0.3 say `null`).
const fn mistral_v01() -> Shape {
    let mut s = mistral(32000, 10000.0);
    s.window = Some(4096);
    s
}

/// Mixtral-8x7B (`MixtralForCausalLM`): Mistral-7B's attention (RoPE θ 10⁶, no window), 8 experts
/// of Mistral's MLP per layer, top-2, `router_aux_loss_coef` 0.02.
const fn mixtral_8x7b() -> Shape {
    let mut s = mistral(32000, 1_000_000.0);
    s.model_type = ModelType::Mixtral;
    s.experts = Some(ExpertKeys {
        experts: 8,
        per_token: 2,
        qwen3: None,
        router_aux_loss_coef: 0.02,
    });
    s
}

/// Qwen3-30B-A3B (`Qwen3MoeForCausalLM`): 48 layers of 128 experts (intermediate 768), top-8
/// renormalised, head_dim 128, 4 key/value heads, untied head.
const fn qwen3_30b_a3b() -> Shape {
    let mut s = qwen3(2048, 6144, 48, 32, false);
    s.model_type = ModelType::Qwen3Moe;
    s.kv_heads = 4;
    s.experts = Some(ExpertKeys {
        experts: 128,
        per_token: 8,
        qwen3: Some((768, true)),
        router_aux_loss_coef: 0.001,
    });
    s
}

/// `(names, shape)`: the first name is the canonical Hugging Face id.
const PRESETS: &[(&[&str], Shape)] = &[
    (
        &["meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf"],
        llama(32000, 4096, 11008, 32, 32, 32, 4096, 10000.0),
    ),
    (
        &[
            "meta-llama/Llama-2-13b-hf",
            "meta-llama/Llama-2-13b-chat-hf",
        ],
        llama(32000, 5120, 13824, 40, 40, 40, 4096, 10000.0),
    ),
    (
        &[
            "meta-llama/Llama-2-70b-hf",
            "meta-llama/Llama-2-70b-chat-hf",
        ],
        llama(32000, 8192, 28672, 80, 64, 8, 4096, 10000.0),
    ),
    (
        &[
            "meta-llama/Meta-Llama-3-8B",
            "meta-llama/Meta-Llama-3-8B-Instruct",
        ],
        llama(128256, 4096, 14336, 32, 32, 8, 8192, 500000.0),
    ),
    (
        &[
            "meta-llama/Meta-Llama-3-70B",
            "meta-llama/Meta-Llama-3-70B-Instruct",
        ],
        llama(128256, 8192, 28672, 80, 64, 8, 8192, 500000.0),
    ),
    (
        &[
            "meta-llama/Llama-3.1-8B",
            "meta-llama/Llama-3.1-8B-Instruct",
            "meta-llama/Meta-Llama-3.1-8B",
            "meta-llama/Meta-Llama-3.1-8B-Instruct",
        ],
        with_llama3_rope(
            llama(128256, 4096, 14336, 32, 32, 8, 131072, 500000.0),
            8.0,
            None,
            false,
        ),
    ),
    (
        &[
            "meta-llama/Llama-3.1-70B",
            "meta-llama/Llama-3.1-70B-Instruct",
            "meta-llama/Meta-Llama-3.1-70B",
            "meta-llama/Meta-Llama-3.1-70B-Instruct",
        ],
        with_llama3_rope(
            llama(128256, 8192, 28672, 80, 64, 8, 131072, 500000.0),
            8.0,
            None,
            false,
        ),
    ),
    (
        &[
            "meta-llama/Llama-3.2-1B",
            "meta-llama/Llama-3.2-1B-Instruct",
        ],
        with_llama3_rope(
            llama(128256, 2048, 8192, 16, 32, 8, 131072, 500000.0),
            32.0,
            Some(64),
            true,
        ),
    ),
    (
        &[
            "meta-llama/Llama-3.2-3B",
            "meta-llama/Llama-3.2-3B-Instruct",
        ],
        with_llama3_rope(
            llama(128256, 3072, 8192, 28, 24, 8, 131072, 500000.0),
            32.0,
            Some(128),
            true,
        ),
    ),
    (
        &[
            "codellama/CodeLlama-34b-hf",
            "codellama/CodeLlama-34b-Instruct-hf",
            "codellama/CodeLlama-34b-Python-hf",
        ],
        llama(32000, 8192, 22016, 48, 64, 8, 16384, 1_000_000.0),
    ),
    (
        &[
            "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
            "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        ],
        llama(32000, 2048, 5632, 22, 32, 4, 2048, 10000.0),
    ),
    (
        &[
            "mistralai/Mistral-7B-v0.1",
            "mistralai/Mistral-7B-Instruct-v0.1",
        ],
        mistral_v01(),
    ),
    (
        &["mistralai/Mistral-7B-Instruct-v0.2"],
        mistral(32000, 1_000_000.0),
    ),
    (
        &[
            "mistralai/Mistral-7B-v0.3",
            "mistralai/Mistral-7B-Instruct-v0.3",
        ],
        mistral(32768, 1_000_000.0),
    ),
    (
        &["Qwen/Qwen2-7B", "Qwen/Qwen2-7B-Instruct"],
        qwen2(152064, 3584, 18944, 28, 28, 4, 131072, false),
    ),
    (
        &["Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct"],
        qwen2(151936, 896, 4864, 24, 14, 2, 32768, true),
    ),
    (
        &["Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-1.5B-Instruct"],
        qwen2(151936, 1536, 8960, 28, 12, 2, 131072, true),
    ),
    (
        &["Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct"],
        qwen2(152064, 3584, 18944, 28, 28, 4, 131072, false),
    ),
    (
        &["Qwen/Qwen2.5-14B", "Qwen/Qwen2.5-14B-Instruct"],
        qwen2(152064, 5120, 13824, 48, 40, 8, 131072, false),
    ),
    (
        &["Qwen/Qwen2.5-72B", "Qwen/Qwen2.5-72B-Instruct"],
        qwen2(152064, 8192, 29568, 80, 64, 8, 131072, false),
    ),
    (
        &["Qwen/Qwen3-8B", "Qwen/Qwen3-8B-Base"],
        qwen3(4096, 12288, 36, 32, false),
    ),
    (
        &["Qwen/Qwen3-14B", "Qwen/Qwen3-14B-Base"],
        qwen3(5120, 17408, 40, 40, false),
    ),
    (&["Qwen/Qwen3-32B"], qwen3(5120, 25600, 64, 64, false)),
    (
        &["Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-30B-A3B-Base"],
        qwen3_30b_a3b(),
    ),
    (
        &[
            "mistralai/Mixtral-8x7B-v0.1",
            "mistralai/Mixtral-8x7B-Instruct-v0.1",
        ],
        mixtral_8x7b(),
    ),
    (
        &["google/gemma-2-9b", "google/gemma-2-9b-it"],
        gemma2(3584, 14336, 42, 16, 8, 256, 256.0),
    ),
    (
        &["google/gemma-2-27b", "google/gemma-2-27b-it"],
        gemma2(4608, 36864, 46, 32, 16, 128, 144.0),
    ),
    (
        &["google/gemma-3-12b-pt", "google/gemma-3-12b-it"],
        gemma3(3840, 15360, 48, 16, 8, 256, 256.0),
    ),
    (
        &["google/gemma-3-27b-pt", "google/gemma-3-27b-it"],
        gemma3(5376, 21504, 62, 32, 16, 128, 168.0),
    ),
    (
        &["microsoft/Phi-3-mini-4k-instruct"],
        phi3_4k(32064, 3072, 8192, 32, 32, 32),
    ),
    (
        &[
            "microsoft/Phi-3-mini-128k-instruct",
            "microsoft/Phi-3.5-mini-instruct",
        ],
        phi3(32064, 3072, 8192, 32, 32, 32, 131_072, 10_000.0),
    ),
    (
        &["microsoft/Phi-3-medium-4k-instruct"],
        phi3_4k(32064, 5120, 17920, 40, 40, 10),
    ),
    (
        &["microsoft/Phi-3-medium-128k-instruct"],
        phi3(32064, 5120, 17920, 40, 40, 10, 131_072, 10_000.0),
    ),
    (
        &["microsoft/phi-4"],
        phi3(100_352, 5120, 17920, 40, 40, 10, 16_384, 250_000.0),
    ),
    (&["microsoft/Phi-4-mini-instruct"], phi4_mini()),
];

/// The built-in architecture for a Hugging Face model id (case-insensitive; the organisation
/// prefix is optional), or `None`.
pub fn preset(name: &str) -> Option<ModelArchitecture> {
    let wanted = name.trim().trim_end_matches('/').to_ascii_lowercase();
    let short = |n: &str| n.rsplit('/').next().unwrap_or(n).to_ascii_lowercase();
    PRESETS
        .iter()
        .find(|(names, _)| {
            names.iter().any(|n| {
                n.to_ascii_lowercase() == wanted || (!wanted.contains('/') && short(n) == wanted)
            })
        })
        .map(|(_, shape)| shape.build())
}

/// The canonical ids of every preset.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(names, _)| names[0]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_case_insensitively_with_or_without_org() {
        let a = preset("meta-llama/Meta-Llama-3-8B").unwrap();
        assert_eq!(preset("META-LLAMA/meta-llama-3-8b").as_ref(), Some(&a));
        assert_eq!(preset("Meta-Llama-3-8B-Instruct").as_ref(), Some(&a));
        assert!(preset("other-org/Meta-Llama-3-8B").is_none());
        assert!(preset("gpt2").is_none());
    }

    #[test]
    fn presets_carry_their_sliding_windows() {
        let windowed = |name: &str| {
            let w = preset(name).unwrap().layer_windows().unwrap();
            let full: Vec<usize> = (0..w.len()).filter(|&i| w[i].is_none()).collect();
            (w.iter().flatten().next().copied(), full.len(), w.len())
        };
        // Gemma 2: every other layer of 4096; Gemma 3: 5 local (1024) to 1 global.
        assert_eq!(windowed("google/gemma-2-9b"), (Some(4096), 21, 42));
        assert_eq!(windowed("google/gemma-2-27b"), (Some(4096), 23, 46));
        assert_eq!(windowed("google/gemma-3-12b-it"), (Some(1024), 8, 48));
        assert_eq!(windowed("google/gemma-3-27b-pt"), (Some(1024), 10, 62));
        // Phi-3 4k: every layer within 2047.
        assert_eq!(
            windowed("microsoft/Phi-3-mini-4k-instruct"),
            (Some(2047), 0, 32)
        );
        assert_eq!(
            windowed("microsoft/Phi-3-medium-4k-instruct"),
            (Some(2047), 0, 40)
        );
        assert_eq!(windowed("microsoft/Phi-3-mini-128k-instruct").0, None);
    }

    #[test]
    fn every_preset_is_valid() {
        for name in preset_names() {
            preset(name)
                .unwrap()
                .validate()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
