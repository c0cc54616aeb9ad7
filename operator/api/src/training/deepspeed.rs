//! LLaMA-Factory's `deepspeed:` option: a DeepSpeed JSON config (a file, or the same keys
//! inline), mapped onto the training config's own keys.
//!
//! [`DEEPSPEED_MAPPING`] lists what maps onto what.
//!
//! `"auto"` means "what the training config says", as in Hugging Face's integration. Parameter
//! offload, NVMe offload, partial optimizer offload, ZeRO++ quantised communication, MiCS and the
//! other features lf-trainer does not have are errors with the reason. Bucket sizes are reported
//! in a notice (lf-trainer's gradient bucket is the size the operator's planner assumes), and keys
//! with no meaning for lf-trainer (monitoring, communication logging, prefetch tuning)
//! are listed in one notice. Unknown keys are errors.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ConfigError;
use super::notice::Notice;
use super::options::OffloadDevice;

/// What a DeepSpeed config maps onto: (DeepSpeed keys, training-config keys), as the README
/// shows it.
pub const DEEPSPEED_MAPPING: &[(&str, &str)] = &[
    ("`zero_optimization.stage`", "`zero_stage`"),
    ("`zero_optimization.overlap_comm`", "`overlap_comm`"),
    ("`zero_optimization.offload_optimizer.device` (`cpu`, `none`), legacy `zero_optimization.cpu_offload`", "`offload_optimizer`"),
    ("`train_micro_batch_size_per_gpu`", "`per_device_train_batch_size`"),
    ("`gradient_accumulation_steps`", "`gradient_accumulation_steps`"),
    ("`gradient_clipping`", "`max_grad_norm`"),
    ("`bf16.enabled`, `fp16.enabled`", "`bf16`, `fp16`"),
    ("`optimizer` of type `Adam`/`AdamW`: `params.lr`, `params.betas`, `params.eps`, `params.weight_decay`", "`optim: adamw_torch`, `learning_rate`, `adam_beta1` and `adam_beta2`, `adam_epsilon`, `weight_decay`"),
    ("`scheduler` of type `WarmupLR`, `WarmupDecayLR`, `WarmupCosineLR`: `params.warmup_num_steps`, `params.warmup_max_lr`", "`lr_scheduler_type: constant_with_warmup`, `linear`, `cosine`; `warmup_steps`, `learning_rate`"),
    ("`zero_optimization.offload_param` (`cpu`, `nvme`), `offload_optimizer.device: nvme`, `offload_optimizer.ratio` < 1, ZeRO++ (`zero_quantized_*`, `zero_hpz_partition_size` > 1), `mics_shard_size`, tensor or sequence parallelism, other optimizers and schedulers", "an error with the reason"),
    ("`reduce_bucket_size`, `allgather_bucket_size`, `stage3_prefetch_bucket_size`", "a notice: lf-trainer's gradient bucket is the size the planner assumes (`LF_BUCKET_ELEMENTS` overrides it)"),
    ("`train_batch_size`", "a notice: not checked (it is the product of the micro-batch, the accumulation and the GPU count)"),
    ("monitoring, logging, communication and overlap tuning (`monitor_config`, `comms_config`, `contiguous_gradients`, `sub_group_size`, `stage3_max_live_parameters`, fp16 loss scaling, ...)", "one notice listing them"),
];

/// `deepspeed`: a DeepSpeed config inline (its JSON keys), or the path of its JSON file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeepSpeedConfig {
    Inline(Map<String, Value>),
    Path(String),
}

/// The CRD schema of `deepspeed`: a free-form object (or a path string). A structural schema
/// cannot say "string or object", so the value is kept as it is.
pub(crate) fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// One training-config key a DeepSpeed config sets.
#[derive(Debug, Clone, PartialEq)]
pub struct DeepSpeedSetting {
    /// The training-config key (`zero_stage`).
    pub key: &'static str,
    pub value: serde_yaml::Value,
    /// The DeepSpeed key it comes from (`zero_optimization.stage`).
    pub from: String,
}

/// What a DeepSpeed config means for lf-trainer: the keys it sets and the notices about the rest.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeepSpeedMapping {
    pub settings: Vec<DeepSpeedSetting>,
    pub notices: Vec<Notice>,
}

impl DeepSpeedMapping {
    /// Maps a DeepSpeed config's keys; an error for anything lf-trainer cannot honour.
    pub fn from_json(config: &Map<String, Value>) -> Result<Self, ConfigError> {
        let mut b = Builder::default();
        b.top(config)?;
        Ok(b.finish())
    }

