//! The `FineTuneJob` custom resource (`lf-operator.io/v1alpha1`).
//!
//! One FineTuneJob describes one fine-tuning run: the model, the data, the method and
//! hyper-parameters (`spec.training`, LLaMA-Factory names), and the GPUs it may use. The operator
//! plans its memory, renders the Kubernetes objects, and keeps `status` true.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Toleration};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::architecture::ModelArchitecture;
use crate::serving::ServeSpec;
use crate::status::FineTuneJobStatus;
use crate::training::{DatasetFormat, TrainingConfig};

/// The longest FineTuneJob name: pod hostnames are `<name>-<index>-<5 random>` inside a
/// `<name>-<index>` Job, and must stay within 63 characters.
pub const MAX_NAME_LENGTH: usize = 40;

/// The most GPUs one job may ask for (`maxGpus`, `gpus`). Fine-tuning runs use one node to a few
/// hundred GPUs; 4096 is far above any of them, and bounds what one tenant can make the planner
/// and the renderer work through (one pod per node).
pub const MAX_GPUS: u32 = 4096;
/// The most GPUs on one node (`gpusPerNode`). Servers carry 8 (HGX/DGX) or 16 GPUs; rack-scale
/// systems (NVL72) are still 4 per node to Kubernetes. 64 leaves room and keeps every per-node
/// loop (one process per GPU) small.
pub const MAX_GPUS_PER_NODE: u32 = 64;

/// The desired fine-tuning run.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lf-operator.io",
    version = "v1alpha1",
    kind = "FineTuneJob",
    plural = "finetunejobs",
    singular = "finetunejob",
    shortname = "ftj",
    namespaced,
    status = "FineTuneJobStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.model.name"}"#,
    printcolumn = r#"{"name":"Method","type":"string","jsonPath":".status.method"}"#,
    printcolumn = r#"{"name":"GPUs","type":"integer","jsonPath":".status.plan.gpus"}"#,
    printcolumn = r#"{"name":"ZeRO","type":"integer","jsonPath":".status.plan.zeroStage"}"#,
    printcolumn = r#"{"name":"Step","type":"string","jsonPath":".status.progress.stepDisplay"}"#,
    printcolumn = r#"{"name":"Loss","type":"number","jsonPath":".status.progress.loss"}"#,
    printcolumn = r#"{"name":"ETA","type":"string","jsonPath":".status.progress.remaining"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("size(self.metadata.name) <= 40").message("metadata.name must be at most 40 characters so that every pod hostname stays within 63"),
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.training.quantization_bit) || !has(self.training.finetuning_type) || self.training.finetuning_type == 'lora'").message("training.quantization_bit needs finetuning_type: lora (QLoRA); quantised base weights cannot be fully fine-tuned").field_path(".training.quantization_bit"))]
#[x_kube(validation = Rule::new("!has(self.resources.maxGpus) || !has(self.resources.gpusPerNode) || self.resources.gpusPerNode <= self.resources.maxGpus").message("resources.gpusPerNode cannot exceed resources.maxGpus").field_path(".resources.gpusPerNode"))]
pub struct FineTuneJobSpec {
    /// The base model.
    pub model: ModelSpec,
    /// Where the datasets are (`dataset_dir` with `dataset_info.json` and data files).
    pub data: DataSpec,
    /// The training config: LLaMA-Factory argument names (snake_case), e.g. `finetuning_type`,
    /// `lora_rank`, `dataset`, `cutoff_len`, `per_device_train_batch_size`, `learning_rate`.
    /// Paths (`model_name_or_path`, `dataset_dir`, `output_dir`) are filled in by the operator.
    #[serde(default)]
    #[schemars(schema_with = "training_schema")]
    pub training: TrainingConfig,
    /// The GPUs the job may use.
    pub resources: ResourcesSpec,
    /// Distributed training: ZeRO stage and offload (chosen by the planner when `auto`), NCCL.
    #[serde(default)]
    pub distributed: DistributedSpec,
    /// Checkpoints: where, how often, how many to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpointing: Option<CheckpointingSpec>,
    /// Where the adapter (or model), logs and plots are written.
    pub output: VolumeLocation,
    /// The trainer image (default: the operator's configured image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Restarts, deadlines, clean-up.
    #[serde(default)]
    pub run_policy: RunPolicy,
    /// Queueing and scheduling.
    #[serde(default)]
    pub scheduling: SchedulingSpec,
    /// Experiment trackers' settings (`training.report_to` chooses the trackers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<TrackingSpec>,
    /// Suspends the job (its pods are deleted; resuming continues from the latest checkpoint).
    #[serde(default)]
    pub suspend: bool,
    /// Serve the result once the job has Succeeded (a Deployment and a Service running
    /// `lf-trainer serve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve: Option<ServeSpec>,
}

