//! PEFT adapter files: `adapter_config.json` + `adapter_model.safetensors`, read and written the
//! way PEFT does, so adapters move freely between this trainer, PEFT, vLLM and LLaMA-Factory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use lf_api::architecture::{ExpertLoraTargets, ModelArchitecture};
use lf_api::training::LinearModule;
use tch::Kind;

use crate::causal_lm::CausalLm;
use crate::lora_settings::LoraSettings;
use crate::safetensors_io::{self, HostTensor, MappedFile};
use crate::ModelError;

/// The adapter weights file name PEFT uses.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The adapter config file name PEFT uses.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

impl CausalLm {
    /// Writes the attached adapter in PEFT's format: `adapter_model.safetensors` (PEFT names,
    /// metadata `{"format": "pt"}`) and `adapter_config.json` with the keys PEFT writes.
    pub fn save_adapter(&self, dir: &Path, base_model_name: &str) -> Result<(), ModelError> {
        let s = self
            .method
            .lora
            .as_ref()
            .ok_or_else(|| ModelError::Invalid("no LoRA adapter is attached to save".into()))?;
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let tensors = match s.adalora {
            Some(_) => self.adalora_saved_tensors()?,
            None => self.adapter_parameters(),
        };
        let mut map = BTreeMap::new();
        for (name, t) in tensors {
            let host = HostTensor::from_tensor(&name, &t)?;
            map.insert(self.layout.peft_name(&name), host);
        }
        safetensors_io::write_file(&dir.join(ADAPTER_WEIGHTS), &map)?;
        let targets = self.peft_target_modules(&s.targets);
        let mut config = serde_json::json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": base_model_name,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layer_replication": null,
            "layers_pattern": null,
            "layers_to_transform": null,
            "loftq_config": {},
            "lora_alpha": s.alpha,
            "lora_dropout": s.dropout,
            "megatron_config": null,
            "megatron_core": "megatron.core",
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": s.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": targets,
            "task_type": "CAUSAL_LM",
            "use_dora": s.use_dora,
            "use_rslora": s.use_rslora,
        });
        if !s.experts.is_empty() {
            // PEFT's `target_parameters` (and, for a gate_up_proj named by its halves, the rank
            // and alpha its conversion doubles), as PEFT writes them.
            config["target_parameters"] = serde_json::json!(s.experts.target_parameters());
            if s.experts.gate_up == Some(2) {
                config["rank_pattern"] = serde_json::json!({ GATE_UP_PATTERN: 2 * s.r });
                config["alpha_pattern"] = serde_json::json!({ GATE_UP_PATTERN: 2.0 * s.alpha });
            }
        }
        if let Some(ada) = &s.adalora {
            self.adalora_config(&mut config, ada)?;
        }
        let path = dir.join(ADAPTER_CONFIG);
        let text = serde_json::to_string_pretty(&config).map_err(|e| ModelError::Json {
            path: path.clone(),
            message: e.to_string(),
        })?;
        crate::durable::write_atomic(&path, text.as_bytes())
    }

    /// Loads a PEFT LoRA/DoRA adapter. When [`CausalLm::apply_method`] already attached adapters
    /// (continuing training), the file must match them (rank, targets, DoRA) and its values replace
    /// theirs, keeping them trainable; otherwise adapters are attached from the file's config,
    /// frozen (chat, eval, export). A file for another model (other shapes, layers or modules) is
    /// an error naming the tensor.
    pub fn load_adapter(&mut self, adapter_dir: &Path) -> Result<(), ModelError> {
        let config_path = adapter_dir.join(ADAPTER_CONFIG);
        let fail = |message: String| ModelError::Adapter {
            path: config_path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Io {
            path: config_path.clone(),
            source,
        })?;
        let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: config_path.clone(),
            message: e.to_string(),
        })?;
        let settings = parse_config(&cfg, &self.arch).map_err(&fail)?;
        let pattern = match settings.adalora {
            Some(_) => crate::adalora_io::pattern_from_config(&cfg).map_err(&fail)?,
            None => None,
        };
        let weights = adapter_dir.join(ADAPTER_WEIGHTS);
        let file = MappedFile::open(&weights)?;
        let desc = weights.display().to_string();

        let continuing = self.method.lora.is_some()
            && self
                .adapter_parameters()
                .iter()
                .any(|(_, t)| t.requires_grad());
        if continuing {
            let ours = self
                .method
                .lora
                .as_ref()
                .cloned()
                .unwrap_or_else(|| settings.clone());
            if pattern.is_some() {
                return Err(fail(
                    "cannot continue training from it: AdaLoRA already pruned its ranks (rank_pattern), and the importance scores that drove the pruning are not in an adapter; resume the run from its checkpoint (resume_from_checkpoint) instead".into(),
                ));
            }
            if ours.r != settings.r
                || ours.use_dora != settings.use_dora
                || ours.adalora.is_some() != settings.adalora.is_some()
                || sorted(&ours.targets) != sorted(&settings.targets)
                || ours.experts != settings.experts
            {
                return Err(ModelError::Adapter {
                    path: config_path.clone(),
                    message: format!(
                        "cannot continue training from it: it has r={}, targets {:?}, use_dora={}, but the config asks for r={}, targets {:?}, use_dora={}",
                        settings.r,
                        names(&settings.targets),
                        settings.use_dora,
                        ours.r,
                        names(&ours.targets),
                        ours.use_dora
                    ),
                });
            }
        } else {
            self.attach_adapters(&settings, Kind::Float, None, &crate::AlwaysResident)?;
            if let Some(pattern) = &pattern {
                self.adalora_resize(pattern)?;
            }
        }

        let mut in_file: BTreeSet<String> = file.names()?.into_iter().collect();
        for (name, t) in self.adapter_parameters() {
            let name = self.layout.peft_name(&name);
            if !in_file.remove(&name) {
                return Err(ModelError::MissingTensor {
                    name,
                    source_desc: desc.clone(),
                });
            }
            let src = file.load(&name, Some(t.kind()), t.device())?;
            if src.size() != t.size() {
                return Err(ModelError::ShapeMismatch {
                    name,
                    source_desc: desc.clone(),
                    expected: t.size(),
                    found: src.size(),
                });
            }
            tch::no_grad(|| t.shallow_clone().copy_(&src));
        }
        // A reward model's adapter (PEFT `SEQ_CLS`) also holds its `score` head, which is not
        // part of the decoder: its user reads it (lf-trainer's value head).
        if let Some(extra) = in_file.into_iter().find(|n| !crate::names::is_score(n)) {
            return Err(ModelError::UnexpectedTensor {
                name: extra,
                source_desc: desc,
                what: format!(
                    "adapter of this {}-layer model with targets {:?}",
                    self.model.layers.len(),
                    names(&settings.targets)
                ),
            });
        }
        tracing::info!(adapter = %adapter_dir.display(), r = settings.r, dora = settings.use_dora, "adapter loaded");
        Ok(())
    }
}

