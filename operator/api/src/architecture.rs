//! A Llama-family model's shape, as Hugging Face's `config.json` spells it.
//!
//! The planner counts parameters and activations from it; the trainer builds the model from it.
//! Keys keep their `config.json` names, so a FineTuneJob can carry a pasted `config.json` inline.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod inline_schema;

/// Errors from reading a model's `config.json`.
#[derive(Debug, thiserror::Error)]
pub enum ArchitectureError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid Hugging Face config.json: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("model_type `{0}` is not supported; supported: {supported}", supported = ModelType::supported())]
    UnsupportedModelType(String),
    #[error("invalid architecture: {0}")]
    Invalid(String),
}

/// Supported decoder families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelType {
    Llama,
    Mistral,
    Qwen2,
    /// Qwen3 (dense): per-head q/k RMSNorm before RoPE, `head_dim` 128 unless the file says.
    Qwen3,
    /// Gemma 2: `(1 + w)` RMSNorms around attention and MLP, GeGLU, √hidden-scaled embeddings,
    /// attention and final-logit soft-capping, alternating sliding/full layers.
    Gemma2,
    /// Gemma 3's text decoder (`Gemma3ForCausalLM`): Gemma 2's layout with per-head q/k norms
    /// instead of attention soft-capping, and a local RoPE base on its sliding layers.
    #[serde(rename = "gemma3_text")]
    Gemma3Text,
    /// Mixtral: Mistral's attention, every MLP a sparse mixture of experts (top-2 routing, the
    /// chosen experts' weights renormalised).
    Mixtral,
    /// Qwen3-MoE: Qwen3's attention (q/k norms), sparse MLPs with top-k routing
    /// (`norm_topk_prob`), dense MLPs on `mlp_only_layers` and off the `decoder_sparse_step`.
    Qwen3Moe,
    /// Phi-3, Phi-3.5 and Phi-4 (`Phi3ForCausalLM`): fused `qkv_proj` and `gate_up_proj`,
    /// rotation of the first `partial_rotary_factor` of each head, `longrope` (`su`) RoPE scaling.
    Phi3,
}

impl ModelType {
    pub const ALL: [ModelType; 9] = [
        ModelType::Llama,
        ModelType::Mistral,
        ModelType::Qwen2,
        ModelType::Qwen3,
        ModelType::Gemma2,
        ModelType::Gemma3Text,
        ModelType::Mixtral,
        ModelType::Qwen3Moe,
        ModelType::Phi3,
    ];

    /// The `model_type` of `config.json`.
    pub fn name(self) -> &'static str {
        match self {
            ModelType::Llama => "llama",
            ModelType::Mistral => "mistral",
            ModelType::Qwen2 => "qwen2",
            ModelType::Qwen3 => "qwen3",
            ModelType::Gemma2 => "gemma2",
            ModelType::Gemma3Text => "gemma3_text",
            ModelType::Mixtral => "mixtral",
            ModelType::Qwen3Moe => "qwen3_moe",
            ModelType::Phi3 => "phi3",
        }
    }

    /// The family a `config.json` `model_type` names.
    pub fn from_name(name: &str) -> Option<ModelType> {
        ModelType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Every supported `model_type`, comma-separated.
    pub fn supported() -> String {
        ModelType::ALL.map(ModelType::name).join(", ")
    }

    /// Gemma 2 and 3: `(1 + w)` norms, GeGLU, scaled embeddings, norms after attention and MLP.
    pub fn is_gemma(self) -> bool {
        matches!(self, ModelType::Gemma2 | ModelType::Gemma3Text)
    }

    /// Mixtral and Qwen3-MoE: MLPs that are sparse mixtures of experts.
    pub fn is_moe(self) -> bool {
        matches!(self, ModelType::Mixtral | ModelType::Qwen3Moe)
    }
}

/// RoPE scaling as in `config.json` (Llama 3.1's `llama3` type, `linear`, or Phi-3's `longrope`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = inline_schema::rope_scaling)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    /// 1 when left out (`longrope`: `max_position_embeddings / original_max_position_embeddings`).
    #[serde(default = "one")]
    pub factor: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<u64>,
    /// `longrope`: the per-frequency divisors of sequences up to `original_max_position_embeddings`
    /// (one per rotated pair).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_factor: Option<Vec<f64>>,
    /// `longrope`: the per-frequency divisors of longer sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_factor: Option<Vec<f64>>,
    /// `longrope`: the factor cos and sin are multiplied by (default
    /// `√(1 + ln(factor) / ln(original_max_position_embeddings))`, 1 when `factor ≤ 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_factor: Option<f64>,
}

impl RopeScaling {
    /// The factor `longrope` multiplies cos and sin by, as transformers'
    /// `_compute_longrope_parameters` sets it.
    pub fn longrope_attention_factor(&self) -> f64 {
        if let Some(a) = self.attention_factor {
            return a;
        }
        let original = self.original_max_position_embeddings.unwrap_or(4096) as f64;
        if self.factor <= 1.0 {
            1.0
        } else {
            (1.0 + self.factor.ln() / original.ln()).sqrt()
        }
    }
}

fn one() -> f64 {
    1.0
}

/// [`ModelArchitecture`]'s schema transform: `inline_schema::inline_config` with the accepted
/// top-level `model_type`s (every decoder family, and Gemma 3's multimodal wrapper).
fn inline_config_schema(schema: &mut schemars::Schema) {
    let names: Vec<&str> = ModelType::ALL
        .iter()
        .map(|t| t.name())
        .chain([Multimodal::Gemma3.name()])
        .collect();
    inline_schema::inline_config(schema, &names);
}

/// The subset of `config.json` that defines a Llama-family decoder. Unknown keys of the real file
/// are ignored (config.json carries many that do not change the math).
///
/// Its schema is that of the FineTuneJob's inline `config.json`, a multimodal wrapper's included
/// (see `inline_schema`): the fields below, and `text_config` holding them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = inline_config_schema)]
pub struct ModelArchitecture {
    /// The decoder family (in `text_config`, `gemma3_text` when left out).
    pub model_type: ModelType,
    /// Required (in `text_config`, Gemma 3's 262208 when left out).
    pub vocab_size: u64,
    /// Required (at the top level, or in `text_config`).
    pub hidden_size: u64,
    /// Required (at the top level, or in `text_config`).
    pub intermediate_size: u64,
    /// Required (at the top level, or in `text_config`).
    pub num_hidden_layers: u64,
    /// Required (at the top level, or in `text_config`).
    pub num_attention_heads: u64,
    /// Defaults to `num_attention_heads` (no grouped-query attention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<u64>,
    /// Defaults to `hidden_size / num_attention_heads` (128 for qwen3, 256 for gemma, as
    /// transformers' configs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<u64>,
    /// 2048 when left out (Gemma 3: 131072, Phi-3: 4096, their config classes' defaults).
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: u64,
    /// 1e-6 when left out (Phi-3: 1e-5).
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// 10000 when left out (Gemma 3: 1000000).
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// RoPE scaling as in `config.json` (Llama 3.1's `llama3` type, `linear`, or Phi-3's
    /// `longrope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// False when left out (Gemma: true).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v (true for qwen2 whatever the file says; Llama's and Qwen3's `attention_bias`,
    /// which also puts one on o). False when left out.
    #[serde(default)]
    pub attention_bias: bool,
    /// Gemma: attention scores are scaled by `query_pre_attn_scalar^-½` instead of `head_dim^-½`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 2: attention scores become `c·tanh(scores / c)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<f64>,
    /// Gemma 2: logits become `c·tanh(logits / c)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<f64>,
    /// Gemma 3: the RoPE base of the sliding-window layers (`rope_theta` is the full layers').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    /// The mixture-of-experts keys (Mixtral, Qwen3-MoE; empty for dense families).
    #[serde(flatten)]
    pub moe: MoeKeys,
    /// The sliding-window keys ([`ModelArchitecture::layer_windows`]), as transformers' configs
    /// spell them: read from `config.json`, set by the presets, and accepted inline, so a pasted
    /// Gemma 2/3, Mistral or Phi-3 `config.json` plans its windowed layers.
    #[serde(flatten)]
    pub windows: WindowKeys,
    /// Set when this decoder is the text half of a multimodal checkpoint (Gemma 3's
    /// `Gemma3ForConditionalGeneration`, whose `config.json` nests these keys in `text_config`):
    /// the trainer loads only the language model's tensors and leaves the vision tower on disk.
    /// Read from `config.json` (a pasted one too: the FineTuneJob schema declares `text_config`,
    /// not this key) and set by the presets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub multimodal: Option<Multimodal>,
    /// Phi-3: the fraction of each head's dimensions RoPE rotates (the first
    /// `head_dim · factor`; the rest pass through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "dtype")]
    pub torch_dtype: Option<String>,
    /// A token id, or a list of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "token_ids_schema")]
    pub bos_token_id: Option<serde_json::Value>,
    /// A token id, or a list of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "token_ids_schema")]
    pub eos_token_id: Option<serde_json::Value>,
}

