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
mod context;
pub mod env;
mod error;
pub mod grace;
pub mod job;
pub mod meta;
pub mod names;
pub mod network_policy;
pub mod pod;
pub mod rbac;
mod rendered;
pub mod serve;
pub mod service;
pub mod tracking;
pub mod volumes;
pub mod yaml;

use lf_api::{FineTuneJob, Plan};

pub use config::trainer_config;
pub use context::RenderContext;
pub use env::worker_env;
pub use error::RenderError;
pub use meta::{LABEL_ATTEMPT, LABEL_JOB_NAME};
pub use names::{job_name, serve_name, service_name};
pub use rendered::Rendered;
pub use serve::{serve, RenderedServe, ServeContext};
pub use volumes::shm_size_bytes;

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
    tracking::validate_tracking(job)?;
    Ok(Rendered {
        service_account: rbac::service_account(job),
        role: rbac::role(job),
        role_binding: rbac::role_binding(job),
        config_map: config::config_map(job, plan, ctx)?,
        service: service::service(job),
        network_policy: network_policy::network_policy(job, &ctx.metrics_from),
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

#[cfg(test)]
pub(crate) mod tests_support;
