//! `lf-operator new --from config.yaml`: a LLaMA-Factory training YAML as a FineTuneJob.
//!
//! The YAML is parsed by the trainer's own parser (the caller passes its [`Parsed`] result), so
//! what the trainer rejects is rejected here with the same words. Its paths become volumes:
//! `model_name_or_path`, `dataset_dir` and `output_dir` turn into PersistentVolumeClaim
//! placeholders (`change-me-…`, marked with a comment) that the user fills in; the rest of the
//! config is `spec.training` as the user wrote it, `deepspeed` included as an inline object (the
//! planner takes its stage and offload as fixed choices). The GPUs come from the caller.

use std::collections::BTreeSet;

use lf_api::architecture::ModelArchitecture;
use lf_api::crd::{
    DataSpec, ModelSpec, ResourcesSpec, TrackingSpec, VolumeLocation, MAX_NAME_LENGTH,
};
use lf_api::training::report_to::{self, Tracker};
use lf_api::training::{Notice, Parsed, ALIASES};
use lf_api::{FineTuneJob, FineTuneJobSpec, TrainingConfig};

/// The placeholder claims, one per volume the user must name.
pub const MODELS_CLAIM: &str = "change-me-models";
pub const DATASETS_CLAIM: &str = "change-me-datasets";
pub const OUTPUTS_CLAIM: &str = "change-me-outputs";
/// The Secret a converted job reads MLflow's address and credentials from (`report_to: mlflow`).
pub const MLFLOW_SECRET: &str = "change-me-mlflow";

/// GPUs of one node when `--gpus-per-node` is not given (the CRD's default).
const DEFAULT_GPUS_PER_NODE: u32 = 8;

/// What the user asks for besides the YAML: the job's name and namespace and its GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOptions {
    /// `metadata.name` (default: from the YAML file's name).
    pub name: Option<String>,
    pub namespace: Option<String>,
    /// Memory of one GPU in GiB.
    pub gpu_memory_gib: f64,
    pub max_gpus: Option<u32>,
    /// Default: 8, or `max_gpus` when that is fewer.
    pub gpus_per_node: Option<u32>,
}

/// A LLaMA-Factory YAML, parsed: the parser's result and the keys as the user wrote them (to
/// tell the keys a `deepspeed` file set from the user's own).
#[derive(Debug, Clone)]
pub struct LlamaFactoryYaml {
    pub parsed: Parsed,
    pub written_keys: BTreeSet<String>,
    /// The file's name without its extension (`llama3_lora_sft`), for the default job name.
    pub file_stem: String,
    /// The model's `config.json` when `model_name_or_path` is a local directory that has one.
    pub architecture: Option<ModelArchitecture>,
}

impl LlamaFactoryYaml {
    /// The keys of a YAML mapping, with LLaMA-Factory's aliases under the names they stand for.
    pub fn keys_of(value: &serde_yaml::Value) -> BTreeSet<String> {
        let Some(mapping) = value.as_mapping() else {
            return BTreeSet::new();
        };
        mapping
            .keys()
            .filter_map(|k| k.as_str())
            .map(|k| {
                ALIASES
                    .iter()
                    .find(|(alias, _)| *alias == k)
                    .map_or(k, |(_, key)| *key)
                    .to_string()
            })
            .collect()
    }
}

/// Why a LLaMA-Factory YAML cannot become a FineTuneJob.
#[derive(Debug, thiserror::Error)]
pub enum FromLlamaFactoryError {
    #[error("`dataset` is missing: a FineTuneJob trains (this looks like an export, inference or prediction-only config: run it with `lf-trainer`)")]
    NoDataset,
    #[error(
        "`model_name_or_path` is missing: name the base model (a Hub id or a local directory)"
    )]
    NoModel,
    #[error("{flag} {value}: {expected}")]
    Flag {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("cannot write the FineTuneJob: {0}")]
    Serialise(String),
}

