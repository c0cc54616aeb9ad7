//! A container's environment and command line, resolved as the kubelet does: envFrom, env with
//! `$(VAR)` expansion, the downward API (fieldRef, resourceFieldRef), ConfigMap and Secret keys,
//! then the service variables of the API server, then the "image" environment. Pure functions: the
//! referenced objects are fetched beforehand.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::config::Allocatable;
use crate::error::ContainerError;
use crate::quantity;

/// Data of the ConfigMaps and Secrets a pod refers to, by name; `None`: not found.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub config_maps: BTreeMap<String, Option<BTreeMap<String, String>>>,
    pub secrets: BTreeMap<String, Option<BTreeMap<String, String>>>,
}

/// What the downward API can see of a pod.
#[derive(Debug, Clone, Copy)]
pub struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub pod_ip: Option<&'a str>,
    pub host_ip: &'a str,
    pub allocatable: Allocatable,
}

/// An ordered environment where a later `set` of a name replaces its value in place.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Env {
    vars: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl Env {
    pub fn set(&mut self, name: &str, value: String) {
        match self.index.get(name) {
            Some(&i) => self.vars[i].1 = value,
            None => {
                self.index.insert(name.to_string(), self.vars.len());
                self.vars.push((name.to_string(), value));
            }
        }
    }

    /// Sets `name` only when it is not set yet.
    pub fn set_default(&mut self, name: &str, value: String) {
        if !self.index.contains_key(name) {
            self.set(name, value);
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&i| self.vars[i].1.as_str())
    }

    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }
}

/// The variables the kubelet derives from the `kubernetes` Service, pointing at the API server's
/// real address (no kube-proxy routes the Service's cluster IP here).
pub fn service_env(api_host: &str, api_port: u16) -> Vec<(String, String)> {
    let url = format!("tcp://{api_host}:{api_port}");
    vec![
        ("KUBERNETES_SERVICE_HOST".into(), api_host.into()),
        ("KUBERNETES_SERVICE_PORT".into(), api_port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), api_port.to_string()),
        ("KUBERNETES_PORT".into(), url.clone()),
        (format!("KUBERNETES_PORT_{api_port}_TCP"), url),
        (
            format!("KUBERNETES_PORT_{api_port}_TCP_PROTO"),
            "tcp".into(),
        ),
        (
            format!("KUBERNETES_PORT_{api_port}_TCP_PORT"),
            api_port.to_string(),
        ),
        (
            format!("KUBERNETES_PORT_{api_port}_TCP_ADDR"),
            api_host.into(),
        ),
    ]
}

/// The ConfigMaps and Secrets the containers' env and envFrom refer to.
pub fn referenced_objects(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut config_maps = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    let Some(spec) = pod.spec.as_ref() else {
        return (config_maps, secrets);
    };
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
    {
        for from in c.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                config_maps.insert(r.name.clone());
            }
            if let Some(r) = &from.secret_ref {
                secrets.insert(r.name.clone());
            }
        }
        for var in c.env.iter().flatten() {
            let Some(from) = &var.value_from else {
                continue;
            };
            if let Some(r) = &from.config_map_key_ref {
                config_maps.insert(r.name.clone());
            }
            if let Some(r) = &from.secret_key_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    (config_maps, secrets)
}

fn namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// Formats a label or annotation map as the downward API does: sorted `key="value"` lines.
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn subscript<'a>(path: &'a str, field: &str) -> Option<&'a str> {
    path.strip_prefix(field)?
        .strip_prefix("['")?
        .strip_suffix("']")
}

