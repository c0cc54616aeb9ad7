//! The reconciliation of one FineTuneJob, as a state machine: plan, follow the current attempt,
//! restart it when it failed, wait for the previous attempt's pods, apply the current attempt's
//! children, and write the status when it changed. Decisions are pure functions ([`observe`],
//! [`restart::decide`], [`transitions`]); this file reads the caches, carries the decisions out and
//! writes.
//!
//! [`observe`]: super::observe
//! [`transitions`]: super::transitions

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Event;
use kube::{Api, Resource, ResourceExt};
use lf_api::conditions;
use lf_api::status::{Phase, OPERATOR_FIELD_MANAGER};
use lf_api::{FineTuneJob, Plan};
use lf_planner::PlannerInput;
use lf_render::{RenderContext, Rendered};

use super::children::{self, Parent, WriteError};
use super::context::{key, Context, Error};
use super::faults;
use super::job_events;
use super::observe::{self, attempt_failure, job_state, JobState};
use super::output_claims;
use super::ownership::controller_of;
use super::policy;
use super::transitions::{Draft, Pausing};
use crate::load::one_line;

/// Reconciles one FineTuneJob (see the module docs).
pub async fn reconcile_job(cached: &FineTuneJob, ctx: &Context) -> Result<Action, Error> {
    let ns = cached.namespace().ok_or(Error::MissingNamespace)?;
    let key = key(cached);
    faults::before_reconcile(&key);
    ctx.caches.ready().await;
    let Some(ftj) = latest(cached, &ns, &key, ctx).await? else {
        ctx.forget(&key);
        return Ok(Action::await_change());
    };
    if ftj.metadata.deletion_timestamp.is_some() {
        ctx.forget(&key);
        return Ok(Action::await_change());
    }
    let status = ftj.status.clone().unwrap_or_default();
    let finished = status.phase;
    if finished.is_finished() {
        // A finished job is never re-created, whatever happens to its children; a Succeeded
        // one's result may be served (`spec.serve`).
        ctx.finished(&key);
        if finished != Phase::Succeeded {
            return Ok(Action::await_change());
        }
    }
    let mut draft = Draft::new(status, ftj.metadata.generation);
    draft.st.observed_generation = ftj.metadata.generation;
    let mut reconciler = Reconciler {
        ctx,
        name: ftj.name_any(),
        ns,
        key,
        ftj,
        draft,
    };
    if finished == Phase::Succeeded {
        return reconciler.serve().await;
    }
    reconciler.run().await
}

/// The FineTuneJob to decide on: the cached one, unless the cache may not show our last status
/// write yet (then read fresh; `None`: it is gone).
async fn latest(
    cached: &FineTuneJob,
    ns: &str,
    key: &str,
    ctx: &Context,
) -> Result<Option<FineTuneJob>, Error> {
    let cached_rv = cached.resource_version();
    if !ctx.cache_may_lag(key, cached_rv.as_deref()) {
        return Ok(Some(cached.clone()));
    }
    let api: Api<FineTuneJob> = Api::namespaced(ctx.client.clone(), ns);
    let fresh = api.get_opt(&cached.name_any()).await?;
    if fresh.as_ref().and_then(|f| f.resource_version()) == cached_rv {
        ctx.caught_up(key);
    }
    Ok(fresh)
}

/// How long planning one job may take (the planner's work is bounded; this is the backstop
/// that keeps one job from holding a worker thread and the job's reconciliation).
const PLANNER_LIMIT: Duration = Duration::from_secs(5);

/// The planner's verdict: a plan, or `(reason, message)` for a job that cannot run. The search
/// runs on a blocking thread, off the async workers that serve every other job.
async fn plan_job(ftj: &FineTuneJob) -> Result<Plan, (&'static str, String)> {
    let input =
        PlannerInput::from_job(ftj).map_err(|e| ("InvalidSpec", one_line(&e.to_string())))?;
    let searching = tokio::task::spawn_blocking(move || lf_planner::search(&input));
    let search = match tokio::time::timeout(PLANNER_LIMIT, searching).await {
        Ok(Ok(search)) => search,
        Ok(Err(e)) => return Err(("InvalidSpec", format!("the planner failed: {e}"))),
        Err(_) => {
            return Err((
                "InvalidSpec",
                format!(
                    "planning took longer than {} s; ask for fewer GPUs (spec.resources.maxGpus)",
                    PLANNER_LIMIT.as_secs()
                ),
            ))
        }
    };
    match search.chosen.clone() {
        Some(plan) => Ok(plan),
        None => Err((
            "DoesNotFit",
            search
                .failure_message()
                .unwrap_or_else(|| "no configuration fits".into()),
        )),
    }
}

