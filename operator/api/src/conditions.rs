//! The conditions of a FineTuneJob and the phase transitions that set them: one implementation,
//! used by the operator's controller and by `lf-operator local`, so that a job's status means the
//! same wherever it ran.
//!
//! What must stay true: `lastTransitionTime` moves only when a condition's status does (reason
//! and message may change without a transition), and each phase sets the same conditions
//! ([`set_phase`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::status::{Condition, FineTuneJobStatus, Phase};

/// The condition types of a FineTuneJob.
pub mod types {
    /// The planner chose a configuration (`False`: the job cannot fit or is invalid).
    pub const PLANNED: &str = "Planned";
    /// Every pod of the gang is running.
    pub const READY: &str = "Ready";
    pub const SUSPENDED: &str = "Suspended";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    /// The newest checkpoint the operator has announced (message `step N: PATH`).
    pub const CHECKPOINT_SAVED: &str = "CheckpointSaved";
    /// The running attempt resumed from an older checkpoint than the one it was given (message:
    /// the trainer's `progress.resumeWarning`).
    pub const RESUME_FALLBACK: &str = "ResumeFallback";
    /// The result is served (`spec.serve`): `True` once a replica is ready; `False` while the
    /// server starts, or when it cannot (reason and message say why).
    pub const SERVING: &str = "Serving";
}

/// Kubernetes limits condition (and event) messages; longer ones are cut to this many bytes.
pub const MAX_MESSAGE: usize = 1024;

pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Sets a condition; `lastTransitionTime` changes only when the status does.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" };
    let message = truncate(message, MAX_MESSAGE);
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now();
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: now(),
            observed_generation: generation,
        }),
    }
}

/// Moves `status` to `phase` with `message`, setting the conditions and times the phase implies:
///
/// | phase | conditions | times |
/// |---|---|---|
/// | Planning | `Planned=True` | |
/// | Pending | `Ready=False` | |
/// | Running | `Ready=True` | `startTime` (the first time) |
/// | Suspended | `Suspended=True`, `Ready=False` (`suspended`) | |
/// | Succeeded | `Succeeded=True`, `Ready=False` (`finished`) | `completionTime` |
/// | Failed | `Failed=True`, `Ready=False` (`failed`) when `Ready` was set | `completionTime` |
///
/// Each condition gets `reason`, and `message` unless noted. Leaving suspension (`Suspended=False`,
/// `Resumed`) is a transition of its own, recorded by the caller that resumes.
pub fn set_phase(
    status: &mut FineTuneJobStatus,
    phase: Phase,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let mut condition = |type_: &str, on: bool, message: &str| {
        set(
            &mut status.conditions,
            type_,
            on,
            reason,
            message,
            generation,
        )
    };
    match phase {
        Phase::Planning => condition(types::PLANNED, true, message),
        Phase::Pending => condition(types::READY, false, message),
        Phase::Running => condition(types::READY, true, message),
        Phase::Suspended => {
            condition(types::SUSPENDED, true, message);
            condition(types::READY, false, "suspended");
        }
        Phase::Succeeded => {
            condition(types::SUCCEEDED, true, message);
            condition(types::READY, false, "finished");
        }
        Phase::Failed => {
            condition(types::FAILED, true, message);
            if get(&status.conditions, types::READY).is_some() {
                set(
                    &mut status.conditions,
                    types::READY,
                    false,
                    reason,
                    "failed",
                    generation,
                );
            }
        }
    }
    match phase {
        Phase::Running => {
            status.start_time.get_or_insert_with(now);
        }
        Phase::Succeeded | Phase::Failed => status.completion_time = Some(now()),
        Phase::Pending | Phase::Planning | Phase::Suspended => {}
    }
    status.phase = phase;
    status.message = Some(message.to_string());
}