/// A multimodal checkpoint whose text decoder lf-model fine-tunes on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Multimodal {
    /// `Gemma3ForConditionalGeneration` (`model_type: gemma3`): a SigLIP vision tower and a
    /// projector beside a `gemma3_text` decoder whose head is tied to its embeddings.
    #[serde(rename = "gemma3")]
    Gemma3,
}

impl Multimodal {
    /// The `model_type` of the multimodal `config.json`.
    pub fn name(self) -> &'static str {
        match self {
            Multimodal::Gemma3 => "gemma3",
        }
    }

    /// The transformers class the checkpoint loads as.
    pub fn class_name(self) -> &'static str {
        match self {
            Multimodal::Gemma3 => "Gemma3ForConditionalGeneration",
        }
    }

    /// The multimodal wrapper a `config.json` `model_type` names.
    pub fn from_name(name: &str) -> Option<Multimodal> {
        (name == "gemma3").then_some(Multimodal::Gemma3)
    }
}

/// The sliding-window keys of `config.json` ([`ModelArchitecture::layer_windows`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WindowKeys {
    /// Sliding-window attention: the keys a query sees on a windowed layer (itself and the
    /// `sliding_window − 1` before it). Which layers are windowed follows the family, as
    /// transformers configures it: every layer for mistral, mixtral and phi3; every other layer
    /// for gemma2 (4096 by default); all but every `sliding_window_pattern`-th for gemma3_text;
    /// qwen2/qwen3 only with `use_sliding_window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<i64>,
    /// Qwen2/Qwen3/Qwen3-MoE: whether `sliding_window` applies at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Qwen2/Qwen3: the first layer that is windowed (without `layer_types`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<u64>,
    /// transformers 5's attention type of each layer, one entry per layer: `full_attention` or
    /// `sliding_attention`. Qwen2/Qwen3 (with `use_sliding_window`), Gemma 2 and Gemma 3 follow
    /// it instead of their pattern; Mistral, Mixtral and Phi-3 window every layer (Qwen3-MoE
    /// every layer with `use_sliding_window`) whatever it says, as transformers does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Gemma 3: every `sliding_window_pattern`-th layer is full, the others windowed (6 by
    /// default: 5 local to 1 global; without `layer_types`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window_pattern: Option<u64>,
}

impl ModelArchitecture {
    /// Each decoder layer's attention window, as transformers configures it: Mistral's and
    /// Phi-3's `sliding_window` on every layer; Qwen2's and Qwen3's only with
    /// `use_sliding_window: true`, on the layers `layer_types` marks `sliding_attention` (when
    /// absent, those from `max_window_layers` on, 28 by default); Gemma's on the layers
    /// `layer_types` marks (when absent, all but every second layer for Gemma 2 and every
    /// `sliding_window_pattern`-th, 6 by default, for Gemma 3); Mixtral's on every layer as
    /// Mistral's, Qwen3-MoE's on every layer with `use_sliding_window: true`; none for Llama.
    pub fn layer_windows(&self) -> Result<Vec<Option<i64>>, String> {
        let w = &self.windows;
        let layers = self.num_hidden_layers as usize;
        let Some(window) = w.sliding_window else {
            return Ok(vec![None; layers]);
        };
        if window <= 0 {
            return Err(format!(
                "sliding_window must be a positive integer, not {window}"
            ));
        }
        let layer_types = |default: &dyn Fn(usize) -> bool| -> Result<Vec<bool>, String> {
            let Some(types) = &w.layer_types else {
                return Ok((0..layers).map(default).collect());
            };
            if types.len() != layers {
                return Err(format!(
                    "layer_types must list one type per layer ({layers})"
                ));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(true),
                    "full_attention" => Ok(false),
                    _ => Err(format!(
                        "layer_types entry \"{t}\" is not supported (full_attention, sliding_attention)"
                    )),
                })
                .collect()
        };
        let sliding: Vec<bool> = match self.model_type {
            ModelType::Llama => vec![false; layers],
            ModelType::Mistral | ModelType::Mixtral | ModelType::Phi3 => vec![true; layers],
            // Qwen3MoeConfig keeps `sliding_window` only with `use_sliding_window`, for every
            // layer.
            ModelType::Qwen3Moe => vec![w.use_sliding_window == Some(true); layers],
            ModelType::Qwen2 | ModelType::Qwen3 => {
                let from = w.max_window_layers.unwrap_or(28) as usize;
                if w.use_sliding_window.unwrap_or(false) {
                    layer_types(&|i| i >= from)?
                } else {
                    vec![false; layers]
                }
            }
            ModelType::Gemma2 => layer_types(&|i| (i + 1) % 2 != 0)?,
            ModelType::Gemma3Text => {
                let pattern = w.sliding_window_pattern.filter(|&p| p > 0).unwrap_or(6) as usize;
                layer_types(&|i| (i + 1) % pattern != 0)?
            }
        };
        Ok(sliding.into_iter().map(|s| s.then_some(window)).collect())
    }
}

/// The mixture-of-experts keys of `config.json`, as Mixtral's and Qwen3-MoE's config classes
/// name them; a missing key takes the config class's default (see the methods of
/// [`ModelArchitecture`] that read them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MoeKeys {
    /// Experts per sparse MLP (Qwen3-MoE's files say `num_experts`; transformers 5 writes
    /// `num_local_experts` for both families).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "num_experts"
    )]
    pub num_local_experts: Option<u64>,
    /// Experts each token is routed to (top-k).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_experts_per_tok: Option<u64>,
    /// Qwen3-MoE: each expert's intermediate size (`intermediate_size` is the dense MLPs').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe_intermediate_size: Option<u64>,
    /// Qwen3-MoE: renormalise the chosen experts' probabilities to sum to 1 (Mixtral always does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_topk_prob: Option<bool>,
    /// Qwen3-MoE: layer `i` is sparse when `(i + 1) % decoder_sparse_step == 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_sparse_step: Option<u64>,
    /// Qwen3-MoE: layers with a dense MLP whatever the step says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_only_layers: Option<Vec<u64>>,
    /// Weight of the router's load-balancing loss in the training loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_aux_loss_coef: Option<f64>,
    /// Whether the training loss includes the load-balancing loss (transformers adds it only
    /// when the router logits are output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_router_logits: Option<bool>,
}

/// An integer or a list of integers, as `config.json` has it. A structural schema (what the API
/// server requires of a CRD) cannot say "one of two types", so the value is kept as it is.
fn token_ids_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

fn default_max_positions() -> u64 {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}

