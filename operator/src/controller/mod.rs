//! The FineTuneJob controller: plan, create the children of the current attempt, follow the Job
//! and its pods, restart failed gangs from the latest checkpoint, and keep the status true.
//!
//! Each reconciliation is level-triggered and idempotent: it reads the FineTuneJob fresh from the
//! API server (never a possibly stale cache), derives everything from the status and the
//! children that exist, and writes with server-side apply under [`OPERATOR_FIELD_MANAGER`]. The
//! status is written before the children of a new attempt are created, so a crash at any point
//! leaves either nothing to undo or work the next reconciliation finishes.
//!
//! At scale (see `operator/examples/scale_bench.rs`): at most [`ControllerConfig::concurrency`]
//! reconciliations run at once (each holds its job, the rendered children and its API answers),
//! and children that the current attempt does not render are looked for once per attempt and
//! operator process (six label-selected lists) rather than on every reconciliation.

mod children;
pub mod conditions;
pub mod observe;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use lf_api::runtime::FailureReason;
use lf_api::status::{Phase, RestartRecord, OPERATOR_FIELD_MANAGER};
use lf_api::{FineTuneJob, FineTuneJobStatus, Plan};
use lf_planner::PlannerInput;
use lf_render::{RenderContext, LABEL_JOB_NAME};

use crate::load::one_line;
use crate::metrics::Metrics;
use conditions::types;
use observe::{gang_failure, gang_running, job_state, pending_reason, JobState, PodFailure};

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The trainer image for jobs without `spec.image`.
    pub default_image: String,
    /// Whether service-mesh sidecars may be injected into trainer pods by default.
    pub sidecar_injection_default: bool,
    /// How often a settled job is looked at again without any change (a safety net).
    pub resync: Duration,
    /// How soon to look again while an old attempt's pods terminate.
    pub wait_poll: Duration,
    /// Name of this controller in Events.
    pub reporter: String,
    /// How many FineTuneJobs are reconciled at once (the others wait in the queue); bounds the
    /// operator's memory when many jobs change together.
    pub concurrency: u16,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            default_image: "ghcr.io/lf-operator/lf-trainer:latest".into(),
            sidecar_injection_default: false,
            resync: Duration::from_secs(300),
            wait_poll: Duration::from_secs(2),
            reporter: "lf-operator".into(),
            concurrency: 32,
        }
    }
}

/// What a reconciliation needs.
pub struct Context {
    pub client: Client,
    pub config: ControllerConfig,
    pub metrics: Metrics,
    recorder: Recorder,
    /// Consecutive failures per object, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Per object (`namespace/name`), the `(uid, attempt)` whose orphans were last swept.
    swept: Mutex<HashMap<String, (String, u32)>>,
}

impl Context {
    pub fn new(client: Client, config: ControllerConfig, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: config.reporter.clone(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Context {
            client,
            config,
            metrics,
            recorder,
            failures: Mutex::new(HashMap::new()),
            swept: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets what is kept per object (the object is gone).
    fn forget(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        self.swept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Whether this attempt's orphans still have to be looked for (once per attempt and process:
    /// only an earlier attempt, plan or operator version leaves children of other names).
    fn needs_sweep(&self, key: &str, uid: &str, attempt: u32) -> bool {
        self.swept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .is_none_or(|(u, a)| u != uid || *a != attempt)
    }

    fn swept(&self, key: String, uid: String, attempt: u32) {
        self.swept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (uid, attempt));
    }
}

/// Why a reconciliation failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the FineTuneJob has no namespace")]
    MissingNamespace,
}

impl Error {
    /// The `error` label of `lf_operator_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "client",
            Error::MissingNamespace => "missing_namespace",
        }
    }
}

/// An Event to publish once the status that records its transition is written.
struct PendingEvent {
    type_: EventType,
    reason: &'static str,
    action: &'static str,
    note: String,
}

