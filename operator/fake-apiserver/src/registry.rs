//! The resource types the fake serves and how request paths map onto them.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// One served resource type (a group/version/plural with its kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group (`""` for the core group).
    pub group: String,
    pub version: String,
    /// Plural name in paths (`pods`, `finetunejobs`).
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// Whether `/status` is a subresource (writes to the main resource then ignore `status`,
    /// writes to `/status` change nothing else).
    pub status_subresource: bool,
}

impl ResourceType {
    pub fn new(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        status: bool,
    ) -> Self {
        ResourceType {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            status_subresource: status,
        }
    }

    /// `v1` or `group/version`, as in an object's `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The resource types of a CustomResourceDefinition (one per served version).
    pub fn from_crd(crd: &CustomResourceDefinition) -> Vec<ResourceType> {
        let spec = &crd.spec;
        spec.versions
            .iter()
            .filter(|v| v.served)
            .map(|v| ResourceType {
                group: spec.group.clone(),
                version: v.name.clone(),
                plural: spec.names.plural.clone(),
                kind: spec.names.kind.clone(),
                namespaced: spec.scope == "Namespaced",
                status_subresource: v
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
            })
            .collect()
    }
}

/// The built-in types an operator typically touches: core/v1, batch/v1, rbac/v1, networking/v1, coordination/v1
/// and both event APIs.
pub fn builtin_types() -> Vec<ResourceType> {
    vec![
        ResourceType::new("", "v1", "namespaces", "Namespace", false, true),
        ResourceType::new("", "v1", "pods", "Pod", true, true),
        ResourceType::new("", "v1", "services", "Service", true, true),
        ResourceType::new("", "v1", "configmaps", "ConfigMap", true, false),
        ResourceType::new("", "v1", "secrets", "Secret", true, false),
        ResourceType::new("", "v1", "serviceaccounts", "ServiceAccount", true, false),
        ResourceType::new(
            "",
            "v1",
            "persistentvolumeclaims",
            "PersistentVolumeClaim",
            true,
            true,
        ),
        ResourceType::new("", "v1", "events", "Event", true, false),
        ResourceType::new("batch", "v1", "jobs", "Job", true, true),
        ResourceType::new("apps", "v1", "deployments", "Deployment", true, true),
        ResourceType::new(
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "Role",
            true,
            false,
        ),
        ResourceType::new(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
            false,
        ),
        ResourceType::new(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
            false,
        ),
        ResourceType::new(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            false,
        ),
        ResourceType::new(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            true,
            false,
        ),
        ResourceType::new("coordination.k8s.io", "v1", "leases", "Lease", true, false),
        ResourceType::new("events.k8s.io", "v1", "events", "Event", true, false),
    ]
}

/// What a request path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index into the registry.
    pub type_index: usize,
    /// `None`: all namespaces (or a cluster-scoped type).
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `status` (other subresources are not served).
    pub subresource: Option<String>,
}

/// Why a path is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the server could not find the requested resource: {0}")]
    NotFound(String),
}

/// Maps `/api/v1/...` and `/apis/<group>/<version>/...` onto a registered type.
pub fn parse_path(types: &[ResourceType], path: &str) -> Result<Target, PathError> {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let not_found = || PathError::NotFound(path.to_string());
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found()),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(not_found()),
    };
    let type_index = types
        .iter()
        .position(|t| t.group == group && t.version == version && t.plural == plural)
        .ok_or_else(not_found)?;
    if namespace.is_some() && !types[type_index].namespaced {
        return Err(not_found());
    }
    if let Some(sub) = &subresource {
        if sub != "status" {
            return Err(not_found());
        }
    }
    Ok(Target {
        type_index,
        namespace,
        name,
        subresource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_core_and_group_paths() {
        let types = builtin_types();
        let t = parse_path(&types, "/api/v1/namespaces/default/pods/p-1/status").unwrap();
        assert_eq!(types[t.type_index].kind, "Pod");
        assert_eq!(
            (
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.subresource.as_deref()
            ),
            (Some("default"), Some("p-1"), Some("status"))
        );
        let t = parse_path(&types, "/apis/batch/v1/jobs").unwrap();
        assert_eq!(
            (types[t.type_index].kind.as_str(), t.namespace, t.name),
            ("Job", None, None)
        );
        let t = parse_path(&types, "/api/v1/namespaces/default").unwrap();
        assert_eq!(
            (types[t.type_index].kind.as_str(), t.name.as_deref()),
            ("Namespace", Some("default"))
        );
        assert!(parse_path(&types, "/apis/apps/v1/namespaces/x/statefulsets").is_err());
        assert!(parse_path(&types, "/api/v1/namespaces/d/pods/p/exec").is_err());
    }
}