/// The value of a `fieldRef.fieldPath`.
pub fn field_ref(facts: &PodFacts<'_>, path: &str) -> Result<String, String> {
    let pod = facts.pod;
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    if let Some(key) = subscript(path, "metadata.labels") {
        return Ok(meta
            .labels
            .as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default());
    }
    if let Some(key) = subscript(path, "metadata.annotations") {
        return Ok(meta
            .annotations
            .as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default());
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => namespace(pod).to_string(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.unwrap_or_default().to_string(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.to_string(),
        other => return Err(format!("unsupported fieldPath {other:?}")),
    })
}

/// The value of a `resourceFieldRef` for `container`: limits default to the node's allocatable.
pub fn resource_ref(
    container: &Container,
    allocatable: Allocatable,
    resource: &str,
    divisor: Option<&str>,
) -> Result<String, String> {
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {resource:?}"))?;
    let resources = container.resources.as_ref();
    let listed = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("unsupported resource {resource:?}")),
    };
    let explicit = listed
        .and_then(|m| m.get(name))
        .map(|q| quantity::parse(&q.0).ok_or_else(|| format!("bad quantity {:?}", q.0)))
        .transpose()?;
    let value = match (explicit, kind, name) {
        (Some(v), _, _) => v,
        (None, "limits", "cpu") => allocatable.cpu,
        (None, "limits", "memory") => allocatable.memory,
        (None, "limits", "ephemeral-storage") => allocatable.ephemeral_storage,
        (None, _, "cpu" | "memory" | "ephemeral-storage") => 0.0,
        (None, _, n) if n.starts_with("hugepages-") => 0.0,
        _ => return Err(format!("unsupported resource {resource:?}")),
    };
    // API defaulting writes divisor "0"; the kubelet reads zero as 1.
    let divisor = match divisor {
        Some(d) => quantity::parse(d).ok_or_else(|| format!("bad divisor {d:?}"))?,
        None => 1.0,
    };
    let divisor = if divisor > 0.0 { divisor } else { 1.0 };
    // The kubelet rounds up (CPU in millicores first, so "1m" divisors are exact).
    let out = if name == "cpu" {
        ((value * 1000.0).round() / (divisor * 1000.0).round()).ceil()
    } else {
        (value / divisor).ceil()
    };
    Ok(format!("{}", out as i64))
}

