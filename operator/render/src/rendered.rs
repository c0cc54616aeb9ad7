//! The objects of one attempt, as typed values, JSON or one YAML stream.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

/// Everything one attempt of a FineTuneJob needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub config_map: ConfigMap,
    pub service: Service,
    pub network_policy: NetworkPolicy,
    pub job: Job,
}

impl Rendered {
    /// The objects as JSON, in creation order (RBAC, ConfigMap, Service, NetworkPolicy, Job), each with its
    /// `apiVersion` and `kind`.
    pub fn objects(&self) -> Vec<serde_json::Value> {
        // These k8s-openapi types always serialise (string-keyed maps only); a failure would be a
        // bug in k8s-openapi, shown as a null entry rather than a panic in the controller.
        vec![
            serde_json::to_value(&self.service_account).unwrap_or_default(),
            serde_json::to_value(&self.role).unwrap_or_default(),
            serde_json::to_value(&self.role_binding).unwrap_or_default(),
            serde_json::to_value(&self.config_map).unwrap_or_default(),
            serde_json::to_value(&self.service).unwrap_or_default(),
            serde_json::to_value(&self.network_policy).unwrap_or_default(),
            serde_json::to_value(&self.job).unwrap_or_default(),
        ]
    }

    /// The objects as one YAML stream (`---` before each document), in creation order. Strings
    /// that YAML 1.1 readers (kubectl) would take for booleans or numbers are quoted ([`crate::yaml`]).
    pub fn to_yaml_stream(&self) -> String {
        let docs = [
            yaml(&self.service_account),
            yaml(&self.role),
            yaml(&self.role_binding),
            yaml(&self.config_map),
            yaml(&self.service),
            yaml(&self.network_policy),
            yaml(&self.job),
        ];
        docs.iter().map(|d| format!("---\n{d}")).collect()
    }
}

fn yaml<T: serde::Serialize>(object: &T) -> String {
    crate::yaml::to_yaml(object)
        .unwrap_or_else(|e| format!("# cannot serialise this object: {e}\n"))
}
