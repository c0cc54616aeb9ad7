//! Pure rendering of the Kubernetes objects one FineTuneJob attempt runs as.
//!
//! [`render`] turns a FineTuneJob and its [`Plan`] into, in creation order: a ServiceAccount, a
//! Role and a RoleBinding (the trainer may only `get`/`patch` this FineTuneJob's status), the
//! ConfigMap with the training config ([`trainer_config`]), the headless rendezvous Service, and
//! the attempt's Indexed Job (one pod per node, `plan.gpus_per_node` GPUs and trainer processes
//! each). Nothing here talks to an API server; `lf-operator render` prints [`Rendered::to_yaml_stream`]
//! and the controller applies [`Rendered`]'s objects.
//!
//! Every object carries the `app.kubernetes.io/*` labels, [`LABEL_JOB_NAME`], and an owner
//! reference to the FineTuneJob when it has a UID (see [`meta::owner_reference`]). Names and their
//! length limits are in [`names`]; the pod environment in [`env`]; volumes and the `/dev/shm`
//! formula in [`volumes`]; failure semantics in [`job`].

pub mod config;
pub mod env;
pub mod job;
pub mod meta;
pub mod names;
pub mod pod;
pub mod rbac;
pub mod service;
pub mod volumes;
pub mod yaml;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use lf_api::{FineTuneJob, Plan};

pub use config::trainer_config;
pub use env::worker_env;
pub use meta::{LABEL_ATTEMPT, LABEL_JOB_NAME};
pub use names::{job_name, service_name};
pub use volumes::shm_size_bytes;

/// What the caller decides, beyond the FineTuneJob and its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderContext {
    /// The trainer image when `spec.image` is unset (the operator's configured image).
    pub default_image: String,
    /// The attempt number, from 1; each attempt is a new Indexed Job.
    pub attempt: u32,
    /// The checkpoint directory inside the pod to resume from (e.g. `/output/checkpoint-200`);
    /// `None` renders `resume_from_checkpoint: auto`.
    pub resume_from: Option<String>,
    /// Whether service-mesh sidecars may be injected when the job does not allow them itself
    /// (`spec.runPolicy.allowSidecarInjection`); off renders the opt-out labels and annotations.
    pub sidecar_injection_default: bool,
}

/// Everything one attempt of a FineTuneJob needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub config_map: ConfigMap,
    pub service: Service,
    pub job: Job,
}

/// Why a FineTuneJob cannot be rendered. Each names the field at fault and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("metadata.name is missing")]
    MissingName,
    #[error("metadata.name `{name}` {why}")]
    InvalidName { name: String, why: String },
    #[error("spec.model.source is required to run a job: the pods load the model's config.json, safetensors and tokenizer from that volume")]
    MissingModelSource,
    #[error("no trainer image: set spec.image or the operator's default trainer image")]
    MissingImage,
    #[error("{key}: {why}")]
    InvalidVolume { key: String, why: String },
    #[error("{key} is not supported: {why}")]
    Unsupported { key: String, why: String },
    #[error("spec.distributed.nccl.{key}: {why}")]
    InvalidNcclVariable { key: String, why: String },
    #[error("invalid plan: {0}")]
    InvalidPlan(String),
    #[error("invalid render context: {0}")]
    InvalidContext(String),
}

/// Renders every object of attempt `ctx.attempt` of `job` under `plan`.
pub fn render(
    job: &FineTuneJob,
    plan: &Plan,
    ctx: &RenderContext,
) -> Result<Rendered, RenderError> {
    names::validate_name(job)?;
    validate_plan(plan)?;
    if ctx.attempt == 0 {
        return Err(RenderError::InvalidContext(
            "attempt numbers start at 1".into(),
        ));
    }
    env::validate_nccl(job)?;
    Ok(Rendered {
        service_account: rbac::service_account(job),
        role: rbac::role(job),
        role_binding: rbac::role_binding(job),
        config_map: config::config_map(job, plan, ctx),
        service: service::service(job),
        job: job::job(job, plan, ctx)?,
    })
}

fn validate_plan(plan: &Plan) -> Result<(), RenderError> {
    let bad = |m: String| Err(RenderError::InvalidPlan(m));
    if plan.nodes == 0 || plan.gpus_per_node == 0 {
        return bad(format!(
            "{} node(s) × {} GPU(s) per node runs nothing",
            plan.nodes, plan.gpus_per_node
        ));
    }
    if plan.gpus != plan.nodes * plan.gpus_per_node {
        return bad(format!(
            "{} GPUs is not {} node(s) × {} per node",
            plan.gpus, plan.nodes, plan.gpus_per_node
        ));
    }
    if plan.micro_batch_size == 0 || plan.gradient_accumulation_steps == 0 {
        return bad("micro-batch and gradient accumulation must be at least 1".into());
    }
    if plan.zero_stage > 3 {
        return bad(format!("ZeRO stage {} does not exist", plan.zero_stage));
    }
    Ok(())
}

impl Rendered {
    /// The objects as JSON, in creation order (RBAC, ConfigMap, Service, Job), each with its
    /// `apiVersion` and `kind`.
    pub fn objects(&self) -> Vec<serde_json::Value> {
        // These k8s-openapi types always serialise (string-keyed maps only); a failure would be a
        // bug in k8s-openapi, shown as a null entry rather than a panic in the controller.
        vec![
            serde_json::to_value(&self.service_account).unwrap_or_default(),
            serde_json::to_value(&self.role).unwrap_or_default(),
            serde_json::to_value(&self.role_binding).unwrap_or_default(),
            serde_json::to_value(&self.config_map).unwrap_or_default(),
            serde_json::to_value(&self.service).unwrap_or_default(),
            serde_json::to_value(&self.job).unwrap_or_default(),
        ]
    }

    /// The objects as one YAML stream (`---` before each document), in creation order. Strings
    /// that YAML 1.1 readers (kubectl) would take for booleans or numbers are quoted ([`yaml`]).
    pub fn to_yaml_stream(&self) -> String {
        let docs = [
            yaml(&self.service_account),
            yaml(&self.role),
            yaml(&self.role_binding),
            yaml(&self.config_map),
            yaml(&self.service),
            yaml(&self.job),
        ];
        docs.iter().map(|d| format!("---\n{d}")).collect()
    }
}

fn yaml<T: serde::Serialize>(object: &T) -> String {
    yaml::to_yaml(object).unwrap_or_else(|e| format!("# cannot serialise this object: {e}\n"))
}

#[cfg(test)]
pub(crate) mod tests_support;