impl ModelArchitecture {
    /// Reads `<dir>/config.json` (or the file itself when `path` is a file).
    pub fn from_model_dir(path: &Path) -> Result<Self, ArchitectureError> {
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|source| ArchitectureError::Io {
            path: file.clone(),
            source,
        })?;
        Self::from_json_str(&text).map_err(|e| match e {
            ArchitectureError::Parse { message, .. } => ArchitectureError::Parse {
                path: file,
                message,
            },
            other => other,
        })
    }

    /// Parses the text of a `config.json`.
    pub fn from_json_str(text: &str) -> Result<Self, ArchitectureError> {
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ArchitectureError::Parse {
                path: PathBuf::new(),
                message: e.to_string(),
            })?;
        let raw = lift_text_config(raw);
        if let Some(mt) = raw.get("model_type").and_then(|v| v.as_str()) {
            if ModelType::from_name(mt).is_none() {
                return Err(ArchitectureError::UnsupportedModelType(mt.to_string()));
            }
        }
        let raw = normalise_config(raw);
        let arch: ModelArchitecture =
            serde_json::from_value(raw).map_err(|e| ArchitectureError::Parse {
                path: PathBuf::new(),
                message: e.to_string(),
            })?;
        arch.validate()?;
        Ok(arch)
    }

    /// Checks the shape is self-consistent.
    pub fn validate(&self) -> Result<(), ArchitectureError> {
        let fail = |m: String| Err(ArchitectureError::Invalid(m));
        if self.hidden_size == 0
            || self.num_attention_heads == 0
            || self.num_hidden_layers == 0
            || self.vocab_size == 0
        {
            return fail("hidden_size, num_attention_heads, num_hidden_layers and vocab_size must be positive".into());
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return fail(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if let Some(f) = self.partial_rotary_factor {
            if !(f > 0.0 && f <= 1.0) || self.rotary_dim() < 2 {
                return fail(format!(
                    "partial_rotary_factor {f} must be in (0, 1] and rotate at least 2 of the head's {} dimensions",
                    self.head_dim()
                ));
            }
        }
        if let Some(s) = self
            .rope_scaling
            .as_ref()
            .filter(|s| s.rope_type == "longrope")
        {
            let pairs = self.rotary_dim().div_ceil(2) as usize;
            for (key, factors) in [
                ("short_factor", &s.short_factor),
                ("long_factor", &s.long_factor),
            ] {
                match factors {
                    Some(f) if f.len() == pairs => {}
                    Some(f) => {
                        return fail(format!(
                            "rope_scaling.{key} has {} entries; longrope needs one per rotated pair ({pairs})",
                            f.len()
                        ))
                    }
                    None => return fail(format!("rope_scaling of type longrope needs `{key}`")),
                }
            }
        }
        Ok(())
    }

    pub fn kv_heads(&self) -> u64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> u64 {
        self.head_dim.unwrap_or(match self.model_type {
            // The configs' own defaults, which transformers uses when config.json omits the key.
            ModelType::Qwen3 => 128,
            ModelType::Gemma2 | ModelType::Gemma3Text => 256,
            _ => self.hidden_size / self.num_attention_heads.max(1),
        })
    }

    /// The dimensions of each head RoPE rotates: the first `head_dim · partial_rotary_factor`
    /// (truncated, as transformers' `int(...)`) for Phi-3, the whole head otherwise.
    pub fn rotary_dim(&self) -> u64 {
        match self.partial_rotary_factor {
            Some(f) if self.model_type == ModelType::Phi3 => (self.head_dim() as f64 * f) as u64,
            _ => self.head_dim(),
        }
    }

    /// The linears of a decoder layer, in checkpoint order: Phi-3's fused four
    /// ([`LinearModule::FUSED`]) or the Llama layout's seven ([`LinearModule::ALL`]).
    pub fn linear_modules(&self) -> &'static [LinearModule] {
        if self.model_type == ModelType::Phi3 {
            &LinearModule::FUSED
        } else {
            &LinearModule::ALL
        }
    }

    /// Whether the checkpoint has a bias for `module`, as transformers builds each family: Llama,
    /// Qwen3 and Gemma put one on q/k/v/o when `attention_bias` is set, Qwen2 always on q/k/v
    /// (never o), Mistral and Phi-3 never (their modelling code ignores `attention_bias`).
    pub fn linear_has_bias(&self, module: LinearModule) -> bool {
        match self.model_type {
            ModelType::Llama
            | ModelType::Qwen3
            | ModelType::Qwen3Moe
            | ModelType::Gemma2
            | ModelType::Gemma3Text => self.attention_bias && module.parent() == "self_attn",
            ModelType::Qwen2 => matches!(
                module,
                LinearModule::QProj | LinearModule::KProj | LinearModule::VProj
            ),
            ModelType::Mistral | ModelType::Mixtral | ModelType::Phi3 => false,
        }
    }

    /// Whether each attention normalises its queries and keys per head (RMSNorm over
    /// `head_dim`, before RoPE): Qwen3's and Gemma 3's `q_norm` and `k_norm`.
    pub fn qk_norm(&self) -> bool {
        matches!(
            self.model_type,
            ModelType::Qwen3 | ModelType::Qwen3Moe | ModelType::Gemma3Text
        )
    }

    /// Experts of each sparse MLP (0 for dense families; the config classes' defaults: 8 for
    /// Mixtral, 128 for Qwen3-MoE).
    pub fn num_experts(&self) -> u64 {
        let default = match self.model_type {
            ModelType::Mixtral => 8,
            ModelType::Qwen3Moe => 128,
            _ => return 0,
        };
        self.moe.num_local_experts.unwrap_or(default)
    }

    /// Experts each token is routed to (2 for Mixtral, 8 for Qwen3-MoE unless the file says).
    pub fn experts_per_token(&self) -> u64 {
        let default = match self.model_type {
            ModelType::Mixtral => 2,
            ModelType::Qwen3Moe => 8,
            _ => return 0,
        };
        self.moe.num_experts_per_tok.unwrap_or(default)
    }

    /// The intermediate size of one expert: Mixtral's `intermediate_size`, Qwen3-MoE's
    /// `moe_intermediate_size` (768 by default).
    pub fn expert_intermediate_size(&self) -> u64 {
        match self.model_type {
            ModelType::Qwen3Moe => self.moe.moe_intermediate_size.unwrap_or(768),
            _ => self.intermediate_size,
        }
    }

    /// Whether the chosen experts' probabilities are renormalised to sum to 1 (always for
    /// Mixtral; Qwen3-MoE's `norm_topk_prob`, false by default).
    pub fn norm_topk_prob(&self) -> bool {
        match self.model_type {
            ModelType::Qwen3Moe => self.moe.norm_topk_prob.unwrap_or(false),
            _ => true,
        }
    }

    /// Whether some decoder layer of a mixture of experts has a dense MLP (Qwen3-MoE's
    /// `mlp_only_layers`, `decoder_sparse_step`).
    pub fn has_dense_mlp_layers(&self) -> bool {
        self.model_type.is_moe() && (0..self.num_hidden_layers).any(|i| !self.is_sparse_layer(i))
    }

    /// Whether decoder layer `i` has a sparse MLP: every Mixtral layer; a Qwen3-MoE layer not in
    /// `mlp_only_layers` whose `i + 1` is a multiple of `decoder_sparse_step`, as
    /// `Qwen3MoeDecoderLayer` decides.
    pub fn is_sparse_layer(&self, i: u64) -> bool {
        if self.num_experts() == 0 {
            return false;
        }
        match self.model_type {
            ModelType::Mixtral => true,
            ModelType::Qwen3Moe => {
                let step = self.moe.decoder_sparse_step.unwrap_or(1).max(1);
                let dense = self.moe.mlp_only_layers.as_deref().unwrap_or(&[]);
                !dense.contains(&i) && (i + 1).is_multiple_of(step)
            }
            _ => false,
        }
    }

    /// Training's view of the load-balancing loss, as LLaMA-Factory's `configure_moe` sets it: a
    /// `moe_aux_loss_coef` other than 0 turns `output_router_logits` on with that weight (for a
    /// mixture of experts; `None` or 0 leaves `config.json`'s keys as they are).
    pub fn apply_moe_aux_loss_coef(&mut self, coef: Option<f64>) {
        if let Some(c) = coef.filter(|&c| c != 0.0 && self.model_type.is_moe()) {
            self.moe.output_router_logits = Some(true);
            self.moe.router_aux_loss_coef = Some(c);
        }
    }

    /// The load-balancing loss's weight in the training loss: `router_aux_loss_coef` (0.001 by
    /// default) when `output_router_logits` is set, else none (transformers adds it only then).
    pub fn router_aux_loss_weight(&self) -> Option<f64> {
        let on = self.model_type.is_moe() && self.moe.output_router_logits.unwrap_or(false);
        on.then(|| self.moe.router_aux_loss_coef.unwrap_or(0.001))
    }

    /// The factor attention scores are multiplied by: `query_pre_attn_scalar^-½` (Gemma), else
    /// `head_dim^-½`.
    pub fn attention_scale(&self) -> f64 {
        let d = match self.query_pre_attn_scalar {
            Some(s) if self.model_type.is_gemma() => s,
            _ => self.head_dim() as f64,
        };
        d.powf(-0.5)
    }

    /// The soft cap of attention scores: Gemma 2's `attn_logit_softcapping` (Gemma 3's modelling
    /// code ignores the key).
    pub fn attention_softcap(&self) -> Option<f64> {
        self.attn_logit_softcapping
            .filter(|_| self.model_type == ModelType::Gemma2)
    }

    /// The soft cap of the final logits (Gemma's `final_logit_softcapping`).
    pub fn logit_softcap(&self) -> Option<f64> {
        self.final_logit_softcapping
            .filter(|_| self.model_type.is_gemma())
    }

    /// The factor token embeddings are multiplied by: `√hidden_size` for Gemma.
    pub fn embedding_scale(&self) -> Option<f64> {
        self.model_type
            .is_gemma()
            .then(|| (self.hidden_size as f64).sqrt())
    }

    /// `(in_features, out_features)` of a decoder linear (Phi-3's fused ones: q, k and v rows
    /// stacked; gate rows then up rows).
    pub fn linear_shape(&self, module: LinearModule) -> (u64, u64) {
        use LinearModule::*;
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim();
        let kv = self.kv_heads() * self.head_dim();
        let i = self.intermediate_size;
        match module {
            QProj => (h, q),
            KProj | VProj => (h, kv),
            OProj => (q, h),
            GateProj | UpProj => (h, i),
            DownProj => (i, h),
            QkvProj => (h, q + 2 * kv),
            GateUpProj => (h, 2 * i),
        }
    }

    /// The linears `lora_target` names on this model: `all` is every linear of
    /// [`ModelArchitecture::linear_modules`]; otherwise a comma-separated list of them (in the
    /// order given, repeats dropped). A name of the other layout is an error naming the modules to use instead
    /// (LLaMA-Factory hands the names to PEFT, which stops with "Target modules ... not found in
    /// the base model").
    ///
    /// On a mixture of experts the linears are the attention's, and the router and experts
    /// `lora_target` may also name are [`ModelArchitecture::expert_lora_targets`].
    pub fn lora_targets(&self, lora_target: &str) -> Result<Vec<LinearModule>, String> {
        if self.model_type.is_moe() {
            return self
                .moe_lora_targets(lora_target)
                .map(|(linears, _)| linears);
        }
        let mine = self.linear_modules();
        let raw = lora_target.trim();
        if raw == "all" {
            return Ok(mine.to_vec());
        }
        let list = |ms: &[LinearModule]| ms.iter().map(|m| m.name()).collect::<Vec<_>>().join(",");
        let mut wanted = Vec::new();
        for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let module = LinearModule::from_name(name).ok_or_else(|| {
                format!(
                    "`{name}` is not a decoder linear; use `all` or names from {}",
                    list(mine)
                )
            })?;
            if !mine.contains(&module) {
                let fused = match module {
                    LinearModule::QProj | LinearModule::KProj | LinearModule::VProj => {
                        Some(LinearModule::QkvProj)
                    }
                    LinearModule::GateProj | LinearModule::UpProj => Some(LinearModule::GateUpProj),
                    _ => None,
                };
                let why = match (self.model_type, fused) {
                    (ModelType::Phi3, Some(f)) => format!(
                        "phi3 fuses q_proj, k_proj and v_proj into qkv_proj and gate_proj, up_proj into gate_up_proj: use `{}`",
                        f.name()
                    ),
                    _ => format!("{} models have no `{name}`", self.model_type.name()),
                };
                return Err(format!(
                    "`{name}` is not a linear of this model ({why}); use `all` or names from {}",
                    list(mine)
                ));
            }
            if !wanted.contains(&module) {
                wanted.push(module);
            }
        }
        if wanted.is_empty() {
            return Err("names no module".into());
        }
        Ok(wanted)
    }
}