impl CausalLm {
    /// `target_modules` as PEFT should match them on the model this checkpoint loads as: the
    /// module names on a `…ForCausalLM`; on a multimodal model, every adapted linear's full path
    /// in the language model, as LLaMA-Factory's `patch_target_modules` lists them (a bare
    /// `q_proj` would also adapt the vision tower's).
    fn peft_target_modules(&self, targets: &[LinearModule]) -> Vec<String> {
        if !self.layout.is_multimodal() {
            return targets.iter().map(|m| m.name().to_string()).collect();
        }
        (0..self.model.layers.len())
            .flat_map(|i| {
                targets
                    .iter()
                    .map(move |&m| self.layout.peft_module(&crate::names::linear(i, m)))
            })
            .collect()
    }
}

/// `target_modules` entries as decoder linear names. PEFT matches an entry as the suffix of a
/// module path, so LLaMA-Factory's full paths on a multimodal model
/// (`model.language_model.layers.0.self_attn.q_proj`) and PEFT's shortened ones
/// (`1.self_attn.q_proj`) name the linear their last segment names; the adapter's tensors,
/// checked one by one when loading, must still cover every layer. A path into a vision tower or
/// projector is refused: only the language model is loaded.
fn target_names(items: &[serde_json::Value]) -> Result<Vec<&str>, String> {
    items
        .iter()
        .map(|i| {
            let name = i.as_str().unwrap_or("");
            if name.contains("vision_tower") || name.contains("multi_modal_projector") {
                return Err(format!(
                    "target_modules: `{name}` adapts the vision tower or projector; only the language model is fine-tuned"
                ));
            }
            Ok(name.rsplit('.').next().unwrap_or(name))
        })
        .collect()
}