fn training_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    // The full TrainingConfig schema, with the one rule a schema can say about a value range.
    let mut schema = generator.subschema_for::<TrainingConfig>();
    if let Some(props) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
        if let Some(rank) = props.get_mut("lora_rank").and_then(|r| r.as_object_mut()) {
            rank.insert("minimum".into(), serde_json::json!(1));
        }
        if let Some(q) = props
            .get_mut("quantization_bit")
            .and_then(|r| r.as_object_mut())
        {
            q.insert("enum".into(), serde_json::json!([4, 8, null]));
        }
    }
    schema
}

/// Experiment trackers' settings. Credentials and server addresses come by reference only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrackingSpec {
    /// A Secret in the job's namespace whose MLflow keys become the trainers' environment:
    /// `MLFLOW_TRACKING_URI` (the tracking server, required for `report_to: mlflow`),
    /// `MLFLOW_TRACKING_TOKEN` or `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`, and
    /// `MLFLOW_EXPERIMENT_NAME`. Other keys of the Secret are not read.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// A directory on a PersistentVolumeClaim.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeLocation {
    /// The PersistentVolumeClaim's name.
    pub claim_name: String,
    /// A directory inside the volume (default: its root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

/// The base model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelSpec {
    /// The model's name, e.g. `meta-llama/Meta-Llama-3-8B`. Known names plan without files.
    pub name: String,
    /// Where its `config.json`, safetensors and tokenizer are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<VolumeLocation>,
    /// A PEFT adapter to start from (`finetuning_type: lora`), e.g. another FineTuneJob's output:
    /// DPO after SFT, or more SFT on new data. Mounted read-only and given to the trainer as
    /// `adapter_name_or_path`; its rank, targets and method must match `spec.training`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<VolumeLocation>,
    /// The model's `config.json` inline (Hugging Face key names), so the operator can plan a
    /// model it has no preset for. Keys it leaves out take the family's defaults, as transformers'
    /// config class sets them (Gemma's head is tied unless it says otherwise).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::architecture::deserialize_inline"
    )]
    pub architecture: Option<ModelArchitecture>,
}

/// The datasets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataSpec {
    /// The directory holding `dataset_info.json` and the data files (becomes `dataset_dir`).
    pub source: VolumeLocation,
    /// Record format of files not described by `dataset_info.json` (default: detected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DatasetFormat>,
}

