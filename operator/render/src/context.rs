//! What the caller decides about an attempt, beyond the FineTuneJob and its plan.

/// What the caller decides, beyond the FineTuneJob and its plan.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderContext {
    /// The trainer image when `spec.image` is unset (the operator's configured image).
    pub default_image: String,
    /// The attempt number, from 1; each attempt is a new Indexed Job.
    pub attempt: u32,
    /// The checkpoint directory inside the pod to resume from (e.g. `/output/checkpoint-200`);
    /// `None` renders `resume_from_checkpoint: auto`.
    pub resume_from: Option<String>,
    /// Whether service-mesh sidecars may be injected when the job does not allow them itself
    /// (`spec.runPolicy.allowSidecarInjection`); off renders the opt-out labels and annotations.
    pub sidecar_injection_default: bool,
    /// Who may connect to the trainer pods' metrics port besides the job's own pods (e.g. the
    /// Prometheus namespace): the NetworkPolicy's second ingress rule, none when empty.
    pub metrics_from: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>,
}
