//! The training config: one type, LLaMA-Factory's argument names and defaults.
//!
//! The same value is `spec.training` in a FineTuneJob, the YAML file the operator renders into each
//! pod (with the plan's decisions filled in), and what `lf-trainer train CONFIG.yaml` reads. Keys
//! are snake_case exactly as LLaMA-Factory (and Hugging Face `TrainingArguments`) spell them, so a
//! LLaMA-Factory YAML works unchanged as long as it only uses what we support.
//!
//! Parsing is strict: an unknown key is an error naming the key and the closest valid one, and a
//! LLaMA-Factory option we know but do not implement is an error that says so (never silently
//! ignored). See [`TrainingConfig::from_yaml_str`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Errors from reading or validating a training config. Each names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is not valid YAML: {0}")]
    Yaml(String),
    #[error("the config must be a YAML mapping of LLaMA-Factory argument names to values")]
    NotAMapping,
    #[error("unknown key `{key}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownKey {
        key: String,
        suggestion: Option<String>,
    },
    #[error("`{key}` is a LLaMA-Factory option that lf-trainer does not support: {why}")]
    Unsupported { key: String, why: &'static str },
    #[error("invalid value for `{key}`: {message}")]
    InvalidValue { key: String, message: String },
    #[error("override `{0}` must look like key=value")]
    BadOverride(String),
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::InvalidValue {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Training stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Supervised fine-tuning: prompt tokens are masked out of the loss.
    #[default]
    Sft,
    /// (Continued) pre-training on plain text.
    Pt,
}

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum FinetuningType {
    /// Low-rank adapters on the target linears (with `use_dora`/`use_rslora` variants).
    #[default]
    Lora,
    /// Every parameter.
    Full,
    /// Only the last `freeze_trainable_layers` decoder layers.
    Freeze,
}

/// Attention implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum FlashAttn {
    /// Scaled-dot-product attention; libtorch picks the flash kernel where it can.
    #[default]
    Auto,
    /// Scaled-dot-product attention.
    Sdpa,
    /// FlashAttention-2 (through SDPA's flash kernel; needs CUDA and bf16/fp16).
    Fa2,
    /// Plain matmul + softmax attention (materialises the s×s scores). `disabled` is accepted too.
    #[serde(alias = "disabled")]
    Eager,
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedulerType {
    #[default]
    Linear,
    Cosine,
    Constant,
    ConstantWithWarmup,
}

/// Optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Optim {
    /// AdamW with fp32 moments (`adamw_torch_fused` and `adamw_hf` are accepted as aliases).
    #[default]
    #[serde(alias = "adamw_torch_fused", alias = "adamw_hf", alias = "adamw")]
    AdamwTorch,
    /// AdamW with block-wise 8-bit moments (the bitsandbytes scheme). `paged_adamw_8bit` is accepted too.
    #[serde(
        rename = "adamw_8bit",
        alias = "adamw8bit",
        alias = "paged_adamw_8bit",
        alias = "adamw_bnb_8bit"
    )]
    Adamw8bit,
    /// Adafactor (factored second moment, no first moment).
    Adafactor,
    /// Stochastic gradient descent (no state).
    Sgd,
}

/// 4-bit data type for `quantization_bit: 4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum QuantizationType {
    #[default]
    Nf4,
    Fp4,
}

/// When to evaluate on the validation split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum EvalStrategy {
    #[default]
    No,
    Steps,
    Epoch,
}

/// Dataset record format for files that `dataset_info.json` does not describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    Alpaca,
    Sharegpt,
}

/// Where the optimiser state (and fp32 master weights) live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum OffloadDevice {
    #[default]
    None,
    Cpu,
}

