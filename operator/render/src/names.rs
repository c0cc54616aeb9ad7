//! Names of the rendered objects, and the checks that keep them within Kubernetes' limits.
//!
//! A FineTuneJob named `NAME` (a DNS-1035 label of at most [`MAX_NAME_LENGTH`] characters) owns:
//!
//! | object | name | longest |
//! |---|---|---|
//! | headless Service | `NAME` | 40 |
//! | ConfigMap | `NAME-config` | 47 |
//! | ServiceAccount, Role, RoleBinding | `NAME-trainer` | 48 |
//! | Indexed Job of attempt `A` | `NAME-A` | 51 (attempt < 10^10) |
//!
//! Each pod of attempt `A` gets the hostname `NAME-A-INDEX` from the Indexed Job, and Kubernetes
//! names the pod `NAME-A-INDEX-xxxxx`. With at most 999 attempts and 999 pods that is
//! 40 + 4 + 4 + 6 = 54 characters, inside the 63 a hostname (a DNS label) may have. The Service
//! name doubles as each pod's `subdomain`, which must be a DNS-1035 label, hence the name rule.

use lf_api::crd::MAX_NAME_LENGTH;
use lf_api::FineTuneJob;

use crate::error::RenderError;

/// The longest DNS label (a hostname, a label value, a Service name).
pub const DNS_LABEL_MAX: usize = 63;

/// The Indexed Job of one attempt: `<name>-<attempt>`.
pub fn job_name(job: &FineTuneJob, attempt: u32) -> String {
    format!("{}-{attempt}", base_name(job))
}

/// The headless Service that gives every pod a stable DNS name (`<job_name>-<index>.<service>`).
pub fn service_name(job: &FineTuneJob) -> String {
    base_name(job).to_string()
}

/// The NetworkPolicy of the trainer pods.
pub fn network_policy_name(job: &FineTuneJob) -> String {
    format!("{}-trainer", base_name(job))
}

/// The ConfigMap holding the rendered training config.
pub fn config_map_name(job: &FineTuneJob) -> String {
    format!("{}-config", base_name(job))
}

/// The ServiceAccount the trainer pods run as, and its Role and RoleBinding.
pub fn service_account_name(job: &FineTuneJob) -> String {
    format!("{}-trainer", base_name(job))
}

/// The Deployment, Service and ConfigMap of the result's server (`spec.serve`).
pub fn serve_name(job: &FineTuneJob) -> String {
    format!("{}-serve", base_name(job))
}

fn base_name(job: &FineTuneJob) -> &str {
    job.metadata.name.as_deref().unwrap_or_default()
}

/// Checks that the FineTuneJob's name can name every child: a DNS-1035 label (lowercase letters,
/// digits and `-`, starting with a letter, ending with a letter or digit) of at most
/// [`MAX_NAME_LENGTH`] characters.
pub fn validate_name(job: &FineTuneJob) -> Result<&str, RenderError> {
    let name = job
        .metadata
        .name
        .as_deref()
        .ok_or(RenderError::MissingName)?;
    let invalid = |why: String| RenderError::InvalidName {
        name: name.to_string(),
        why,
    };
    if name.is_empty() {
        return Err(RenderError::MissingName);
    }
    if name.len() > MAX_NAME_LENGTH {
        return Err(invalid(format!(
            "is {} characters; the limit is {MAX_NAME_LENGTH} so that pod hostnames (`<name>-<attempt>-<index>`) stay within {DNS_LABEL_MAX}",
            name.len()
        )));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid("must start with a lowercase letter (it names the pods' DNS subdomain, a DNS-1035 label)".into()));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(invalid(format!(
            "contains `{bad}`; use lowercase letters, digits and `-` only (a DNS-1035 label)"
        )));
    }
    if name.ends_with('-') {
        return Err(invalid("must end with a letter or digit".into()));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str) -> FineTuneJob {
        let mut job = crate::tests_support::minimal_job();
        job.metadata.name = Some(name.to_string());
        job
    }

    #[test]
    fn names_are_derived_from_the_job() {
        let j = job("llama");
        assert_eq!(job_name(&j, 3), "llama-3");
        assert_eq!(service_name(&j), "llama");
        assert_eq!(config_map_name(&j), "llama-config");
        assert_eq!(service_account_name(&j), "llama-trainer");
    }

    #[test]
    fn longest_name_keeps_pod_hostnames_within_a_dns_label() {
        let name = format!("a{}", "b".repeat(MAX_NAME_LENGTH - 1));
        let j = job(&name);
        validate_name(&j).unwrap();
        // The Job controller names pods `<job>-<index>-<5 random>`; hostnames are `<job>-<index>`.
        let pod = format!("{}-999-abcde", job_name(&j, 999));
        assert!(
            pod.len() <= DNS_LABEL_MAX,
            "{} > {DNS_LABEL_MAX}",
            pod.len()
        );
        assert!(service_account_name(&j).len() <= DNS_LABEL_MAX);
    }

    #[test]
    fn rejects_names_that_cannot_name_children() {
        for (name, needle) in [
            ("", "metadata.name"),
            ("9lives", "start with a lowercase letter"),
            ("Llama", "start with a lowercase letter"),
            ("llama.3", "contains `.`"),
            ("llama-", "end with a letter or digit"),
        ] {
            let err = validate_name(&job(name)).unwrap_err().to_string();
            assert!(err.contains(needle), "{name}: {err}");
        }
        let long = "a".repeat(MAX_NAME_LENGTH + 1);
        let err = validate_name(&job(&long)).unwrap_err().to_string();
        assert!(err.contains("the limit is 40"), "{err}");
    }
}
