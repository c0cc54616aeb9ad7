//! AdaLoRA on disk: PEFT's adapter format (pruned ranks dropped, `rank_pattern` and the schedule
//! in `adapter_config.json`) and the trainer's checkpoint state (full-rank adapters, importance
//! EMAs and the pattern, so a resumed run continues exactly).

use std::collections::BTreeMap;
use std::path::Path;

use lf_api::training::AdaLora;
use tch::{Kind, Tensor};

use crate::causal_lm::CausalLm;
use crate::names;
use crate::rank_allocator::{RankAllocator, RankPattern};
use crate::safetensors_io::{self, HostTensor, MappedFile};
use crate::ModelError;

/// The checkpoint file of AdaLoRA's training state.
pub const ADALORA_STATE: &str = "adalora_state.safetensors";

fn invalid(message: String) -> ModelError {
    ModelError::Invalid(message)
}

/// Reads AdaLoRA's keys of a PEFT `adapter_config.json` (`peft_type: ADALORA`).
pub(crate) fn settings_from_config(cfg: &serde_json::Value) -> Result<AdaLora, String> {
    let uint = |k: &str, default: Option<u64>| {
        cfg.get(k)
            .and_then(|v| v.as_u64())
            .or(default)
            .ok_or_else(|| format!("`{k}` must be a non-negative integer"))
    };
    let float = |k: &str, default: f64| cfg.get(k).and_then(|v| v.as_f64()).unwrap_or(default);
    let init_r = uint("init_r", Some(12))?;
    if init_r == 0 {
        return Err("`init_r` must be at least 1".into());
    }
    Ok(AdaLora {
        target_r: uint("target_r", Some(8))? as u32,
        init_r: init_r as u32,
        tinit: uint("tinit", Some(0))?,
        tfinal: uint("tfinal", Some(0))?,
        delta_t: uint("deltaT", Some(1))?,
        beta1: float("beta1", 0.85),
        beta2: float("beta2", 0.85),
        orth_reg_weight: float("orth_reg_weight", 0.5),
    })
}

/// The `rank_pattern` of an AdaLoRA `adapter_config.json`, keyed by module path (`null`: no rank
/// pruned yet).
pub(crate) fn pattern_from_config(cfg: &serde_json::Value) -> Result<Option<RankPattern>, String> {
    let Some(map) = cfg.get("rank_pattern").and_then(|v| v.as_object()) else {
        return Ok(None);
    };
    if map.is_empty() {
        return Ok(None);
    }
    let mut out = RankPattern::new();
    for (key, kept) in map {
        let module = key
            .strip_suffix(".lora_E")
            .ok_or_else(|| format!("rank_pattern key `{key}` does not name a `lora_E`"))?;
        let kept = kept
            .as_array()
            .and_then(|a| a.iter().map(|b| b.as_bool()).collect::<Option<Vec<bool>>>())
            .ok_or_else(|| format!("rank_pattern `{key}` must be a list of booleans"))?;
        out.insert(module.to_string(), kept);
    }
    Ok(Some(out))
}