    /// The value the config sets for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&serde_yaml::Value> {
        self.settings
            .iter()
            .find(|s| s.key == key)
            .map(|s| &s.value)
    }

    /// `zero_optimization.stage`, when the config sets it.
    pub fn zero_stage(&self) -> Option<u8> {
        self.get("zero_stage")
            .and_then(|v| v.as_u64())
            .and_then(|n| u8::try_from(n).ok())
    }

    /// `zero_optimization.offload_optimizer.device`, when the config sets it.
    pub fn offload_optimizer(&self) -> Option<OffloadDevice> {
        self.get("offload_optimizer")
            .and_then(|v| serde_yaml::from_value(v.clone()).ok())
    }
}

/// A DeepSpeed config that was read, and the file it came from (none when inline).
pub(crate) struct Resolved {
    pub config: Map<String, Value>,
    pub file: Option<PathBuf>,
}

/// Reads `deepspeed`'s value: a path (relative to the current directory, as LLaMA-Factory reads
/// it, then to `yaml_dir` and its parents), a JSON string, or a mapping. `None` for
/// `null`/`false`.
pub(crate) fn resolve(
    value: &serde_yaml::Value,
    yaml_dir: Option<&Path>,
) -> Result<Option<Resolved>, ConfigError> {
    match value {
        serde_yaml::Value::Null | serde_yaml::Value::Bool(false) => Ok(None),
        serde_yaml::Value::String(s) if s.trim().is_empty() => Ok(None),
        serde_yaml::Value::String(s) if s.trim_start().starts_with('{') => {
            let v: Value = serde_json::from_str(s)
                .map_err(|e| ConfigError::deepspeed("", format!("not valid JSON: {e}")))?;
            object(v).map(|config| Some(Resolved { config, file: None }))
        }
        serde_yaml::Value::String(s) => {
            let path = find_file(s, yaml_dir)?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::deepspeed("", format!("cannot read {}: {e}", path.display()))
            })?;
            let v: Value = serde_json::from_str(&text).map_err(|e| {
                ConfigError::deepspeed("", format!("{} is not valid JSON: {e}", path.display()))
            })?;
            object(v).map(|config| {
                Some(Resolved {
                    config,
                    file: Some(path),
                })
            })
        }
        serde_yaml::Value::Mapping(_) => {
            let v = serde_json::to_value(value)
                .map_err(|e| ConfigError::deepspeed("", format!("not a JSON-like mapping: {e}")))?;
            object(v).map(|config| Some(Resolved { config, file: None }))
        }
        _ => Err(ConfigError::invalid(
            "deepspeed",
            "must be the path of a DeepSpeed JSON file or a mapping of its keys",
        )),
    }
}

fn object(v: Value) -> Result<Map<String, Value>, ConfigError> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ConfigError::deepspeed(
            "",
            "a DeepSpeed config must be a JSON object",
        )),
    }
}

fn find_file(name: &str, yaml_dir: Option<&Path>) -> Result<PathBuf, ConfigError> {
    let given = Path::new(name.trim());
    if given.is_file() {
        return Ok(given.to_path_buf());
    }
    let mut looked = vec![match std::env::current_dir() {
        Ok(cwd) => format!("the current directory {}", cwd.display()),
        Err(_) => "the current directory".to_string(),
    }];
    if let Some(dir) = yaml_dir.filter(|_| given.is_relative()) {
        // The YAML's directory, then its parents: LLaMA-Factory's examples name
        // `examples/deepspeed/...` relative to the repository root above them.
        for base in dir.ancestors() {
            let beside = base.join(given);
            if beside.is_file() {
                return Ok(beside);
            }
        }
        looked.push(format!(
            "the config file's directory {} and its parents",
            dir.display()
        ));
    }
    Err(ConfigError::deepspeed(
        "",
        format!(
            "cannot find `{name}` (looked in {}); in a FineTuneJob put the JSON's keys inline under `deepspeed:`",
            looked.join(" and ")
        ),
    ))
}

/// Top-level keys with no meaning for lf-trainer (monitoring, logging, tuning of collectives).
const IGNORED_TOP: &[&str] = &[
    "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer",
    "steps_per_print",
    "wall_clock_breakdown",
    "dump_state",
    "memory_breakdown",
    "comms_config",
    "comms_logger",
    "monitor_config",
    "tensorboard",
    "wandb",
    "csv_monitor",
    "comet",
    "flops_profiler",
    "timers",
    "prescale_gradients",
    "gradient_predivide_factor",
    "communication_data_type",
    "seq_parallel_communication_data_type",
    "sparse_gradients",
    "checkpoint",
    "aio",
    "activation_checkpointing",
    "data_types",
    "disable_allgather",
    "nebula",
    "pipeline",
];

