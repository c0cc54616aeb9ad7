//! Options for loading and generating, and reading `config.json` as transformers ≥ 5 writes it.

use std::path::Path;

use lf_api::architecture::ModelArchitecture;
use lf_api::training::{QuantizationType, TrainingConfig};

use crate::ModelError;

/// Base-weight quantisation on load (QLoRA): every decoder linear is stored quantised;
/// embeddings, norms and the language-model head stay in [`LoadOptions::dtype`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantSettings {
    /// 4 (NF4/FP4) or 8 (block-wise int8).
    pub bits: u8,
    /// The 4-bit data type (ignored for 8 bits).
    pub quant_type: QuantizationType,
    /// Quantise the 4-bit block scales again (bitsandbytes' `compress_statistics`).
    pub double_quant: bool,
}

impl QuantSettings {
    /// The settings a training config asks for (`quantization_bit`, `quantization_type`,
    /// `double_quantization`), or `None` when it asks for none.
    pub fn from_config(cfg: &TrainingConfig) -> Option<Self> {
        cfg.quantization_bit.map(|bits| QuantSettings {
            bits,
            quant_type: cfg.quantization_type,
            double_quant: cfg.double_quantization,
        })
    }
}

/// Where and how the base weights are held.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Device the weights are streamed to.
    pub device: tch::Device,
    /// Storage and compute dtype of the frozen (base) weights and of activations.
    pub dtype: tch::Kind,
    /// Quantised base weights (QLoRA), or `None` for dense weights.
    pub quantization: Option<QuantSettings>,
}

impl LoadOptions {
    /// Dense weights in `dtype` on `device`.
    pub fn new(device: tch::Device, dtype: tch::Kind) -> Self {
        LoadOptions {
            device,
            dtype,
            quantization: None,
        }
    }

    /// The options a training config implies on `device`: bf16 for `bf16`/`pure_bf16`, fp16 for
    /// `fp16`, else fp32; quantisation from `quantization_bit`.
    pub fn from_config(cfg: &TrainingConfig, device: tch::Device) -> Self {
        let dtype = if cfg.pure_bf16 || cfg.bf16 {
            tch::Kind::BFloat16
        } else if cfg.fp16 {
            tch::Kind::Half
        } else {
            tch::Kind::Float
        };
        LoadOptions {
            device,
            dtype,
            quantization: QuantSettings::from_config(cfg),
        }
    }
}

