//! One writer per output location: two FineTuneJobs writing to the same claim and path would
//! rotate (delete) each other's checkpoints and overwrite each other's adapter. Of two unfinished
//! jobs sharing a location, the older keeps it and the newer fails before it creates anything.

use kube::ResourceExt;
use lf_api::crd::VolumeLocation;
use lf_api::FineTuneJob;

/// `claim/path` with the path normalised (no leading, trailing or doubled slashes, no `.`).
fn location(out: &VolumeLocation) -> String {
    let path = out.sub_path.as_deref().unwrap_or_default();
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    format!("{}/{}", out.claim_name, parts.join("/"))
}

/// Whether `a` was created before `b` (by creation time, then name: one order for both).
fn older(a: &FineTuneJob, b: &FineTuneJob) -> bool {
    let time = |j: &FineTuneJob| j.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (time(a), a.name_any()) < (time(b), b.name_any())
}

/// Why `job` may not start: an older, unfinished FineTuneJob of its namespace writes to the same
/// location. `others` may include `job` itself.
pub fn output_conflict<'a>(
    job: &FineTuneJob,
    others: impl IntoIterator<Item = &'a FineTuneJob>,
) -> Option<String> {
    let mine = location(&job.spec.output);
    let holder = others.into_iter().find(|o| {
        o.namespace() == job.namespace()
            && o.uid() != job.uid()
            && o.metadata.deletion_timestamp.is_none()
            && !(o.status.as_ref()).is_some_and(|s| s.phase.is_finished())
            && location(&o.spec.output) == mine
            && older(o, job)
    })?;
    Some(format!(
        "output pvc://{mine} is in use by FineTuneJob {} (not finished): two jobs writing to one location would delete each other's checkpoints; choose another spec.output.subPath, or wait until {} ends",
        holder.name_any(),
        holder.name_any()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use lf_api::status::{FineTuneJobStatus, Phase};

    fn job(name: &str, created: &str, claim: &str, path: Option<&str>) -> FineTuneJob {
        let quickstart = include_str!("../../../examples/quickstart.yaml");
        let mut j: FineTuneJob = serde_yaml::from_str(quickstart).expect("the quick start");
        j.metadata.name = Some(name.into());
        j.metadata.namespace = Some("ns".into());
        j.metadata.uid = Some(format!("uid-{name}"));
        j.metadata.creation_timestamp = Some(Time(created.parse().expect("a time")));
        j.spec.output.claim_name = claim.into();
        j.spec.output.sub_path = path.map(str::to_string);
        j
    }

    #[test]
    fn the_older_unfinished_job_keeps_the_location() {
        let a = job("a", "2026-01-01T00:00:00Z", "out", Some("run"));
        let b = job("b", "2026-01-01T00:01:00Z", "out", Some("/run/"));
        let c = job("c", "2026-01-01T00:02:00Z", "out", Some("other"));
        let all = [a.clone(), b.clone(), c.clone()];
        assert_eq!(output_conflict(&a, &all), None, "the older runs");
        let msg = output_conflict(&b, &all).expect("the newer is refused");
        assert!(
            msg.starts_with("output pvc://out/run is in use by FineTuneJob a"),
            "{msg}"
        );
        assert_eq!(output_conflict(&c, &all), None, "another path");

        let mut done = a.clone();
        done.status = Some(FineTuneJobStatus {
            phase: Phase::Succeeded,
            ..Default::default()
        });
        assert_eq!(
            output_conflict(&b, [&done, &b]),
            None,
            "a finished job holds nothing"
        );

        // Same creation time: the name orders them, the same way from both sides.
        let x = job("x", "2026-01-01T00:00:00Z", "out", None);
        let y = job("y", "2026-01-01T00:00:00Z", "out", Some("."));
        assert_eq!(output_conflict(&x, [&x, &y]), None);
        assert!(output_conflict(&y, [&x, &y]).is_some());
    }
}