/// The training config. Field names and defaults follow LLaMA-Factory; the few keys of our own are
/// marked "lf-operator extension".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingConfig {
    // ---- model -------------------------------------------------------------------------------
    /// Directory of the Hugging Face model (`config.json`, safetensors, `tokenizer.json`). In a
    /// FineTuneJob the operator fills this in from `spec.model`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_name_or_path: Option<String>,
    /// A PEFT adapter directory to continue training from (or to apply in chat/eval/export).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter_name_or_path: Option<String>,
    /// Chat template name (`default`, `alpaca`, `empty`, `llama2`, `llama3`, `mistral`, `qwen`,
    /// `chatml`) or `auto` for the model's own `chat_template`. Unset: `auto` when the tokenizer has
    /// a chat template, else `empty`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    pub flash_attn: FlashAttn,
    /// Recompute each decoder layer in backward (on by default, as in LLaMA-Factory;
    /// `disable_gradient_checkpointing: true` is accepted and turns it off).
    pub gradient_checkpointing: bool,
    /// Base-weight quantisation: 4 (NF4/FP4) or 8 (block-wise int8). Needs LoRA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization_bit: Option<u8>,
    pub quantization_type: QuantizationType,
    pub double_quantization: bool,

    // ---- method ------------------------------------------------------------------------------
    pub stage: Stage,
    pub finetuning_type: FinetuningType,
    pub lora_rank: u32,
    /// Unset means 2 × `lora_rank` (LLaMA-Factory's rule).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_alpha: Option<f64>,
    pub lora_dropout: f64,
    /// Comma-separated module names (`q_proj,v_proj`) or `all` (every decoder linear).
    pub lora_target: String,
    pub use_rslora: bool,
    pub use_dora: bool,
    /// `finetuning_type: freeze`: how many of the last decoder layers train.
    pub freeze_trainable_layers: u32,
    /// Keep trainable parameters and optimiser states in bf16 (no fp32 master copy).
    pub pure_bf16: bool,
    pub bf16: bool,
    pub fp16: bool,

    // ---- data --------------------------------------------------------------------------------
    /// Comma-separated dataset names (keys of `dataset_info.json`, or file names in `dataset_dir`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_dataset: Option<String>,
    pub dataset_dir: String,
    /// lf-operator extension: the record format of dataset files not listed in
    /// `dataset_info.json` (unset: detected from the first record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset_format: Option<DatasetFormat>,
    pub cutoff_len: usize,
    pub train_on_prompt: bool,
    pub mask_history: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_samples: Option<usize>,
    /// Fraction in [0, 1) or, when ≥ 1, a number of examples.
    pub val_size: f64,
    /// Pack several examples into one `cutoff_len` sequence (default: on for `pt`, off for `sft`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packing: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_system: Option<String>,
    /// Where the tokenised dataset is cached (default: `<output_dir>/.tokenized`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenized_path: Option<String>,
    pub overwrite_cache: bool,
    /// lf-operator extension: turn malformed dataset records into a counted warning instead of an
    /// error.
    pub skip_bad_examples: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preprocessing_num_workers: Option<usize>,

    // ---- training ----------------------------------------------------------------------------
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_dir: Option<String>,
    pub overwrite_output_dir: bool,
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub max_grad_norm: f64,
    pub num_train_epochs: f64,
    /// Total optimiser steps; overrides `num_train_epochs` when > 0.
    pub max_steps: i64,
    pub lr_scheduler_type: LrSchedulerType,
    pub warmup_ratio: f64,
    pub warmup_steps: usize,
    pub optim: Optim,
    pub logging_steps: usize,
    pub save_steps: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub save_total_limit: Option<usize>,
    pub save_only_model: bool,
    /// A checkpoint directory, or `auto` for the newest complete one in `output_dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_from_checkpoint: Option<String>,
    pub eval_strategy: EvalStrategy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_steps: Option<usize>,
    pub seed: u64,
    pub plot_loss: bool,
    pub do_train: bool,
    pub do_eval: bool,
    pub dataloader_num_workers: usize,
    /// Only `none` is supported (metrics go to `trainer_log.jsonl`, Prometheus and the CR status).
    pub report_to: String,
    /// Seconds a collective may take before the process group gives up.
    pub ddp_timeout: u64,

    // ---- distributed (lf-operator extensions; the operator fills them from the plan) ---------
    /// ZeRO stage 0–3 (0 = plain data parallel).
    pub zero_stage: u8,
    pub offload_optimizer: OffloadDevice,
    /// lf-operator extension: tokens per chunk of the language-model head + cross-entropy, so the
    /// full fp32 logits never exist at once. 0 computes the whole head at once.
    pub loss_chunk_size: usize,

    // ---- generation (chat) -------------------------------------------------------------------
    pub do_sample: bool,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub max_new_tokens: usize,
    pub repetition_penalty: f64,

    // ---- export ------------------------------------------------------------------------------
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_dir: Option<String>,
    /// Largest shard in GB.
    pub export_size: u32,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig {
            model_name_or_path: None,
            adapter_name_or_path: None,
            template: None,
            flash_attn: FlashAttn::Auto,
            gradient_checkpointing: true,
            quantization_bit: None,
            quantization_type: QuantizationType::Nf4,
            double_quantization: true,
            stage: Stage::Sft,
            finetuning_type: FinetuningType::Lora,
            lora_rank: 8,
            lora_alpha: None,
            lora_dropout: 0.0,
            lora_target: "all".to_string(),
            use_rslora: false,
            use_dora: false,
            freeze_trainable_layers: 2,
            pure_bf16: false,
            bf16: false,
            fp16: false,
            dataset: None,
            eval_dataset: None,
            dataset_dir: "data".to_string(),
            dataset_format: None,
            cutoff_len: 2048,
            train_on_prompt: false,
            mask_history: false,
            max_samples: None,
            val_size: 0.0,
            packing: None,
            default_system: None,
            tokenized_path: None,
            overwrite_cache: false,
            skip_bad_examples: false,
            preprocessing_num_workers: None,
            output_dir: None,
            overwrite_output_dir: false,
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 8,
            gradient_accumulation_steps: 1,
            learning_rate: 5e-5,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            num_train_epochs: 3.0,
            max_steps: -1,
            lr_scheduler_type: LrSchedulerType::Linear,
            warmup_ratio: 0.0,
            warmup_steps: 0,
            optim: Optim::AdamwTorch,
            logging_steps: 500,
            save_steps: 500,
            save_total_limit: None,
            save_only_model: false,
            resume_from_checkpoint: None,
            eval_strategy: EvalStrategy::No,
            eval_steps: None,
            seed: 42,
            plot_loss: false,
            do_train: true,
            do_eval: false,
            dataloader_num_workers: 0,
            report_to: "none".to_string(),
            ddp_timeout: 1800,
            zero_stage: 0,
            offload_optimizer: OffloadDevice::None,
            loss_chunk_size: 1024,
            do_sample: true,
            temperature: 0.95,
            top_p: 0.7,
            top_k: 50,
            max_new_tokens: 1024,
            repetition_penalty: 1.0,
            export_dir: None,
            export_size: 5,
        }
    }
}