fn sorted(v: &[LinearModule]) -> Vec<LinearModule> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn names(v: &[LinearModule]) -> Vec<&'static str> {
    v.iter().map(|m| m.name()).collect()
}

/// Reads the `adapter_config.json` keys that define the math for a model of `arch`, rejecting
/// what we cannot apply.
fn parse_config(cfg: &serde_json::Value, arch: &ModelArchitecture) -> Result<LoraSettings, String> {
    let peft_type = cfg.get("peft_type").and_then(|v| v.as_str()).unwrap_or("");
    let adalora = match peft_type {
        "LORA" => None,
        "ADALORA" => Some(crate::adalora_io::settings_from_config(cfg)?),
        _ => {
            return Err(format!(
                "peft_type `{peft_type}` is not supported (only LORA, including DoRA/rsLoRA, and ADALORA)"
            ))
        }
    };
    let r = match adalora {
        Some(a) => a.init_r,
        None => cfg
            .get("r")
            .and_then(|v| v.as_u64())
            .filter(|&r| r > 0)
            .ok_or("`r` must be a positive integer")? as u32,
    };
    let alpha = cfg
        .get("lora_alpha")
        .and_then(|v| v.as_f64())
        .unwrap_or(8.0);
    let dropout = cfg
        .get("lora_dropout")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0);
    let flag = |k: &str| cfg.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    if flag("lora_bias") {
        return Err("lora_bias: true is not supported".into());
    }
    if flag("fan_in_fan_out") {
        return Err("fan_in_fan_out: true is not supported".into());
    }
    let fused_pattern = gate_up_pattern(cfg, r, alpha);
    let per_module = match adalora {
        // AdaLoRA's rank_pattern is its pruning, read by the loader.
        Some(_) => &["alpha_pattern"][..],
        None => &["rank_pattern", "alpha_pattern"][..],
    };
    for &key in per_module {
        if cfg
            .get(key)
            .and_then(|v| v.as_object())
            .is_some_and(|o| !o.is_empty() && !fused_pattern)
        {
            return Err(format!("`{key}` (per-module ranks) is not supported"));
        }
    }
    for key in ["layers_to_transform", "layer_replication"] {
        if cfg.get(key).is_some_and(|v| !v.is_null()) {
            return Err(format!("`{key}` is not supported"));
        }
    }
    // A `SEQ_CLS` adapter saves its classification head (PEFT lists every such head's name;
    // a Llama-family model has `score`), which is not the decoder's: its user reads it.
    if let Some(modules) = cfg.get("modules_to_save").filter(|v| !v.is_null()) {
        let heads = ["score", "classifier", "pre_classifier"];
        let only_heads = modules.as_array().is_some_and(|m| {
            m.iter()
                .all(|v| v.as_str().is_some_and(|n| heads.contains(&n)))
        });
        if !only_heads {
            return Err(format!(
                "`modules_to_save` {modules} is not supported (only a sequence-classification head, `score`)"
            ));
        }
    }
    if let Some(bias) = cfg.get("bias").and_then(|v| v.as_str()) {
        if bias != "none" {
            return Err(format!("bias `{bias}` is not supported (only `none`)"));
        }
    }
    let targets = match cfg.get("target_modules") {
        Some(serde_json::Value::String(s)) if s == "all-linear" => arch
            .lora_targets("all")
            .map_err(|e| format!("target_modules: {e}"))?,
        Some(serde_json::Value::Array(items)) => {
            let names = target_names(items)?;
            // `[]`: parameters only (PEFT's way of targeting no module).
            let out = match names.is_empty() {
                true => Vec::new(),
                false => arch
                    .lora_targets(&names.join(","))
                    .map_err(|e| format!("target_modules: {e}"))?,
            };
            // The model's order, whatever the file's.
            arch.linear_modules()
                .iter()
                .copied()
                .filter(|m| out.contains(m))
                .collect()
        }
        other => {
            return Err(format!(
                "target_modules {other:?} is not supported (use a list of module names)"
            ))
        }
    };
    let experts = expert_targets(cfg, arch, fused_pattern)?;
    if targets.is_empty() && experts.is_empty() {
        return Err("target_modules names no module".into());
    }
    Ok(LoraSettings {
        r,
        alpha,
        dropout,
        targets,
        experts,
        use_rslora: flag("use_rslora"),
        use_dora: flag("use_dora"),
        adalora,
    })
}