/// Decoding parameters (the `chat` keys of the training config plus a seed).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// Most tokens to generate (the prompt does not count).
    pub max_new_tokens: usize,
    /// Sample from the distribution; `false` is greedy decoding.
    pub do_sample: bool,
    /// Logits are divided by this before sampling (must be > 0 when sampling).
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p` (1 keeps all).
    pub top_p: f64,
    /// Keep only the `top_k` most likely tokens (0 keeps all).
    pub top_k: usize,
    /// transformers' repetition penalty: logits of tokens already in the sequence are divided by it
    /// when positive and multiplied by it when negative (1 disables it).
    pub repetition_penalty: f64,
    /// Seed of the sampler (the same seed and inputs give the same tokens).
    pub seed: u64,
}

impl GenerationParams {
    /// The generation keys of a training config (`do_sample`, `temperature`, `top_p`, `top_k`,
    /// `max_new_tokens`, `repetition_penalty`, `seed`).
    pub fn from_config(cfg: &TrainingConfig) -> Self {
        GenerationParams {
            max_new_tokens: cfg.max_new_tokens,
            do_sample: cfg.do_sample,
            temperature: cfg.temperature,
            top_p: cfg.top_p,
            top_k: cfg.top_k,
            repetition_penalty: cfg.repetition_penalty,
            seed: cfg.seed,
        }
    }

    /// Greedy decoding of at most `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        GenerationParams {
            max_new_tokens,
            do_sample: false,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// Reads `<model_dir>/config.json` into a [`ModelArchitecture`].
///
/// transformers ≥ 5 writes RoPE settings as `rope_parameters: {rope_type, rope_theta, factor, ...}`
/// instead of the older top-level `rope_theta` + `rope_scaling`; both spellings are accepted.
/// Settings that would change the math and that we do not implement (`hidden_act` other than
/// SiLU, `mlp_bias`, unknown RoPE types) are errors naming the key.
pub fn read_architecture(model_dir: &Path) -> Result<ModelArchitecture, ModelError> {
    read_config(model_dir).map(|(arch, _)| arch)
}

/// [`read_architecture`] plus each layer's attention window
/// ([`ModelArchitecture::layer_windows`]).
pub(crate) fn read_config(
    model_dir: &Path,
) -> Result<(ModelArchitecture, Vec<Option<i64>>), ModelError> {
    let path = model_dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: path.clone(),
        message: e.to_string(),
    })?;
    // transformers 5's `rope_parameters` folded into the classic keys, family defaults filled.
    let mut raw = lf_api::architecture::normalise_config(raw);
    let unsupported = |message: String| ModelError::UnsupportedConfig {
        path: path.clone(),
        message,
    };
    let obj = raw
        .as_object_mut()
        .ok_or_else(|| unsupported("the file must hold a JSON object".into()))?;
    // Gemma's modelling code reads `hidden_activation` (GeGLU), the others' `hidden_act` (SwiGLU).
    let family = obj
        .get("model_type")
        .and_then(|v| v.as_str())
        .and_then(lf_api::architecture::ModelType::from_name);
    let gemma = family.is_some_and(|t| t.is_gemma());
    let phi3 = family == Some(lf_api::architecture::ModelType::Phi3);
    let (act_key, act_wanted) = if gemma {
        ("hidden_activation", "gelu_pytorch_tanh")
    } else {
        ("hidden_act", "silu")
    };
    if let Some(act) = obj.get(act_key).and_then(|v| v.as_str()) {
        if act != act_wanted {
            return Err(unsupported(format!(
                "{act_key} `{act}` is not supported for this model_type (only `{act_wanted}`)"
            )));
        }
    }
    if obj
        .get("router_jitter_noise")
        .and_then(|v| v.as_f64())
        .is_some_and(|j| j != 0.0)
    {
        return Err(unsupported(
            "router_jitter_noise other than 0 is not supported".into(),
        ));
    }
    if obj.get("mlp_bias").and_then(|v| v.as_bool()) == Some(true) {
        return Err(unsupported("mlp_bias: true is not supported".into()));
    }
    if obj
        .get("use_bidirectional_attention")
        .and_then(|v| v.as_bool())
        == Some(true)
    {
        return Err(unsupported(
            "use_bidirectional_attention: true (an encoder, not a causal LM) is not supported"
                .into(),
        ));
    }
    // Files touched by both transformers generations can carry `dtype` and `torch_dtype`, which
    // lf-api treats as one key; the newer spelling wins.
    if obj.contains_key("dtype") {
        obj.remove("torch_dtype");
    }
    // Dropout inside the model (transformers applies it while training) is not implemented.
    for key in ["attention_dropout", "resid_pdrop"] {
        if obj
            .get(key)
            .and_then(|v| v.as_f64())
            .is_some_and(|p| p != 0.0)
        {
            return Err(unsupported(format!(
                "{key} > 0 (dropout inside the model) is not supported; set it to 0"
            )));
        }
    }
    if let Some(scaling) = obj.get("rope_scaling").filter(|v| !v.is_null()) {
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        // Phi3Config accepts only default and longrope (its legacy `su`/`yarn` are read as
        // longrope by lf-api); the others take Llama's types.
        let supported: &[&str] = if phi3 {
            &["default", "longrope"]
        } else {
            &["default", "linear", "llama3"]
        };
        if !supported.contains(&kind) {
            return Err(unsupported(format!(
                "rope_scaling type `{kind}` is not supported for this model_type (supported: {})",
                supported.join(", ")
            )));
        }
        if kind == "default" {
            obj.remove("rope_scaling");
        }
    }
    let text = serde_json::to_string(&raw).map_err(|e| ModelError::Json {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let arch = ModelArchitecture::from_json_str(&text).map_err(|e| match e {
        lf_api::architecture::ArchitectureError::Parse { message, .. } => ModelError::Json {
            path: path.clone(),
            message,
        },
        other => ModelError::UnsupportedConfig {
            path: path.clone(),
            message: other.to_string(),
        },
    })?;
    let windows = arch.layer_windows().map_err(unsupported)?;
    Ok((arch, windows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(config: serde_json::Value) -> Result<Vec<Option<i64>>, String> {
        let raw = lf_api::architecture::normalise_config(config);
        let arch = ModelArchitecture::from_json_str(&raw.to_string()).map_err(|e| e.to_string())?;
        arch.layer_windows()
    }

    fn config(model_type: &str, layers: u64, extra: serde_json::Value) -> serde_json::Value {
        let mut c = serde_json::json!({"model_type": model_type, "vocab_size": 32, "hidden_size": 16,
            "intermediate_size": 32, "num_hidden_layers": layers, "num_attention_heads": 2, "head_dim": 8});
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        c
    }

    #[test]
    fn phi3_rope_types_and_dropout_are_checked() {
        use serde_json::json;
        let dir = tempfile::tempdir().unwrap();
        let read = |extra: serde_json::Value| {
            std::fs::write(
                dir.path().join("config.json"),
                config("phi3", 2, extra).to_string(),
            )
            .unwrap();
            read_config(dir.path()).map_err(|e| e.to_string())
        };
        let factors = json!([1.0, 1.0, 1.0, 1.0]);
        let (arch, _) = read(
            json!({"rope_scaling": {"type": "su", "short_factor": factors,
            "long_factor": factors}}),
        )
        .unwrap();
        assert_eq!(arch.rope_scaling.unwrap().rope_type, "longrope");
        let err = read(json!({"rope_scaling": {"type": "linear", "factor": 2.0}})).unwrap_err();
        assert!(
            err.contains("`linear`") && err.contains("longrope"),
            "{err}"
        );
        let err = read(json!({"resid_pdrop": 0.1})).unwrap_err();
        assert!(err.contains("resid_pdrop"), "{err}");
        let err = read(json!({"attention_dropout": 0.1})).unwrap_err();
        assert!(err.contains("attention_dropout"), "{err}");
        assert!(
            read(json!({"attention_dropout": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0})).is_ok()
        );
    }

    #[test]
    fn layer_windows_follow_transformers_defaults() {
        use serde_json::json;
        let (s, f) = (Some(4096), None);
        // Gemma 2: every second layer is full; the window defaults to 4096.
        assert_eq!(
            windows(config("gemma2", 4, json!({}))),
            Ok(vec![s, f, s, f])
        );
        // Gemma 3: every sixth (sliding_window_pattern) layer is full.
        let w = windows(config("gemma3_text", 7, json!({"sliding_window": 512}))).unwrap();
        assert_eq!(w.iter().filter(|w| w.is_none()).count(), 1);
        assert_eq!((w[5], w[6]), (None, Some(512)));
        // Mistral: every layer; an explicit null: none.
        assert_eq!(
            windows(config("mistral", 2, json!({"sliding_window": 8}))),
            Ok(vec![Some(8); 2])
        );
        assert_eq!(
            windows(config("mistral", 2, json!({"sliding_window": null}))),
            Ok(vec![None; 2])
        );
        // Phi-3: every layer, as Mistral.
        assert_eq!(
            windows(config("phi3", 3, json!({"sliding_window": 2047}))),
            Ok(vec![Some(2047); 3])
        );
        assert_eq!(windows(config("phi3", 1, json!({}))), Ok(vec![None]));
        // Qwen: only with use_sliding_window, from max_window_layers on.
        let qwen = json!({"sliding_window": 8, "max_window_layers": 1});
        assert_eq!(windows(config("qwen3", 2, qwen.clone())), Ok(vec![None; 2]));
        let mut on = qwen;
        on["use_sliding_window"] = json!(true);
        assert_eq!(windows(config("qwen2", 2, on)), Ok(vec![None, Some(8)]));
        // Mixtral: every layer, as Mistral; Qwen3-MoE: every layer, only with use_sliding_window.
        assert_eq!(
            windows(config("mixtral", 2, json!({"sliding_window": 8}))),
            Ok(vec![Some(8); 2])
        );
        let moe = json!({"sliding_window": 8, "num_experts": 4});
        assert_eq!(
            windows(config("qwen3_moe", 2, moe.clone())),
            Ok(vec![None; 2])
        );
        let mut on = moe;
        on["use_sliding_window"] = json!(true);
        assert_eq!(windows(config("qwen3_moe", 2, on)), Ok(vec![Some(8); 2]));
        // A malformed layer_types is an error naming the key.
        let bad = windows(config(
            "gemma2",
            2,
            json!({"layer_types": ["full_attention"]}),
        ));
        assert!(bad.is_err_and(|e| e.contains("layer_types")));
    }

    /// Mixture-of-experts keys as transformers writes them: Qwen3-MoE's `num_experts` (the Hub's)
    /// and `num_local_experts` (transformers 5's, which wins when both are present), the config
    /// classes' defaults, the sparse layers, and router jitter refused.
    #[test]
    fn reads_mixture_of_experts_keys() {
        use serde_json::json;
        let dir = tempfile::tempdir().unwrap();
        let read = |extra: serde_json::Value| {
            let mut c = config("qwen3_moe", 4, extra);
            c["moe_intermediate_size"] = json!(24);
            std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
            read_architecture(dir.path())
        };
        let a = read(json!({"num_experts": 6, "mlp_only_layers": [2], "decoder_sparse_step": 2}))
            .unwrap();
        assert_eq!((a.num_experts(), a.experts_per_token()), (6, 8));
        assert_eq!(a.expert_intermediate_size(), 24);
        assert!(!a.norm_topk_prob());
        let sparse: Vec<bool> = (0..4).map(|i| a.is_sparse_layer(i)).collect();
        assert_eq!(sparse, [false, true, false, true]);
        assert_eq!(a.router_aux_loss_weight(), None);
        let a =
            read(json!({"num_experts": 6, "num_local_experts": 3, "output_router_logits": true}))
                .unwrap();
        assert_eq!(a.num_experts(), 3);
        assert_eq!(a.router_aux_loss_weight(), Some(0.001));
        let jitter = read(json!({"router_jitter_noise": 0.1}));
        assert!(jitter.is_err_and(|e| e.to_string().contains("router_jitter_noise")));
        let m = ModelArchitecture::from_json_str(
            &config("mixtral", 2, json!({"router_aux_loss_coef": 0.02})).to_string(),
        )
        .unwrap();
        assert_eq!((m.num_experts(), m.experts_per_token()), (8, 2));
        assert!(m.norm_topk_prob() && m.is_sparse_layer(1));
        assert_eq!(m.expert_intermediate_size(), 32);
        assert_eq!(m.router_aux_loss_weight(), None);
    }
}