/// The FineTuneJob for `source` with `opts`' GPUs, and the notices about what the conversion
/// dropped (paths the operator manages itself).
pub fn convert(
    source: &LlamaFactoryYaml,
    opts: &NewOptions,
) -> Result<(FineTuneJob, Vec<Notice>), FromLlamaFactoryError> {
    let config = &source.parsed.config;
    if config
        .dataset
        .as_deref()
        .is_none_or(|d| d.trim().is_empty())
    {
        return Err(FromLlamaFactoryError::NoDataset);
    }
    let model_path = config
        .model_name_or_path
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .ok_or(FromLlamaFactoryError::NoModel)?;
    let (training, mut notices) = training_section(source)?;
    let tracking = tracking_section(&training, &mut notices);
    let name = match &opts.name {
        Some(n) => checked_name(n)?,
        None => name_from(&source.file_stem),
    };
    let spec = FineTuneJobSpec {
        model: ModelSpec {
            name: model_name(model_path),
            source: Some(placeholder(MODELS_CLAIM, model_sub_path(model_path))),
            // An adapter to continue from is some earlier job's output.
            adapter: config
                .adapter_name_or_path
                .as_deref()
                .map(|a| placeholder(OUTPUTS_CLAIM, sub_path(a))),
            architecture: source.architecture.clone(),
        },
        data: DataSpec {
            source: placeholder(DATASETS_CLAIM, sub_path(&config.dataset_dir)),
            format: config.dataset_format,
        },
        training,
        resources: resources(opts)?,
        distributed: Default::default(),
        checkpointing: None,
        tracking,
        output: placeholder(
            OUTPUTS_CLAIM,
            config
                .output_dir
                .as_deref()
                .and_then(sub_path)
                .or_else(|| Some(name.clone())),
        ),
        image: None,
        run_policy: Default::default(),
        scheduling: Default::default(),
        serve: None,
        suspend: false,
    };
    let mut job = FineTuneJob::new(&name, spec);
    job.metadata.namespace = opts.namespace.clone();
    Ok((job, notices))
}

/// `spec.tracking` for a config reporting to MLflow: a placeholder Secret (LLaMA-Factory reads the
/// server from the environment, which a FineTuneJob takes only by reference).
fn tracking_section(training: &TrainingConfig, notices: &mut Vec<Notice>) -> Option<TrackingSpec> {
    let selection = report_to::parse(&training.report_to).ok()?;
    if !selection.contains(Tracker::Mlflow) {
        return None;
    }
    notices.push(Notice::new(
        "report_to",
        format!(
            "mlflow: create a Secret `{MLFLOW_SECRET}` (or rename spec.tracking.secretName) holding {} and, if the server needs them, credentials",
            lf_api::runtime::env::MLFLOW_TRACKING_URI
        ),
    ));
    Some(TrackingSpec {
        secret_name: MLFLOW_SECRET.into(),
    })
}

/// `spec.training`: the parsed config without the paths the operator fills in, and without the
/// keys only the `deepspeed` file set (its inline object sets them again, so editing it later
/// does not conflict with a stale copy).
fn training_section(
    source: &LlamaFactoryYaml,
) -> Result<(TrainingConfig, Vec<Notice>), FromLlamaFactoryError> {
    let mut config = source.parsed.config.clone();
    let mut notices = Vec::new();
    config.model_name_or_path = None;
    config.adapter_name_or_path = None;
    config.output_dir = None;
    config.dataset_dir = TrainingConfig::default().dataset_dir;
    if config.resume_from_checkpoint.take().is_some() {
        notices.push(Notice::new(
            "resume_from_checkpoint",
            "dropped: the operator resumes from the newest checkpoint in the output volume itself",
        ));
    }
    if config.export_dir.take().is_some() {
        notices.push(Notice::new(
            "export_dir",
            "dropped: a FineTuneJob trains; export the result with `lf-trainer export`",
        ));
    }
    let mapping = config
        .deepspeed_mapping()
        .map_err(|e| FromLlamaFactoryError::Serialise(e.to_string()))?;
    let defaults = TrainingConfig::default();
    for setting in mapping.iter().flat_map(|m| &m.settings) {
        if !source.written_keys.contains(setting.key) {
            reset_to_default(&mut config, &defaults, setting.key)?;
        }
    }
    Ok((config, notices))
}

fn reset_to_default(
    config: &mut TrainingConfig,
    defaults: &TrainingConfig,
    key: &str,
) -> Result<(), FromLlamaFactoryError> {
    let serialise = |e: serde_yaml::Error| FromLlamaFactoryError::Serialise(e.to_string());
    let mut value = serde_yaml::to_value(&*config).map_err(serialise)?;
    let default = serde_yaml::to_value(defaults).map_err(serialise)?;
    if let Some(map) = value.as_mapping_mut() {
        match default.get(key) {
            Some(d) => map.insert(key.into(), d.clone()),
            None => map.remove(key),
        };
    }
    *config = serde_yaml::from_value(value).map_err(serialise)?;
    Ok(())
}