/// LLaMA-Factory / `TrainingArguments` options we recognise but do not implement, with the reason
/// (and the alternative, where there is one).
pub const UNSUPPORTED: &[(&str, &str)] = &[
    ("deepspeed", "ZeRO is built in: set `zero_stage` (or let the operator's planner choose it) and `offload_optimizer`"),
    ("fsdp", "ZeRO stage 3 (`zero_stage: 3`) shards parameters, gradients and optimizer states"),
    ("fsdp_config", "ZeRO stage 3 (`zero_stage: 3`) shards parameters, gradients and optimizer states"),
    ("quantization_method", "only bitsandbytes-style quantisation on load (`quantization_bit: 4|8`) is implemented"),
    ("quantization_device_map", "the trainer places weights itself"),
    ("use_unsloth", "not available; the chunked loss and layer recomputation are built in"),
    ("use_unsloth_gc", "not available; gradient checkpointing is built in"),
    ("enable_liger_kernel", "the chunked language-model loss is always on (see `loss_chunk_size`)"),
    ("rope_scaling", "RoPE scaling is read from the model's config.json"),
    ("use_galore", "GaLore is not implemented"),
    ("use_apollo", "APOLLO is not implemented"),
    ("use_badam", "BAdam is not implemented"),
    ("use_adam_mini", "Adam-mini is not implemented"),
    ("use_muon", "Muon is not implemented"),
    ("pissa_init", "PiSSA initialisation is not implemented"),
    ("loraplus_lr_ratio", "LoRA+ is not implemented"),
    ("additional_target", "modules_to_save is not implemented"),
    ("resize_vocab", "vocabulary resizing is not implemented"),
    ("add_tokens", "adding tokens is not implemented"),
    ("add_special_tokens", "adding tokens is not implemented"),
    ("neat_packing", "only plain packing (`packing: true`) is implemented"),
    ("streaming", "datasets are tokenised once and cached; streaming is not implemented"),
    ("mix_strategy", "datasets are concatenated (`dataset: a,b`)"),
    ("interleave_probs", "datasets are concatenated (`dataset: a,b`)"),
    ("pref_beta", "only the `sft` and `pt` stages are implemented"),
    ("pref_loss", "only the `sft` and `pt` stages are implemented"),
    ("infer_backend", "chat runs on the trainer's own libtorch model"),
    ("export_quantization_bit", "exporting quantised weights is not implemented"),
    ("export_legacy_format", "export always writes safetensors"),
    ("tool_format", "tool calls are not implemented"),
    ("upcast_layernorm", "RMSNorm is always computed in fp32"),
    ("upcast_lmhead_output", "the loss is always computed in fp32, in chunks"),
    ("trust_remote_code", "only the built-in Llama-family architectures are loaded; no remote code runs"),
];