/// Writes AdaLoRA's keys into the LoRA `config` PEFT's `save_pretrained` writes.
pub(crate) fn extend_config(
    config: &mut serde_json::Value,
    ada: &AdaLora,
    total_steps: Option<u64>,
    pattern: Option<&RankPattern>,
) {
    let pattern = pattern.map(|p| {
        p.iter()
            .map(|(module, kept)| (format!("{module}.lora_E"), serde_json::json!(kept)))
            .collect::<serde_json::Map<_, _>>()
    });
    let extra = serde_json::json!({
        "peft_type": "ADALORA",
        // LoraConfig's default; AdaLoRA does not use `r` (PEFT warns when it differs).
        "r": 8,
        "target_r": ada.target_r,
        "init_r": ada.init_r,
        "tinit": ada.tinit,
        "tfinal": ada.tfinal,
        "deltaT": ada.delta_t,
        "beta1": ada.beta1,
        "beta2": ada.beta2,
        "orth_reg_weight": ada.orth_reg_weight,
        "total_step": total_steps,
        "rank_pattern": pattern,
    });
    if let (Some(obj), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
}

/// `t` with only the rows (`dim` 0) or columns (`dim` 1) `kept` says.
fn keep(t: &Tensor, kept: &[bool], dim: i64) -> Tensor {
    let index: Vec<i64> = (0..kept.len() as i64)
        .filter(|i| kept[*i as usize])
        .collect();
    let index = Tensor::from_slice(&index).to_device(t.device());
    t.index_select(dim, &index)
}

impl CausalLm {
    /// The run's AdaLoRA allocator, for saving.
    fn allocator(&self) -> Result<&RankAllocator, ModelError> {
        self.rank_allocator
            .as_ref()
            .ok_or_else(|| invalid("no AdaLoRA training state to save".into()))
    }

    /// The adapter tensors as PEFT saves them: pruned ranks dropped by the rank pattern.
    pub(crate) fn adalora_saved_tensors(&self) -> Result<Vec<(String, Tensor)>, ModelError> {
        let pattern = self.adalora_rank_pattern();
        let mut out = Vec::new();
        for m in self.adalora_modules() {
            let ad = m.adapter;
            let (a, b, e) = match pattern.and_then(|p| p.get(m.path.as_str())) {
                Some(kept) => (
                    keep(&ad.a, kept, 0),
                    keep(&ad.b, kept, 1),
                    keep(m.singular, kept, 0),
                ),
                None => (
                    ad.a.shallow_clone(),
                    ad.b.shallow_clone(),
                    m.singular.shallow_clone(),
                ),
            };
            out.push((m.path.adalora_a(), a));
            out.push((m.path.adalora_b(), b));
            out.push((m.path.adalora_e(), e));
        }
        Ok(out)
    }

    /// AdaLoRA's keys for `adapter_config.json`.
    pub(crate) fn adalora_config(
        &self,
        config: &mut serde_json::Value,
        ada: &AdaLora,
    ) -> Result<(), ModelError> {
        let alloc = self.allocator()?;
        extend_config(config, ada, alloc.total_steps, alloc.rank_pattern.as_ref());
        Ok(())
    }

    /// Shrinks freshly attached (placeholder) AdaLoRA adapters to the ranks `pattern` keeps, so
    /// a PEFT file saved after pruning loads into them.
    pub(crate) fn adalora_resize(&mut self, pattern: &RankPattern) -> Result<(), ModelError> {
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            for (m, linear) in layer.linears_mut() {
                let path = names::linear(i, m);
                let Some(ad) = linear.adapter.as_mut().filter(|a| a.singular.is_some()) else {
                    continue;
                };
                let kept = pattern.get(path.as_str()).ok_or_else(|| {
                    invalid(format!(
                        "the adapter's rank_pattern has no entry for `{path}`"
                    ))
                })?;
                let r = kept.iter().filter(|k| **k).count() as i64;
                let opts = (ad.a.kind(), ad.a.device());
                ad.a = Tensor::zeros([r, ad.a.size()[1]], opts);
                ad.b = Tensor::zeros([ad.b.size()[0], r], opts);
                ad.singular = Some(Tensor::zeros([r, 1], opts));
            }
        }
        Ok(())
    }

    /// Writes AdaLoRA's training state to `path`: every adapter tensor at full rank
    /// (`adapter.<PEFT name>`), the importance EMAs (`exp_avg_ipt.<name>`, `exp_avg_unc.<name>`) and
    /// the rank pattern (`rank_pattern.<module>`, 1 = kept).
    pub fn save_adalora_state(&self, path: &Path) -> Result<(), ModelError> {
        let alloc = self.allocator()?;
        let mut map = BTreeMap::new();
        let mut put = |name: String, t: &Tensor| -> Result<(), ModelError> {
            let host = HostTensor::from_tensor(&name, &t.to_device(tch::Device::Cpu))?;
            map.insert(name, host);
            Ok(())
        };
        for (name, t) in self.adapter_parameters() {
            put(format!("adapter.{name}"), &t)?;
        }
        for (name, t) in &alloc.exp_avg_ipt {
            put(format!("exp_avg_ipt.{name}"), t)?;
        }
        for (name, t) in &alloc.exp_avg_unc {
            put(format!("exp_avg_unc.{name}"), t)?;
        }
        for (module, kept) in alloc.rank_pattern.iter().flatten() {
            let bytes: Vec<u8> = kept.iter().map(|k| *k as u8).collect();
            put(
                format!("rank_pattern.{module}"),
                &Tensor::from_slice(&bytes),
            )?;
        }
        safetensors_io::write_file(path, &map)
    }

    /// Restores what [`CausalLm::save_adalora_state`] wrote into a model set up for the same
    /// AdaLoRA run. Every adapter tensor must be there with its shape.
    pub fn load_adalora_state(&mut self, path: &Path) -> Result<(), ModelError> {
        let file = MappedFile::open(path)?;
        let desc = path.display().to_string();
        let names_in_file = file.names()?;
        let mut alloc = self
            .rank_allocator
            .take()
            .ok_or_else(|| invalid("this run does not train AdaLoRA".into()))?;
        let result = (|| {
            for (name, t) in self.adapter_parameters() {
                let key = format!("adapter.{name}");
                if !names_in_file.contains(&key) {
                    return Err(ModelError::MissingTensor {
                        name: key,
                        source_desc: desc.clone(),
                    });
                }
                let src = file.load(&key, Some(t.kind()), t.device())?;
                if src.size() != t.size() {
                    return Err(ModelError::ShapeMismatch {
                        name: key,
                        source_desc: desc.clone(),
                        expected: t.size(),
                        found: src.size(),
                    });
                }
                tch::no_grad(|| t.shallow_clone().copy_(&src));
            }
            let device = self.opts.device;
            alloc.exp_avg_ipt.clear();
            alloc.exp_avg_unc.clear();
            let mut pattern = RankPattern::new();
            for key in &names_in_file {
                let load = |k: &str| file.load(k, None, device);
                if let Some(name) = key.strip_prefix("exp_avg_ipt.") {
                    alloc.exp_avg_ipt.insert(name.to_string(), load(key)?);
                } else if let Some(name) = key.strip_prefix("exp_avg_unc.") {
                    alloc.exp_avg_unc.insert(name.to_string(), load(key)?);
                } else if let Some(module) = key.strip_prefix("rank_pattern.") {
                    let kept = file.load(key, Some(Kind::Uint8), tch::Device::Cpu)?;
                    let kept: Vec<u8> = Vec::<u8>::try_from(kept)
                        .map_err(|e| invalid(format!("{desc}: rank pattern `{module}`: {e}")))?;
                    pattern.insert(module.to_string(), kept.iter().map(|k| *k != 0).collect());
                }
            }
            alloc.rank_pattern = (!pattern.is_empty()).then_some(pattern);
            Ok(())
        })();
        self.rank_allocator = Some(alloc);
        result
    }
}
