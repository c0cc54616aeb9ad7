//! The status transitions of one reconciliation, as pure functions on a [`Draft`]: the status
//! being prepared, the status last written, and the Events that announce the transitions (published
//! once the status recording them is written). Phases and conditions follow the one rule in
//! [`lf_api::conditions`].

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::EventType;
use lf_api::conditions::{self, types};
use lf_api::runtime::FailureReason;
use lf_api::status::{Phase, RestartRecord};
use lf_api::{FineTuneJobStatus, Plan};
use serde_json::Value;

use super::observe::{gang_running, pending_reason};
use crate::load::one_line;

/// An Event to publish once the status that records its transition is written.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingEvent {
    pub type_: EventType,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
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

/// The status one reconciliation prepares.
pub struct Draft {
    /// The status as it will be written.
    pub st: FineTuneJobStatus,
    /// The status as last read or written.
    pub old: FineTuneJobStatus,
    /// `metadata.generation` of the FineTuneJob, recorded on conditions.
    generation: Option<i64>,
    /// Events of the transitions in `st`, in order.
    pub events: Vec<PendingEvent>,
}

/// What `spec` says about pausing: `spec.suspend`, and the Kueue queue if any.
#[derive(Debug, Clone, Copy)]
pub struct Pausing<'a> {
    pub suspend: bool,
    pub queue: Option<&'a str>,
}

impl Draft {
    pub fn new(status: FineTuneJobStatus, generation: Option<i64>) -> Self {
        Draft {
            st: status.clone(),
            old: status,
            generation,
            events: Vec::new(),
        }
    }

    pub(super) fn condition(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        conditions::set(
            &mut self.st.conditions,
            type_,
            status,
            reason,
            message,
            self.generation,
        );
    }

    pub(super) fn phase(&mut self, phase: Phase, reason: &str, message: &str) {
        conditions::set_phase(&mut self.st, phase, reason, message, self.generation);
    }

    /// The operator's fields to write, when they changed since the last write.
    pub fn changes(&self) -> Option<Value> {
        let new = operator_fields(&self.st);
        (new != operator_fields(&self.old)).then_some(new)
    }

    /// The status was written.
    pub fn written(&mut self) {
        self.old = self.st.clone();
    }

    /// The planner chose `plan`: attempt 1 starts.
    pub fn planned(&mut self, plan: Plan, method: String) {
        let summary = lf_planner::plan_summary(&plan);
        self.st.plan = Some(plan);
        self.st.attempt = Some(1);
        self.st.method = Some(method);
        self.phase(Phase::Planning, "Planned", &summary);
        self.st.message = Some(format!("planned: {summary}"));
        self.events.push(normal("Planned", "Plan", summary));
    }

    /// The job cannot be planned (the caller then fails it).
    pub fn not_planned(&mut self, method: String, reason: &str, message: &str) {
        // The Method column shows for a job that does not fit too.
        self.st.method = Some(method);
        self.condition(types::PLANNED, false, reason, message);
    }

    /// Phase and conditions of a live attempt.
    pub fn observe_running(
        &mut self,
        pausing: Pausing,
        plan: &Plan,
        attempt: u32,
        job: &Job,
        pods: &[Pod],
    ) {
        let was_suspended = self.old.phase == Phase::Suspended;
        let job_suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
        let from = self
            .old
            .latest_checkpoint()
            .map(|c| format!("checkpoint step {}", c.step))
            .unwrap_or_else(|| "the beginning".into());
        if pausing.suspend {
            let msg = format!("suspended (spec.suspend); resuming continues from {from}");
            self.phase(Phase::Suspended, "Suspended", &msg);
            if !was_suspended {
                self.events.push(normal("Suspended", "Suspend", msg));
            }
            return;
        }
        if was_suspended || conditions::is_true(&self.st.conditions, types::SUSPENDED) {
            let msg = format!("resumed attempt {attempt} from {from}");
            self.condition(types::SUSPENDED, false, "Resumed", &msg);
            self.events.push(normal("Resumed", "Resume", msg));
        }
        if job_suspended {
            let queue = pausing.queue.unwrap_or_default();
            let msg = format!("waiting for Kueue to admit the Job (queue {queue})");
            self.phase(Phase::Pending, "WaitingForAdmission", &msg);
        } else if gang_running(pods, plan.nodes) {
            let msg = format!("attempt {attempt}: all {} pods running", plan.nodes);
            if self.old.phase != Phase::Running {
                self.events.push(normal("Started", "Start", msg.clone()));
            }
            self.phase(Phase::Running, "AllPodsRunning", &msg);
        } else {
            let (reason, msg) = pending_reason(pods, plan.nodes);
            self.phase(Phase::Pending, &reason, &msg);
            self.st.message = Some(format!("attempt {attempt}: {msg}"));
        }
    }

