//! The training config every pod reads: the user's `spec.training` with the plan's decisions and
//! the pod's paths filled in, as the ConfigMap's `train.yaml`. It is the same [`TrainingConfig`]
//! type `lf-trainer` parses, serialised with [`TrainingConfig::to_yaml_string`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use lf_api::runtime::paths;
use lf_api::training::{OffloadActivations, OffloadDevice};
use lf_api::{FineTuneJob, Plan, TrainingConfig};

use crate::context::RenderContext;
use crate::error::RenderError;
use crate::meta::{object_meta, Component};
use crate::names::config_map_name;

/// `resume_from_checkpoint` when the controller names no checkpoint: the newest complete one in
/// the output directory, or a fresh start when there is none.
pub const RESUME_AUTO: &str = "auto";

/// The ConfigMap key of the training config: the file name of [`paths::CONFIG_FILE`], which is
/// mounted from the ConfigMap at [`paths::CONFIG_DIR`].
pub fn config_key() -> &'static str {
    paths::CONFIG_FILE
        .rsplit('/')
        .next()
        .unwrap_or(paths::CONFIG_FILE)
}

/// The training config of one attempt. Starting from `spec.training`, it sets:
/// - the plan's decisions: `zero_stage`, `offload_optimizer`, `per_device_train_batch_size` (the
///   plan's micro-batch), `gradient_accumulation_steps` and, under `gradient_checkpointing: auto`,
///   `recompute_layers` (the plan's recomputed layers), and under `offload_activations: auto`
///   the plan's choice (`true`/`false`); the world size reaches the trainer
///   through the environment ([`crate::worker_env`]);
/// - the pod's paths: `model_name_or_path` ([`paths::MODEL_DIR`]), `adapter_name_or_path`
///   ([`paths::ADAPTER_DIR`], when `spec.model.adapter` is set), `dataset_dir`
///   ([`paths::DATA_DIR`]), `output_dir` ([`paths::OUTPUT_DIR`]; checkpoints are
///   `output_dir/checkpoint-N`), and `dataset_format` from `spec.data.format` when given;
/// - checkpointing: `save_steps` and `save_total_limit` from `spec.checkpointing` when set, and
///   `resume_from_checkpoint` = the controller's checkpoint (`ctx.resume_from`) or `auto`.
///
/// A `deepspeed` object in `spec.training` is applied first and not rendered: its keys are in the
/// config, and the plan (which took its stage and offload as fixed) has the last word on the rest.
pub fn trainer_config(
    job: &FineTuneJob,
    plan: &Plan,
    ctx: &RenderContext,
) -> Result<TrainingConfig, RenderError> {
    let spec = &job.spec;
    let mut config = spec
        .training
        .with_deepspeed_applied()
        .map_err(|e| RenderError::InvalidTraining(e.to_string()))?
        .config;
    config.zero_stage = plan.zero_stage;
    config.offload_optimizer = if plan.offload_optimizer {
        OffloadDevice::Cpu
    } else {
        OffloadDevice::None
    };
    config.per_device_train_batch_size = plan.micro_batch_size as usize;
    config.gradient_accumulation_steps = plan.gradient_accumulation_steps as usize;
    if config.recomputation_open() {
        config.recompute_layers = plan.recomputation.map(|r| r.recomputed);
    }
    if config.offload_activations == OffloadActivations::Auto {
        config.offload_activations = plan.recomputation.is_some_and(|r| r.offloaded).into();
    }

    config.model_name_or_path = Some(paths::MODEL_DIR.to_string());
    config.adapter_name_or_path = starting_adapter(job)?;
    config.dataset_dir = paths::DATA_DIR.to_string();
    if let Some(format) = spec.data.format {
        config.dataset_format = Some(format);
    }
    config.output_dir = Some(paths::OUTPUT_DIR.to_string());

    if let Some(checkpointing) = &spec.checkpointing {
        if let Some(steps) = checkpointing.save_steps {
            config.save_steps = steps as usize;
        }
        if let Some(keep) = checkpointing.keep {
            config.save_total_limit = Some(keep as usize);
        }
    }
    config.resume_from_checkpoint = Some(
        ctx.resume_from
            .clone()
            .unwrap_or_else(|| RESUME_AUTO.to_string()),
    );
    Ok(config)
}

/// `adapter_name_or_path` in the pod: [`paths::ADAPTER_DIR`] when `spec.model.adapter` names one.
/// A path written into `spec.training` would name a file on the author's machine, not in the pod,
/// so it is refused with the way to say it; an adapter needs LoRA.
fn starting_adapter(job: &FineTuneJob) -> Result<Option<String>, RenderError> {
    let spec = &job.spec;
    if let Some(path) = &spec.training.adapter_name_or_path {
        return Err(RenderError::Unsupported {
            key: "spec.training.adapter_name_or_path".into(),
            why: format!(
                "`{path}` would be read inside the trainer pod, where only mounted volumes exist: give the adapter's volume as spec.model.adapter (claimName, subPath), e.g. another FineTuneJob's spec.output"
            ),
        });
    }
    let Some(_) = &spec.model.adapter else {
        return Ok(None);
    };
    if spec.training.finetuning_type != lf_api::training::FinetuningType::Lora {
        return Err(RenderError::Unsupported {
            key: "spec.model.adapter".into(),
            why: "a PEFT adapter continues `finetuning_type: lora` training; set finetuning_type: lora or remove spec.model.adapter".into(),
        });
    }
    Ok(Some(paths::ADAPTER_DIR.to_string()))
}

/// The ConfigMap holding [`trainer_config`] under [`config_key`].
pub fn config_map(
    job: &FineTuneJob,
    plan: &Plan,
    ctx: &RenderContext,
) -> Result<ConfigMap, RenderError> {
    let config = trainer_config(job, plan, ctx)?;
    Ok(ConfigMap {
        metadata: object_meta(job, config_map_name(job), Component::Config),
        data: Some(BTreeMap::from([(
            config_key().to_string(),
            config.to_yaml_string(),
        )])),
        ..ConfigMap::default()
    })
}