/// Top-level blocks of features lf-trainer does not have: an error when enabled.
const FEATURES: &[(&str, &str)] = &[
    ("elasticity", "elastic batch sizes are not implemented"),
    ("autotuning", "DeepSpeed's autotuner is not used; in a FineTuneJob the operator's planner chooses the micro-batch and the ZeRO stage"),
    ("compile", "torch.compile is not used"),
    ("compression_training", "compression training is not implemented"),
    ("data_efficiency", "DeepSpeed's data efficiency library is not implemented"),
    ("curriculum_learning", "curriculum learning is not implemented"),
    ("progressive_layer_drop", "progressive layer drop is not implemented"),
    ("quantize_training", "quantisation-aware training is not implemented"),
    ("eigenvalue", "eigenvalue computation is not implemented"),
    ("sparse_attention", "sparse attention is not implemented"),
    ("hybrid_engine", "the RLHF hybrid engine is not implemented"),
    ("amp", "apex AMP is not used: set `bf16: true` or `fp16: true`"),
    ("tensor_parallel", "tensor parallelism is not implemented: ZeRO (`zero_stage`) shards across GPUs"),
    ("sequence_parallel_size", "sequence parallelism (Ulysses/ALST) is not implemented"),
];

/// `zero_optimization` keys with no meaning for lf-trainer (bucket sizes are reported apart).
const IGNORED_ZERO: &[&str] = &[
    "contiguous_gradients",
    "reduce_scatter",
    "allgather_partitions",
    "round_robin_gradients",
    "sub_group_size",
    "stage3_max_live_parameters",
    "max_live_parameters",
    "stage3_max_reuse_distance",
    "max_reuse_distance",
    "stage3_param_persistence_threshold",
    "param_persistence_threshold",
    "stage3_model_persistence_threshold",
    "model_persistence_threshold",
    "stage3_gather_16bit_weights_on_model_save",
    "gather_16bit_weights_on_model_save",
    "stage3_gather_fp16_weights_on_model_save",
    "load_from_fp32_weights",
    "elastic_checkpoint",
    "ignore_unused_parameters",
    "legacy_stage1",
    "memory_efficient_linear",
    "use_multi_rank_bucket_allreduce",
    "log_trace_cache_warnings",
    "stage3_module_granularity_threshold",
    "module_granularity_threshold",
    "use_all_reduce_for_fetch_params",
    "cpu_offload_use_pin_memory",
    "mics_hierarchical_params_gather",
];

const BUCKETS: &[&str] = &[
    "reduce_bucket_size",
    "allgather_bucket_size",
    "stage3_prefetch_bucket_size",
    "prefetch_bucket_size",
];

/// fp16 loss-scaling keys: lf-trainer's fp16 has no loss scaler.
const FP16_SCALING: &[&str] = &[
    "loss_scale",
    "loss_scale_window",
    "initial_scale_power",
    "hysteresis",
    "consecutive_hysteresis",
    "min_loss_scale",
    "auto_cast",
    "fp16_master_weights_and_grads",
];

const BF16_EXTRA: &[&str] = &[
    "immediate_grad_update",
    "check_grad_overflow",
    "bf16_master_weights_and_grads",
    "bf16_optimizer_states",
];

const PARAM_OFFLOAD_WHY: &str = "parameter offload is not implemented: ZeRO stage 3 (`zero_stage: 3`) shards the parameters across GPUs and `offload_optimizer: cpu` moves the optimiser states (and fp32 master weights) to CPU memory; use more GPUs, or QLoRA (`quantization_bit: 4`)";
const NVME_WHY: &str =
    "NVMe offload is not implemented: use `device: cpu` for the optimizer states";

#[derive(Default)]
struct Builder {
    settings: Vec<DeepSpeedSetting>,
    ignored: Vec<String>,
    buckets: Vec<String>,
    fp16_scaling: Vec<String>,
    /// `fp16.enabled` when explicit (`None` for "auto" or absent).
    fp16_on: Option<bool>,
    unchecked: Vec<String>,
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn is_auto(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("auto"))
}

/// Compact JSON of a value (strings without quotes).
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn as_object<'a>(path: &str, v: &'a Value) -> Result<&'a Map<String, Value>, ConfigError> {
    v.as_object()
        .ok_or_else(|| ConfigError::deepspeed(path, "must be a JSON object"))
}

/// Whether a feature block turns its feature on: `true`, `"enabled": true`, a size above 1.
fn enabled(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n > 1.0),
        Value::Object(m) => {
            m.get("enabled").and_then(Value::as_bool).unwrap_or(false)
                || ["autotp_size", "tp_size", "tensor_parallel_size"]
                    .iter()
                    .any(|k| m.get(*k).is_some_and(enabled))
        }
        _ => false,
    }
}