/// GPU resources and placement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourcesSpec {
    /// Memory of one GPU in GiB (e.g. 80 for an A100-80GB, 24 for an L4/A10/RTX 4090).
    #[schemars(range(min = 1.0))]
    pub gpu_memory_gib: f64,
    /// The extended resource that counts GPUs.
    #[serde(default = "default_gpu_resource")]
    pub gpu_resource_name: String,
    /// GPUs on one node (processes per pod; at most 64).
    #[serde(default = "default_gpus_per_node")]
    #[schemars(range(min = 1, max = MAX_GPUS_PER_NODE))]
    pub gpus_per_node: u32,
    /// The most GPUs the job may use (default: one node's worth; at most 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_GPUS))]
    pub max_gpus: Option<u32>,
    /// Exactly this many GPUs (at most `gpusPerNode`, or a multiple of it): the planner then
    /// chooses only the ZeRO stage, offload and micro-batch, and the job fails to plan if that
    /// count cannot fit. Default: the fewest that fit, up to `maxGpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_GPUS))]
    pub gpus: Option<u32>,
    /// Fraction of GPU memory kept free on top of the prediction (default 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.9))]
    pub headroom: Option<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// CPU request per pod (Kubernetes quantity, e.g. `16`). Unset: 2 per process on the pod. No
    /// CPU limit is set either way (throttling stalls every rank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory request and limit per pod (Kubernetes quantity, e.g. `200Gi`). Unset: the planner's
    /// host memory per process (`status.plan.hostMemoryBytes`) times the processes on the pod,
    /// plus its `/dev/shm`, as the request, and twice that as the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

fn default_gpu_resource() -> String {
    "nvidia.com/gpu".to_string()
}
fn default_gpus_per_node() -> u32 {
    8
}

impl ResourcesSpec {
    pub fn max_gpus(&self) -> u32 {
        self.max_gpus.unwrap_or(self.gpus_per_node)
    }
    pub fn headroom(&self) -> f64 {
        self.headroom.unwrap_or(0.1)
    }
    pub fn gpu_memory_bytes(&self) -> u64 {
        (self.gpu_memory_gib * (1u64 << 30) as f64) as u64
    }
}

/// `auto` or an explicit ZeRO stage.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ZeroStageChoice {
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "0")]
    Zero0,
    #[serde(rename = "1")]
    Zero1,
    #[serde(rename = "2")]
    Zero2,
    #[serde(rename = "3")]
    Zero3,
}

impl ZeroStageChoice {
    /// The fixed stage, or `None` for `auto`.
    pub fn fixed(self) -> Option<u8> {
        match self {
            ZeroStageChoice::Auto => None,
            ZeroStageChoice::Zero0 => Some(0),
            ZeroStageChoice::Zero1 => Some(1),
            ZeroStageChoice::Zero2 => Some(2),
            ZeroStageChoice::Zero3 => Some(3),
        }
    }
}

/// `auto`, `none` or `cpu`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OffloadChoice {
    #[default]
    Auto,
    None,
    Cpu,
}

/// Distributed training settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DistributedSpec {
    /// `auto` lets the planner choose the lowest stage that fits.
    #[serde(default)]
    pub zero_stage: ZeroStageChoice,
    /// Optimiser-state offload to CPU memory: `auto` offloads only when nothing else fits.
    #[serde(default)]
    pub offload_optimizer: OffloadChoice,
    /// Extra environment variables of the communication libraries (override the defaults):
    /// `NCCL_*`, `TORCH_NCCL_*`, `TORCH_DISTRIBUTED_*`, `TORCH_GLOO_*`, `GLOO_*`, `UCX_*`, `FI_*`,
    /// `PYTORCH_CUDA_ALLOC_CONF`, `TORCH_CPP_LOG_LEVEL`; none that loads code (`*_PLUGIN`,
    /// `NCCL_CONF_FILE`, `UCX_MODULE_DIR`, `FI_PROVIDER_PATH`). At most 64.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = crate::nccl::MAX_VARIABLES))]
    #[x_kube(validation = crate::nccl::cel_rule())]
    pub nccl: BTreeMap<String, String>,
    /// Rendezvous port on rank 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_port: Option<u16>,
}

/// Checkpoints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointingSpec {
    /// Where checkpoints go (default: inside the output location).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<VolumeLocation>,
    /// Save every N optimiser steps (overrides `training.save_steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub save_steps: Option<u32>,
    /// How many checkpoints to keep (the newest valid one is never deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep: Option<u32>,
}

/// Restarts, deadlines and clean-up.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunPolicy {
    /// Retries after failures (preemptions and node drains do not count).
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// Seconds an attempt may run before it is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    /// Seconds after finishing before the Job and pods are deleted (the FineTuneJob and outputs stay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
    /// Allow service-mesh sidecar injection into trainer pods (off: sidecars break completion).
    #[serde(default)]
    pub allow_sidecar_injection: bool,
}

