//! Serving a Succeeded job's result (`spec.serve`): the decision ([`decide`], pure: the planner's
//! replica memory, the checkpoint, the rendered server) and the reconciliation that applies it,
//! follows the Deployment's rollout into `status.serving` and the `Serving` condition, and removes
//! the server when `spec.serve` goes away. A server that cannot be made never fails the job, which
//! has Succeeded: the condition says why.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use lf_api::conditions::types;
use lf_api::serving::ServingStatus;
use lf_api::FineTuneJob;
use lf_planner::serving::{does_not_fit, serving_memory};
use lf_planner::PlannerInput;
use lf_render::{RenderedServe, ServeContext};

use super::cache::MetaCached;
use super::children::{self, WriteError};
use super::context::Error;
use super::reconcile::Reconciler;
use crate::load::one_line;

/// What to do about the server of a Succeeded job.
#[derive(Debug, Clone, PartialEq)]
pub enum ServeDecision {
    /// `spec.serve` is unset: no server (an existing one is removed).
    Nothing,
    /// The server cannot be made: `(reason, message)` for the `Serving` condition.
    Refused(&'static str, String),
    /// The server's objects and its status before the rollout is looked at.
    Serve(Box<RenderedServe>, ServingStatus),
}

/// The server of `ftj`'s result (pure): the planner sizes a replica (it must fit one GPU), the
/// checkpoint must be one of `status.checkpoints`, and the rendered objects serve it.
pub fn decide(ftj: &FineTuneJob, default_image: &str) -> ServeDecision {
    let Some(serve) = &ftj.spec.serve else {
        return ServeDecision::Nothing;
    };
    let input = match PlannerInput::from_job(ftj) {
        Ok(input) => input,
        Err(e) => return ServeDecision::Refused("InvalidSpec", one_line(&e.to_string())),
    };
    let memory = serving_memory(&input, serve);
    if !memory.fits() {
        return ServeDecision::Refused("DoesNotFit", does_not_fit(&memory, serve));
    }
    let status = ftj.status.clone().unwrap_or_default();
    let checkpoint = match serve.checkpoint_step {
        None => None,
        Some(step) => match status.checkpoints.iter().find(|c| c.step == step) {
            Some(c) => Some(c.path.clone()),
            None => {
                let steps: Vec<String> = status
                    .checkpoints
                    .iter()
                    .map(|c| c.step.to_string())
                    .collect();
                return ServeDecision::Refused(
                    "CheckpointNotFound",
                    format!(
                        "spec.serve.checkpointStep {step} is not one of the job's checkpoints (steps: {}); \
                         name one of them, or remove checkpointStep to serve the final result",
                        if steps.is_empty() { "none".into() } else { steps.join(", ") }
                    ),
                );
            }
        },
    };
    let served = match serve.checkpoint_step {
        Some(step) => format!("checkpoint-{step}"),
        None => "final".to_string(),
    };
    let completed = status
        .completion_time
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    let ctx = ServeContext {
        default_image: default_image.to_string(),
        checkpoint_path: checkpoint,
        revision: format!("{}/{completed}/{served}", ftj.uid().unwrap_or_default()),
        kv_tokens: memory.kv_tokens,
        host_memory_bytes: memory.host_bytes(),
    };
    let rendered = match lf_render::serve(ftj, &ctx) {
        Ok(Some(r)) => r,
        Ok(None) => return ServeDecision::Nothing,
        Err(e) => return ServeDecision::Refused("InvalidSpec", one_line(&e.to_string())),
    };
    let name = lf_render::serve_name(ftj);
    let namespace = ftj.namespace().unwrap_or_default();
    let serving = ServingStatus {
        url: format!("http://{name}.{namespace}.svc:{}", serve.port),
        model: ftj.name_any(),
        served,
        replicas: serve.replicas,
        ready_replicas: 0,
        gpu_memory_bytes: memory.peak_bytes,
        kv_cache_bytes: memory.kv_cache_bytes,
    };
    ServeDecision::Serve(Box::new(rendered), serving)
}

/// Replicas of the Deployment's current pod template that are ready: none while the Deployment
/// controller has not seen its newest spec.
pub fn ready_current(d: &Deployment) -> u32 {
    let Some(s) = &d.status else { return 0 };
    let generation = d.metadata.generation.unwrap_or(0);
    if s.observed_generation.unwrap_or(0) < generation {
        return 0;
    }
    let ready = s.ready_replicas.unwrap_or(0);
    let updated = s.updated_replicas.unwrap_or(0);
    ready.min(updated).max(0) as u32
}

/// The `Serving` condition of a server whose status is `s`.
pub fn serving_condition(s: &ServingStatus) -> (bool, &'static str, String) {
    if s.replicas == 0 {
        return (false, "ScaledToZero", "spec.serve.replicas is 0".into());
    }
    if s.ready_replicas == 0 {
        return (
            false,
            "Starting",
            format!(
                "0/{} replicas ready; serving {} at {}",
                s.replicas, s.served, s.url
            ),
        );
    }
    (
        true,
        "Ready",
        format!(
            "{}/{} replicas ready; serving {} as model `{}` at {}/v1",
            s.ready_replicas, s.replicas, s.served, s.model, s.url
        ),
    )
}

impl Reconciler<'_> {
    /// Applies the decision about the server of this Succeeded job and writes what it shows.
    pub(super) async fn serve(&mut self) -> Result<Action, Error> {
        match decide(&self.ftj, &self.ctx.config.default_image) {
            ServeDecision::Nothing => {
                self.remove_server().await?;
                self.draft.st.serving = None;
                self.draft
                    .st
                    .conditions
                    .retain(|c| c.type_ != types::SERVING);
            }
            // What runs keeps running (and `status.serving` describing it) until the spec names
            // a server that can be made.
            ServeDecision::Refused(reason, message) => {
                self.draft
                    .condition(types::SERVING, false, reason, &message);
            }
            ServeDecision::Serve(rendered, mut serving) => {
                match self.apply_server(&rendered).await {
                    Ok(deployment) => {
                        serving.ready_replicas = deployment.as_ref().map_or(0, ready_current);
                        let (ok, reason, message) = serving_condition(&serving);
                        self.draft.condition(types::SERVING, ok, reason, &message);
                    }
                    Err(WriteError::Api(e)) => return Err(e.into()),
                    Err(conflict) => {
                        let message = one_line(&conflict.to_string());
                        self.draft
                            .condition(types::SERVING, false, "NameConflict", &message);
                    }
                }
                self.draft.st.serving = Some(serving);
            }
        }
        self.commit().await?;
        // The Deployment's changes (its rollout) come through its watch.
        Ok(Action::await_change())
    }