impl Builder {
    fn set(&mut self, key: &'static str, value: serde_yaml::Value, from: &str) {
        self.settings.push(DeepSpeedSetting {
            key,
            value,
            from: from.to_string(),
        });
    }

    /// `"auto"` or a number.
    fn number(path: &str, v: &Value) -> Result<Option<f64>, ConfigError> {
        if is_auto(v) {
            return Ok(None);
        }
        v.as_f64()
            .map(Some)
            .ok_or_else(|| ConfigError::deepspeed(path, "must be a number or \"auto\""))
    }

    /// `"auto"` or a positive whole number, set as `key`.
    fn set_count(&mut self, key: &'static str, path: &str, v: &Value) -> Result<(), ConfigError> {
        if let Some(n) = Self::number(path, v)? {
            if n < 1.0 || n.fract() != 0.0 {
                return Err(ConfigError::deepspeed(path, "must be a whole number ≥ 1"));
            }
            self.set(key, serde_yaml::Value::from(n as u64), path);
        }
        Ok(())
    }

    /// `"auto"` or a number, set as `key`.
    fn set_float(&mut self, key: &'static str, path: &str, v: &Value) -> Result<(), ConfigError> {
        if let Some(n) = Self::number(path, v)? {
            self.set(key, serde_yaml::Value::from(n), path);
        }
        Ok(())
    }

    fn top(&mut self, config: &Map<String, Value>) -> Result<(), ConfigError> {
        for (k, v) in config {
            let key = k.as_str();
            match key {
                "train_batch_size" => {
                    if let Some(n) = Self::number(key, v)? {
                        self.unchecked.push(format!("train_batch_size: {n}"));
                    }
                }
                "train_micro_batch_size_per_gpu" => {
                    self.set_count("per_device_train_batch_size", key, v)?
                }
                "gradient_accumulation_steps" => {
                    self.set_count("gradient_accumulation_steps", key, v)?
                }
                "gradient_clipping" => self.set_float("max_grad_norm", key, v)?,
                "fp16" => self.precision("fp16", key, v, FP16_SCALING)?,
                "bf16" | "bfloat16" => self.precision("bf16", key, v, BF16_EXTRA)?,
                "zero_optimization" => self.zero(key, v)?,
                "optimizer" => self.optimizer(key, v)?,
                "scheduler" => self.scheduler(key, v)?,
                _ if IGNORED_TOP.contains(&key) => self.ignored.push(key.to_string()),
                _ => match FEATURES.iter().find(|(name, _)| *name == key) {
                    Some((_, why)) if enabled(v) => {
                        return Err(ConfigError::deepspeed(key, *why));
                    }
                    Some(_) => self.ignored.push(key.to_string()),
                    None => return Err(unknown(key, top_keys())),
                },
            }
        }
        Ok(())
    }

    fn precision(
        &mut self,
        key: &'static str,
        path: &str,
        v: &Value,
        extra: &[&str],
    ) -> Result<(), ConfigError> {
        for (k, sub) in as_object(path, v)? {
            let p = join(path, k);
            if k == "enabled" {
                match sub {
                    _ if is_auto(sub) => {}
                    Value::Bool(b) => {
                        if key == "fp16" {
                            self.fp16_on = Some(*b);
                        }
                        self.set(key, serde_yaml::Value::Bool(*b), &p);
                    }
                    _ => {
                        return Err(ConfigError::deepspeed(
                            &p,
                            "must be true, false or \"auto\"",
                        ))
                    }
                }
            } else if key == "fp16" && FP16_SCALING.contains(&k.as_str()) {
                self.fp16_scaling.push(p);
            } else if extra.contains(&k.as_str()) {
                self.ignored.push(p);
            } else {
                let known = std::iter::once("enabled").chain(extra.iter().copied());
                return Err(unknown(&p, known));
            }
        }
        Ok(())
    }

