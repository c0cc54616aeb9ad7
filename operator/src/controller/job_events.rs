//! Why a Job has no pods: the Job controller cannot create them (a ResourceQuota, Pod Security
//! admission, a missing ServiceAccount) and says so only in a `FailedCreate` Event on the Job.
//! The operator reads it while an attempt's Job has had no pods for a while, and puts it on the
//! FineTuneJob's status instead of "0 of N pods running".

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::{Api, Client};

/// How long after the Job controller started a Job it may have no pods before its events are
/// read (pods normally appear within a second or two; a loaded API server takes longer).
pub const NO_PODS_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// The newest `FailedCreate` message recorded for the Job `job`, if any.
pub async fn failed_create(
    client: &Client,
    namespace: &str,
    job: &str,
) -> Result<Option<String>, kube::Error> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let selector = format!("regarding.kind=Job,regarding.name={job},reason=FailedCreate");
    let events = api.list(&ListParams::default().fields(&selector)).await?;
    Ok(newest_note(events.items))
}

/// The note of the newest event (by its last occurrence).
fn newest_note(events: Vec<Event>) -> Option<String> {
    let when = |e: &Event| -> Option<Time> {
        (e.series.as_ref().map(|s| Time(s.last_observed_time.0)))
            .or_else(|| e.event_time.as_ref().map(|t| Time(t.0)))
            .or_else(|| e.deprecated_last_timestamp.clone())
            .or_else(|| e.metadata.creation_timestamp.clone())
    };
    let newest = events.into_iter().max_by_key(|e| when(e).map(|t| t.0))?;
    newest.note.filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_newest_occurrence_speaks() {
        let event = |note: &str, last: &str| -> Event {
            serde_json::from_value(json!({
                "metadata": {"name": note, "creationTimestamp": "2026-01-01T00:00:00Z"},
                "eventTime": null,
                "deprecatedLastTimestamp": last,
                "reason": "FailedCreate",
                "note": note,
            }))
            .expect("an event")
        };
        let events = vec![
            event("old", "2026-01-01T00:00:01Z"),
            event("exceeded quota: pods=0", "2026-01-01T00:05:00Z"),
            event("middle", "2026-01-01T00:02:00Z"),
        ];
        assert_eq!(
            newest_note(events).as_deref(),
            Some("exceeded quota: pods=0")
        );
        assert_eq!(newest_note(vec![]), None);
    }
}