fn normal(reason: &'static str, action: &'static str, note: String) -> PendingEvent {
    PendingEvent {
        type_: EventType::Normal,
        reason,
        action,
        note,
    }
}
fn warning(reason: &'static str, action: &'static str, note: String) -> PendingEvent {
    PendingEvent {
        type_: EventType::Warning,
        reason,
        action,
        note,
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ftjs: Api<FineTuneJob> = Api::all(client.clone());
    let children = watcher::Config::default().labels(LABEL_JOB_NAME);
    let controller = Controller::new(ftjs, watcher::Config::default())
        .owns(Api::<Job>::all(client.clone()), children.clone())
        .owns(Api::<Service>::all(client.clone()), children.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), children.clone())
        .owns(Api::<ServiceAccount>::all(client.clone()), children.clone())
        .owns(Api::<Role>::all(client.clone()), children.clone())
        .owns(Api::<RoleBinding>::all(client.clone()), children.clone())
        .watches(Api::<Pod>::all(client.clone()), children, |pod: Pod| {
            let name = pod.labels().get(LABEL_JOB_NAME)?.clone();
            Some(ObjectRef::<FineTuneJob>::new(&name).within(pod.namespace()?.as_str()))
        })
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown);
    metrics.attach_store(controller.store());
    let ctx = Arc::new(Context::new(client, config, metrics));
    controller
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            let ctx = ctx.clone();
            async move {
                match result {
                    Ok((obj, _)) => tracing::debug!(job = %obj, "reconciled"),
                    Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                        // Deleted: nothing more to remember about it.
                        let ns = obj.namespace.as_deref().unwrap_or_default();
                        ctx.forget(&format!("{ns}/{}", obj.name));
                    }
                    Err(e) => tracing::debug!(error = %e, "reconcile loop"),
                }
            }
        })
        .await;
}

fn key(ftj: &FineTuneJob) -> String {
    format!("{}/{}", ftj.namespace().unwrap_or_default(), ftj.name_any())
}

/// Requeues a failed reconciliation with exponential backoff (1 s doubling to 5 min).
pub fn error_policy(ftj: Arc<FineTuneJob>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .errors
        .with_label_values(&[error.metric_label()])
        .inc();
    let n = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key(&ftj)).or_insert(0);
        *n += 1;
        *n
    };
    let delay = Duration::from_secs(1u64 << (n - 1).min(8)).min(Duration::from_secs(300));
    tracing::warn!(job = %key(&ftj), error = %error, retry_in_s = delay.as_secs(), "reconciliation failed");
    Action::requeue(delay)
}

/// Reconciles one FineTuneJob (see the module docs).
pub async fn reconcile(ftj: Arc<FineTuneJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.duration.start_timer();
    let result = reconcile_job(&ftj, &ctx).await;
    timer.observe_duration();
    ctx.metrics
        .reconciliations
        .with_label_values(&[if result.is_ok() { "ok" } else { "error" }])
        .inc();
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key(&ftj));
    }
    result
}

/// The planner's verdict: a plan, or `(reason, message)` for a job that cannot run.
fn plan_job(ftj: &FineTuneJob) -> Result<Plan, (&'static str, String)> {
    let input =
        PlannerInput::from_job(ftj).map_err(|e| ("InvalidSpec", one_line(&e.to_string())))?;
    let search = lf_planner::search(&input);
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

/// The name of the Job a pod belongs to.
fn pod_job(pod: &Pod) -> Option<&str> {
    let labels = pod.metadata.labels.as_ref()?;
    labels
        .get("batch.kubernetes.io/job-name")
        .or_else(|| labels.get("job-name"))
        .map(String::as_str)
}

struct Reconciler<'a> {
    ctx: &'a Context,
    ftj: FineTuneJob,
    ns: String,
    name: String,
    old: FineTuneJobStatus,
    st: FineTuneJobStatus,
    events: Vec<PendingEvent>,
}

async fn reconcile_job(cached: &FineTuneJob, ctx: &Context) -> Result<Action, Error> {
    let ns = cached.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<FineTuneJob> = Api::namespaced(ctx.client.clone(), &ns);
    // The cache may lag behind our own last status write; decisions need the latest status.
    let Some(ftj) = api.get_opt(&cached.name_any()).await? else {
        ctx.forget(&key(cached));
        return Ok(Action::await_change());
    };
    if ftj.metadata.deletion_timestamp.is_some() {
        ctx.forget(&key(cached));
        return Ok(Action::await_change());
    }
    let old = ftj.status.clone().unwrap_or_default();
    let mut r = Reconciler {
        ctx,
        name: ftj.name_any(),
        ns,
        st: old.clone(),
        old,
        ftj,
        events: Vec::new(),
    };
    if r.old.phase.is_finished() {
        // A finished job is never re-created, whatever happens to its children.
        ctx.swept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key(cached));
        return Ok(Action::await_change());
    }
    r.st.observed_generation = r.ftj.metadata.generation;
    r.run().await
}