    fn zero(&mut self, path: &str, v: &Value) -> Result<(), ConfigError> {
        for (k, sub) in as_object(path, v)? {
            let p = join(path, k);
            match k.as_str() {
                "stage" => match sub.as_u64() {
                    Some(s @ 0..=3) => self.set("zero_stage", serde_yaml::Value::from(s), &p),
                    _ => return Err(ConfigError::deepspeed(&p, "must be 0, 1, 2 or 3")),
                },
                "overlap_comm" if is_auto(sub) => {}
                "overlap_comm" => match sub.as_bool() {
                    Some(on) => self.set("overlap_comm", on.into(), &p),
                    None => {
                        return Err(ConfigError::deepspeed(
                            &p,
                            "must be true, false or \"auto\"",
                        ))
                    }
                },
                "offload_optimizer" => self.offload_optimizer(&p, sub)?,
                "offload_param" => self.offload_param(&p, sub)?,
                "cpu_offload" => match sub.as_bool() {
                    Some(true) => self.set("offload_optimizer", "cpu".into(), &p),
                    Some(false) => {}
                    None => return Err(ConfigError::deepspeed(&p, "must be true or false")),
                },
                "cpu_offload_params" => {
                    if sub.as_bool() == Some(true) {
                        return Err(ConfigError::deepspeed(&p, PARAM_OFFLOAD_WHY));
                    }
                    self.ignored.push(p);
                }
                "zero_hpz_partition_size" => {
                    if sub.as_f64().is_some_and(|n| n > 1.0) {
                        return Err(ConfigError::deepspeed(&p, "hierarchical partitioning (ZeRO++ hpZ) is not implemented: ZeRO shards across all ranks"));
                    }
                    self.ignored.push(p);
                }
                "zero_quantized_weights"
                | "zero_quantized_nontrainable_weights"
                | "zero_quantized_gradients" => {
                    if sub.as_bool() == Some(true) {
                        return Err(ConfigError::deepspeed(&p, "ZeRO++ quantised communication is not implemented (it changes the numerics); collectives carry full-precision values"));
                    }
                    self.ignored.push(p);
                }
                "mics_shard_size" => {
                    if sub.as_f64().is_some_and(|n| n > 0.0) {
                        return Err(ConfigError::deepspeed(
                            &p,
                            "MiCS is not implemented: ZeRO shards across all ranks",
                        ));
                    }
                    self.ignored.push(p);
                }
                // "auto" follows lf-trainer's own bucket, which is what happens anyway.
                key if BUCKETS.contains(&key) && is_auto(sub) => {}
                key if BUCKETS.contains(&key) => self.buckets.push(format!("{key}: {}", show(sub))),
                key if IGNORED_ZERO.contains(&key) => self.ignored.push(p),
                _ => return Err(unknown(&p, zero_keys())),
            }
        }
        Ok(())
    }

    fn offload_optimizer(&mut self, path: &str, v: &Value) -> Result<(), ConfigError> {
        let block = as_object(path, v)?;
        for (k, sub) in block {
            let p = join(path, k);
            match k.as_str() {
                "device" => match sub.as_str().map(str::to_ascii_lowercase).as_deref() {
                    Some("cpu") => self.set("offload_optimizer", "cpu".into(), &p),
                    Some("none") => self.set("offload_optimizer", "none".into(), &p),
                    Some("nvme") => return Err(ConfigError::deepspeed(&p, NVME_WHY)),
                    _ => return Err(ConfigError::deepspeed(&p, "must be \"cpu\" or \"none\"")),
                },
                "ratio" => {
                    if Self::number(&p, sub)?.is_some_and(|r| r < 1.0) {
                        return Err(ConfigError::deepspeed(&p, "partial optimizer offload is not implemented: `offload_optimizer: cpu` moves all optimiser states"));
                    }
                }
                "pin_memory" | "buffer_count" | "fast_init" | "pipeline" | "pipeline_read"
                | "pipeline_write" | "nvme_path" => self.ignored.push(p),
                _ => {
                    let known = [
                        "device",
                        "ratio",
                        "pin_memory",
                        "buffer_count",
                        "fast_init",
                        "pipeline_read",
                        "pipeline_write",
                        "nvme_path",
                    ];
                    return Err(unknown(&p, known));
                }
            }
        }
        Ok(())
    }

    fn offload_param(&mut self, path: &str, v: &Value) -> Result<(), ConfigError> {
        let block = as_object(path, v)?;
        let device = join(path, "device");
        match block.get("device").and_then(Value::as_str) {
            None | Some("none") => {
                self.ignored.push(path.to_string());
                Ok(())
            }
            Some(d) if d.eq_ignore_ascii_case("nvme") => {
                Err(ConfigError::deepspeed(&device, PARAM_OFFLOAD_WHY))
            }
            Some(_) => Err(ConfigError::deepspeed(&device, PARAM_OFFLOAD_WHY)),
        }
    }