/// Kubernetes' `$(VAR)` expansion: `$$` is a literal `$`, an undefined `$(VAR)` stays as written.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.extend_from_slice(&bytes[checkpoint..cursor]);
            let rest = &bytes[cursor + 1..];
            let advance = match rest[0] {
                b'$' => {
                    out.push(b'$');
                    1
                }
                b'(' => match rest.iter().position(|&b| b == b')') {
                    Some(close) => {
                        let name = String::from_utf8_lossy(&rest[1..close]);
                        match lookup(&name) {
                            Some(v) => out.extend_from_slice(v.as_bytes()),
                            None => out.extend_from_slice(format!("$({name})").as_bytes()),
                        }
                        close + 1
                    }
                    None => {
                        out.extend_from_slice(b"$(");
                        1
                    }
                },
                other => {
                    out.push(b'$');
                    out.push(other);
                    1
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    out.extend_from_slice(&bytes[checkpoint.min(bytes.len())..]);
    String::from_utf8_lossy(&out).into_owned()
}

fn optional(flag: Option<bool>) -> bool {
    flag.unwrap_or(false)
}

/// The environment the kubelet computes for `container` (what `$(VAR)` in command and args can
/// refer to): envFrom, env, then the service variables where not set.
pub fn container_env(
    facts: &PodFacts<'_>,
    objects: &Objects,
    container: &Container,
    service: &[(String, String)],
) -> Result<Env, ContainerError> {
    let ns = namespace(facts.pod);
    let mut env = Env::default();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let (data, found_or_optional) = if let Some(r) = &from.config_map_ref {
            match objects.config_maps.get(&r.name).and_then(|d| d.as_ref()) {
                Some(d) => (Some(d), true),
                None => (None, optional(r.optional)),
            }
        } else if let Some(r) = &from.secret_ref {
            match objects.secrets.get(&r.name).and_then(|d| d.as_ref()) {
                Some(d) => (Some(d), true),
                None => (None, optional(r.optional)),
            }
        } else {
            continue;
        };
        if !found_or_optional {
            let what = match (&from.config_map_ref, &from.secret_ref) {
                (Some(r), _) => format!("configmap {:?} not found", r.name),
                (_, Some(r)) => format!("secret {:?} not found", r.name),
                _ => String::new(),
            };
            return Err(ContainerError::config(what));
        }
        for (k, v) in data.into_iter().flatten() {
            let name = format!("{prefix}{k}");
            // The kubelet skips keys that are not valid variable names (and records an event).
            if !name.is_empty() && !name.contains('=') {
                env.set(&name, v.clone());
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => {
                let lookup = |name: &str| {
                    env.get(name).map(str::to_string).or_else(|| {
                        service
                            .iter()
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.clone())
                    })
                };
                Some(expand(var.value.as_deref().unwrap_or_default(), &lookup))
            }
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    Some(field_ref(facts, &f.field_path).map_err(ContainerError::config)?)
                } else if let Some(r) = &from.resource_field_ref {
                    Some(
                        resource_ref(
                            container,
                            facts.allocatable,
                            &r.resource,
                            r.divisor.as_ref().map(|d| d.0.as_str()),
                        )
                        .map_err(ContainerError::config)?,
                    )
                } else if let Some(r) = &from.config_map_key_ref {
                    key_value(
                        objects.config_maps.get(&r.name),
                        "ConfigMap",
                        "configmap",
                        ns,
                        &r.name,
                        &r.key,
                        optional(r.optional),
                    )?
                } else if let Some(r) = &from.secret_key_ref {
                    key_value(
                        objects.secrets.get(&r.name),
                        "Secret",
                        "secret",
                        ns,
                        &r.name,
                        &r.key,
                        optional(r.optional),
                    )?
                } else {
                    return Err(ContainerError::config(format!(
                        "env {:?}: unsupported valueFrom",
                        var.name
                    )));
                }
            }
        };
        if let Some(value) = value {
            env.set(&var.name, value);
        }
    }
    for (k, v) in service {
        env.set_default(k, v.clone());
    }
    Ok(env)
}

fn key_value(
    object: Option<&Option<BTreeMap<String, String>>>,
    kind: &str,
    lower: &str,
    ns: &str,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, ContainerError> {
    match object.and_then(|o| o.as_ref()) {
        None if optional => Ok(None),
        None => Err(ContainerError::config(format!(
            "{lower} {name:?} not found"
        ))),
        Some(data) => match data.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(ContainerError::config(format!(
                "couldn't find key {key} in {kind} {ns}/{name}"
            ))),
        },
    }
}

/// What the container runtime adds: `HOSTNAME`, then the image's environment, where not set.
pub fn runtime_env(mut env: Env, hostname: &str, image_env: &[(String, String)]) -> Env {
    env.set_default("HOSTNAME", hostname.to_string());
    for (k, v) in image_env {
        env.set_default(k, v.clone());
    }
    env
}