/// The condition of a type, if set.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether a condition is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Cuts a message to at most `max` bytes on a character boundary.
pub fn truncate(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut cs = Vec::new();
        set(&mut cs, "Ready", false, "PodsNotRunning", "0 of 2", Some(1));
        cs[0].last_transition_time = at("2026-01-01T00:00:00Z");
        set(&mut cs, "Ready", false, "PodsNotRunning", "1 of 2", Some(1));
        assert_eq!(cs[0].last_transition_time, at("2026-01-01T00:00:00Z"));
        assert_eq!(cs[0].message, "1 of 2");
        assert!(!is_true(&cs, "Ready"));
        set(&mut cs, "Ready", true, "AllPodsRunning", "2 of 2", Some(1));
        assert_ne!(cs[0].last_transition_time, at("2026-01-01T00:00:00Z"));
        assert!(is_true(&cs, "Ready"));
    }

    #[test]
    fn set_phase_keeps_the_transition_time_of_an_unchanged_condition() {
        let mut st = FineTuneJobStatus::default();
        set_phase(&mut st, Phase::Running, "AllPodsRunning", "attempt 1", None);
        st.conditions[0].last_transition_time = at("2026-01-01T00:00:00Z");
        set_phase(
            &mut st,
            Phase::Running,
            "AllPodsRunning",
            "attempt 1 again",
            None,
        );
        let ready = get(&st.conditions, types::READY).unwrap();
        assert_eq!(ready.last_transition_time, at("2026-01-01T00:00:00Z"));
        assert_eq!(ready.message, "attempt 1 again");
        assert_eq!(st.message.as_deref(), Some("attempt 1 again"));
    }

    /// `(type, status, message)` of every condition, in order.
    type Shown = Vec<(String, String, String)>;

    fn shown(st: &FineTuneJobStatus) -> Shown {
        st.conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.message.clone()))
            .collect()
    }

    fn triple(t: &str, s: &str, m: &str) -> (String, String, String) {
        (t.into(), s.into(), m.into())
    }

    #[test]
    fn each_phase_sets_its_conditions_and_times() {
        let cases: [(Phase, Shown); 6] = [
            (Phase::Planning, vec![triple("Planned", "True", "m")]),
            (Phase::Pending, vec![triple("Ready", "False", "m")]),
            (Phase::Running, vec![triple("Ready", "True", "m")]),
            (
                Phase::Suspended,
                vec![
                    triple("Suspended", "True", "m"),
                    triple("Ready", "False", "suspended"),
                ],
            ),
            (
                Phase::Succeeded,
                vec![
                    triple("Succeeded", "True", "m"),
                    triple("Ready", "False", "finished"),
                ],
            ),
            // No Ready condition before: a job that failed before it ran gets none.
            (Phase::Failed, vec![triple("Failed", "True", "m")]),
        ];
        for (phase, want) in cases {
            let mut st = FineTuneJobStatus::default();
            set_phase(&mut st, phase, "R", "m", Some(3));
            assert_eq!(shown(&st), want, "{phase:?}");
            assert_eq!(st.phase, phase);
            assert_eq!(st.message.as_deref(), Some("m"));
            assert!(st.conditions.iter().all(|c| c.reason == "R"));
            assert!(st
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(3)));
            assert_eq!(
                st.start_time.is_some(),
                phase == Phase::Running,
                "{phase:?}"
            );
            assert_eq!(
                st.completion_time.is_some(),
                phase.is_finished(),
                "{phase:?}"
            );
        }
    }

    #[test]
    fn a_failed_job_that_ran_is_no_longer_ready() {
        let mut st = FineTuneJobStatus::default();
        set_phase(&mut st, Phase::Running, "AllPodsRunning", "running", None);
        let started = st.start_time.clone();
        set_phase(&mut st, Phase::Failed, "ConfigError", "bad dataset", None);
        assert_eq!(
            shown(&st),
            vec![
                triple("Ready", "False", "failed"),
                triple("Failed", "True", "bad dataset")
            ]
        );
        assert_eq!(st.start_time, started);
    }

    #[test]
    fn truncates_on_char_boundary() {
        let s = "é".repeat(600);
        let t = truncate(&s, 1024);
        assert!(t.len() <= 1024 && t.ends_with("..."));
    }
}