    fn optimizer(&mut self, path: &str, v: &Value) -> Result<(), ConfigError> {
        let TypedBlock {
            kind,
            type_path,
            params,
        } = typed_block(path, v, "optimizer")?;
        if !kind.eq_ignore_ascii_case("adam") && !kind.eq_ignore_ascii_case("adamw") {
            return Err(ConfigError::deepspeed(
                &type_path,
                format!("the DeepSpeed optimizer `{kind}` is not available: lf-trainer's optimisers are `optim: adamw_torch`, `adamw_8bit`, `adafactor` and `sgd`"),
            ));
        }
        self.set("optim", "adamw_torch".into(), &type_path);
        for (pp, pk, pv) in params {
            match pk {
                "lr" => self.set_float("learning_rate", &pp, pv)?,
                "eps" => self.set_float("adam_epsilon", &pp, pv)?,
                "weight_decay" => self.set_float("weight_decay", &pp, pv)?,
                "betas" if is_auto(pv) => {}
                "betas" => match pv.as_array().map(|a| a.as_slice()) {
                    Some([b1, b2]) => {
                        self.set_float("adam_beta1", &pp, b1)?;
                        self.set_float("adam_beta2", &pp, b2)?;
                    }
                    _ => {
                        return Err(ConfigError::deepspeed(
                            &pp,
                            "must be [beta1, beta2] or \"auto\"",
                        ))
                    }
                },
                "adam_w_mode" if pv.as_bool() == Some(false) => {
                    return Err(ConfigError::deepspeed(&pp, "Adam with L2 regularisation is not implemented: the optimiser is AdamW (decoupled weight decay)"));
                }
                "bias_correction" if pv.as_bool() == Some(false) => {
                    return Err(ConfigError::deepspeed(
                        &pp,
                        "AdamW always corrects the moments' bias",
                    ));
                }
                "adam_w_mode" | "bias_correction" | "torch_adam" | "fused" => self.ignored.push(pp),
                _ => {
                    let known = [
                        "lr",
                        "betas",
                        "eps",
                        "weight_decay",
                        "adam_w_mode",
                        "bias_correction",
                        "torch_adam",
                        "fused",
                    ];
                    return Err(unknown(&pp, known));
                }
            }
        }
        Ok(())
    }

    fn scheduler(&mut self, path: &str, v: &Value) -> Result<(), ConfigError> {
        let TypedBlock {
            kind,
            type_path,
            params,
        } = typed_block(path, v, "scheduler")?;
        let schedule = match kind {
            "WarmupLR" => "constant_with_warmup",
            "WarmupDecayLR" => "linear",
            "WarmupCosineLR" => "cosine",
            _ => {
                return Err(ConfigError::deepspeed(
                    &type_path,
                    format!("the DeepSpeed scheduler `{kind}` is not available: use WarmupLR, WarmupDecayLR or WarmupCosineLR, or set `lr_scheduler_type` (linear, cosine, constant, constant_with_warmup)"),
                ))
            }
        };
        self.set("lr_scheduler_type", schedule.into(), &type_path);
        for (pp, pk, pv) in params {
            match pk {
                "warmup_num_steps" => self.set_count_or_zero("warmup_steps", &pp, pv)?,
                "warmup_max_lr" => self.set_float("learning_rate", &pp, pv)?,
                "warmup_min_lr" | "warmup_min_ratio" | "cos_min_ratio" => {
                    if Self::number(&pp, pv)?.is_some_and(|n| n != 0.0) {
                        return Err(ConfigError::deepspeed(
                            &pp,
                            "the schedules warm up from 0 and decay to 0: use 0 or \"auto\"",
                        ));
                    }
                }
                "total_num_steps" => {
                    if Self::number(&pp, pv)?.is_some() {
                        return Err(ConfigError::deepspeed(&pp, "the schedule ends at the last step: use \"auto\" and set `max_steps` or `num_train_epochs`"));
                    }
                }
                "warmup_type" => {
                    if !pv
                        .as_str()
                        .is_some_and(|t| t.eq_ignore_ascii_case("linear"))
                    {
                        return Err(ConfigError::deepspeed(
                            &pp,
                            "warmup is linear: use \"linear\"",
                        ));
                    }
                }
                "last_batch_iteration" => self.ignored.push(pp),
                _ => {
                    let known = [
                        "warmup_num_steps",
                        "warmup_max_lr",
                        "warmup_min_lr",
                        "warmup_min_ratio",
                        "cos_min_ratio",
                        "total_num_steps",
                        "warmup_type",
                        "last_batch_iteration",
                    ];
                    return Err(unknown(&pp, known));
                }
            }
        }
        Ok(())
    }

    /// `"auto"` or a whole number ≥ 0, set as `key`.
    fn set_count_or_zero(
        &mut self,
        key: &'static str,
        path: &str,
        v: &Value,
    ) -> Result<(), ConfigError> {
        if let Some(n) = Self::number(path, v)? {
            if n < 0.0 || n.fract() != 0.0 {
                return Err(ConfigError::deepspeed(path, "must be a whole number ≥ 0"));
            }
            self.set(key, serde_yaml::Value::from(n as u64), path);
        }
        Ok(())
    }