fn default_max_restarts() -> u32 {
    3
}

impl Default for RunPolicy {
    fn default() -> Self {
        RunPolicy {
            max_restarts: default_max_restarts(),
            active_deadline_seconds: None,
            ttl_seconds_after_finished: None,
            allow_sidecar_injection: false,
        }
    }
}

/// Queueing and scheduling.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchedulingSpec {
    /// Kueue LocalQueue: the Job is created suspended with the `kueue.x-k8s.io/queue-name` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
}

/// Formats the API server knows; schemars' `uint8`..`uint64` are not among them (the API server
/// warns "unrecognized format" on every apply). Their `minimum: 0` keeps the meaning.
const KUBERNETES_FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "binary",
    "date",
    "date-time",
    "datetime",
    "duration",
    "password",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
];

impl FineTuneJob {
    /// The CustomResourceDefinition as `crdgen` writes it: the derived one, with only formats
    /// the API server recognises.
    pub fn definition(
    ) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition
    {
        let mut crd = <FineTuneJob as kube::CustomResourceExt>::crd();
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                if let Ok(mut value) = serde_json::to_value(&*schema) {
                    drop_unknown_formats(&mut value);
                    if let Ok(clean) = serde_json::from_value(value) {
                        *schema = clean;
                    }
                }
            }
        }
        crd
    }
}

fn drop_unknown_formats(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            let unknown = map
                .get("format")
                .and_then(|f| f.as_str())
                .is_some_and(|f| !KUBERNETES_FORMATS.contains(&f));
            if unknown && map.get("type").is_some() {
                map.remove("format");
            }
            map.values_mut().for_each(drop_unknown_formats);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_unknown_formats),
        _ => {}
    }
}

impl FineTuneJob {
    /// Parses a FineTuneJob from YAML, strictly: the training section goes through
    /// [`TrainingConfig::from_yaml_value`] so unknown keys there are errors with suggestions.
    pub fn from_yaml_str(text: &str) -> Result<FineTuneJob, crate::training::ConfigError> {
        use crate::training::ConfigError;
        let mut value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        let training = value
            .get_mut("spec")
            .and_then(|s| s.as_mapping_mut())
            .and_then(|s| s.remove("training"))
            .unwrap_or(serde_yaml::Value::Null);
        let training = TrainingConfig::from_yaml_value(training).map_err(|e| match e {
            ConfigError::UnknownKey { key, suggestion } => ConfigError::UnknownKey {
                key: format!("spec.training.{key}"),
                suggestion,
            },
            ConfigError::InvalidValue { key, message } => ConfigError::InvalidValue {
                key: format!("spec.training.{key}"),
                message,
            },
            other => other,
        })?;
        let mut job: FineTuneJob = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::InvalidValue {
                key,
                message: e.into_inner().to_string(),
            }
        })?;
        job.spec.training = training;
        if let Some(name) = &job.metadata.name {
            if name.len() > MAX_NAME_LENGTH {
                return Err(ConfigError::InvalidValue {
                    key: "metadata.name".into(),
                    message: format!(
                        "`{name}` is {} characters; the limit is {MAX_NAME_LENGTH}",
                        name.len()
                    ),
                });
            }
        }
        if let Some(max) = job.spec.resources.max_gpus {
            if job.spec.resources.gpus_per_node > max {
                return Err(ConfigError::InvalidValue {
                    key: "spec.resources.gpusPerNode".into(),
                    message: format!("{} exceeds maxGpus {max}", job.spec.resources.gpus_per_node),
                });
            }
        }
        Ok(job)
    }

    /// The training method as the `Method` column shows it (`lora`, `qlora-4bit`, `dora`, `full`).
    pub fn method_label(&self) -> String {
        crate::status::method_label(&self.spec.training)
    }
}