/// Keys accepted for compatibility that carry no meaning for lf-trainer (they are dropped).
const ACCEPTED_NO_OP: &[&str] = &["overwrite_cache_dir", "print_param_status"];

impl TrainingConfig {
    /// Every key the config accepts, from the type's own schema (so the list cannot drift).
    pub fn known_keys() -> Vec<String> {
        let schema = schemars::schema_for!(TrainingConfig);
        schema
            .get("properties")
            .and_then(|p| p.as_object())
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Parses a YAML document (a LLaMA-Factory style flat mapping), strictly.
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        Self::from_yaml_value(value)
    }

    /// Reads and parses a YAML file.
    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml_str(&text)
    }

    /// Parses an already-loaded YAML value, strictly (unknown and unsupported keys are errors).
    pub fn from_yaml_value(value: serde_yaml::Value) -> Result<Self, ConfigError> {
        let mapping = match value {
            serde_yaml::Value::Mapping(m) => m,
            serde_yaml::Value::Null => serde_yaml::Mapping::new(),
            _ => return Err(ConfigError::NotAMapping),
        };
        let mapping = normalise_keys(mapping)?;
        let config: TrainingConfig =
            serde_path_to_error::deserialize(serde_yaml::Value::Mapping(mapping)).map_err(|e| {
                let key = e.path().to_string();
                ConfigError::InvalidValue {
                    key,
                    message: e.into_inner().to_string(),
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Applies `key=value` overrides (as on LLaMA-Factory's command line); values are YAML scalars.
    pub fn with_overrides<S: AsRef<str>>(&self, overrides: &[S]) -> Result<Self, ConfigError> {
        let mut value = serde_yaml::to_value(self).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        let map = value.as_mapping_mut().ok_or(ConfigError::NotAMapping)?;
        for o in overrides {
            let o = o.as_ref();
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| ConfigError::BadOverride(o.to_string()))?;
            let v: serde_yaml::Value =
                serde_yaml::from_str(v).map_err(|e| ConfigError::invalid(k, e.to_string()))?;
            map.insert(serde_yaml::Value::String(k.trim().to_string()), v);
        }
        Self::from_yaml_value(value)
    }

    /// Serialises to YAML (what the operator writes into the pod's ConfigMap).
    pub fn to_yaml_string(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// Checks the rules a schema cannot express. Each error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.lora_rank < 1 {
            return Err(ConfigError::invalid("lora_rank", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(ConfigError::invalid("lora_dropout", "must be in [0, 1)"));
        }
        if let Some(bits) = self.quantization_bit {
            if bits != 4 && bits != 8 {
                return Err(ConfigError::invalid(
                    "quantization_bit",
                    format!("{bits} is not supported; use 4 or 8"),
                ));
            }
            if self.finetuning_type != FinetuningType::Lora {
                return Err(ConfigError::invalid(
                    "quantization_bit",
                    "quantised base weights cannot be trained: use `finetuning_type: lora` (QLoRA)",
                ));
            }
        }
        if self.bf16 && self.fp16 {
            return Err(ConfigError::invalid(
                "fp16",
                "`bf16` and `fp16` cannot both be true",
            ));
        }
        if self.pure_bf16 && self.fp16 {
            return Err(ConfigError::invalid(
                "pure_bf16",
                "`pure_bf16` and `fp16` cannot both be true",
            ));
        }
        if self.zero_stage > 3 {
            return Err(ConfigError::invalid("zero_stage", "must be 0, 1, 2 or 3"));
        }
        if self.per_device_train_batch_size == 0 {
            return Err(ConfigError::invalid(
                "per_device_train_batch_size",
                "must be at least 1",
            ));
        }
        if self.per_device_eval_batch_size == 0 {
            return Err(ConfigError::invalid(
                "per_device_eval_batch_size",
                "must be at least 1",
            ));
        }
        if self.gradient_accumulation_steps == 0 {
            return Err(ConfigError::invalid(
                "gradient_accumulation_steps",
                "must be at least 1",
            ));
        }
        if self.cutoff_len < 2 {
            return Err(ConfigError::invalid(
                "cutoff_len",
                "must be at least 2 tokens",
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            return Err(ConfigError::invalid(
                "learning_rate",
                "must be a non-negative number",
            ));
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return Err(ConfigError::invalid("warmup_ratio", "must be in [0, 1]"));
        }
        if self.val_size < 0.0 || (self.val_size >= 1.0 && self.val_size.fract() != 0.0) {
            return Err(ConfigError::invalid(
                "val_size",
                "must be a fraction in [0, 1) or a whole number of examples",
            ));
        }
        if self.report_to != "none" {
            return Err(ConfigError::invalid(
                "report_to",
                "only `none` is supported: metrics go to trainer_log.jsonl, /metrics and the FineTuneJob status",
            ));
        }
        if self.save_total_limit == Some(0) {
            return Err(ConfigError::invalid(
                "save_total_limit",
                "must be at least 1 (unset keeps every checkpoint)",
            ));
        }
        if let Some(t) = &self.template {
            if !crate::training::TEMPLATES.contains(&t.as_str()) {
                let suggestion = crate::suggest::closest(t, TEMPLATES.iter().copied());
                return Err(ConfigError::invalid(
                    "template",
                    format!(
                        "unknown template `{t}`{}; known: {}",
                        suggestion
                            .map(|s| format!(" (did you mean `{s}`?)"))
                            .unwrap_or_default(),
                        TEMPLATES.join(", ")
                    ),
                ));
            }
        }
        self.lora_targets()?;
        Ok(())
    }

    /// The LoRA scaling numerator: `lora_alpha`, defaulting to 2 × rank.
    pub fn effective_lora_alpha(&self) -> f64 {
        self.lora_alpha.unwrap_or(2.0 * self.lora_rank as f64)
    }

    /// The LoRA scale applied to `B·A·x`: α/r, or α/√r with rsLoRA.
    pub fn lora_scaling(&self) -> f64 {
        let r = self.lora_rank as f64;
        if self.use_rslora {
            self.effective_lora_alpha() / r.sqrt()
        } else {
            self.effective_lora_alpha() / r
        }
    }

    /// The decoder linears LoRA adapts, resolved from `lora_target`.
    pub fn lora_targets(&self) -> Result<Vec<LinearModule>, ConfigError> {
        let raw = self.lora_target.trim();
        if raw == "all" {
            return Ok(LinearModule::ALL.to_vec());
        }
        let mut out = Vec::new();
        for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let module = LinearModule::from_name(name).ok_or_else(|| {
                let names = LinearModule::ALL.iter().map(|m| m.name());
                let hint = crate::suggest::closest(name, names).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
                ConfigError::invalid(
                    "lora_target",
                    format!("`{name}` is not a decoder linear{hint}; use `all` or names from q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"),
                )
            })?;
            if !out.contains(&module) {
                out.push(module);
            }
        }
        if out.is_empty() {
            return Err(ConfigError::invalid("lora_target", "names no module"));
        }
        Ok(out)
    }

    /// The numeric regime, derived from `bf16`, `fp16` and `pure_bf16`.
    pub fn precision(&self) -> Precision {
        if self.pure_bf16 {
            Precision::PureBf16
        } else if self.bf16 {
            Precision::Bf16Amp
        } else if self.fp16 {
            Precision::Fp16Amp
        } else {
            Precision::Fp32
        }
    }

    /// Whether examples are packed into full `cutoff_len` sequences.
    pub fn packing_enabled(&self) -> bool {
        self.packing.unwrap_or(self.stage == Stage::Pt)
    }

    /// The number of validation examples for `n` examples in total.
    pub fn validation_count(&self, n: usize) -> usize {
        if self.val_size >= 1.0 {
            (self.val_size as usize).min(n)
        } else {
            ((n as f64) * self.val_size).round() as usize
        }
    }
}

/// Named chat templates (LLaMA-Factory names) plus `auto`.
pub const TEMPLATES: &[&str] = &[
    "auto", "default", "alpaca", "empty", "llama2", "llama3", "mistral", "qwen", "chatml",
];

/// Numeric regimes. AMP keeps fp32 master weights and fp32 optimiser states; pure bf16 keeps
/// everything in bf16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Fp32,
    Bf16Amp,
    Fp16Amp,
    PureBf16,
}

impl Precision {
    /// Bytes of one element of the compute (activation) dtype.
    pub fn compute_bytes(self) -> u64 {
        match self {
            Precision::Fp32 => 4,
            _ => 2,
        }
    }
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

/// Renames accepted aliases, rejects unknown and unsupported keys with a precise message.
fn normalise_keys(mapping: serde_yaml::Mapping) -> Result<serde_yaml::Mapping, ConfigError> {
    let known = TrainingConfig::known_keys();
    let mut out = serde_yaml::Mapping::new();
    for (k, v) in mapping {
        let key = match &k {
            serde_yaml::Value::String(s) => s.clone(),
            other => {
                return Err(ConfigError::UnknownKey {
                    key: format!("{other:?}"),
                    suggestion: None,
                });
            }
        };
        if ACCEPTED_NO_OP.contains(&key.as_str()) {
            continue;
        }
        // LLaMA-Factory spells "gradient checkpointing off" as a negative flag.
        if key == "disable_gradient_checkpointing" {
            let disabled = v
                .as_bool()
                .ok_or_else(|| ConfigError::invalid(&key, "must be true or false"))?;
            out.insert(
                "gradient_checkpointing".into(),
                serde_yaml::Value::Bool(!disabled),
            );
            continue;
        }
        // `evaluation_strategy` is the pre-4.46 transformers spelling.
        let key = if key == "evaluation_strategy" {
            "eval_strategy".to_string()
        } else {
            key
        };
        if let Some((_, why)) = UNSUPPORTED.iter().find(|(name, _)| *name == key) {
            // An explicit "off" value of an unsupported feature is harmless.
            let off = v.is_null() || v.as_bool() == Some(false);
            if off {
                continue;
            }
            return Err(ConfigError::Unsupported { key, why });
        }
        if !known.contains(&key) {
            let suggestion =
                crate::suggest::closest(&key, known.iter().map(String::as_str)).map(str::to_string);
            return Err(ConfigError::UnknownKey { key, suggestion });
        }
        out.insert(serde_yaml::Value::String(key), v);
    }
    Ok(out)
}

/// Free-form extra settings a FineTuneJob may attach (NCCL variables and the like).
pub type EnvMap = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_llama_factory() {
        let c = TrainingConfig::from_yaml_str("{}").unwrap();
        assert_eq!(c.lora_rank, 8);
        assert_eq!(c.effective_lora_alpha(), 16.0);
        assert!(c.gradient_checkpointing);
        assert_eq!(c.cutoff_len, 2048);
        assert_eq!(c.lora_targets().unwrap().len(), 7);
    }

    #[test]
    fn unknown_key_suggests_closest() {
        let err = TrainingConfig::from_yaml_str("lora_rnak: 8")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "unknown key `lora_rnak` (did you mean `lora_rank`?)");
    }

    #[test]
    fn unsupported_key_says_so() {
        let err = TrainingConfig::from_yaml_str("deepspeed: ds_z3.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not support"), "{err}");
        assert!(err.contains("zero_stage"), "{err}");
        // An explicit "off" is fine.
        TrainingConfig::from_yaml_str("use_unsloth: false").unwrap();
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = TrainingConfig::from_yaml_str("lora_rank: eight")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lora_rank"), "{err}");
    }

    #[test]
    fn invalid_combinations() {
        let err = TrainingConfig::from_yaml_str("quantization_bit: 4\nfinetuning_type: full")
            .unwrap_err()
            .to_string();
        assert!(err.contains("quantization_bit"), "{err}");
        let err = TrainingConfig::from_yaml_str("lora_rank: 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lora_rank"), "{err}");
        let err = TrainingConfig::from_yaml_str("lora_target: q_prj")
            .unwrap_err()
            .to_string();
        assert!(err.contains("q_proj"), "{err}");
    }

    #[test]
    fn aliases_and_overrides() {
        let c = TrainingConfig::from_yaml_str(
            "disable_gradient_checkpointing: true\noptim: adamw_torch_fused\nflash_attn: disabled",
        )
        .unwrap();
        assert!(!c.gradient_checkpointing);
        assert_eq!(c.optim, Optim::AdamwTorch);
        assert_eq!(c.flash_attn, FlashAttn::Eager);
        let c = c
            .with_overrides(&["lora_rank=16", "learning_rate=1e-4"])
            .unwrap();
        assert_eq!(c.lora_rank, 16);
        assert_eq!(c.learning_rate, 1e-4);
        assert!(c.with_overrides(&["lora_rnak=16"]).is_err());
    }

    #[test]
    fn round_trips_through_yaml() {
        let c = TrainingConfig::from_yaml_str("lora_rank: 32\ndataset: a,b\nbf16: true").unwrap();
        let back = TrainingConfig::from_yaml_str(&c.to_yaml_string()).unwrap();
        assert_eq!(c, back);
    }
}