    /// Announces a newly recorded checkpoint (once: the condition remembers the last announced).
    pub fn checkpoint_event(&mut self) {
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

    /// Announces, once, that the running attempt resumed from an older checkpoint than the one it
    /// was given (the trainer says so in `progress.resumeWarning`).
    pub fn resume_fallback_event(&mut self) {
        let Some(note) = self
            .old
            .progress
            .as_ref()
            .and_then(|p| p.resume_warning.clone())
        else {
            return;
        };
        if conditions::get(&self.st.conditions, types::RESUME_FALLBACK)
            .is_some_and(|cond| cond.message == note)
        {
            return;
        }
        self.condition(types::RESUME_FALLBACK, true, "CheckpointUnusable", &note);
        self.events.push(warning("ResumeFallback", "Resume", note));
    }

    /// The Job completed; the result is at `output`.
    pub fn succeeded(&mut self, attempt: u32, output: String) {
        let msg = format!("attempt {attempt} succeeded; output at {output}");
        self.phase(Phase::Succeeded, "Completed", &msg);
        self.st.output = Some(output);
        self.checkpoint_event();
        self.events.push(normal("Succeeded", "Complete", msg));
    }

    /// The job fails for good.
    pub fn failed(&mut self, reason: &'static str, message: &str) {
        self.phase(Phase::Failed, reason, message);
        self.st.message = Some(conditions::truncate(
            &one_line(message),
            conditions::MAX_MESSAGE,
        ));
        self.events
            .push(warning(reason, "Fail", message.to_string()));
    }

    /// An attempt failed (`what` says how); the caller then fails the job or restarts it.
    pub fn attempt_failed(&mut self, what: String) {
        self.events.push(warning("AttemptFailed", "Fail", what));
    }

    /// Attempt `next` starts from the latest checkpoint, with `replanned` if re-planning changed
    /// the plan.
    pub fn restarting(
        &mut self,
        reason: FailureReason,
        next: u32,
        counted: bool,
        replanned: Option<Plan>,
    ) {
        let latest = self.old.latest_checkpoint().cloned();
        self.st.record_restart(RestartRecord {
            attempt: next,
            reason,
            resumed_from_step: latest.as_ref().map(|c| c.step),
            counted,
            at: conditions::now(),
        });
        self.st.attempt = Some(next);
        let from = latest
            .as_ref()
            .map(|c| format!("checkpoint step {} ({})", c.step, c.path))
            .unwrap_or_else(|| "the beginning (no checkpoint yet)".into());
        let mut resumed = format!("attempt {next} resumes from {from}");
        if let Some(plan) = replanned {
            let summary = lf_planner::plan_summary(&plan);
            self.condition(
                types::PLANNED,
                true,
                "Replanned",
                &format!("re-planned after running out of memory: {summary}"),
            );
            resumed.push_str(&format!("; re-planned: {summary}"));
            self.st.plan = Some(plan);
        }
        if !counted {
            resumed.push_str(" (a preemption: does not count against maxRestarts)");
        }
        self.phase(Phase::Pending, "Restarting", &resumed);
        self.events.push(normal("Resumed", "Restart", resumed));
    }
}

/// The fields of the status the operator owns: everything but the trainer's `progress` and
/// `checkpoints`. This is the body of the operator's server-side apply on `/status`.
pub fn operator_fields(status: &FineTuneJobStatus) -> Value {
    let mut value = serde_json::to_value(status).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.remove("progress");
        map.remove("checkpoints");
        map.remove("predict");
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use lf_api::status::CheckpointRecord;

    fn job(suspend: bool) -> Job {
        serde_json::from_value(serde_json::json!({"spec": {"suspend": suspend, "template": {}}}))
            .unwrap()
    }

    fn plan() -> Plan {
        serde_json::from_value(serde_json::json!({
            "modelParams": 1, "trainableParams": 1, "gpus": 1, "nodes": 1, "gpusPerNode": 1,
            "zeroStage": 0, "offloadOptimizer": false, "microBatchSize": 2,
            "gradientAccumulationSteps": 4, "gpuMemoryBytes": 1, "headroomBytes": 0, "fits": true,
            "perGpu": {"weightsBytes": 0, "gradientsBytes": 0, "optimizerBytes": 0,
                       "activationsBytes": 0, "logitsBytes": 0, "buffersBytes": 0,
                       "overheadBytes": 0, "peakBytes": 0},
            "summary": ""
        }))
        .unwrap()
    }

    fn reasons(d: &Draft) -> Vec<&'static str> {
        d.events.iter().map(|e| e.reason).collect()
    }