    /// Writes the server's objects that changed; returns the Deployment as the API server has it.
    async fn apply_server(&self, r: &RenderedServe) -> Result<Option<Deployment>, WriteError> {
        let (client, caches, parent) = (&self.ctx.client, &self.ctx.caches, self.parent());
        children::apply_if_changed(client, caches, parent, &r.config_map).await?;
        children::apply_if_changed(client, caches, parent, &r.service).await?;
        children::apply_if_changed(client, caches, parent, &r.deployment).await?;
        let api: Api<Deployment> = Api::namespaced(client.clone(), &self.ns);
        Ok(api.get_opt(&r.deployment.name_any()).await?)
    }

    /// Deletes the server's objects this job controls (`spec.serve` was removed).
    async fn remove_server(&self) -> Result<(), Error> {
        let name = lf_render::serve_name(&self.ftj);
        let uid = self.ftj.uid().unwrap_or_default();
        if self.controls::<Deployment>(&name, &uid) {
            children::delete::<Deployment>(&self.ctx.client, &self.ns, &name, false).await?;
        }
        if self.controls::<Service>(&name, &uid) {
            children::delete::<Service>(&self.ctx.client, &self.ns, &name, false).await?;
        }
        if self.controls::<ConfigMap>(&name, &uid) {
            children::delete::<ConfigMap>(&self.ctx.client, &self.ns, &name, false).await?;
        }
        Ok(())
    }

    /// Whether the cache shows a `K` named `name` controlled by the FineTuneJob `uid`.
    fn controls<K: MetaCached>(&self, name: &str, uid: &str) -> bool {
        self.ctx
            .caches
            .child::<K>(&self.ns, name)
            .and_then(|e| e.controller)
            .is_some_and(|c| c.uid == uid)
    }
}

#[cfg(test)]
#[path = "serving_tests.rs"]
mod tests;