/// Whether a plan (as the status holds it) respects the job's spec: never more GPUs, or more per
/// node, than the spec allows, whoever wrote the status.
fn plan_within_spec(plan: &Plan, ftj: &FineTuneJob) -> Result<(), String> {
    let input = PlannerInput::from_job(ftj).map_err(|e| e.to_string())?;
    let limit = input.fixed_gpus.unwrap_or(input.max_gpus);
    if plan.gpus > limit || plan.gpus_per_node > input.gpus_per_node {
        return Err(format!(
            "{} GPUs ({} per node) where the spec allows {limit} ({} per node)",
            plan.gpus, plan.gpus_per_node, input.gpus_per_node
        ));
    }
    if plan.nodes.checked_mul(plan.gpus_per_node) != Some(plan.gpus) {
        return Err(format!(
            "{} nodes × {} GPUs is not {} GPUs",
            plan.nodes, plan.gpus_per_node, plan.gpus
        ));
    }
    Ok(())
}

/// The name of the Job a pod belongs to.
fn pod_job(pod: &Pod) -> Option<&str> {
    let labels = pod.metadata.labels.as_ref()?;
    labels
        .get("batch.kubernetes.io/job-name")
        .or_else(|| labels.get("job-name"))
        .map(String::as_str)
}

pub(super) struct Reconciler<'a> {
    pub(super) ctx: &'a Context,
    pub(super) ftj: FineTuneJob,
    pub(super) ns: String,
    pub(super) name: String,
    pub(super) key: String,
    pub(super) draft: Draft,
}

