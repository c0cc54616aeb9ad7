//! The object store: objects by type, namespace and name, resourceVersions, the event history
//! watches replay, field managers, and ownerReference cascade deletion.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::fields::{self, Managers, Scope};
use crate::registry::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};

/// `(type index, namespace or "", name)`.
pub type Key = (usize, String, String);

/// A stored object and who owns its fields.
#[derive(Debug, Clone)]
pub struct Stored {
    pub object: Value,
    pub managers: Managers,
}

/// One change, as a watch reports it.
#[derive(Debug, Clone)]
pub struct Change {
    pub resource_version: u64,
    pub type_index: usize,
    pub namespace: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    pub object: Value,
    /// The object before a modification (selectors on watches need it).
    pub previous: Option<Value>,
}

/// How a write addresses an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// Server-side apply with a field manager; `force` takes over conflicting fields.
    Apply { force: bool },
    /// JSON merge patch (also used for strategic merge patches).
    Merge,
    /// Full replacement (PUT), with optimistic concurrency on `metadata.resourceVersion`.
    Replace,
}

/// How a deletion treats dependents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents are deleted (immediately here; see the crate docs).
    Cascade,
    /// Dependents lose their ownerReference to the deleted object and stay.
    Orphan,
}

/// All state of the fake server.
#[derive(Debug, Default)]
pub struct Store {
    pub types: Vec<ResourceType>,
    objects: BTreeMap<Key, Stored>,
    pub history: Vec<Change>,
    resource_version: u64,
    uid_counter: u64,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl Store {
    pub fn new(types: Vec<ResourceType>) -> Self {
        Store {
            types,
            ..Default::default()
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    fn scope(&self, type_index: usize, status: bool) -> Scope {
        match (self.types[type_index].status_subresource, status) {
            (false, _) => Scope::All,
            (true, false) => Scope::Main,
            (true, true) => Scope::Status,
        }
    }

    pub fn get(&self, key: &Key) -> Option<&Stored> {
        self.objects.get(key)
    }

    /// Objects of one type, optionally in one namespace, matching both selectors, by key order.
    pub fn list(
        &self,
        type_index: usize,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((t, ns, _), _)| *t == type_index && namespace.is_none_or(|n| n == ns))
            .map(|(_, s)| &s.object)
            .filter(|o| labels.matches(o) && fields.matches(o))
            .cloned()
            .collect()
    }

    fn bump(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    fn record(
        &mut self,
        type_index: usize,
        namespace: &str,
        kind: &'static str,
        object: Value,
        previous: Option<Value>,
    ) {
        let rv = self.resource_version;
        self.history.push(Change {
            resource_version: rv,
            type_index,
            namespace: namespace.to_string(),
            kind,
            object,
            previous,
        });
    }

    /// Creates an object; the server sets uid, creationTimestamp, resourceVersion and generation.
    pub fn create(
        &mut self,
        type_index: usize,
        namespace: &str,
        mut object: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let t = self.types[type_index].clone();
        if !object.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let mut name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            let Some(prefix) = object
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
            else {
                return Err(ApiError::invalid(
                    &t.kind,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            };
            self.uid_counter += 1;
            name = format!("{prefix}{:05x}", self.uid_counter);
        }
        if let Some(ns) = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
        {
            if t.namespaced && ns != namespace {
                return Err(ApiError::bad_request(&format!(
                    "the namespace of the provided object ({ns}) does not match the namespace sent on the request ({namespace})"
                )));
            }
        }
        let key = (
            type_index,
            if t.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name.clone(),
        );
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&t, &name));
        }
        if t.status_subresource && t.kind != "Pod" {
            // Creates ignore status where it is a subresource (pods keep it for test convenience).
            if let Some(m) = object.as_object_mut() {
                m.remove("status");
            }
        }
        let rv = self.bump();
        self.uid_counter += 1;
        let meta = object
            .as_object_mut()
            .map(|m| m.entry("metadata").or_insert_with(|| json!({})));
        if let Some(Value::Object(meta)) = meta {
            meta.insert("name".into(), json!(name));
            if t.namespaced {
                meta.insert("namespace".into(), json!(namespace));
            }
            meta.insert(
                "uid".into(),
                json!(format!("00000000-0000-4000-8000-{:012x}", self.uid_counter)),
            );
            meta.insert("creationTimestamp".into(), json!(now()));
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
            meta.insert("generation".into(), json!(1));
            meta.remove("managedFields");
        }
        if let Some(m) = object.as_object_mut() {
            m.insert("apiVersion".into(), json!(t.api_version()));
            m.insert("kind".into(), json!(t.kind));
        }
        let mut managers = Managers::new();
        fields::record_update(&json!({}), &object, &mut managers, manager, Scope::All);
        self.objects.insert(
            key.clone(),
            Stored {
                object: object.clone(),
                managers,
            },
        );
        self.record(type_index, &key.1, "ADDED", object.clone(), None);
        Ok(object)
    }

    /// Writes to an existing object (or creates one by server-side apply). `status` addresses the
    /// `/status` subresource. A write that changes nothing keeps the resourceVersion and emits no
    /// watch event, as a real API server does.
    pub fn write(
        &mut self,
        key: &Key,
        body: &Value,
        kind: WriteKind,
        manager: &str,
        status: bool,
    ) -> Result<Value, ApiError> {
        let t = self.types[key.0].clone();
        let scope = self.scope(key.0, status);
        if !self.objects.contains_key(key) {
            return match kind {
                WriteKind::Apply { force } if !status => {
                    // Apply creates: an empty shell, then the applied config on it, reported as
                    // one ADDED event.
                    self.create(key.0, &key.1, json!({"metadata": {"name": key.2}}), manager)?;
                    let result = self.write_inner(
                        key,
                        body,
                        WriteKind::Apply { force },
                        manager,
                        scope,
                        true,
                    );
                    if result.is_err() {
                        self.objects.remove(key);
                        self.history.pop();
                    }
                    result
                }
                _ => Err(ApiError::not_found(&t, &key.2)),
            };
        }
        self.write_inner(key, body, kind, manager, scope, false)
    }

    fn write_inner(
        &mut self,
        key: &Key,
        body: &Value,
        kind: WriteKind,
        manager: &str,
        scope: Scope,
        fresh: bool,
    ) -> Result<Value, ApiError> {
        let t = self.types[key.0].clone();
        let stored = self
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&t, &key.2))?;
        let before = stored.object.clone();
        let mut managers = stored.managers.clone();
        if let Some(name) = body.pointer("/metadata/name").and_then(Value::as_str) {
            if name != key.2 {
                return Err(ApiError::bad_request(&format!(
                    "the name of the object ({name}) does not match the name on the URL ({})",
                    key.2
                )));
            }
        }
        let mut after = before.clone();
        match kind {
            WriteKind::Apply { force } => {
                fields::apply(&mut after, &mut managers, manager, body, scope, force)
                    .map_err(|c| ApiError::conflict_fields(&t, &key.2, &c))?;
            }
            WriteKind::Merge => {
                let mut patched = before.clone();
                fields::merge_patch(&mut patched, body);
                after = restrict(&before, &patched, scope);
                fields::record_update(&before, &after, &mut managers, manager, scope);
            }
            WriteKind::Replace => {
                let sent_rv = body
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str);
                let current_rv = before
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str);
                if sent_rv.is_some_and(|rv| Some(rv) != current_rv) {
                    return Err(ApiError::conflict_version(&t, &key.2));
                }
                let mut replaced = body.clone();
                // Server-owned metadata survives a replacement.
                for k in [
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "resourceVersion",
                    "name",
                    "namespace",
                ] {
                    match before.pointer(&format!("/metadata/{k}")) {
                        Some(v) => fields::set_path(
                            &mut replaced,
                            &["metadata".into(), k.into()],
                            v.clone(),
                        ),
                        None => fields::remove_path(&mut replaced, &["metadata".into(), k.into()]),
                    }
                }
                after = restrict(&before, &replaced, scope);
                fields::record_update(&before, &after, &mut managers, manager, scope);
            }
        }
        if let Some(m) = after.as_object_mut() {
            m.insert("apiVersion".into(), json!(t.api_version()));
            m.insert("kind".into(), json!(t.kind));
        }
        if after == before && !fresh {
            self.objects.insert(
                key.clone(),
                Stored {
                    object: before.clone(),
                    managers,
                },
            );
            return Ok(before);
        }
        let rv = self.bump();
        let spec_changed = strip_meta_status(&before) != strip_meta_status(&after);
        if let Some(Value::Object(meta)) = after.get_mut("metadata") {
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
            if spec_changed && !fresh {
                let g = meta.get("generation").and_then(Value::as_i64).unwrap_or(1);
                meta.insert("generation".into(), json!(g + 1));
            }
        }
        self.objects.insert(
            key.clone(),
            Stored {
                object: after.clone(),
                managers,
            },
        );
        if fresh {
            // The create recorded an ADDED event of the empty shell: make it the applied object.
            if let Some(last) = self.history.last_mut() {
                last.object = after.clone();
                last.resource_version = rv;
            }
        } else {
            self.record(key.0, &key.1, "MODIFIED", after.clone(), Some(before));
        }
        Ok(after)
    }

    /// Deletes an object and, through ownerReferences, its dependents (recursively).
    pub fn delete(&mut self, key: &Key, propagation: Propagation) -> Result<Value, ApiError> {
        let t = self.types[key.0].clone();
        let stored = self
            .objects
            .remove(key)
            .ok_or_else(|| ApiError::not_found(&t, &key.2))?;
        self.bump();
        self.record(key.0, &key.1, "DELETED", stored.object.clone(), None);
        let uid = stored
            .object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, s)| owned_by(&s.object, &uid))
            .map(|(k, _)| k.clone())
            .collect();
        for dep in dependents {
            match propagation {
                Propagation::Cascade => {
                    let _ = self.delete(&dep, Propagation::Cascade);
                }
                Propagation::Orphan => {
                    if let Some(s) = self.objects.get(&dep) {
                        let mut obj = s.object.clone();
                        if let Some(refs) = obj
                            .pointer_mut("/metadata/ownerReferences")
                            .and_then(Value::as_array_mut)
                        {
                            refs.retain(|r| {
                                r.get("uid").and_then(Value::as_str) != Some(uid.as_str())
                            });
                        }
                        let _ =
                            self.write(&dep, &obj, WriteKind::Replace, "garbage-collector", false);
                    }
                }
            }
        }
        Ok(stored.object)
    }

    /// Applies `edit` to a stored object as a plain update by `manager` (test helpers use it to act
    /// as the kubelet or the Job controller). Returns the new object.
    pub fn modify(
        &mut self,
        key: &Key,
        manager: &str,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        let t = self.types[key.0].clone();
        let stored = self
            .objects
            .get(key)
            .ok_or_else(|| ApiError::not_found(&t, &key.2))?;
        let mut next = stored.object.clone();
        edit(&mut next);
        if let Some(Value::Object(meta)) = next.get_mut("metadata") {
            meta.remove("resourceVersion");
        }
        let scope = Scope::All;
        self.write_inner(key, &next, WriteKind::Replace, manager, scope, false)
    }
}

fn owned_by(object: &Value, uid: &str) -> bool {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
        })
}

/// `patched` limited to `scope`: the main resource cannot change status, `/status` cannot change
/// anything else.
fn restrict(before: &Value, patched: &Value, scope: Scope) -> Value {
    match scope {
        Scope::All => patched.clone(),
        Scope::Main => {
            let mut out = patched.clone();
            match before.get("status") {
                Some(s) => fields::set_path(&mut out, &["status".into()], s.clone()),
                None => fields::remove_path(&mut out, &["status".into()]),
            }
            out
        }
        Scope::Status => {
            let mut out = before.clone();
            match patched.get("status") {
                Some(s) => fields::set_path(&mut out, &["status".into()], s.clone()),
                None => fields::remove_path(&mut out, &["status".into()]),
            }
            out
        }
    }
}

fn strip_meta_status(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}