/// `command` + `args` with `$(VAR)` expanded from the kubelet's environment. Without a command the
/// image's entrypoint would run; there are no images here, so that cannot be created.
pub fn command_line(container: &Container, env: &Env) -> Result<Vec<String>, ContainerError> {
    let command = container.command.clone().unwrap_or_default();
    if command.is_empty() {
        return Err(ContainerError::create(format!(
            "container {:?} has no command: lf-node runs no images, so there is no image entrypoint to fall back to",
            container.name
        )));
    }
    let lookup = |name: &str| env.get(name).map(str::to_string);
    Ok(command
        .iter()
        .chain(container.args.iter().flatten())
        .map(|s| expand(s, &lookup))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ContainerErrorReason;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "job-0-abcde", "namespace": "team", "uid": "u-1",
                "labels": {"app": "x", "batch.kubernetes.io/job-completion-index": "0"},
                "annotations": {"batch.kubernetes.io/job-completion-index": "1"}},
            "spec": {"nodeName": "lf-node-0", "serviceAccountName": "sa", "containers": [{
                "name": "main", "image": "img",
                "resources": {"limits": {"memory": "2Gi"}, "requests": {"cpu": "250m"}},
            }]}
        }))
        .unwrap()
    }

    fn facts(pod: &Pod) -> PodFacts<'_> {
        PodFacts {
            pod,
            pod_ip: Some("10.244.1.2"),
            host_ip: "10.244.0.1",
            allocatable: Allocatable {
                cpu: 16.0,
                memory: 64.0 * 1024f64.powi(3),
                ephemeral_storage: 0.0,
            },
        }
    }

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let lookup = |n: &str| (n == "A").then(|| "1".to_string());
        assert_eq!(expand("x$(A)y", &lookup), "x1y");
        assert_eq!(expand("$(B)", &lookup), "$(B)");
        assert_eq!(expand("$$(A)", &lookup), "$(A)");
        assert_eq!(expand("$$$(A)", &lookup), "$1");
        assert_eq!(expand("$(A", &lookup), "$(A");
        assert_eq!(expand("a$b", &lookup), "a$b");
        assert_eq!(expand("end$", &lookup), "end$");
        assert_eq!(expand("é$(A)ü", &lookup), "é1ü");
        assert_eq!(expand("", &lookup), "");
    }

    #[test]
    fn field_refs_resolve_the_completion_index() {
        let p = pod();
        let f = facts(&p);
        let get = |path: &str| field_ref(&f, path).unwrap();
        assert_eq!(
            get("metadata.annotations['batch.kubernetes.io/job-completion-index']"),
            "1"
        );
        assert_eq!(
            get("metadata.labels['batch.kubernetes.io/job-completion-index']"),
            "0"
        );
        assert_eq!(get("metadata.labels['missing']"), "");
        assert_eq!(get("metadata.name"), "job-0-abcde");
        assert_eq!(get("metadata.namespace"), "team");
        assert_eq!(get("metadata.uid"), "u-1");
        assert_eq!(get("spec.nodeName"), "lf-node-0");
        assert_eq!(get("spec.serviceAccountName"), "sa");
        assert_eq!(get("status.podIP"), "10.244.1.2");
        assert_eq!(get("status.hostIP"), "10.244.0.1");
        assert_eq!(
            get("metadata.labels"),
            "app=\"x\"\nbatch.kubernetes.io/job-completion-index=\"0\""
        );
        assert!(field_ref(&f, "spec.nope").is_err());
    }

    #[test]
    fn resource_refs_default_limits_to_allocatable() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let a = facts(&p).allocatable;
        assert_eq!(resource_ref(c, a, "limits.cpu", None).unwrap(), "16");
        assert_eq!(resource_ref(c, a, "limits.cpu", Some("0")).unwrap(), "16");
        assert_eq!(
            resource_ref(c, a, "requests.cpu", Some("1m")).unwrap(),
            "250"
        );
        assert_eq!(resource_ref(c, a, "requests.cpu", None).unwrap(), "1");
        assert_eq!(
            resource_ref(c, a, "limits.memory", Some("1Mi")).unwrap(),
            "2048"
        );
        assert_eq!(resource_ref(c, a, "requests.memory", None).unwrap(), "0");
        assert!(resource_ref(c, a, "limits.gpu", None).is_err());
    }

    #[test]
    fn env_from_sources_with_expansion_and_optional() {
        let p = pod();
        let f = facts(&p);
        let mut objects = Objects::default();
        objects.config_maps.insert(
            "cfg".into(),
            Some(BTreeMap::from([("MODE".into(), "fast".into())])),
        );
        objects.config_maps.insert("gone".into(), None);
        objects.secrets.insert(
            "sec".into(),
            Some(BTreeMap::from([("token".into(), "s3cret".into())])),
        );
        let c = container(json!({"name": "main",
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "P_"},
                        {"configMapRef": {"name": "gone", "optional": true}}],
            "env": [
                {"name": "INDEX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
                {"name": "RANK_FILE", "value": "/out/$(INDEX)/$(P_MODE)/$(NOPE)/$$(INDEX)"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
                {"name": "MAYBE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "x", "optional": true}}},
                {"name": "API", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"},
                {"name": "KUBERNETES_SERVICE_PORT", "value": "override"},
            ],
            "command": ["sh", "-c", "echo $(INDEX) $(HOSTNAME)"], "args": ["$(TOKEN)"]}));
        let service = service_env("10.244.0.1", 6443);
        let env = container_env(&f, &objects, &c, &service).unwrap();
        assert_eq!(env.get("P_MODE"), Some("fast"));
        assert_eq!(env.get("INDEX"), Some("1"));
        assert_eq!(env.get("RANK_FILE"), Some("/out/1/fast/$(NOPE)/$(INDEX)"));
        assert_eq!(env.get("TOKEN"), Some("s3cret"));
        assert_eq!(env.get("MAYBE"), None);
        assert_eq!(env.get("API"), Some("https://10.244.0.1:6443"));
        assert_eq!(env.get("KUBERNETES_SERVICE_PORT"), Some("override"));
        assert_eq!(env.get("KUBERNETES_PORT"), Some("tcp://10.244.0.1:6443"));
        assert_eq!(
            command_line(&c, &env).unwrap(),
            vec!["sh", "-c", "echo 1 $(HOSTNAME)", "s3cret"]
        );
        let full = runtime_env(
            env,
            "job-0",
            &[
                ("PATH".into(), "/usr/local/bin:/usr/bin".into()),
                ("TOKEN".into(), "image".into()),
            ],
        );
        assert_eq!(full.get("HOSTNAME"), Some("job-0"));
        assert_eq!(full.get("PATH"), Some("/usr/local/bin:/usr/bin"));
        assert_eq!(full.get("TOKEN"), Some("s3cret"));
    }

    #[test]
    fn missing_references_are_config_errors() {
        let p = pod();
        let f = facts(&p);
        let objects = Objects::default();
        let c = container(json!({"name": "main",
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]}));
        let e = container_env(&f, &objects, &c, &[]).unwrap_err();
        assert_eq!(e.reason, ContainerErrorReason::CreateContainerConfigError);
        assert_eq!(e.message, "configmap \"cfg\" not found");

        let mut objects = Objects::default();
        objects
            .secrets
            .insert("s".into(), Some(BTreeMap::from([("a".into(), "1".into())])));
        let c = container(json!({"name": "main",
            "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "b"}}}]}));
        let e = container_env(&f, &objects, &c, &[]).unwrap_err();
        assert_eq!(e.message, "couldn't find key b in Secret team/s");

        let c = container(json!({"name": "main", "envFrom": [{"secretRef": {"name": "nope"}}]}));
        assert!(container_env(&f, &objects, &c, &[]).is_err());
    }

    #[test]
    fn no_command_is_a_create_error() {
        let c = container(json!({"name": "main", "args": ["x"]}));
        let e = command_line(&c, &Env::default()).unwrap_err();
        assert_eq!(e.reason, ContainerErrorReason::CreateContainerError);
    }

    #[test]
    fn referenced_objects_cover_env_and_env_from() {
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "s1"}}]}],
            "containers": [{"name": "c",
                "envFrom": [{"configMapRef": {"name": "c1"}}],
                "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "c2", "key": "k"}}}]}]}}))
        .unwrap();
        let (cms, secrets) = referenced_objects(&p);
        assert_eq!(cms.into_iter().collect::<Vec<_>>(), vec!["c1", "c2"]);
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), vec!["s1"]);
    }
}