/// The names a mixture of experts' expert linears have in PEFT's `target_modules` (transformers
/// 4's modules, which PEFT 0.22 maps onto transformers 5's fused parameters): the gate and up
/// halves of `gate_up_proj`, and `down_proj`.
fn expert_module_names(model_type: ModelType) -> [&'static str; 3] {
    match model_type {
        ModelType::Mixtral => ["w1", "w3", "w2"],
        _ => ["gate_proj", "up_proj", "down_proj"],
    }
}

impl ModelArchitecture {
    /// The router and expert LoRA `lora_target` names on a mixture of experts (none on a dense
    /// model, or with `all`). See [`ExpertLoraTargets`] for the names and what PEFT 0.22 makes of
    /// them.
    pub fn expert_lora_targets(&self, lora_target: &str) -> Result<ExpertLoraTargets, String> {
        if !self.model_type.is_moe() {
            return Ok(ExpertLoraTargets::default());
        }
        self.moe_lora_targets(lora_target)
            .map(|(_, experts)| experts)
    }

    /// `lora_target` on a mixture of experts: the attention linears it names (`all`: q, k, v, o,
    /// the `nn.Linear`s LLaMA-Factory's `all` finds in transformers 5's MoE models) and the
    /// router and expert adapters.
    fn moe_lora_targets(
        &self,
        lora_target: &str,
    ) -> Result<(Vec<LinearModule>, ExpertLoraTargets), String> {
        let attention: Vec<LinearModule> = self
            .linear_modules()
            .iter()
            .copied()
            .filter(|m| m.parent() == "self_attn")
            .collect();
        let dense_layers = self.has_dense_mlp_layers();
        let mut raw = lora_target.trim();
        if raw == "all" {
            if !dense_layers {
                return Ok((attention, ExpertLoraTargets::default()));
            }
            // LLaMA-Factory's `all` names every nn.Linear, the dense layers' MLP included, and
            // PEFT maps those names onto the experts too.
            raw = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
        }
        let family = self.model_type.name();
        let [gate_half, up_half, down] = expert_module_names(self.model_type);
        let mut linears = Vec::new();
        let mut experts = ExpertLoraTargets::default();
        let (mut gate, mut up, mut fused) = (false, false, false);
        for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            // An expert name that is also a dense layer's linear (Qwen3-MoE's gate_proj,
            // up_proj, down_proj) adapts that linear in the dense layers too, as PEFT 0.22 does.
            let dense_linear = LinearModule::from_name(name).filter(|m| {
                dense_layers && m.parent() == "mlp" && self.linear_modules().contains(m)
            });
            if let Some(m) = dense_linear.filter(|m| !linears.contains(m)) {
                linears.push(m);
            }
            if name == gate_half {
                gate = true;
            } else if name == up_half {
                up = true;
            } else if name == down || name == "down_proj" {
                experts.down = true;
            } else if name == "gate_up_proj" {
                fused = true;
            } else if name == "gate" {
                experts.router = true;
            } else {
                let m = LinearModule::from_name(name)
                    .filter(|m| attention.contains(m))
                    .ok_or_else(|| {
                        format!(
                            "`{name}` is not a linear of this {family} model; use `all` (the \
                             attention) or names from q_proj,k_proj,v_proj,o_proj, gate (the \
                             router), {gate_half},{up_half},{down} (the experts' linears as PEFT \
                             names them) or gate_up_proj,down_proj (transformers 5's fused expert \
                             parameters)"
                        )
                    })?;
                if !linears.contains(&m) {
                    linears.push(m);
                }
            }
        }
        experts.gate_up = match (gate, up, fused) {
            (false, false, false) => None,
            (true, true, false) => Some(2),
            (false, false, true) => Some(1),
            (_, _, true) => {
                return Err(format!(
                    "`gate_up_proj` and `{}` name the same fused expert parameter; name either \
                     gate_up_proj (LoRA of rank lora_rank) or {gate_half},{up_half} (PEFT fuses \
                     them into one LoRA of rank 2·lora_rank)",
                    if gate { gate_half } else { up_half }
                ))
            }
            (g, _, false) => {
                let (named, missing) = if g {
                    (gate_half, up_half)
                } else {
                    (up_half, gate_half)
                };
                return Err(format!(
                    "`{named}` without `{missing}`: transformers 5 fuses every expert's \
                     {gate_half} and {up_half} into one gate_up_proj parameter, and PEFT adapts \
                     them only together (one LoRA of rank 2·lora_rank); name both, or gate_up_proj"
                ));
            }
        };
        if linears.is_empty() && experts.is_empty() {
            return Err("names no module".into());
        }
        Ok((linears, experts))
    }
}