impl Reconciler<'_> {
    async fn run(&mut self) -> Result<Action, Error> {
        let plan = match self.st.plan.clone() {
            Some(plan) => plan,
            None => match plan_job(&self.ftj) {
                Ok(plan) => {
                    self.st.plan = Some(plan.clone());
                    self.st.attempt = Some(1);
                    self.st.method = Some(self.ftj.method_label());
                    self.st.phase = Phase::Planning;
                    let summary = lf_planner::plan_summary(&plan);
                    self.condition(types::PLANNED, true, "Planned", &summary);
                    self.st.message = Some(format!("planned: {summary}"));
                    self.events.push(normal("Planned", "Plan", summary));
                    // The plan is on the status before any child exists.
                    self.commit().await?;
                    plan
                }
                Err((reason, message)) => {
                    // The Method column shows for a job that does not fit too.
                    self.st.method = Some(self.ftj.method_label());
                    self.condition(types::PLANNED, false, reason, &message);
                    return self.fail(reason, &message).await;
                }
            },
        };
        let attempt = self.st.attempt.unwrap_or(1);
        let job_name = lf_render::job_name(&self.ftj, attempt);
        let selector = format!("{LABEL_JOB_NAME}={}", self.name);
        let client = self.ctx.client.clone();
        let jobs = Api::<Job>::namespaced(client.clone(), &self.ns)
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        let pods = Api::<Pod>::namespaced(client.clone(), &self.ns)
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        let current_job = jobs.iter().find(|j| j.name_any() == job_name).cloned();
        let (current_pods, stale_pods): (Vec<Pod>, Vec<Pod>) = pods
            .into_iter()
            .partition(|p| pod_job(p) == Some(job_name.as_str()));
        let stale_jobs: Vec<String> = jobs
            .iter()
            .map(|j| j.name_any())
            .filter(|n| *n != job_name)
            .collect();

        if let Some(job) = &current_job {
            let state = job_state(job);
            if state == JobState::Complete {
                return self.succeed(attempt).await;
            }
            let failure = gang_failure(&current_pods).or_else(|| match &state {
                JobState::Failed { reason, message } => {
                    Some(job_failure(&job_name, reason, message))
                }
                _ => None,
            });
            if let Some(failure) = failure {
                let deadline = matches!(&state, JobState::Failed { reason, .. } if reason == "DeadlineExceeded");
                return self
                    .handle_failure(failure, attempt, &plan, &job_name, deadline)
                    .await;
            }
        }

        if !stale_jobs.is_empty() || !stale_pods.is_empty() {
            // A new attempt starts only once the previous one's pods are gone (no two gangs on
            // the same GPUs, no stale rank 0 answering the rendezvous).
            for old_job in &stale_jobs {
                children::delete::<Job>(&client, &self.ns, old_job, true).await?;
            }
            let msg = format!(
                "waiting for {} pod(s) of the previous attempt to terminate",
                stale_pods.len()
            );
            self.condition(types::READY, false, "PreviousAttemptTerminating", &msg);
            if !self.ftj.spec.suspend {
                self.st.phase = Phase::Pending;
            }
            self.st.message = Some(msg);
            self.commit().await?;
            return Ok(Action::requeue(self.ctx.config.wait_poll));
        }

        // Render and apply the current attempt.
        let latest = self.old.latest_checkpoint().cloned();
        let render_ctx = RenderContext {
            default_image: self.ctx.config.default_image.clone(),
            attempt,
            resume_from: latest.as_ref().map(|c| c.path.clone()),
            sidecar_injection_default: self.ctx.config.sidecar_injection_default,
        };
        let rendered = match lf_render::render(&self.ftj, &plan, &render_ctx) {
            Ok(r) => r,
            Err(e) => return self.fail("InvalidSpec", &one_line(&e.to_string())).await,
        };
        let keep: BTreeSet<String> = [
            rendered.service_account.name_any(),
            rendered.role.name_any(),
            rendered.role_binding.name_any(),
            rendered.config_map.name_any(),
            rendered.service.name_any(),
            rendered.job.name_any(),
        ]
        .into_iter()
        .collect();
        let applied = async {
            children::apply(&client, &self.ns, &rendered.service_account).await?;
            children::apply(&client, &self.ns, &rendered.role).await?;
            children::apply(&client, &self.ns, &rendered.role_binding).await?;
            children::apply(&client, &self.ns, &rendered.config_map).await?;
            children::apply(&client, &self.ns, &rendered.service).await?;
            Ok::<_, kube::Error>(())
        }
        .await;
        if let Some(action) = self.rejected(applied).await? {
            return Ok(action);
        }
        let job_now = match &current_job {
            None => {
                let mut job = rendered.job.clone();
                if self.ftj.spec.suspend {
                    if let Some(spec) = job.spec.as_mut() {
                        spec.suspend = Some(true);
                    }
                }
                match self
                    .rejected(children::apply(&client, &self.ns, &job).await.map(|_| ()))
                    .await?
                {
                    Some(action) => return Ok(action),
                    None => job,
                }
            }
            Some(existing) => {
                let suspended = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.suspend)
                    .unwrap_or(false);
                let queued = self.ftj.spec.scheduling.queue_name.is_some();
                if self.ftj.spec.suspend && !suspended {
                    children::set_job_suspend(&client, &self.ns, &job_name, true).await?
                } else if !self.ftj.spec.suspend && suspended && !queued {
                    // Before resuming, the ConfigMap above already names the latest checkpoint.
                    children::set_job_suspend(&client, &self.ns, &job_name, false).await?
                } else {
                    existing.clone()
                }
            }
        };
        let job_key = key(&self.ftj);
        let uid = self.ftj.uid().unwrap_or_default();
        if self.ctx.needs_sweep(&job_key, &uid, attempt) {
            let deleted = children::delete_orphans(&client, &self.ns, &selector, &keep).await?;
            if !deleted.is_empty() {
                tracing::info!(job = %self.name, orphans = ?deleted, "deleted children the current plan does not render");
            }
            self.ctx.swept(job_key, uid, attempt);
        }

        self.observe_running(
            &plan,
            attempt,
            &job_now,
            &current_pods,
            latest.as_ref().map(|c| c.step),
        );
        self.checkpoint_event();
        self.commit().await?;
        Ok(Action::requeue(self.ctx.config.resync))
    }

    /// Phase and conditions of a live attempt.
    fn observe_running(
        &mut self,
        plan: &Plan,
        attempt: u32,
        job: &Job,
        pods: &[Pod],
        checkpoint_step: Option<u64>,
    ) {
        let was_suspended = self.old.phase == Phase::Suspended;
        let job_suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
        if self.ftj.spec.suspend {
            let from = checkpoint_step
                .map(|s| format!("checkpoint step {s}"))
                .unwrap_or_else(|| "the beginning".into());
            let msg = format!("suspended (spec.suspend); resuming continues from {from}");
            self.st.phase = Phase::Suspended;
            self.condition(types::SUSPENDED, true, "Suspended", &msg);
            self.condition(types::READY, false, "Suspended", "suspended");
            if !was_suspended {
                self.events
                    .push(normal("Suspended", "Suspend", msg.clone()));
            }
            self.st.message = Some(msg);
            return;
        }
        if was_suspended || conditions::is_true(&self.st.conditions, types::SUSPENDED) {
            let from = checkpoint_step
                .map(|s| format!("checkpoint step {s}"))
                .unwrap_or_else(|| "the beginning".into());
            let msg = format!("resumed attempt {attempt} from {from}");
            self.condition(types::SUSPENDED, false, "Resumed", &msg);
            self.events.push(normal("Resumed", "Resume", msg));
        }
        if job_suspended {
            let queue = self
                .ftj
                .spec
                .scheduling
                .queue_name
                .clone()
                .unwrap_or_default();
            let msg = format!("waiting for Kueue to admit the Job (queue {queue})");
            self.st.phase = Phase::Pending;
            self.condition(types::READY, false, "WaitingForAdmission", &msg);
            self.st.message = Some(msg);
        } else if gang_running(pods, plan.nodes) {
            let msg = format!("attempt {attempt}: all {} pods running", plan.nodes);
            if self.old.phase != Phase::Running {
                self.events.push(normal("Started", "Start", msg.clone()));
            }
            self.st.phase = Phase::Running;
            self.st.start_time.get_or_insert_with(conditions::now);
            self.condition(types::READY, true, "AllPodsRunning", &msg);
            self.st.message = Some(msg);
        } else {
            let (reason, msg) = pending_reason(pods, plan.nodes);
            self.st.phase = Phase::Pending;
            self.condition(types::READY, false, &reason, &msg);
            self.st.message = Some(format!("attempt {attempt}: {msg}"));
        }
    }

    /// Announces a newly recorded checkpoint (once: the condition remembers the last announced).
    fn checkpoint_event(&mut self) {
        let Some(c) = self.old.latest_checkpoint() else {
            return;
        };
        let msg = format!("step {}: {}", c.step, c.path);
        if conditions::get(&self.st.conditions, types::CHECKPOINT_SAVED)
            .is_some_and(|cond| cond.message == msg)
        {
            return;
        }
        self.condition(types::CHECKPOINT_SAVED, true, "CheckpointSaved", &msg);
        self.events.push(normal(
            "CheckpointSaved",
            "Checkpoint",
            format!("checkpoint at {msg}"),
        ));
    }

    /// Turns an API rejection of a rendered child (400/422: the spec produced an invalid object)
    /// into a Failed job; other errors propagate for a retry.
    async fn rejected(&mut self, result: Result<(), kube::Error>) -> Result<Option<Action>, Error> {
        match result {
            Ok(()) => Ok(None),
            Err(kube::Error::Api(s)) if s.code == 400 || s.code == 422 => {
                let msg = format!("the API server rejected a rendered object: {}", s.message);
                Ok(Some(self.fail("InvalidSpec", &msg).await?))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn succeed(&mut self, attempt: u32) -> Result<Action, Error> {
        let out = &self.ftj.spec.output;
        let output = format!(
            "pvc://{}/{}",
            out.claim_name,
            out.sub_path
                .clone()
                .unwrap_or_default()
                .trim_start_matches('/')
        );
        let msg = format!("attempt {attempt} succeeded; output at {output}");
        self.st.phase = Phase::Succeeded;
        self.st.completion_time = Some(conditions::now());
        self.st.output = Some(output);
        self.condition(types::SUCCEEDED, true, "Completed", &msg);
        self.condition(types::READY, false, "Completed", "finished");
        self.st.message = Some(msg.clone());
        self.checkpoint_event();
        self.events.push(normal("Succeeded", "Complete", msg));
        self.commit().await?;
        Ok(Action::await_change())
    }

    /// Marks the job Failed for good (nothing more is created).
    async fn fail(&mut self, reason: &'static str, message: &str) -> Result<Action, Error> {
        self.st.phase = Phase::Failed;
        self.st.completion_time = Some(conditions::now());
        self.condition(types::FAILED, true, reason, message);
        if conditions::get(&self.st.conditions, types::READY).is_some() {
            self.condition(types::READY, false, reason, "failed");
        }
        self.st.message = Some(conditions::truncate(&one_line(message), 1024));
        self.events
            .push(warning(reason, "Fail", message.to_string()));
        self.commit().await?;
        Ok(Action::await_change())
    }

    async fn handle_failure(
        &mut self,
        failure: PodFailure,
        attempt: u32,
        plan: &Plan,
        job_name: &str,
        deadline: bool,
    ) -> Result<Action, Error> {
        let record = failure.record.clone();
        let reason = record.reason;
        self.st.failure = Some(record.clone());
        let what = format!(
            "attempt {attempt} failed ({reason:?}{}): {}",
            record
                .pod
                .as_ref()
                .map(|p| format!(", pod {p}"))
                .unwrap_or_default(),
            record.message
        );
        let counted = reason != FailureReason::Preempted;
        let max = self.ftj.spec.run_policy.max_restarts;
        let mut next_plan = plan.clone();
        let terminal: Option<(&'static str, String)> = if deadline {
            Some((
                "DeadlineExceeded",
                format!("{what}; spec.runPolicy.activeDeadlineSeconds was reached"),
            ))
        } else {
            match reason {
                FailureReason::ConfigError => Some((
                    "ConfigError",
                    format!("{what}; not retried: fix the configuration, model or data"),
                )),
                FailureReason::NonFinite => Some((
                    "NonFinite",
                    format!("{what}; not retried: the loss diverged (lower learning_rate)"),
                )),
                _ if counted && self.st.counted_restarts() >= max => Some((
                    "RestartLimitExceeded",
                    format!("{what}; spec.runPolicy.maxRestarts ({max}) restarts used"),
                )),
                FailureReason::OutOfMemory => match self.replan(plan) {
                    Ok(p) => {
                        next_plan = p;
                        None
                    }
                    Err(msg) => Some((
                        "DoesNotFit",
                        format!("{what}; re-planning with more headroom found nothing: {msg}"),
                    )),
                },
                _ => None,
            }
        };
        if let Some((r, msg)) = terminal {
            self.events.push(warning("AttemptFailed", "Fail", what));
            return self.fail(r, &msg).await;
        }
        let latest = self.old.latest_checkpoint().cloned();
        let next = attempt + 1;
        self.st.restarts.push(RestartRecord {
            attempt: next,
            reason,
            resumed_from_step: latest.as_ref().map(|c| c.step),
            counted,
            at: conditions::now(),
        });
        self.st.attempt = Some(next);
        self.st.phase = Phase::Pending;
        let from = latest
            .as_ref()
            .map(|c| format!("checkpoint step {} ({})", c.step, c.path))
            .unwrap_or_else(|| "the beginning (no checkpoint yet)".into());
        let mut resumed = format!("attempt {next} resumes from {from}");
        if next_plan != *plan {
            let summary = lf_planner::plan_summary(&next_plan);
            self.condition(
                types::PLANNED,
                true,
                "Replanned",
                &format!("re-planned after running out of memory: {summary}"),
            );
            resumed.push_str(&format!("; re-planned: {summary}"));
            self.st.plan = Some(next_plan);
        }
        if !counted {
            resumed.push_str(" (a preemption: does not count against maxRestarts)");
        }
        self.condition(types::READY, false, "Restarting", &resumed);
        self.st.message = Some(resumed.clone());
        self.events.push(warning("AttemptFailed", "Fail", what));
        self.events.push(normal("Resumed", "Restart", resumed));
        self.commit().await?;
        self.ctx
            .metrics
            .restarts
            .with_label_values(&[&format!("{reason:?}")])
            .inc();
        children::delete::<Job>(&self.ctx.client, &self.ns, job_name, true).await?;
        Ok(Action::requeue(Duration::from_millis(200)))
    }

    /// A plan needing less memory per GPU after an out-of-memory failure.
    fn replan(&self, plan: &Plan) -> Result<Plan, String> {
        let input = PlannerInput::from_job(&self.ftj).map_err(|e| one_line(&e.to_string()))?;
        let measured = self
            .old
            .progress
            .as_ref()
            .and_then(|p| p.measured_peak_bytes);
        let search = lf_planner::replan_after_oom(&input, plan, measured);
        search.chosen.clone().ok_or_else(|| {
            one_line(
                &search
                    .failure_message()
                    .unwrap_or_else(|| "no configuration fits".into()),
            )
        })
    }

    fn condition(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        conditions::set(
            &mut self.st.conditions,
            type_,
            status,
            reason,
            message,
            self.ftj.metadata.generation,
        );
    }

    /// Writes the operator's status fields (server-side apply on `/status`) when they changed,
    /// then publishes the events of the transitions it records.
    async fn commit(&mut self) -> Result<(), Error> {
        let new = conditions::operator_fields(&self.st);
        if new != conditions::operator_fields(&self.old) {
            let api: Api<FineTuneJob> = Api::namespaced(self.ctx.client.clone(), &self.ns);
            let body = serde_json::json!({
                "apiVersion": FineTuneJob::api_version(&()),
                "kind": FineTuneJob::kind(&()),
                "status": new,
            });
            api.patch_status(
                &self.name,
                &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
            self.old = self.st.clone();
        }
        let reference = self.ftj.object_ref(&());
        for ev in self.events.drain(..) {
            let event = Event {
                type_: ev.type_,
                reason: ev.reason.into(),
                note: Some(conditions::truncate(&ev.note, 1024)),
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

/// A failure the Job controller reports without a failed pod to read (deadline, backoff limit).
fn job_failure(job_name: &str, reason: &str, message: &str) -> PodFailure {
    PodFailure {
        record: lf_api::status::FailureRecord {
            reason: FailureReason::Runtime,
            rank: None,
            pod: None,
            node: None,
            exit_code: None,
            message: format!("Job {job_name} failed ({reason}): {message}"),
            hint: None,
        },
        last_checkpoint_step: None,
        index: 0,
    }
}
