//! Conditions and the operator's share of the status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use lf_api::status::Condition;
use lf_api::FineTuneJobStatus;
use serde_json::Value;

/// Condition types the operator sets.
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
}

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
    let message = truncate(message, 1024);
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

/// The condition of a type, if set.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether a condition is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Cuts a message to at most `max` bytes on a character boundary (Kubernetes limits condition and
/// event messages).
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

/// The fields of the status the operator owns: everything but the trainer's `progress` and
/// `checkpoints`. This is the body of the operator's server-side apply on `/status`.
pub fn operator_fields(status: &FineTuneJobStatus) -> Value {
    let mut value = serde_json::to_value(status).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.remove("progress");
        map.remove("checkpoints");
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut cs = Vec::new();
        set(&mut cs, "Ready", false, "PodsNotRunning", "0 of 2", Some(1));
        let t0 = cs[0].last_transition_time.clone();
        set(&mut cs, "Ready", false, "PodsNotRunning", "1 of 2", Some(1));
        assert_eq!(cs[0].last_transition_time, t0);
        assert_eq!(cs[0].message, "1 of 2");
        assert!(!is_true(&cs, "Ready"));
    }

    #[test]
    fn truncates_on_char_boundary() {
        let s = "é".repeat(600);
        let t = truncate(&s, 1024);
        assert!(t.len() <= 1024 && t.ends_with("..."));
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