/// LoRA on a mixture of experts' router and experts, as PEFT 0.22 adapts transformers 5's MoE
/// modules, whose router (`mlp.gate`, a `…TopKRouter` holding `weight` `[E, H]`) and experts
/// (`mlp.experts`, holding the 3-D `gate_up_proj` `[E, 2·I, H]` and `down_proj` `[E, H, I]`) are
/// no `nn.Linear`s: PEFT wraps the parameters themselves (`target_parameters`, `ParamWrapper`).
///
/// `lora_target` names them as PEFT's `target_modules` does (transformers 4's module names, which
/// PEFT's `convert_peft_config_for_transformers` maps onto those parameters): `gate` (the router),
/// Mixtral's `w1`,`w3` / Qwen3-MoE's `gate_proj`,`up_proj` (only together: the fused
/// `gate_up_proj`, at rank `2·r` and alpha `2·α`, PEFT's `rank_pattern`/`alpha_pattern`), and
/// `w2` / `down_proj`; or by the parameters' own names (`target_parameters`): `gate_up_proj`
/// (rank `r`) and `down_proj`. On a Qwen3-MoE with dense layers (`mlp_only_layers`,
/// `decoder_sparse_step`) the names `gate_proj`, `up_proj`, `down_proj` also adapt those layers'
/// linears (at rank `r`), as PEFT 0.22 does (0.21's conversion dropped them from
/// `target_modules`). `all` is LLaMA-Factory's list of the `nn.Linear`s: the attention, and on
/// such a model the dense MLP's linears too, which PEFT then maps onto the experts as well.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExpertLoraTargets {
    /// The router's `gate.weight`: `lora_A` `[r, H]`, `lora_B` `[E, r]`.
    pub router: bool,
    /// The experts' `gate_up_proj`, with its rank factor: `Some(1)` when named `gate_up_proj`,
    /// `Some(2)` when named by its two halves (rank `2·r`, alpha `2·α`).
    pub gate_up: Option<u32>,
    /// The experts' `down_proj`.
    pub down: bool,
}

impl ExpertLoraTargets {
    /// Whether nothing is adapted.
    pub fn is_empty(&self) -> bool {
        !self.router && self.gate_up.is_none() && !self.down
    }

    /// PEFT's `target_parameters` for these adapters, sorted as PEFT writes them.
    pub fn target_parameters(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.down {
            out.push("down_proj");
        }
        if self.router {
            out.push("gate.weight");
        }
        if self.gate_up.is_some() {
            out.push("gate_up_proj");
        }
        out
    }

    /// The trainable tensors of one sparse layer's adapters at rank `r`, `(rows, cols)`: each
    /// `lora_A` then `lora_B` of the router, `gate_up_proj` and `down_proj`. PEFT's layout for a
    /// 3-D parameter of `E` experts is one `nn.Linear` pair holding every expert's factors:
    /// `lora_A` `[E·r, in]` (expert `e`'s rows `e·r..(e+1)·r`) and `lora_B` `[out, r·E]` (expert
    /// `e`'s columns `e, e + E, e + 2E, …`).
    pub fn shapes(&self, arch: &ModelArchitecture, r: u64) -> Vec<(u64, u64)> {
        let (h, i, e) = (
            arch.hidden_size,
            arch.expert_intermediate_size(),
            arch.num_experts(),
        );
        let mut out = Vec::new();
        if self.router {
            out.extend([(r, h), (e, r)]);
        }
        if let Some(f) = self.gate_up {
            let r = f as u64 * r;
            out.extend([(e * r, h), (2 * i, e * r)]);
        }
        if self.down {
            out.extend([(e * r, i), (h, e * r)]);
        }
        out
    }
}

/// Deserialises a FineTuneJob's inline `config.json` (`spec.model.architecture`) as
/// [`ModelArchitecture::from_json_str`] reads a file: transformers 5's `rope_parameters` folded back
/// and, where the paste leaves them out, the keys the family's config class defaults (Gemma's tied
/// head and soft caps, ...), so a pasted Gemma plans with the head it has.
pub fn deserialize_inline<'de, D>(d: D) -> Result<Option<ModelArchitecture>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let Some(raw) = Option::<serde_json::Value>::deserialize(d)? else {
        return Ok(None);
    };
    serde_json::from_value(normalise_config(raw))
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A `config.json` as lf-api and lf-model read it: transformers 5's `rope_parameters` folded back
/// into the classic keys ([`normalise_transformers_v5`]), and the keys a family's config class
/// defaults when the file omits them ([`family_defaults`]) filled in.
pub fn normalise_config(raw: serde_json::Value) -> serde_json::Value {
    let mut raw = normalise_transformers_v5(lift_text_config(raw));
    if let Some(obj) = raw.as_object_mut() {
        let family = obj
            .get("model_type")
            .and_then(|v| v.as_str())
            .and_then(ModelType::from_name);
        for (key, value) in family.map(family_defaults).unwrap_or_default() {
            obj.entry(key).or_insert(value);
        }
        // Qwen3-MoE's files say `num_experts`, transformers 5 writes `num_local_experts` (its
        // alias); a file with both keeps the second, which transformers reads.
        if obj.contains_key("num_local_experts") {
            obj.remove("num_experts");
        }
        if family == Some(ModelType::Phi3) {
            normalise_phi3_rope(obj);
        }
    }
    raw
}

/// A multimodal `config.json` (Gemma 3's `model_type: gemma3`, see [`Multimodal`]) as the
/// text decoder's own: `text_config` (`gemma3_text` unless it says) with `multimodal` naming the
/// wrapper, the wrapper's dtype and tied head where `text_config` leaves them out, and no final
/// logit soft cap (`Gemma3ForConditionalGeneration` computes its logits with `lm_head` alone,
/// whatever `final_logit_softcapping` says). Any other file is returned as it is.
fn lift_text_config(raw: serde_json::Value) -> serde_json::Value {
    let wrapper = raw
        .get("model_type")
        .and_then(|v| v.as_str())
        .and_then(Multimodal::from_name);
    let (Some(wrapper), Some(text)) = (wrapper, raw.get("text_config").and_then(|t| t.as_object()))
    else {
        return raw;
    };
    let mut text = text.clone();
    text.entry("model_type")
        .or_insert_with(|| ModelType::Gemma3Text.name().into());
    for key in ["dtype", "torch_dtype", "tie_word_embeddings"] {
        if let Some(v) = raw.get(key) {
            text.entry(key).or_insert_with(|| v.clone());
        }
    }
    text.insert("final_logit_softcapping".into(), serde_json::Value::Null);
    text.insert("multimodal".into(), wrapper.name().into());
    serde_json::Value::Object(text)
}

