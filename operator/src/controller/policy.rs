//! What the platform team lets a tenant's FineTuneJob ask for beyond the defaults (chart values
//! `tenantPolicy.*`): which images `spec.image` may name, which priority classes, and whether the
//! job may place its pods itself. Checked, pure, before each attempt's Job is created; a job that
//! asks for more fails with reason `NotAllowed` and a message naming the field and the setting.

use lf_api::FineTuneJob;

/// The operator's settings that bound what a FineTuneJob may ask for. The default allows all, as a
/// pod in the same namespace could.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantPolicy {
    /// Images `spec.image` may name: exact references, or prefixes ending in `*`
    /// (`registry.example.com/ml/*`). Empty: any image. The operator's own trainer image is
    /// always allowed (it is what an unset `spec.image` runs).
    pub allowed_images: Vec<String>,
    /// Priority classes `spec.scheduling.priorityClassName` may name. Empty: any.
    pub allowed_priority_classes: Vec<String>,
    /// Whether `spec.resources.nodeSelector`, `tolerations`, `affinity` and
    /// `spec.scheduling.schedulerName` may be set.
    pub allow_placement: bool,
}

impl TenantPolicy {
    /// No restriction (the chart's default).
    pub fn permissive() -> Self {
        TenantPolicy {
            allow_placement: true,
            ..TenantPolicy::default()
        }
    }
}

/// Whether `image` matches one of the allowed patterns.
fn image_allowed(image: &str, allowed: &[String]) -> bool {
    allowed
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => image.starts_with(prefix),
            None => image == pattern,
        })
}

/// Every way `job` asks for more than `policy` allows, one sentence each (empty: allowed).
pub fn violations(job: &FineTuneJob, policy: &TenantPolicy, default_image: &str) -> Vec<String> {
    let spec = &job.spec;
    let mut out = Vec::new();
    if let Some(image) = spec.image.as_deref() {
        if !policy.allowed_images.is_empty()
            && image != default_image
            && !image_allowed(image, &policy.allowed_images)
        {
            out.push(format!(
                "spec.image {image:?} is not among the operator's allowed images ({}); use one of them or leave spec.image unset for {default_image}",
                policy.allowed_images.join(", ")
            ));
        }
    }
    if let Some(class) = spec.scheduling.priority_class_name.as_deref() {
        if !policy.allowed_priority_classes.is_empty()
            && !policy.allowed_priority_classes.iter().any(|c| c == class)
        {
            out.push(format!(
                "spec.scheduling.priorityClassName {class:?} is not among the operator's allowed priority classes ({})",
                policy.allowed_priority_classes.join(", ")
            ));
        }
    }
    if !policy.allow_placement {
        let r = &spec.resources;
        let set: Vec<&str> = [
            (!r.node_selector.is_empty(), "spec.resources.nodeSelector"),
            (!r.tolerations.is_empty(), "spec.resources.tolerations"),
            (r.affinity.is_some(), "spec.resources.affinity"),
            (
                spec.scheduling.scheduler_name.is_some(),
                "spec.scheduling.schedulerName",
            ),
        ]
        .into_iter()
        .filter_map(|(present, field)| present.then_some(field))
        .collect();
        if !set.is_empty() {
            out.push(format!(
                "{} may not be set: the operator does not let FineTuneJobs place their own pods (tenantPolicy.allowPlacement: false); remove {}",
                set.join(", "),
                if set.len() == 1 { "it" } else { "them" }
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = "ghcr.io/lf-operator/lf-operator:0.1.0";

    fn job(extra_spec: &str) -> FineTuneJob {
        let resources = if extra_spec.contains("resources:") {
            ""
        } else {
            "  resources: {gpuMemoryGib: 80}\n"
        };
        let yaml = format!(
            "apiVersion: lf-operator.io/v1alpha1\nkind: FineTuneJob\nmetadata: {{name: j, namespace: ml}}\nspec:\n  model: {{name: m, source: {{claimName: models}}}}\n  data: {{source: {{claimName: data}}}}\n  output: {{claimName: out}}\n  training: {{stage: sft, finetuning_type: lora, dataset: d}}\n{resources}{extra_spec}"
        );
        serde_yaml::from_str(&yaml).expect("a FineTuneJob")
    }

    fn strict() -> TenantPolicy {
        TenantPolicy {
            allowed_images: vec![
                "registry.example.com/ml/*".into(),
                "ghcr.io/acme/trainer:2.0".into(),
            ],
            allowed_priority_classes: vec!["batch-low".into()],
            allow_placement: false,
        }
    }

    #[test]
    fn table() {
        let cases: &[(&str, &str, TenantPolicy, &[&str])] = &[
            ("nothing asked", "", strict(), &[]),
            ("any image when no list", "  image: evil.example/x:1\n", TenantPolicy::permissive(), &[]),
            ("prefix pattern", "  image: registry.example.com/ml/lf:3\n", strict(), &[]),
            ("exact reference", "  image: ghcr.io/acme/trainer:2.0\n", strict(), &[]),
            ("the default image itself", &format!("  image: {DEFAULT}\n"), strict(), &[]),
            ("another tag is not the exact one", "  image: ghcr.io/acme/trainer:2.1\n", strict(), &["spec.image \"ghcr.io/acme/trainer:2.1\""]),
            ("a look-alike registry", "  image: registry.example.com.evil/ml/lf:3\n", strict(), &["spec.image"]),
            ("allowed priority class", "  scheduling: {priorityClassName: batch-low}\n", strict(), &[]),
            ("other priority class", "  scheduling: {priorityClassName: system-node-critical}\n", strict(), &["priorityClassName \"system-node-critical\""]),
            ("placement allowed", "  resources: {gpuMemoryGib: 80, nodeSelector: {pool: a100}}\n", TenantPolicy::permissive(), &[]),
            ("placement refused", "  resources: {gpuMemoryGib: 80, nodeSelector: {pool: a100}, tolerations: [{operator: Exists}]}\n  scheduling: {schedulerName: my-scheduler}\n", strict(), &["spec.resources.nodeSelector, spec.resources.tolerations, spec.scheduling.schedulerName may not be set"]),
        ];
        for (name, spec, policy, expected) in cases {
            let got = violations(&job(spec), policy, DEFAULT);
            assert_eq!(got.len(), expected.len(), "{name}: {got:?}");
            for (g, e) in got.iter().zip(expected.iter()) {
                assert!(g.contains(e), "{name}: {g:?} does not contain {e:?}");
            }
        }
    }
}
