//! Turning a config into the things a command runs on: the config itself (file, `LF_CONFIG`,
//! overrides), the device, the tokenizer and data, and the model.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use lf_api::runtime::env;
use lf_api::training::{FinetuningType, TrainingConfig};
use lf_data::{DataError, Example, TokenizerBundle};
use lf_model::{CausalLm, LoadOptions, ModelError};
use tch::Device;

use crate::adapters::model_error;
use crate::error::TrainerError;
use crate::zero3::ParameterPartition;

/// Reads the config: `path`, or `LF_CONFIG` when no path is given, then `key=value` overrides.
pub fn load_config(
    path: Option<&Path>,
    overrides: &[String],
) -> Result<(TrainingConfig, PathBuf), TrainerError> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os(env::CONFIG)
            .map(PathBuf::from)
            .ok_or_else(|| {
                TrainerError::config(format!(
                    "no config file given: pass CONFIG.yaml or set {}",
                    env::CONFIG
                ))
            })?,
    };
    let parsed = TrainingConfig::parse_yaml_file(&path)
        .map_err(|e| TrainerError::config(format!("{}: {e}", path.display())))?;
    let mut notices = parsed.notices;
    let more = parsed
        .config
        .parse_overrides(overrides)
        .map_err(|e| TrainerError::config(format!("command-line override: {e}")))?;
    notices.extend(more.notices);
    let cfg = more.config;
    for n in &notices {
        tracing::info!(target: "lf_trainer::config", "{n}");
    }
    if let Some(n) = remote_code_notice(&cfg)? {
        tracing::info!(target: "lf_trainer::config", "{n}");
    }
    Ok((cfg, path))
}

/// With `trust_remote_code: true`, what the model's `config.json` says about it: a notice for a
/// built-in architecture (no remote code runs), an error naming any other. A model directory
/// without a readable `config.json` is left to the loader, which says what is missing.
fn remote_code_notice(
    cfg: &TrainingConfig,
) -> Result<Option<lf_api::training::Notice>, TrainerError> {
    let Some(dir) = cfg
        .model_name_or_path
        .as_deref()
        .filter(|_| cfg.trust_remote_code)
    else {
        return Ok(None);
    };
    let Ok(text) = std::fs::read_to_string(Path::new(dir).join("config.json")) else {
        return Ok(None);
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| TrainerError::config(format!("{dir}/config.json is not valid JSON: {e}")))?;
    cfg.check_remote_code(&json)
        .map_err(|e| TrainerError::config(e.to_string()))
}

/// Splits command-line words into the config path (the first word without `=`) and overrides.
pub fn split_args(words: &[String]) -> (Option<PathBuf>, Vec<String>) {
    let mut path = None;
    let mut overrides = Vec::new();
    for w in words {
        if path.is_none() && !w.contains('=') {
            path = Some(PathBuf::from(w));
        } else {
            overrides.push(w.clone());
        }
    }
    (path, overrides)
}

/// The model directory, which must exist and hold a `config.json`.
pub fn model_dir(cfg: &TrainingConfig) -> Result<PathBuf, TrainerError> {
    let dir = cfg.model_name_or_path.as_deref().ok_or_else(|| {
        TrainerError::config("model_name_or_path is required (a Hugging Face model directory)")
    })?;
    let dir = PathBuf::from(dir);
    if !dir.is_dir() {
        return Err(TrainerError::config(format!(
            "model_name_or_path: {} is not a directory (no model hub is reachable: give a local Hugging Face model directory)",
            dir.display()
        )));
    }
    if !dir.join("config.json").is_file() {
        return Err(TrainerError::config(format!(
            "model_name_or_path: {} has no config.json",
            dir.display()
        )));
    }
    Ok(dir)
}

/// The output directory (required to train), created if missing.
pub fn output_dir(cfg: &TrainingConfig) -> Result<PathBuf, TrainerError> {
    let dir = cfg
        .output_dir
        .as_deref()
        .ok_or_else(|| TrainerError::config("output_dir is required"))?;
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).map_err(|e| {
        TrainerError::config(format!("output_dir: cannot create {}: {e}", dir.display()))
    })?;
    Ok(dir)
}

/// The device of this process: GPU `LOCAL_RANK` when CUDA is available, else the CPU.
pub fn device() -> Device {
    if tch::Cuda::is_available() {
        let local: usize = std::env::var(env::LOCAL_RANK)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Device::Cuda(local)
    } else {
        Device::Cpu
    }
}

/// Data errors are the user's to fix, except a cache that another rank never produced.
pub fn data_error(e: DataError) -> TrainerError {
    if let DataError::Io { path, source } = &e {
        if crate::error::is_storage_full(source) {
            return TrainerError::volume_full(path, None);
        }
    }
    if e.is_input_error() {
        TrainerError::config(e.to_string())
    } else {
        TrainerError::runtime(e.to_string())
    }
}

pub fn tokenizer(model_dir: &Path) -> Result<TokenizerBundle, TrainerError> {
    lf_data::load_tokenizer(model_dir).map_err(data_error)
}