/// What transformers' config class of `family` sets for a key `config.json` leaves out (an
/// explicit `null` stays null), where it differs from the lf-api default of the key.
fn family_defaults(family: ModelType) -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    let gemma = || {
        vec![
            ("query_pre_attn_scalar", json!(256)),
            ("tie_word_embeddings", json!(true)),
            ("sliding_window", json!(4096)),
        ]
    };
    match family {
        ModelType::Gemma2 => {
            let mut d = gemma();
            d.extend([
                ("attn_logit_softcapping", json!(50.0)),
                ("final_logit_softcapping", json!(30.0)),
            ]);
            d
        }
        ModelType::Gemma3Text => {
            let mut d = gemma();
            // Gemma3TextConfig's defaults: the Hub's multimodal files leave the vocabulary and
            // context out of `text_config`.
            d.extend([
                ("rope_theta", json!(1_000_000.0)),
                ("rope_local_base_freq", json!(10_000.0)),
                ("vocab_size", json!(262_208)),
                ("max_position_embeddings", json!(131_072)),
            ]);
            d
        }
        ModelType::Phi3 => vec![
            ("rms_norm_eps", json!(1e-5)),
            ("max_position_embeddings", json!(4096)),
            ("original_max_position_embeddings", json!(4096)),
        ],
        _ => Vec::new(),
    }
}

/// Phi-3's RoPE keys as `Phi3Config` reads them: the legacy scaling types `su` and `yarn` are
/// `longrope`; a `longrope` scaling's `original_max_position_embeddings` is always the top-level
/// key (4096 by default), and its `factor`, when absent, `max_position_embeddings /
/// original_max_position_embeddings` (what `_compute_longrope_parameters` derives the attention
/// factor from).
fn normalise_phi3_rope(obj: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::json;
    let original = obj
        .get("original_max_position_embeddings")
        .and_then(|v| v.as_u64())
        .unwrap_or(4096);
    let max_positions = obj
        .get("max_position_embeddings")
        .and_then(|v| v.as_u64())
        .unwrap_or(4096);
    let Some(scaling) = obj.get_mut("rope_scaling").and_then(|s| s.as_object_mut()) else {
        return;
    };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default")
        .to_string();
    let kind = if matches!(kind.as_str(), "su" | "yarn") {
        "longrope".to_string()
    } else {
        kind
    };
    scaling.remove("type");
    scaling.insert("rope_type".into(), json!(kind));
    if kind == "longrope" {
        scaling.insert("original_max_position_embeddings".into(), json!(original));
        if scaling.get("factor").is_none_or(|f| f.is_null()) {
            scaling.insert(
                "factor".into(),
                json!(max_positions as f64 / original as f64),
            );
        }
    }
}

/// transformers 5 writes `rope_parameters: {rope_theta, rope_type, ...}` instead of `rope_theta` and
/// `rope_scaling` (and Phi-3's `partial_rotary_factor`); fold it back into the classic keys (the
/// classic keys win when both exist).
/// Gemma 3 keeps one set per layer type (`{full_attention: {...}, sliding_attention: {...}}`):
/// the full layers' become `rope_theta`/`rope_scaling`, the sliding layers' base
/// `rope_local_base_freq`.
fn normalise_transformers_v5(mut raw: serde_json::Value) -> serde_json::Value {
    let Some(obj) = raw.as_object_mut() else {
        return raw;
    };
    if let Some(sliding) = obj
        .get("rope_parameters")
        .and_then(|p| p.get("sliding_attention"))
        .and_then(|p| p.get("rope_theta"))
        .cloned()
    {
        obj.entry("rope_local_base_freq").or_insert(sliding);
    }
    if let Some(full) = obj
        .get("rope_parameters")
        .and_then(|p| p.get("full_attention"))
        .cloned()
    {
        obj.insert("rope_parameters".into(), full);
    }
    let Some(params) = obj
        .get("rope_parameters")
        .and_then(|p| p.as_object())
        .cloned()
    else {
        return raw;
    };
    for key in ["rope_theta", "partial_rotary_factor"] {
        if !obj.contains_key(key) {
            if let Some(value) = params.get(key) {
                obj.insert(key.into(), value.clone());
            }
        }
    }
    let rope_type = params
        .get("rope_type")
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    if rope_type != "default" && obj.get("rope_scaling").is_none_or(|v| v.is_null()) {
        let mut scaling = params.clone();
        scaling.remove("rope_theta");
        scaling.remove("partial_rotary_factor");
        obj.insert("rope_scaling".into(), serde_json::Value::Object(scaling));
    }
    raw
}

/// The linear layers of a Llama-family decoder layer, in Hugging Face naming.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LinearModule {
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
    /// Phi-3's fused query/key/value projection (`self_attn.qkv_proj`).
    QkvProj,
    /// Phi-3's fused gate/up projection (`mlp.gate_up_proj`).
    GateUpProj,
}

impl LinearModule {
    /// The seven linears of the Llama layout (every family but Phi-3; a model's own list is
    /// [`ModelArchitecture::linear_modules`]).
    pub const ALL: [LinearModule; 7] = [
        LinearModule::QProj,
        LinearModule::KProj,
        LinearModule::VProj,
        LinearModule::OProj,
        LinearModule::GateProj,
        LinearModule::UpProj,
        LinearModule::DownProj,
    ];

    /// Phi-3's four linears.
    pub const FUSED: [LinearModule; 4] = [
        LinearModule::QkvProj,
        LinearModule::OProj,
        LinearModule::GateUpProj,
        LinearModule::DownProj,
    ];