    const RUN: Pausing = Pausing {
        suspend: false,
        queue: None,
    };

    #[test]
    fn suspend_then_resume_announces_each_once() {
        let mut d = Draft::new(FineTuneJobStatus::default(), Some(2));
        let suspend = Pausing {
            suspend: true,
            queue: None,
        };
        d.observe_running(suspend, &plan(), 1, &job(true), &[]);
        assert_eq!(d.st.phase, Phase::Suspended);
        assert_eq!(reasons(&d), ["Suspended"]);
        d.written();
        d.events.clear();
        d.observe_running(suspend, &plan(), 1, &job(true), &[]);
        assert!(d.events.is_empty() && d.changes().is_none());

        d.observe_running(RUN, &plan(), 1, &job(false), &[]);
        assert_eq!(reasons(&d), ["Resumed"]);
        assert!(!conditions::is_true(&d.st.conditions, types::SUSPENDED));
        assert_eq!(d.st.phase, Phase::Pending);
    }

    #[test]
    fn a_queued_job_waits_for_admission() {
        let mut d = Draft::new(FineTuneJobStatus::default(), None);
        let queued = Pausing {
            suspend: false,
            queue: Some("team-a"),
        };
        d.observe_running(queued, &plan(), 1, &job(true), &[]);
        let ready = conditions::get(&d.st.conditions, types::READY).unwrap();
        assert_eq!(
            (ready.reason.as_str(), d.st.phase),
            ("WaitingForAdmission", Phase::Pending)
        );
        assert!(ready.message.contains("queue team-a"));
    }

    #[test]
    fn a_checkpoint_is_announced_once() {
        let st = FineTuneJobStatus {
            checkpoints: vec![CheckpointRecord {
                step: 40,
                path: "/output/checkpoint-40".into(),
                saved_at: conditions::now(),
                loss: None,
            }],
            ..Default::default()
        };
        let mut d = Draft::new(st, None);
        d.checkpoint_event();
        d.checkpoint_event();
        assert_eq!(reasons(&d), ["CheckpointSaved"]);
    }

    #[test]
    fn a_resume_fallback_is_a_condition_and_one_warning() {
        let mut d = Draft::new(FineTuneJobStatus::default(), None);
        d.resume_fallback_event();
        assert!(d.events.is_empty(), "no warning, no event");
        let note = "resume_from_checkpoint: /output/checkpoint-60 cannot be used (checksum mismatch): resuming from /output/checkpoint-40";
        let st = FineTuneJobStatus {
            progress: Some(lf_api::status::Progress {
                resume_warning: Some(note.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut d = Draft::new(st, None);
        d.resume_fallback_event();
        d.resume_fallback_event();
        assert_eq!(reasons(&d), ["ResumeFallback"]);
        let cond = conditions::get(&d.st.conditions, types::RESUME_FALLBACK).unwrap();
        assert_eq!(
            (cond.status.as_str(), cond.message.as_str()),
            ("True", note)
        );
    }

    #[test]
    fn a_restart_records_the_checkpoint_and_the_new_plan() {
        let mut d = Draft::new(FineTuneJobStatus::default(), None);
        d.planned(plan(), "lora".into());
        d.written();
        let mut smaller = plan();
        smaller.micro_batch_size = 1;
        d.restarting(FailureReason::OutOfMemory, 2, true, Some(smaller.clone()));
        assert_eq!(d.st.attempt, Some(2));
        assert_eq!(d.st.plan.as_ref(), Some(&smaller));
        let planned = conditions::get(&d.st.conditions, types::PLANNED).unwrap();
        assert_eq!(planned.reason, "Replanned");
        assert!(d
            .st
            .message
            .as_deref()
            .unwrap()
            .starts_with("attempt 2 resumes from the beginning (no checkpoint yet); re-planned"));
        assert_eq!(reasons(&d), ["Planned", "Resumed"]);
    }

    #[test]
    fn failing_keeps_the_message_on_one_line() {
        let mut d = Draft::new(FineTuneJobStatus::default(), None);
        d.failed("ConfigError", "bad dataset\n  check spec.training.dataset");
        assert_eq!(
            d.st.message.as_deref(),
            Some("bad dataset; check spec.training.dataset")
        );
        assert_eq!(d.st.phase, Phase::Failed);
        assert!(d.st.completion_time.is_some());
    }

    #[test]
    fn operator_fields_leave_the_trainers_alone() {
        let st = FineTuneJobStatus {
            progress: Some(Default::default()),
            message: Some("m".into()),
            ..Default::default()
        };
        let v = operator_fields(&st);
        assert!(v.get("progress").is_none());
        assert_eq!(v["phase"], "Pending");
    }
}