/// The chat template `cfg` names (else the tokenizer's own) and the token ids that end an
/// answer, as generation takes them (`chat`, `predict`, exact-match evaluation).
pub fn template_and_stops(
    cfg: &TrainingConfig,
    tok: &TokenizerBundle,
) -> Result<(lf_data::ChatTemplate, Vec<i64>), TrainerError> {
    let template =
        lf_data::ChatTemplate::resolve(cfg.template.as_deref(), tok).map_err(data_error)?;
    let stop = (template.stop_token_ids(tok).into_iter())
        .map(i64::from)
        .collect();
    Ok((template, stop))
}

/// Tokenised train and eval splits (through lf-data's cache).
pub fn data(
    cfg: &TrainingConfig,
    tok: &TokenizerBundle,
    output_dir: &Path,
    rank: usize,
    world_size: usize,
) -> Result<(Vec<Example>, Vec<Example>), TrainerError> {
    let ctx = lf_data::DataContext {
        rank,
        world_size,
        cache_dir: output_dir.join(".tokenized"),
    };
    let prepared = lf_data::prepare(cfg, tok, &ctx).map_err(data_error)?;
    tracing::info!(
        train = prepared.train.len(),
        eval = prepared.eval.len(),
        "dataset ready"
    );
    Ok((prepared.train, prepared.eval))
}

/// Loads the base model (and, for inference commands, the adapter, frozen). With a ZeRO-3
/// `partition`, each unit is partitioned as soon as it is loaded and the method's adapters once
/// they are attached: the model's tensors are empty between uses from then on.
pub fn model(
    cfg: &TrainingConfig,
    model_dir: &Path,
    device: Device,
    for_training: bool,
    mut partition: Option<&mut ParameterPartition>,
) -> Result<CausalLm, TrainerError> {
    let opts = LoadOptions::from_config(cfg, device);
    let loading = format!("loading {}", model_dir.display());
    let mut lm = match partition.as_deref_mut() {
        Some(part) => CausalLm::load_into(model_dir, &opts, &mut |unit, tensors| {
            part.adopt(unit, tensors)
                .map_err(|e| ModelError::Residency {
                    unit: format!("partitioning {unit}"),
                    source: Box::new(e),
                })
        }),
        None => CausalLm::load(model_dir, &opts),
    }
    .map_err(|e| model_error(&loading, e))?;
    if for_training {
        match partition.as_deref() {
            Some(part) => lm.apply_method_with(cfg, cfg.seed, part),
            None => lm.apply_method(cfg, cfg.seed),
        }
        .map_err(|e| model_error("setting up the training method", e))?;
    } else {
        lm.set_attention(cfg.flash_attn);
    }
    if let Some(adapter) = &cfg.adapter_name_or_path {
        if for_training && cfg.finetuning_type != FinetuningType::Lora {
            return Err(TrainerError::config(
                "adapter_name_or_path needs finetuning_type: lora to continue training an adapter",
            ));
        }
        let dir = PathBuf::from(adapter);
        if !dir.is_dir() {
            return Err(TrainerError::config(format!(
                "adapter_name_or_path: {} is not a directory",
                dir.display()
            )));
        }
        lm.load_adapter(&dir)
            .map_err(|e| model_error(&format!("adapter_name_or_path {}", dir.display()), e))?;
    }
    if let Some(part) = partition {
        part.complete(&lm)?;
    }
    Ok(lm)
}

/// `stage: rm`'s value head: the one in `adapter_name_or_path` when that adapter has one (a
/// reward model trained on), otherwise a new one as transformers initialises it, from `seed`.
pub fn value_head(
    cfg: &TrainingConfig,
    model_dir: &Path,
    lm: &CausalLm,
    device: Device,
) -> Result<crate::value_head::ValueHead, TrainerError> {
    use crate::value_head::{initializer_range, ValueHead};
    let lora = cfg.finetuning_type == FinetuningType::Lora;
    let hidden = lm.architecture().hidden_size as i64;
    let head = ValueHead::init(hidden, initializer_range(model_dir), cfg.seed, device, lora);
    if let Some(adapter) = &cfg.adapter_name_or_path {
        let file = PathBuf::from(adapter).join(lf_model::ADAPTER_WEIGHTS);
        let loaded = head
            .load_from(&file)
            .map_err(|e| model_error(&format!("the value head of {adapter}"), e))?;
        if loaded {
            tracing::info!(adapter = %adapter, "value head loaded from the adapter");
            return Ok(head);
        }
    }
    tracing::info!(hidden, "value head initialised");
    Ok(head)
}

/// The numeric setup, for messages about NaN/inf.
pub fn numeric_setup(cfg: &TrainingConfig, lm: &CausalLm) -> String {
    format!(
        "{:?} compute, attention kernel `{}` (flash_attn: {:?})",
        cfg.precision(),
        lm.attention_kernel(cfg.cutoff_len.min(512) as i64),
        cfg.flash_attn
    )
}

/// SIGTERM and SIGINT set the returned flag (the loop finishes its step, checkpoints, exits);
/// a second SIGINT exits at once.
pub fn stop_flag() -> Result<Arc<AtomicBool>, TrainerError> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(
            sig,
            lf_api::runtime::exit_code::INTERRUPTED,
            flag.clone(),
        )
        .and_then(|_| signal_hook::flag::register(sig, flag.clone()))
        .map_err(|e| TrainerError::runtime(format!("cannot install the signal handler: {e}")))?;
    }
    Ok(flag)
}