    /// The module's Hugging Face name (`q_proj`, ...).
    pub fn name(self) -> &'static str {
        match self {
            LinearModule::QProj => "q_proj",
            LinearModule::KProj => "k_proj",
            LinearModule::VProj => "v_proj",
            LinearModule::OProj => "o_proj",
            LinearModule::GateProj => "gate_proj",
            LinearModule::UpProj => "up_proj",
            LinearModule::DownProj => "down_proj",
            LinearModule::QkvProj => "qkv_proj",
            LinearModule::GateUpProj => "gate_up_proj",
        }
    }

    /// The parent module in a decoder layer (`self_attn` or `mlp`).
    pub fn parent(self) -> &'static str {
        match self {
            LinearModule::QProj
            | LinearModule::KProj
            | LinearModule::VProj
            | LinearModule::OProj
            | LinearModule::QkvProj => "self_attn",
            LinearModule::GateProj
            | LinearModule::UpProj
            | LinearModule::DownProj
            | LinearModule::GateUpProj => "mlp",
        }
    }

    /// The module a Hugging Face name denotes, in either layout.
    pub fn from_name(name: &str) -> Option<LinearModule> {
        LinearModule::ALL
            .into_iter()
            .chain([LinearModule::QkvProj, LinearModule::GateUpProj])
            .find(|m| m.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_real_style_config() {
        let text = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":128256,
            "hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,
            "num_key_value_heads":8,"max_position_embeddings":8192,"rms_norm_eps":1e-5,"rope_theta":500000.0,
            "tie_word_embeddings":false,"torch_dtype":"bfloat16","bos_token_id":128000,"eos_token_id":128001}"#;
        let a = ModelArchitecture::from_json_str(text).unwrap();
        assert_eq!(a.head_dim(), 128);
        assert_eq!(a.linear_shape(LinearModule::KProj), (4096, 1024));
    }

    #[test]
    fn reads_transformers_v5_rope_parameters() {
        let text = r#"{"model_type":"llama","vocab_size":512,"hidden_size":128,"intermediate_size":352,
            "num_hidden_layers":4,"num_attention_heads":4,"num_key_value_heads":2,"dtype":"bfloat16",
            "rope_parameters":{"rope_theta":500000.0,"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let a = ModelArchitecture::from_json_str(text).unwrap();
        assert_eq!(a.rope_theta, 500000.0);
        let s = a.rope_scaling.unwrap();
        assert_eq!((s.rope_type.as_str(), s.factor), ("llama3", 8.0));
        assert_eq!(a.torch_dtype.as_deref(), Some("bfloat16"));
    }

    #[test]
    fn reads_gemma3_per_layer_type_rope_and_family_defaults() {
        let text = r#"{"model_type":"gemma3_text","vocab_size":96,"hidden_size":64,
            "intermediate_size":112,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
            "rope_parameters":{"full_attention":{"rope_type":"linear","factor":8.0,"rope_theta":1000000.0},
            "sliding_attention":{"rope_type":"default","rope_theta":10000.0}}}"#;
        let a = ModelArchitecture::from_json_str(text).unwrap();
        assert_eq!(a.model_type, ModelType::Gemma3Text);
        assert_eq!((a.rope_theta, a.rope_local_base_freq), (1e6, Some(1e4)));
        let s = a.rope_scaling.as_ref().unwrap();
        assert_eq!((s.rope_type.as_str(), s.factor), ("linear", 8.0));
        // Gemma3TextConfig's defaults for the keys the file leaves out.
        assert!(a.tie_word_embeddings);
        assert_eq!(a.head_dim(), 256);
        assert_eq!(a.attention_scale(), 1.0 / 16.0);
        assert_eq!(a.embedding_scale(), Some(8.0));
        assert_eq!((a.attention_softcap(), a.logit_softcap()), (None, None));
        assert!(a.qk_norm());
    }

    #[test]
    fn reads_the_text_decoder_of_a_gemma3_multimodal_config() {
        // The Hub's Gemma-3-12B layout: the decoder's keys in text_config, several left to
        // Gemma3TextConfig's defaults (vocabulary, context, head_dim), the dtype at the top.
        let text = r#"{"architectures":["Gemma3ForConditionalGeneration"],"model_type":"gemma3",
            "torch_dtype":"bfloat16","image_token_index":262144,"mm_tokens_per_image":256,
            "text_config":{"hidden_size":3840,"intermediate_size":15360,"model_type":"gemma3_text",
              "num_attention_heads":16,"num_hidden_layers":48,"num_key_value_heads":8,
              "rope_scaling":{"factor":8.0,"rope_type":"linear"},"sliding_window":1024,
              "final_logit_softcapping":30.0},
            "vision_config":{"hidden_size":1152,"model_type":"siglip_vision_model","num_hidden_layers":27}}"#;
        let a = ModelArchitecture::from_json_str(text).unwrap();
        assert_eq!(a.model_type, ModelType::Gemma3Text);
        assert_eq!(a.multimodal, Some(Multimodal::Gemma3));
        assert_eq!(
            a.multimodal.map(Multimodal::class_name),
            Some("Gemma3ForConditionalGeneration")
        );
        assert_eq!(
            (a.vocab_size, a.max_position_embeddings),
            (262_208, 131_072)
        );
        assert_eq!(
            (a.hidden_size, a.num_hidden_layers, a.head_dim()),
            (3840, 48, 256)
        );
        assert_eq!(a.torch_dtype.as_deref(), Some("bfloat16"));
        assert!(a.tie_word_embeddings);
        // Gemma3ForConditionalGeneration's logits are lm_head's alone.
        assert_eq!(a.logit_softcap(), None);
        let windows = a.layer_windows().unwrap();
        assert_eq!(windows.iter().filter(|w| w.is_none()).count(), 8);
        assert_eq!(windows[5], None);
        assert_eq!(windows[0], Some(1024));
        // A text-only Gemma 3 is no multimodal checkpoint; another wrapper is refused.
        let plain = ModelArchitecture::from_json_str(
            r#"{"model_type":"gemma3_text","hidden_size":64,"intermediate_size":112,
            "num_hidden_layers":2,"num_attention_heads":4}"#,
        )
        .unwrap();
        assert_eq!(plain.multimodal, None);
        let err = ModelArchitecture::from_json_str(r#"{"model_type":"gemma3","vision_config":{}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("gemma3"), "{err}");
    }

    #[test]
    fn an_inline_architecture_carries_its_windows() {
        // The FineTuneJob schema lists the window keys, so the API server keeps them ...
        let schema = serde_json::to_value(schemars::schema_for!(ModelArchitecture)).unwrap();
        for key in [
            "sliding_window",
            "layer_types",
            "sliding_window_pattern",
            "use_sliding_window",
        ] {
            assert!(
                schema["properties"].get(key).is_some(),
                "{key} not in the schema"
            );
        }
        // ... and an inline paste plans them: Gemma 3's 5 local : 1 global, Phi-3's every layer,
        // Gemma 2's every other layer (its config class's 4096 when the paste leaves it out).
        let inline = |v: serde_json::Value| {
            deserialize_inline(v)
                .unwrap()
                .unwrap()
                .layer_windows()
                .unwrap()
        };
        let shape = serde_json::json!({"vocab_size": 96, "hidden_size": 64, "intermediate_size": 112,
            "num_hidden_layers": 12, "num_attention_heads": 4});
        let with = |extra: serde_json::Value| {
            let mut v = shape.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        let gemma3 = inline(with(serde_json::json!({"model_type": "gemma3_text",
            "sliding_window": 1024, "sliding_window_pattern": 6})));
        let full: Vec<usize> = (0..12).filter(|&i| gemma3[i].is_none()).collect();
        assert_eq!(full, [5, 11]);
        assert_eq!(gemma3[0], Some(1024));
        let phi3 = inline(with(
            serde_json::json!({"model_type": "phi3", "sliding_window": 2047}),
        ));
        assert_eq!(phi3, vec![Some(2047); 12]);
        let gemma2 = inline(with(serde_json::json!({"model_type": "gemma2"})));
        assert_eq!((gemma2[0], gemma2[1]), (Some(4096), None));
        let typed = inline(with(
            serde_json::json!({"model_type": "mistral", "sliding_window": 8,
            "layer_types": vec!["full_attention"; 12]}),
        ));
        assert_eq!(
            typed,
            vec![Some(8); 12],
            "mistral windows every layer whatever layer_types says"
        );
    }

    #[test]
    fn gemma2_soft_caps_default_unless_null() {
        let base = r#""model_type":"gemma2","vocab_size":96,"hidden_size":64,"intermediate_size":112,
            "num_hidden_layers":2,"num_attention_heads":4,"head_dim":16,"query_pre_attn_scalar":24"#;
        let a = ModelArchitecture::from_json_str(&format!("{{{base}}}")).unwrap();
        assert_eq!(
            (a.attention_softcap(), a.logit_softcap()),
            (Some(50.0), Some(30.0))
        );
        assert_eq!(a.attention_scale(), 24f64.powf(-0.5));
        assert!(!a.qk_norm());
        let a = ModelArchitecture::from_json_str(&format!(
            r#"{{{base},"attn_logit_softcapping":null,"final_logit_softcapping":null}}"#
        ))
        .unwrap();
        assert_eq!((a.attention_softcap(), a.logit_softcap()), (None, None));
        assert_eq!(
            ModelType::from_name("gemma3_text"),
            Some(ModelType::Gemma3Text)
        );
        assert_eq!(ModelType::Gemma3Text.name(), "gemma3_text");
    }

    #[test]
    fn reads_phi3_longrope_in_both_spellings() {
        let factors = |n: usize, x: f64| serde_json::json!(vec![x; n]);
        // The Hub's layout: `su` scaling, top-level original context (which wins over the one in
        // rope_scaling, as in Phi3Config), no factor: it is max / original.
        let legacy = serde_json::json!({"model_type": "phi3", "vocab_size": 32064, "hidden_size": 3072,
            "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 32,
            "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
            "rope_scaling": {"type": "su", "short_factor": factors(48, 1.0), "long_factor": factors(48, 2.0),
                             "original_max_position_embeddings": 999}});
        let a = ModelArchitecture::from_json_str(&legacy.to_string()).unwrap();
        let s = a.rope_scaling.as_ref().unwrap();
        assert_eq!(s.rope_type, "longrope");
        assert_eq!(
            (s.factor, s.original_max_position_embeddings),
            (32.0, Some(4096))
        );
        let want = (1.0 + 32f64.ln() / 4096f64.ln()).sqrt();
        assert!((s.longrope_attention_factor() - want).abs() < 1e-15);
        assert_eq!((a.rms_norm_eps, a.rotary_dim()), (1e-5, 96));
        assert_eq!(a.linear_modules(), &LinearModule::FUSED);
        assert_eq!(a.linear_shape(LinearModule::QkvProj), (3072, 9216));
        assert_eq!(a.linear_shape(LinearModule::GateUpProj), (3072, 16384));
        // transformers 5's layout: rope_parameters with the partial rotary factor inside.
        let v5 = serde_json::json!({"model_type": "phi3", "vocab_size": 200064, "hidden_size": 3072,
            "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 24,
            "num_key_value_heads": 8, "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "longrope", "type": "longrope", "rope_theta": 10000.0,
                "partial_rotary_factor": 0.75, "short_factor": factors(48, 1.0), "long_factor": factors(48, 3.0),
                "original_max_position_embeddings": 4096}});
        let a = ModelArchitecture::from_json_str(&v5.to_string()).unwrap();
        assert_eq!((a.head_dim(), a.rotary_dim()), (128, 96));
        assert_eq!(a.partial_rotary_factor, Some(0.75));
        // One factor per rotated pair.
        let mut bad = v5.clone();
        bad["rope_parameters"]["short_factor"] = factors(64, 1.0);
        let err = ModelArchitecture::from_json_str(&bad.to_string()).unwrap_err();
        assert!(err.to_string().contains("short_factor"), "{err}");
    }

    #[test]
    fn lora_targets_follow_each_layout() {
        let phi3 = ModelArchitecture::from_json_str(
            r#"{"model_type":"phi3","vocab_size":96,"hidden_size":64,"intermediate_size":112,
            "num_hidden_layers":2,"num_attention_heads":4}"#,
        )
        .unwrap();
        assert_eq!(phi3.lora_targets("all").unwrap(), LinearModule::FUSED);
        assert_eq!(
            phi3.lora_targets("gate_up_proj, qkv_proj").unwrap(),
            [LinearModule::GateUpProj, LinearModule::QkvProj]
        );
        let err = phi3.lora_targets("q_proj,v_proj").unwrap_err();
        assert!(err.contains("qkv_proj") && err.contains("fuses"), "{err}");
        let err = phi3.lora_targets("up_proj").unwrap_err();
        assert!(err.contains("`gate_up_proj`"), "{err}");
        let llama = ModelArchitecture::from_json_str(
            r#"{"model_type":"llama","vocab_size":96,"hidden_size":64,"intermediate_size":112,
            "num_hidden_layers":2,"num_attention_heads":4}"#,
        )
        .unwrap();
        assert_eq!(llama.lora_targets("all").unwrap(), LinearModule::ALL);
        let err = llama.lora_targets("qkv_proj").unwrap_err();
        assert!(err.contains("llama models have no `qkv_proj`"), "{err}");
    }

    #[test]
    fn expert_lora_targets_take_peft_names() {
        let moe = |extra: &str| {
            ModelArchitecture::from_json_str(&format!(
                r#"{{{extra},"vocab_size":96,"hidden_size":64,"intermediate_size":112,
                "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2}}"#
            ))
            .unwrap()
        };
        let mixtral = moe(r#""model_type":"mixtral","num_local_experts":4"#);
        let qwen = moe(r#""model_type":"qwen3_moe","num_experts":6,"moe_intermediate_size":40"#);
        let attention = [
            LinearModule::QProj,
            LinearModule::KProj,
            LinearModule::VProj,
            LinearModule::OProj,
        ];
        // `all` is the attention alone (LLaMA-Factory's `all`: the nn.Linears).
        assert_eq!(mixtral.lora_targets("all").unwrap(), attention);
        assert!(mixtral.expert_lora_targets("all").unwrap().is_empty());
        // transformers 4's names, as PEFT's conversion reads them: w1 + w3 fused at rank 2r.
        let t = "q_proj, w1, w3, w2, gate";
        assert_eq!(mixtral.lora_targets(t).unwrap(), [LinearModule::QProj]);
        let e = mixtral.expert_lora_targets(t).unwrap();
        assert_eq!(
            e,
            ExpertLoraTargets {
                router: true,
                gate_up: Some(2),
                down: true
            }
        );
        assert_eq!(
            e.target_parameters(),
            ["down_proj", "gate.weight", "gate_up_proj"]
        );
        // PEFT's shapes at r = 4: router (4, 64), (4, 4); gate_up (32, 64), (224, 32); down
        // (16, 112), (64, 16).
        assert_eq!(
            e.shapes(&mixtral, 4),
            [(4, 64), (4, 4), (32, 64), (224, 32), (16, 112), (64, 16)]
        );
        // transformers 5's parameter names: gate_up_proj at rank r; qwen3_moe's down_proj is
        // both.
        let e = qwen.expert_lora_targets("gate_up_proj,down_proj").unwrap();
        assert_eq!((e.router, e.gate_up, e.down), (false, Some(1), true));
        assert_eq!(e.shapes(&qwen, 4), [(24, 64), (80, 24), (24, 40), (64, 24)]);
        assert!(qwen
            .lora_targets("gate_up_proj,down_proj")
            .unwrap()
            .is_empty());
        let e = qwen.expert_lora_targets("up_proj,gate_proj").unwrap();
        assert_eq!(e.gate_up, Some(2));
        // One half alone, or both spellings, is refused as PEFT refuses it.
        let err = mixtral.lora_targets("w1,w2").unwrap_err();
        assert!(err.contains("`w1` without `w3`"), "{err}");
        let err = qwen.lora_targets("up_proj").unwrap_err();
        assert!(err.contains("`up_proj` without `gate_proj`"), "{err}");
        let err = qwen
            .lora_targets("gate_proj,up_proj,gate_up_proj")
            .unwrap_err();
        assert!(err.contains("same fused expert parameter"), "{err}");
        // The other family's names, and Phi-3's, are no linears here.
        let err = qwen.lora_targets("w1").unwrap_err();
        assert!(err.contains("gate_proj,up_proj,down_proj"), "{err}");
        assert!(mixtral.lora_targets("gate_proj").is_err());
        assert!(mixtral.lora_targets("qkv_proj").is_err());
        // A Qwen3-MoE with a dense layer: the expert names adapt its linears too (PEFT 0.22),
        // and `all` (LLaMA-Factory's nn.Linears) names them, which reaches the experts as well.
        let mixed = moe(
            r#""model_type":"qwen3_moe","num_experts":6,"moe_intermediate_size":40,"mlp_only_layers":[1]"#,
        );
        assert!(mixed.has_dense_mlp_layers() && !qwen.has_dense_mlp_layers());
        assert_eq!(
            mixed.lora_targets("q_proj,down_proj").unwrap(),
            [LinearModule::QProj, LinearModule::DownProj]
        );
        assert_eq!(
            mixed.lora_targets("gate_up_proj").unwrap(),
            [] as [LinearModule; 0]
        );
        assert_eq!(mixed.lora_targets("all").unwrap(), LinearModule::ALL);
        let e = mixed.expert_lora_targets("all").unwrap();
        assert_eq!((e.router, e.gate_up, e.down), (false, Some(2), true));
        // A dense model has no router or experts.
        let llama = moe(r#""model_type":"llama""#);
        assert!(llama.lora_targets("gate").is_err());
        assert!(llama.expert_lora_targets("gate").unwrap().is_empty());
    }

    #[test]
    fn rejects_other_families() {
        let err = ModelArchitecture::from_json_str(r#"{"model_type":"gpt2"}"#).unwrap_err();
        assert!(err.to_string().contains("gpt2"));
    }
}
