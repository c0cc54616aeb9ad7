//! How a reconciliation ends when the attempt does not simply go on: a child that could not be
//! written, success, failure for good, and a failed attempt handed to the restart policy
//! ([`restart::decide`]), whose decision is carried out here.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::runtime::controller::Action;
use lf_api::Plan;
use lf_planner::PlannerInput;

use super::children::{self, WriteError};
use super::classify::PodFailure;
use super::context::Error;
use super::reconcile::Reconciler;
use super::restart::{self, Decision, Observation};
use crate::load::one_line;

impl Reconciler<'_> {
    /// What follows a child that could not be written: an API rejection of a rendered child
    /// (400/422: the spec produced an invalid object) or a name held by an object this job does
    /// not control fails the job; a name still held by an earlier job of this name is waited
    /// for; other errors propagate for a retry.
    pub(super) async fn write_failed(
        &mut self,
        result: Result<(), WriteError>,
    ) -> Result<Option<Action>, Error> {
        match result {
            Ok(()) => Ok(None),
            Err(WriteError::Api(kube::Error::Api(s))) if s.code == 400 || s.code == 422 => {
                let msg = format!("the API server rejected a rendered object: {}", s.message);
                Ok(Some(self.fail("InvalidSpec", &msg).await?))
            }
            Err(WriteError::Api(kube::Error::Api(s))) if s.code == 403 => {
                // A ResourceQuota or an admission policy: shown, and retried with backoff.
                self.draft.create_refused(&s.message);
                self.commit().await?;
                Err(kube::Error::Api(s).into())
            }
            Err(WriteError::Api(e)) => Err(e.into()),
            Err(e @ WriteError::NameConflict { .. }) => {
                Ok(Some(self.fail("NameConflict", &e.to_string()).await?))
            }
            Err(e @ WriteError::EarlierJob { .. }) => {
                self.draft.earlier_job_children(&e.to_string());
                self.commit().await?;
                Ok(Some(Action::requeue(self.ctx.config.wait_poll)))
            }
        }
    }

    pub(super) async fn succeed(&mut self, attempt: u32) -> Result<Action, Error> {
        let out = &self.ftj.spec.output;
        let path = out.sub_path.clone().unwrap_or_default();
        let output = format!("pvc://{}/{}", out.claim_name, path.trim_start_matches('/'));
        self.draft.succeeded(attempt, output);
        self.commit().await?;
        Ok(Action::await_change())
    }

    /// Marks the job Failed for good (nothing more is created).
    pub(super) async fn fail(
        &mut self,
        reason: &'static str,
        message: &str,
    ) -> Result<Action, Error> {
        self.draft.failed(reason, message);
        self.commit().await?;
        Ok(Action::await_change())
    }

    /// Carries out the restart policy's decision about a failed attempt.
    pub(super) async fn handle_failure(
        &mut self,
        failure: PodFailure,
        attempt: u32,
        plan: &Plan,
        job_name: &str,
        deadline: bool,
    ) -> Result<Action, Error> {
        let record = failure.record;
        let observed = Observation {
            attempt,
            failure: &record,
            deadline,
        };
        let decision = restart::decide(
            &observed,
            &self.draft.st,
            &self.ftj.spec.run_policy,
            plan,
            || self.replan(plan),
        );
        let what = observed.describe();
        self.draft.st.failure = Some(record.clone());
        self.draft.attempt_failed(what);
        let (next, counted, replanned) = match decision {
            Decision::Fail { reason, message } => return self.fail(reason, &message).await,
            Decision::Restart {
                attempt,
                counted,
                replanned,
            } => (attempt, counted, replanned),
        };
        self.draft
            .restarting(record.reason, next, counted, replanned);
        self.commit().await?;
        self.ctx
            .metrics
            .restarts
            .with_label_values(&[&format!("{:?}", record.reason)])
            .inc();
        children::delete::<Job>(&self.ctx.client, &self.ns, job_name, true).await?;
        Ok(Action::requeue(Duration::from_millis(200)))
    }

    /// A plan needing less memory per GPU after an out-of-memory failure.
    fn replan(&self, plan: &Plan) -> Result<Plan, String> {
        let input = PlannerInput::from_job(&self.ftj).map_err(|e| one_line(&e.to_string()))?;
        let measured = (self.draft.old.progress.as_ref()).and_then(|p| p.measured_peak_bytes);
        let search = lf_planner::replan_after_oom(&input, plan, measured);
        search.chosen.clone().ok_or_else(|| {
            one_line(
                &search
                    .failure_message()
                    .unwrap_or_else(|| "no configuration fits".into()),
            )
        })
    }
}