    fn finish(self) -> DeepSpeedMapping {
        let mut notices = Vec::new();
        let summary = if self.settings.is_empty() {
            "sets nothing: every value is \"auto\" or has no meaning for lf-trainer, so the training config's keys apply".to_string()
        } else {
            let set: Vec<String> = self
                .settings
                .iter()
                .map(|s| format!("`{}` → `{}: {}`", s.from, s.key, yaml_scalar(&s.value)))
                .collect();
            format!(
                "mapped {} (\"auto\" values follow the training config)",
                set.join(", ")
            )
        };
        notices.push(Notice::new("deepspeed", summary));
        if !self.buckets.is_empty() {
            notices.push(Notice::new(
                "deepspeed",
                format!(
                    "bucket sizes are not applied ({}): lf-trainer's gradient bucket is the size the operator's planner assumes (the `{}` environment variable overrides it)",
                    self.buckets.join(", "),
                    crate::runtime::env::BUCKET_ELEMENTS
                ),
            ));
        }
        if !self.unchecked.is_empty() {
            notices.push(Notice::new(
                "deepspeed",
                format!(
                    "`{}` is not checked: the global batch is per_device_train_batch_size × gradient_accumulation_steps × the number of GPUs",
                    self.unchecked.join(", ")
                ),
            ));
        }
        let mut ignored = self.ignored;
        match self.fp16_on {
            _ if self.fp16_scaling.is_empty() => {}
            Some(false) => ignored.extend(self.fp16_scaling),
            on => notices.push(Notice::new(
                "deepspeed",
                format!(
                    "fp16 loss scaling is not applied ({}): {}lf-trainer's fp16 has no loss scaler (bf16 needs none)",
                    self.fp16_scaling.join(", "),
                    if on.is_none() { "it matters only with `fp16: true`, and " } else { "" }
                ),
            )),
        }
        if !ignored.is_empty() {
            notices.push(Notice::new(
                "deepspeed",
                format!("no meaning for lf-trainer, ignored: {}", ignored.join(", ")),
            ));
        }
        DeepSpeedMapping {
            settings: self.settings,
            notices,
        }
    }
}

fn yaml_scalar(v: &serde_yaml::Value) -> String {
    serde_yaml::to_string(v)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn top_keys() -> impl Iterator<Item = &'static str> {
    [
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
        "fp16",
        "bf16",
        "zero_optimization",
        "optimizer",
        "scheduler",
    ]
    .into_iter()
    .chain(IGNORED_TOP.iter().copied())
    .chain(FEATURES.iter().map(|(k, _)| *k))
}

fn zero_keys() -> impl Iterator<Item = &'static str> {
    [
        "stage",
        "overlap_comm",
        "offload_optimizer",
        "offload_param",
        "cpu_offload",
        "cpu_offload_params",
        "zero_hpz_partition_size",
        "zero_quantized_weights",
        "zero_quantized_nontrainable_weights",
        "zero_quantized_gradients",
        "mics_shard_size",
    ]
    .into_iter()
    .chain(BUCKETS.iter().copied())
    .chain(IGNORED_ZERO.iter().copied())
}

/// An `optimizer` or `scheduler` block: `{"type": ..., "params": {...}}` and nothing else.
struct TypedBlock<'a> {
    kind: &'a str,
    type_path: String,
    /// `(path, key, value)` of each entry of `params`.
    params: Vec<(String, &'a str, &'a Value)>,
}

fn typed_block<'a>(path: &str, v: &'a Value, what: &str) -> Result<TypedBlock<'a>, ConfigError> {
    let block = as_object(path, v)?;
    let type_path = join(path, "type");
    let kind = block
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| ConfigError::deepspeed(&type_path, format!("must name the {what}")))?;
    let mut params = Vec::new();
    for (k, sub) in block {
        let p = join(path, k);
        match k.as_str() {
            "type" => {}
            "params" => {
                for (pk, pv) in as_object(&p, sub)? {
                    params.push((join(&p, pk), pk.as_str(), pv));
                }
            }
            _ => return Err(unknown(&p, ["type", "params"])),
        }
    }
    Ok(TypedBlock {
        kind,
        type_path,
        params,
    })
}

