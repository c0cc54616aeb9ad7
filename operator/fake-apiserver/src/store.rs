//! The object store: objects by type, namespace and name, resourceVersions, the event history
//! watches replay, field managers, and ownerReference cascade deletion.

use std::collections::{BTreeMap, BTreeSet};

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

/// `(type index, label key, label value)`.
type LabelKey = (usize, String, String);

/// All state of the fake server.
#[derive(Debug, Default)]
pub struct Store {
    pub types: Vec<ResourceType>,
    objects: BTreeMap<Key, Stored>,
    /// The objects carrying each label, so that lists selecting `key=value` (a controller's
    /// children) look only at those instead of every object of the type.
    by_label: BTreeMap<LabelKey, BTreeSet<Key>>,
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

    /// Stores an object under `key` (replacing any), keeping the label index.
    fn put(&mut self, key: Key, stored: Stored) {
        let old = self.objects.remove(&key);
        if let Some(old) = &old {
            self.unindex(&key, &old.object);
        }
        for (k, v) in labels_of(&stored.object) {
            self.by_label
                .entry((key.0, k.to_string(), v.to_string()))
                .or_default()
                .insert(key.clone());
        }
        self.objects.insert(key, stored);
    }

    /// Removes the object under `key`, keeping the label index.
    fn take(&mut self, key: &Key) -> Option<Stored> {
        let stored = self.objects.remove(key)?;
        self.unindex(key, &stored.object);
        Some(stored)
    }

    fn unindex(&mut self, key: &Key, object: &Value) {
        for (k, v) in labels_of(object) {
            let lk = (key.0, k.to_string(), v.to_string());
            if let Some(set) = self.by_label.get_mut(&lk) {
                set.remove(key);
                if set.is_empty() {
                    self.by_label.remove(&lk);
                }
            }
        }
    }

    /// Objects of one type, optionally in one namespace, matching both selectors, by key order.
    pub fn list(
        &self,
        type_index: usize,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<Value> {
        let in_scope = |(t, ns, _): &Key| *t == type_index && namespace.is_none_or(|n| n == ns);
        let selected = |o: &&Value| labels.matches(o) && fields.matches(o);
        // With `key=value` requirements, only the objects carrying the rarest such label (in key
        // order, as below).
        let rarest = labels
            .equalities()
            .map(|(k, v)| (type_index, k.to_string(), v.to_string()))
            .min_by_key(|lk| self.by_label.get(lk).map_or(0, BTreeSet::len));
        if let Some(lk) = rarest {
            return self
                .by_label
                .get(&lk)
                .into_iter()
                .flatten()
                .filter(|key| in_scope(key))
                .filter_map(|key| self.objects.get(key))
                .map(|s| &s.object)
                .filter(selected)
                .cloned()
                .collect();
        }
        // Otherwise every object of the type (in the namespace): keys sort by type, then
        // namespace.
        let from = (
            type_index,
            namespace.unwrap_or_default().to_string(),
            String::new(),
        );
        self.objects
            .range(from..)
            .take_while(|(key, _)| in_scope(key))
            .map(|(_, s)| &s.object)
            .filter(selected)
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
        self.put(
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
                        self.take(key);
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
            self.put(
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
        self.put(
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
            .take(key)
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

/// The `(key, value)` string labels of an object.
fn labels_of(object: &Value) -> impl Iterator<Item = (&str, &str)> {
    object
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::builtin_types;

    fn names(values: &[Value]) -> Vec<String> {
        values
            .iter()
            .map(|v| {
                format!("{}/{}", v["metadata"]["namespace"], v["metadata"]["name"]).replace('"', "")
            })
            .collect()
    }

    #[test]
    fn lists_through_the_label_index_follow_writes_and_deletes() {
        let mut store = Store::new(builtin_types());
        let cm = store
            .types
            .iter()
            .position(|t| t.kind == "ConfigMap")
            .unwrap();
        let secret = store.types.iter().position(|t| t.kind == "Secret").unwrap();
        for (ns, name, job) in [("a", "x", "1"), ("a", "y", "2"), ("b", "z", "1")] {
            let obj = json!({"metadata": {"name": name, "labels": {"job": job, "app": "lf"}}});
            store.create(cm, ns, obj.clone(), "t").unwrap();
            store.create(secret, ns, obj, "t").unwrap();
        }
        let sel = |s: &str| LabelSelector::parse(s).unwrap();
        let any = FieldSelector::default();
        let list =
            |store: &Store, ns: Option<&str>, s: &str| names(&store.list(cm, ns, &sel(s), &any));
        assert_eq!(list(&store, None, "job=1"), ["a/x", "b/z"]);
        assert_eq!(list(&store, Some("a"), "job=1,app=lf"), ["a/x"]);
        assert_eq!(list(&store, Some("a"), "job!=1"), ["a/y"]);
        assert_eq!(list(&store, None, "app=lf,job in (2)"), ["a/y"]);
        assert!(list(&store, None, "job=3").is_empty());
        assert_eq!(list(&store, Some("b"), ""), ["b/z"]);

        // A relabel moves the object in the index; a no-op write keeps it there.
        let key = (cm, "a".to_string(), "x".to_string());
        let relabel = json!({"metadata": {"labels": {"job": "2"}}});
        store
            .write(&key, &relabel, WriteKind::Merge, "t", false)
            .unwrap();
        store
            .write(&key, &relabel, WriteKind::Merge, "t", false)
            .unwrap();
        assert_eq!(list(&store, None, "job=1"), ["b/z"]);
        assert_eq!(list(&store, Some("a"), "job=2"), ["a/x", "a/y"]);

        store.delete(&key, Propagation::Cascade).unwrap();
        assert_eq!(list(&store, None, "job=2"), ["a/y"]);
        // Other types are untouched.
        assert_eq!(
            names(&store.list(secret, None, &sel("job=1"), &any)),
            ["a/x", "b/z"]
        );
    }
}