/// The `rank_pattern`/`alpha_pattern` key PEFT's conversion writes for a mixture of experts'
/// `gate_up_proj` targeted by its two halves.
const GATE_UP_PATTERN: &str = r".*\.gate_up_proj";

/// Whether `rank_pattern` and `alpha_pattern` are exactly what PEFT's conversion writes for a
/// `gate_up_proj` named by its halves: rank `2·r` and alpha `2·α` on [`GATE_UP_PATTERN`].
fn gate_up_pattern(cfg: &serde_json::Value, r: u32, alpha: f64) -> bool {
    let only = |key: &str, want: f64| {
        cfg.get(key).and_then(|v| v.as_object()).is_some_and(|o| {
            o.len() == 1
                && o.get(GATE_UP_PATTERN)
                    .and_then(|v| v.as_f64())
                    .is_some_and(|v| v == want)
        })
    };
    only("rank_pattern", 2.0 * r as f64) && only("alpha_pattern", 2.0 * alpha)
}

/// The router and expert adapters of an adapter config on a model of `arch`: transformers 4's
/// names in `target_modules` as PEFT's conversion reads them (`all-linear` there adapts the
/// router and both expert parameters, `gate_up_proj` at rank `2·r`), and `target_parameters`
/// (`gate.weight`, `gate_up_proj`, `down_proj`), `gate_up_proj` at rank `2·r` when
/// `fused_pattern` says so.
fn expert_targets(
    cfg: &serde_json::Value,
    arch: &ModelArchitecture,
    fused_pattern: bool,
) -> Result<ExpertLoraTargets, String> {
    let mut t = match cfg.get("target_modules") {
        Some(serde_json::Value::String(s)) if s == "all-linear" && arch.model_type.is_moe() => {
            ExpertLoraTargets {
                router: true,
                gate_up: Some(2),
                down: true,
            }
        }
        Some(serde_json::Value::Array(items)) if !items.is_empty() => {
            let names: Vec<&str> = items.iter().map(|i| i.as_str().unwrap_or("")).collect();
            arch.expert_lora_targets(&names.join(","))
                .map_err(|e| format!("target_modules: {e}"))?
        }
        _ => ExpertLoraTargets::default(),
    };
    let params: Vec<&str> = match cfg.get("target_parameters") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => {
            items.iter().map(|i| i.as_str().unwrap_or("")).collect()
        }
        Some(other) => return Err(format!("target_parameters {other} is not a list")),
    };
    if !params.is_empty() && !arch.model_type.is_moe() {
        return Err(format!(
            "target_parameters {params:?}: LoRA on parameters is supported on a mixture of \
             experts' router and experts only, and this is a {} model",
            arch.model_type.name()
        ));
    }
    for p in params {
        match p {
            "gate.weight" => t.router = true,
            "down_proj" => t.down = true,
            "gate_up_proj" if t.gate_up.is_none() => {
                t.gate_up = Some(if fused_pattern { 2 } else { 1 })
            }
            // PEFT 0.22 keeps the halves in target_modules and writes the fused parameter too.
            "gate_up_proj" if t.gate_up == Some(2) && fused_pattern => {}
            "gate_up_proj" => {
                return Err(
                    "gate_up_proj is targeted both by target_modules and target_parameters".into(),
                )
            }
            other => {
                return Err(format!(
                    "target_parameters `{other}` is not supported (a mixture of experts' \
                     gate.weight, gate_up_proj, down_proj)"
                ))
            }
        }
    }
    if fused_pattern && t.gate_up != Some(2) {
        return Err(format!(
            "rank_pattern/alpha_pattern `{GATE_UP_PATTERN}` is for the experts' gate_up_proj, which this adapter does not adapt"
        ));
    }
    Ok(t)
}
