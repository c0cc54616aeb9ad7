//! The handle tests hold: [`FakeApiServer`] registers types, hands out the `tower::Service` and a
//! `kube::Client`, reads and writes objects directly, and injects failures. The helpers that act
//! as the Job controller and the kubelet extend it in `helpers`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::Method;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::fields;
use crate::registry::{self, ResourceType};
use crate::selector;
use crate::service::FakeService;
use crate::shared::{Fault, RequestRecord, Shared};
use crate::store::{Key, Propagation, Store};

/// The fake API server. Clones share the same state.
#[derive(Clone, Debug)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeApiServer {
    /// A server with the built-in types ([`registry::builtin_types`]) and the `default` namespace.
    pub fn new() -> Self {
        let (changed, _) = tokio::sync::watch::channel(0);
        let server = FakeApiServer {
            shared: Arc::new(Shared {
                store: Mutex::new(Store::new(registry::builtin_types())),
                changed,
                requests: Mutex::new(Vec::new()),
                faults: Mutex::new(Vec::new()),
            }),
        };
        let _ = server.create_value(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}));
        server
    }

    /// Also serves the custom resource a CRD defines.
    pub fn with_crd(self, crd: &CustomResourceDefinition) -> Self {
        for t in ResourceType::from_crd(crd) {
            self.register(t);
        }
        self
    }

    /// Serves another resource type.
    pub fn register(&self, t: ResourceType) {
        let mut store = self.shared.store();
        if !store.types.contains(&t) {
            store.types.push(t);
        }
    }

    /// The `tower::Service`.
    pub fn service(&self) -> FakeService {
        FakeService {
            shared: self.shared.clone(),
        }
    }

    /// A client whose default namespace is `default`.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.service(), "default")
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Answers the next `times` requests with `method` whose path contains `path_contains` with
    /// `error` instead of handling them.
    pub fn inject_failure(&self, method: &str, path_contains: &str, times: u32, error: ApiError) {
        let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Fault {
                method,
                path_contains: path_contains.to_string(),
                remaining: times,
                error,
            });
    }

    fn type_index_of<K: Resource<DynamicType = ()>>(&self) -> Option<usize> {
        let store = self.shared.store();
        store.types.iter().position(|t| {
            t.group == K::group(&()).as_ref()
                && t.version == K::version(&()).as_ref()
                && t.plural == K::plural(&()).as_ref()
        })
    }

    fn key_of<K: Resource<DynamicType = ()>>(&self, namespace: &str, name: &str) -> Option<Key> {
        let idx = self.type_index_of::<K>()?;
        let namespaced = self.shared.store().types[idx].namespaced;
        Some((
            idx,
            if namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name.to_string(),
        ))
    }

    /// An object as stored (JSON), if it exists.
    pub fn get_value<K: Resource<DynamicType = ()>>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let key = self.key_of::<K>(namespace, name)?;
        self.shared.store().get(&key).map(|s| s.object.clone())
    }

    /// An object, typed, if it exists (and deserialises).
    pub fn get<K: Resource<DynamicType = ()> + DeserializeOwned>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<K> {
        self.get_value::<K>(namespace, name)
            .and_then(|v| serde_json::from_value(v).ok())
    }

    /// Objects of a type in a namespace (`None`: all) matching a label selector (`""`: all).
    pub fn list<K: Resource<DynamicType = ()> + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Vec<K> {
        self.list_values::<K>(namespace, label_selector)
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect()
    }

    /// [`FakeApiServer::list`] as JSON.
    pub fn list_values<K: Resource<DynamicType = ()>>(
        &self,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Vec<Value> {
        let Some(idx) = self.type_index_of::<K>() else {
            return Vec::new();
        };
        let Ok(labels) = selector::LabelSelector::parse(label_selector) else {
            return Vec::new();
        };
        self.shared
            .store()
            .list(idx, namespace, &labels, &selector::FieldSelector::default())
    }

    /// Creates an object directly (as if POSTed), with field manager `test`.
    pub fn create<K: Resource<DynamicType = ()> + Serialize>(
        &self,
        object: &K,
    ) -> Result<Value, ApiError> {
        let value =
            serde_json::to_value(object).map_err(|e| ApiError::bad_request(&e.to_string()))?;
        self.create_value(value)
    }

    /// Creates an object given as JSON (its `apiVersion` and `kind` select the type).
    pub fn create_value(&self, mut value: Value) -> Result<Value, ApiError> {
        let mut store = self.shared.store();
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let idx = store
            .types
            .iter()
            .position(|t| t.api_version() == api_version && t.kind == kind)
            .ok_or_else(|| {
                ApiError::bad_request(&format!("no type {api_version} {kind} is registered"))
            })?;
        let ns = value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let status = value.get("status").cloned();
        let mut created = store.create(idx, &ns, value.take(), "test")?;
        if let (Some(status), true) = (status, store.types[idx].status_subresource) {
            let name = created
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let key = (
                idx,
                created
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                name,
            );
            created = store.modify(&key, "test", |o| {
                fields::set_path(o, &["status".into()], status)
            })?;
        }
        self.shared.notify(&store);
        Ok(created)
    }

    /// Edits a stored object in place as an update by `manager` (what another controller or the
    /// kubelet would do); bumps the resourceVersion and notifies watches when anything changed.
    pub fn modify<K: Resource<DynamicType = ()>>(
        &self,
        namespace: &str,
        name: &str,
        manager: &str,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        let key = self
            .key_of::<K>(namespace, name)
            .ok_or_else(|| ApiError::bad_request("type not registered"))?;
        let mut store = self.shared.store();
        let out = store.modify(&key, manager, edit)?;
        self.shared.notify(&store);
        Ok(out)
    }

    /// Deletes an object (cascading to dependents through ownerReferences).
    pub fn delete<K: Resource<DynamicType = ()>>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let key = self
            .key_of::<K>(namespace, name)
            .ok_or_else(|| ApiError::bad_request("type not registered"))?;
        let mut store = self.shared.store();
        let out = store.delete(&key, Propagation::Cascade)?;
        self.shared.notify(&store);
        Ok(out)
    }

    /// Who owns which field paths of an object (`status.progress` → `lf-trainer`), as
    /// `manager → dotted paths`.
    pub fn field_managers<K: Resource<DynamicType = ()>>(
        &self,
        namespace: &str,
        name: &str,
    ) -> BTreeMap<String, Vec<String>> {
        let Some(key) = self.key_of::<K>(namespace, name) else {
            return BTreeMap::new();
        };
        let store = self.shared.store();
        store
            .get(&key)
            .map(|s| {
                s.managers
                    .iter()
                    .map(|(m, paths)| (m.clone(), paths.iter().map(|p| p.join(".")).collect()))
                    .collect()
            })
            .unwrap_or_default()
    }
}
