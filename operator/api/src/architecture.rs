//! A Llama-family model's shape, as Hugging Face's `config.json` spells it.
//!
//! The planner counts parameters and activations from it; the trainer builds the model from it.
//! Keys keep their `config.json` names, so a FineTuneJob can carry a pasted `config.json` inline.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    #[error("model_type `{0}` is not supported; supported: llama, mistral, qwen2, qwen3")]
    UnsupportedModelType(String),
    #[error("invalid architecture: {0}")]
    Invalid(String),
}

/// Supported decoder families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    Llama,
    Mistral,
    Qwen2,
    /// Qwen3 (dense): per-head q/k RMSNorm before RoPE, `head_dim` 128 unless the file says.
    Qwen3,
}

impl ModelType {
    /// The `model_type` of `config.json`.
    pub fn name(self) -> &'static str {
        match self {
            ModelType::Llama => "llama",
            ModelType::Mistral => "mistral",
            ModelType::Qwen2 => "qwen2",
            ModelType::Qwen3 => "qwen3",
        }
    }
}

/// RoPE scaling as in `config.json` (Llama 3.1's `llama3` type, or `linear`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default = "one")]
    pub factor: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<u64>,
}

fn one() -> f64 {
    1.0
}

/// The subset of `config.json` that defines a Llama-family decoder. Unknown keys of the real file
/// are ignored (config.json carries many that do not change the math).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelArchitecture {
    pub model_type: ModelType,
    pub vocab_size: u64,
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_hidden_layers: u64,
    pub num_attention_heads: u64,
    /// Defaults to `num_attention_heads` (no grouped-query attention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<u64>,
    /// Defaults to `hidden_size / num_attention_heads` (128 for qwen3, as transformers' config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<u64>,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: u64,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v (true for qwen2 whatever the file says; Llama's and Qwen3's `attention_bias`,
    /// which also puts one on o).
    #[serde(default)]
    pub attention_bias: bool,
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
        if let Some(mt) = raw.get("model_type").and_then(|v| v.as_str()) {
            if !matches!(mt, "llama" | "mistral" | "qwen2" | "qwen3") {
                return Err(ArchitectureError::UnsupportedModelType(mt.to_string()));
            }
        }
        let raw = normalise_transformers_v5(raw);
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
        Ok(())
    }

    pub fn kv_heads(&self) -> u64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> u64 {
        self.head_dim.unwrap_or(match self.model_type {
            // Qwen3Config's own default, which transformers uses when config.json omits it.
            ModelType::Qwen3 => 128,
            _ => self.hidden_size / self.num_attention_heads.max(1),
        })
    }

    /// Whether the checkpoint has a bias for `module`, as transformers builds each family: Llama
    /// and Qwen3 put one on q/k/v/o when `attention_bias` is set, Qwen2 always on q/k/v (never
    /// o), Mistral never (its modelling code ignores `attention_bias`).
    pub fn linear_has_bias(&self, module: LinearModule) -> bool {
        match self.model_type {
            ModelType::Llama | ModelType::Qwen3 => {
                self.attention_bias && module.parent() == "self_attn"
            }
            ModelType::Qwen2 => matches!(
                module,
                LinearModule::QProj | LinearModule::KProj | LinearModule::VProj
            ),
            ModelType::Mistral => false,
        }
    }

    /// Whether each attention normalises its queries and keys per head (RMSNorm over
    /// `head_dim`, before RoPE): Qwen3's `q_norm` and `k_norm`.
    pub fn qk_norm(&self) -> bool {
        self.model_type == ModelType::Qwen3
    }

    /// `(in_features, out_features)` of a decoder linear.
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
        }
    }
}

/// transformers 5 writes `rope_parameters: {rope_theta, rope_type, ...}` instead of `rope_theta` and
/// `rope_scaling`; fold it back into the classic keys (the classic keys win when both exist).
fn normalise_transformers_v5(mut raw: serde_json::Value) -> serde_json::Value {
    let Some(obj) = raw.as_object_mut() else {
        return raw;
    };
    let Some(params) = obj
        .get("rope_parameters")
        .and_then(|p| p.as_object())
        .cloned()
    else {
        return raw;
    };
    if !obj.contains_key("rope_theta") {
        if let Some(theta) = params.get("rope_theta") {
            obj.insert("rope_theta".into(), theta.clone());
        }
    }
    let rope_type = params
        .get("rope_type")
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    if rope_type != "default" && obj.get("rope_scaling").is_none_or(|v| v.is_null()) {
        let mut scaling = params.clone();
        scaling.remove("rope_theta");
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
}

impl LinearModule {
    pub const ALL: [LinearModule; 7] = [
        LinearModule::QProj,
        LinearModule::KProj,
        LinearModule::VProj,
        LinearModule::OProj,
        LinearModule::GateProj,
        LinearModule::UpProj,
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
        }
    }

    /// The parent module in a decoder layer (`self_attn` or `mlp`).
    pub fn parent(self) -> &'static str {
        match self {
            LinearModule::QProj
            | LinearModule::KProj
            | LinearModule::VProj
            | LinearModule::OProj => "self_attn",
            _ => "mlp",
        }
    }

    pub fn from_name(name: &str) -> Option<LinearModule> {
        LinearModule::ALL.into_iter().find(|m| m.name() == name)
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
    fn rejects_other_families() {
        let err = ModelArchitecture::from_json_str(r#"{"model_type":"gpt2"}"#).unwrap_err();
        assert!(err.to_string().contains("gpt2"));
    }
}