fn unknown<'a>(path: &str, known: impl IntoIterator<Item = &'a str>) -> ConfigError {
    let last = path.rsplit('.').next().unwrap_or(path);
    let hint = crate::suggest::closest(last, known)
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default();
    ConfigError::deepspeed(
        path,
        format!(
            "unknown DeepSpeed key{hint}; lf-trainer rejects keys it cannot tell the meaning of"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(json: &str) -> Result<DeepSpeedMapping, ConfigError> {
        let v: Value = serde_json::from_str(json).unwrap();
        DeepSpeedMapping::from_json(v.as_object().unwrap())
    }

    #[test]
    fn auto_values_set_nothing() {
        let m = map(r#"{"train_micro_batch_size_per_gpu": "auto", "bf16": {"enabled": "auto"}}"#)
            .unwrap();
        assert!(m.settings.is_empty());
        assert!(
            m.notices[0].message.contains("sets nothing"),
            "{:?}",
            m.notices
        );
    }

    #[test]
    fn explicit_values_map_onto_config_keys() {
        let m = map(
            r#"{"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 8,
                "gradient_clipping": 0.5, "bf16": {"enabled": true},
                "zero_optimization": {"stage": 2, "cpu_offload": true},
                "optimizer": {"type": "AdamW", "params": {"lr": 2e-5, "betas": [0.9, 0.95], "eps": "auto"}},
                "scheduler": {"type": "WarmupCosineLR", "params": {"warmup_num_steps": 10}}}"#,
        )
        .unwrap();
        assert_eq!(m.zero_stage(), Some(2));
        assert_eq!(m.offload_optimizer(), Some(OffloadDevice::Cpu));
        let get = |k: &str| m.get(k).cloned();
        assert_eq!(get("per_device_train_batch_size"), Some(4.into()));
        assert_eq!(get("gradient_accumulation_steps"), Some(8.into()));
        assert_eq!(get("max_grad_norm"), Some(0.5.into()));
        assert_eq!(get("bf16"), Some(true.into()));
        assert_eq!(get("learning_rate"), Some(2e-5.into()));
        assert_eq!(get("adam_beta2"), Some(0.95.into()));
        assert_eq!(get("adam_epsilon"), None);
        assert_eq!(get("lr_scheduler_type"), Some("cosine".into()));
        assert_eq!(get("warmup_steps"), Some(10.into()));
    }

    #[test]
    fn overlap_comm_maps_onto_the_training_key() {
        let off = map(r#"{"zero_optimization": {"stage": 2, "overlap_comm": false}}"#).unwrap();
        assert_eq!(off.get("overlap_comm"), Some(&false.into()));
        let on = map(r#"{"zero_optimization": {"overlap_comm": true}}"#).unwrap();
        assert_eq!(on.get("overlap_comm"), Some(&true.into()));
        let auto = map(r#"{"zero_optimization": {"overlap_comm": "auto"}}"#).unwrap();
        assert_eq!(auto.get("overlap_comm"), None);
        let bad = map(r#"{"zero_optimization": {"overlap_comm": 1}}"#)
            .unwrap_err()
            .to_string();
        assert!(bad.contains("overlap_comm"), "{bad}");
    }

    #[test]
    fn what_cannot_be_honoured_is_an_error_with_the_reason() {
        let err =
            map(r#"{"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme"}}}"#)
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("offload_optimizer.device") && err.contains("NVMe"),
            "{err}"
        );
        let err =
            map(r#"{"zero_optimization": {"offload_optimizer": {"device": "cpu", "ratio": 0.3}}}"#)
                .unwrap_err()
                .to_string();
        assert!(err.contains("partial"), "{err}");
        let err = map(r#"{"zero_optimization": {"zero_quantized_weights": true}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ZeRO++"), "{err}");
        let err = map(r#"{"optimizer": {"type": "Lamb"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Lamb") && err.contains("adamw_torch"), "{err}");
        let err = map(r#"{"zero_optimization": {"stage": 4}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("0, 1, 2 or 3"), "{err}");
        let err = map(r#"{"tensor_parallel": {"autotp_size": 4}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tensor parallelism"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors_with_a_suggestion() {
        let err = map(r#"{"zero_optimization": {"stgae": 2}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("zero_optimization.stgae") && err.contains("`stage`"),
            "{err}"
        );
        let err = map(r#"{"gradient_cliping": 1.0}"#).unwrap_err().to_string();
        assert!(err.contains("gradient_clipping"), "{err}");
    }

    #[test]
    fn fp16_scaling_is_a_notice_unless_fp16_is_off() {
        let on = map(r#"{"fp16": {"enabled": true, "loss_scale": 0}}"#).unwrap();
        let scaling = |m: &DeepSpeedMapping| {
            m.notices
                .iter()
                .find(|n| n.message.contains("loss scaling"))
                .map(|n| n.message.clone())
        };
        assert!(scaling(&on).is_some(), "{:?}", on.notices);
        let auto = map(r#"{"fp16": {"enabled": "auto", "loss_scale": 0}}"#).unwrap();
        assert!(scaling(&auto).unwrap().contains("only with `fp16: true`"));
        let off = map(r#"{"fp16": {"enabled": false, "loss_scale": 0}}"#).unwrap();
        assert!(scaling(&off).is_none());
        assert!(off
            .notices
            .iter()
            .any(|n| n.message.contains("fp16.loss_scale")));
    }
}