impl Reconciler<'_> {
    async fn run(&mut self) -> Result<Action, Error> {
        let recorded = (self.draft.st.plan.clone()).filter(|p| match plan_within_spec(p, &self.ftj) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(job = %self.key, %why, "the status's plan breaks the spec; planning again");
                false
            }
        });
        let plan = match recorded {
            Some(plan) => plan,
            None => match self.plan_first().await? {
                Ok(plan) => plan,
                Err(action) => return Ok(action),
            },
        };
        let attempt = self.draft.st.attempt.unwrap_or(1);
        let job_name = lf_render::job_name(&self.ftj, attempt);
        let current_job = self.current_job(&job_name).await?;
        if let Some(job) = &current_job {
            let controller = controller_of(job.metadata.owner_references.as_deref());
            let held = children::check_holder(self.parent(), "Job", &job_name, controller.as_ref());
            if let Some(action) = self.write_failed(held).await? {
                return Ok(action);
            }
        }
        let pods = self.ctx.caches.pods_of(&self.ns, &self.name);
        let (current_pods, stale_pods): (Vec<Pod>, Vec<Pod>) = pods
            .into_iter()
            .partition(|p| pod_job(p) == Some(job_name.as_str()));

        if let Some(job) = &current_job {
            let state = job_state(job);
            if state == JobState::Complete {
                return self.succeed(attempt).await;
            }
            let suspended = self.ftj.spec.suspend;
            if let Some(failure) = attempt_failure(&job_name, &state, &current_pods, suspended) {
                let deadline = matches!(&state, JobState::Failed { reason, .. } if reason == "DeadlineExceeded");
                return self
                    .handle_failure(failure, attempt, &plan, &job_name, deadline)
                    .await;
            }
        }

        let uid = self.ftj.uid().unwrap_or_default();
        let stale_jobs: Vec<String> = (self.ctx.caches.jobs_of(&self.ns, &self.name, &uid).iter())
            .map(|j| j.name_any())
            .filter(|n| *n != job_name)
            .collect();
        if !stale_jobs.is_empty() || !stale_pods.is_empty() {
            // A new attempt starts only once the previous one's pods are gone (no two gangs on
            // the same GPUs, no stale rank 0 answering the rendezvous).
            for old_job in &stale_jobs {
                children::delete::<Job>(&self.ctx.client, &self.ns, old_job, true).await?;
            }
            let stuck = observe::longest_terminating(&stale_pods);
            self.draft.previous_attempt_terminating(
                stale_pods.len(),
                stuck.as_ref(),
                self.ftj.spec.suspend,
            );
            self.commit().await?;
            // The pods' deletion triggers a reconciliation anyway; the poll only backs it up, and
            // backs off while a pod stays (a node that stopped answering).
            let waited = stuck.map(|s| s.for_how_long).unwrap_or_default();
            let poll = (waited / 4).clamp(self.ctx.config.wait_poll, Duration::from_secs(60));
            return Ok(Action::requeue(poll));
        }

        // Render and apply the current attempt; a new attempt's Job only within the tenant policy.
        if current_job.is_none() {
            let config = &self.ctx.config;
            let refused =
                policy::violations(&self.ftj, &config.tenant_policy, &config.default_image);
            if !refused.is_empty() {
                return self.fail("NotAllowed", &refused.join("; ")).await;
            }
        }
        let render_ctx = RenderContext {
            default_image: self.ctx.config.default_image.clone(),
            attempt,
            resume_from: self.draft.old.latest_checkpoint().map(|c| c.path.clone()),
            sidecar_injection_default: self.ctx.config.sidecar_injection_default,
            metrics_from: self.ctx.config.trainer_metrics_from.clone(),
        };
        let rendered = match lf_render::render(&self.ftj, &plan, &render_ctx) {
            Ok(r) => r,
            Err(e) => return self.fail("InvalidSpec", &one_line(&e.to_string())).await,
        };
        let (client, caches) = (&self.ctx.client, &self.ctx.caches);
        let applied = children::apply_small(client, caches, self.parent(), &rendered).await;
        if let Some(action) = self.write_failed(applied).await? {
            return Ok(action);
        }
        let job_now = match current_job {
            None => {
                let job = children::job_to_create(&rendered.job, self.ftj.spec.suspend);
                match self.write_failed(self.create_job(&job).await).await? {
                    Some(action) => return Ok(action),
                    None => job,
                }
            }
            Some(existing) => {
                let queued = self.ftj.spec.scheduling.queue_name.is_some();
                let (client, suspend) = (&self.ctx.client, self.ftj.spec.suspend);
                children::follow_suspend(client, &self.ns, existing, suspend, queued).await?
            }
        };
        self.sweep(attempt, &rendered).await?;

        let pausing = Pausing {
            suspend: self.ftj.spec.suspend,
            queue: self.ftj.spec.scheduling.queue_name.as_deref(),
        };
        self.draft
            .observe_running(pausing, &plan, attempt, &job_now, &current_pods);
        if let Some(note) = self.pods_not_created(&job_now, &current_pods).await? {
            self.draft.pods_not_created(attempt, &note);
        }
        self.draft.checkpoint_event();
        self.draft.resume_fallback_event();
        self.commit().await?;
        // A Job without pods is looked at again soon: its events may say why (no watch does).
        let running = !(job_now.spec.as_ref())
            .and_then(|s| s.suspend)
            .unwrap_or(false);
        if running && current_pods.is_empty() {
            return Ok(Action::requeue(job_events::NO_PODS_GRACE));
        }
        Ok(Action::requeue(self.ctx.config.resync))
    }

    /// The current attempt's Job: cached, or read when this process created it and the cache
    /// may not show it yet.
    async fn current_job(&self, job_name: &str) -> Result<Option<Job>, Error> {
        let cached = self.ctx.caches.job(&self.ns, job_name);
        if !self.ctx.job_may_lag(&self.key, job_name, cached.is_some()) {
            return Ok(cached);
        }
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        Ok(api.get_opt(job_name).await?)
    }

    /// The first plan, on the status before any child exists; or, when the job cannot run (its
    /// output location is taken, nothing fits), the action after failing it.
    async fn plan_first(&mut self) -> Result<Result<Plan, Action>, Error> {
        if let Some(message) = self.output_taken() {
            return Ok(Err(self.fail("OutputInUse", &message).await?));
        }
        match plan_job(&self.ftj).await {
            Ok(plan) => {
                self.draft.planned(plan.clone(), self.ftj.method_label());
                self.commit().await?;
                Ok(Ok(plan))
            }
            Err((reason, message)) => {
                let method = self.ftj.method_label();
                self.draft.not_planned(method, reason, &message);
                Ok(Err(self.fail(reason, &message).await?))
            }
        }
    }

    /// Why this job may not write to its output location (an older unfinished job does).
    fn output_taken(&self) -> Option<String> {
        let jobs = self.ctx.caches.ftjs.state();
        output_claims::output_conflict(&self.ftj, jobs.iter().map(|j| j.as_ref()))
    }

    /// The FineTuneJob as the parent of the children it writes.
    pub(super) fn parent(&self) -> Parent<'_> {
        Parent {
            namespace: &self.ns,
            name: &self.name,
            uid: self.ftj.metadata.uid.as_deref().unwrap_or_default(),
        }
    }

    /// Why the current Job has had no pods for a while, as the Job controller's events say. Read
    /// only once the Job controller has started the Job (`status.startTime`) and a grace period
    /// has passed since, so that a busy API server (pods on their way) costs no event list.
    async fn pods_not_created(&self, job: &Job, pods: &[Pod]) -> Result<Option<String>, Error> {
        let suspended = (job.spec.as_ref()).and_then(|s| s.suspend).unwrap_or(false);
        // Started by the Job controller: the grace from then; not yet: twice that from creation.
        let started = (job.status.as_ref()).and_then(|s| s.start_time.as_ref());
        let (since, grace) = match started {
            Some(t) => (Some(t), job_events::NO_PODS_GRACE),
            None => (
                job.metadata.creation_timestamp.as_ref(),
                2 * job_events::NO_PODS_GRACE,
            ),
        };
        let now = k8s_openapi::jiff::Timestamp::now();
        let waited =
            (since.and_then(|t| now.duration_since(t.0).try_into().ok())).unwrap_or(Duration::ZERO);
        if suspended || !pods.is_empty() || waited < grace {
            return Ok(None);
        }
        let (client, job) = (&self.ctx.client, job.name_any());
        Ok(job_events::failed_create(client, &self.ns, &job).await?)
    }

    /// Creates the current attempt's Job (one the cache did not show yet is left as it is).
    async fn create_job(&self, job: &Job) -> Result<(), WriteError> {
        children::create_job(&self.ctx.client, self.parent(), job).await?;
        self.ctx.created_job(self.key.clone(), job.name_any());
        Ok(())
    }

    /// Deletes the children the current attempt does not render, once per attempt and process.
    async fn sweep(&self, attempt: u32, rendered: &Rendered) -> Result<(), Error> {
        let uid = self.ftj.uid().unwrap_or_default();
        if !self.ctx.needs_sweep(&self.key, &uid, attempt) {
            return Ok(());
        }
        let keep = children::names(rendered);
        let (client, caches) = (&self.ctx.client, &self.ctx.caches);
        let deleted = children::delete_orphans(client, caches, self.parent(), &keep).await?;
        if !deleted.is_empty() {
            tracing::info!(job = %self.name, orphans = ?deleted, "deleted children the current plan does not render");
        }
        self.ctx.swept(self.key.clone(), uid, attempt);
        Ok(())
    }

    /// Writes the operator's status fields (server-side apply on `/status`) when they changed,
    /// then publishes the events of the transitions it records.
    pub(super) async fn commit(&mut self) -> Result<(), Error> {
        if let Some(status) = self.draft.changes() {
            let api: Api<FineTuneJob> = Api::namespaced(self.ctx.client.clone(), &self.ns);
            let body = serde_json::json!({
                "apiVersion": FineTuneJob::api_version(&()),
                "kind": FineTuneJob::kind(&()),
                "status": status,
            });
            let written = api
                .patch_status(
                    &self.name,
                    &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await?;
            self.ctx
                .wrote_status(self.key.clone(), written.resource_version());
            self.draft.written();
        }
        let reference = self.ftj.object_ref(&());
        for ev in self.draft.events.drain(..) {
            let event = Event {
                type_: ev.type_,
                reason: ev.reason.into(),
                note: Some(conditions::truncate(&ev.note, conditions::MAX_MESSAGE)),
                action: ev.action.into(),
                secondary: None,
            };
            if let Err(e) = self.ctx.recorder.publish(&event, &reference).await {
                tracing::warn!(job = %self.name, error = %e, reason = ev.reason, "cannot publish an event");
            }
        }
        Ok(())
    }
}