fn resources(opts: &NewOptions) -> Result<ResourcesSpec, FromLlamaFactoryError> {
    let flag = |flag, value: String, expected| FromLlamaFactoryError::Flag {
        flag,
        value,
        expected,
    };
    let gib = opts.gpu_memory_gib;
    if !(gib.is_finite() && gib >= 1.0) {
        return Err(flag(
            "--gpu-memory",
            gib.to_string(),
            "give the memory of one GPU in GiB, e.g. 80",
        ));
    }
    if opts.max_gpus == Some(0) {
        return Err(flag("--max-gpus", "0".into(), "must be at least 1"));
    }
    let per_node = opts
        .gpus_per_node
        .unwrap_or_else(|| opts.max_gpus.map_or(DEFAULT_GPUS_PER_NODE, |m| m.min(8)));
    if per_node == 0 {
        return Err(flag("--gpus-per-node", "0".into(), "must be at least 1"));
    }
    if opts.max_gpus.is_some_and(|m| per_node > m) {
        return Err(flag(
            "--gpus-per-node",
            per_node.to_string(),
            "cannot exceed --max-gpus",
        ));
    }
    Ok(ResourcesSpec {
        gpu_memory_gib: gib,
        gpu_resource_name: "nvidia.com/gpu".into(),
        gpus_per_node: per_node,
        max_gpus: opts.max_gpus,
        gpus: None,
        headroom: None,
        node_selector: Default::default(),
        tolerations: Vec::new(),
        affinity: None,
        cpu: None,
        memory: None,
    })
}

fn placeholder(claim: &str, sub_path: Option<String>) -> VolumeLocation {
    VolumeLocation {
        claim_name: claim.into(),
        sub_path,
    }
}

/// The model's name: a Hub id as it is, a local directory by its last component (which is how
/// the planner's presets know it: `/models/Meta-Llama-3-8B-Instruct`).
fn model_name(path: &str) -> String {
    if is_hub_id(path) {
        path.to_string()
    } else {
        last_component(path).unwrap_or(path).to_string()
    }
}

/// `org/name` with no other separator and not a relative or absolute file path.
fn is_hub_id(path: &str) -> bool {
    !path.starts_with(['/', '.', '~']) && path.matches('/').count() == 1
}

/// Where the model is likely to be inside its volume: a Hub id's directory is its name.
fn model_sub_path(path: &str) -> Option<String> {
    if is_hub_id(path) {
        last_component(path).map(str::to_string)
    } else {
        sub_path(path)
    }
}

/// Where a path is likely to be inside its volume: a relative path as it is, an absolute one by
/// its last component.
fn sub_path(path: &str) -> Option<String> {
    let trimmed = path.trim().trim_end_matches('/');
    if trimmed.starts_with('/') {
        return last_component(trimmed).map(str::to_string);
    }
    let relative = trimmed.trim_start_matches("./");
    (!relative.is_empty() && !relative.split('/').any(|c| c == "..")).then(|| relative.to_string())
}

fn last_component(path: &str) -> Option<&str> {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
}

/// A DNS label of at most [`MAX_NAME_LENGTH`] characters from a file name (`llama3_lora_sft` →
/// `llama3-lora-sft`).
fn name_from(stem: &str) -> String {
    let mut name: String = stem
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.truncate(MAX_NAME_LENGTH);
    let name = name.trim_matches('-');
    let name = name.trim_start_matches(|c: char| c.is_ascii_digit());
    if name.is_empty() {
        "llama-factory".into()
    } else {
        name.to_string()
    }
}

fn checked_name(name: &str) -> Result<String, FromLlamaFactoryError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LENGTH
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-');
    if valid {
        Ok(name.to_string())
    } else {
        Err(FromLlamaFactoryError::Flag {
            flag: "--name",
            value: name.to_string(),
            expected: "a DNS label: lower-case letters, digits and '-', starting with a letter, at most 40 characters",
        })
    }
}

#[cfg(test)]
#[path = "from_llama_factory_tests.rs"]
mod tests;
