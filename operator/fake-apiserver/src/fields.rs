//! Field paths and their owners: the coarse model of server-side apply this fake implements.
//!
//! A real API server tracks ownership per leaf field (with list-map keys). Here ownership is
//! tracked per *field path* of at most two levels, which is what a controller needs to see:
//! - `metadata.labels.<key>`, `metadata.annotations.<key>`, `metadata.ownerReferences`,
//!   `metadata.finalizers`;
//! - `<top>.<key>` for every key of a top-level object (`spec.template`, `spec.suspend`,
//!   `data.train.yaml`, `status.phase`, `status.progress`);
//! - `<top>` for a top-level scalar or list (`rules`, `subjects`).
//!
//! The value at a path is replaced as a whole by whoever writes it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// A field path (segments, so label keys with dots stay intact).
pub type FieldPath = Vec<String>;

/// Who owns which paths of one object.
pub type Managers = BTreeMap<String, BTreeSet<FieldPath>>;

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything but `status` (the main resource of a type with a status subresource).
    Main,
    /// Only `status` (the `/status` subresource).
    Status,
    /// Everything (a type without a status subresource).
    All,
}

impl Scope {
    fn includes_status(self) -> bool {
        matches!(self, Scope::Status | Scope::All)
    }
    fn includes_main(self) -> bool {
        matches!(self, Scope::Main | Scope::All)
    }
}

/// The field paths set in `object` within `scope`, with their values.
pub fn field_values(object: &Value, scope: Scope) -> BTreeMap<FieldPath, Value> {
    let mut out = BTreeMap::new();
    let Some(obj) = object.as_object() else {
        return out;
    };
    for (top, value) in obj {
        match top.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                if !scope.includes_main() {
                    continue;
                }
                for sub in ["labels", "annotations"] {
                    if let Some(m) = value.get(sub).and_then(Value::as_object) {
                        for (k, v) in m {
                            out.insert(vec!["metadata".into(), sub.into(), k.clone()], v.clone());
                        }
                    }
                }
                for sub in ["ownerReferences", "finalizers"] {
                    if let Some(v) = value.get(sub) {
                        out.insert(vec!["metadata".into(), sub.into()], v.clone());
                    }
                }
            }
            "status" if !scope.includes_status() => {}
            "status" => insert_two_levels(&mut out, top, value),
            _ if !scope.includes_main() => {}
            _ => insert_two_levels(&mut out, top, value),
        }
    }
    out
}

fn insert_two_levels(out: &mut BTreeMap<FieldPath, Value>, top: &str, value: &Value) {
    match value.as_object() {
        Some(m) => {
            for (k, v) in m {
                out.insert(vec![top.to_string(), k.clone()], v.clone());
            }
        }
        None => {
            out.insert(vec![top.to_string()], value.clone());
        }
    }
}

/// The value at `path`, if any.
pub fn get_path<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(object, |cur, seg| cur.get(seg))
}

/// Sets the value at `path`, creating intermediate objects.
pub fn set_path(object: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        *object = value;
        return;
    };
    let mut cur = object;
    for seg in parents {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let map = cur.as_object_mut().expect("made an object above");
        cur = map
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    if let Some(map) = cur.as_object_mut() {
        map.insert(last.clone(), value);
    }
}

/// Removes the value at `path`, and parents that become empty below the top level.
pub fn remove_path(object: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = &mut *object;
    for seg in parents {
        match cur.get_mut(seg) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(map) = cur.as_object_mut() {
        map.remove(last);
    }
    if path.len() > 2 {
        // e.g. metadata.labels.<k>: drop an emptied `labels` map
        let parent = &path[..path.len() - 1];
        if get_path(object, parent)
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
        {
            remove_path(object, parent);
        }
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// A field another manager owns with a different value (a server-side apply conflict).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub path: FieldPath,
}

/// Server-side apply of `applied` by `manager` onto `current` within `scope`: sets every path the
/// applied config has, removes the paths this manager applied before and no longer does (unless
/// another manager also owns them), and reports conflicts with other managers unless `force`.
pub fn apply(
    current: &mut Value,
    managers: &mut Managers,
    manager: &str,
    applied: &Value,
    scope: Scope,
    force: bool,
) -> Result<(), Vec<Conflict>> {
    let new_fields = field_values(applied, scope);
    let mut conflicts = Vec::new();
    for (path, value) in &new_fields {
        for (other, owned) in managers.iter() {
            if other != manager && owned.contains(path) && get_path(current, path) != Some(value) {
                conflicts.push(Conflict {
                    manager: other.clone(),
                    path: path.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    for c in &conflicts {
        if let Some(owned) = managers.get_mut(&c.manager) {
            owned.remove(&c.path);
        }
    }
    let previous = managers.remove(manager).unwrap_or_default();
    for path in previous.iter().filter(|p| in_scope(p, scope)) {
        let shared = managers.values().any(|owned| owned.contains(path));
        if !new_fields.contains_key(path) && !shared {
            remove_path(current, path);
        }
    }
    for (path, value) in &new_fields {
        set_path(current, path, value.clone());
    }
    let mut owned: BTreeSet<FieldPath> = previous
        .into_iter()
        .filter(|p| !in_scope(p, scope))
        .collect();
    owned.extend(new_fields.into_keys());
    managers.insert(manager.to_string(), owned);
    managers.retain(|_, owned| !owned.is_empty());
    Ok(())
}

fn in_scope(path: &[String], scope: Scope) -> bool {
    let is_status = path.first().is_some_and(|p| p == "status");
    match scope {
        Scope::All => true,
        Scope::Status => is_status,
        Scope::Main => !is_status,
    }
}

/// After a non-apply write (create, update, merge patch) by `manager`: it owns every path whose
/// value it changed or set, and nobody owns paths that no longer exist.
pub fn record_update(
    before: &Value,
    after: &Value,
    managers: &mut Managers,
    manager: &str,
    scope: Scope,
) {
    let old = field_values(before, scope);
    let new = field_values(after, scope);
    for (path, value) in &new {
        if old.get(path) != Some(value) {
            for owned in managers.values_mut() {
                owned.remove(path);
            }
            managers
                .entry(manager.to_string())
                .or_default()
                .insert(path.clone());
        }
    }
    for path in old.keys().filter(|p| !new.contains_key(*p)) {
        for owned in managers.values_mut() {
            owned.remove(path);
        }
    }
    managers.retain(|_, owned| !owned.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apply_keeps_other_managers_fields_and_drops_own_stale_ones() {
        let mut obj = json!({"status": {}});
        let mut m = Managers::new();
        apply(
            &mut obj,
            &mut m,
            "op",
            &json!({"status": {"phase": "Running", "failure": {"x": 1}}}),
            Scope::Status,
            false,
        )
        .unwrap();
        apply(
            &mut obj,
            &mut m,
            "trainer",
            &json!({"status": {"progress": {"step": 3}}}),
            Scope::Status,
            false,
        )
        .unwrap();
        apply(
            &mut obj,
            &mut m,
            "op",
            &json!({"status": {"phase": "Succeeded"}}),
            Scope::Status,
            false,
        )
        .unwrap();
        assert_eq!(
            obj,
            json!({"status": {"phase": "Succeeded", "progress": {"step": 3}}})
        );
        let err = apply(
            &mut obj,
            &mut m,
            "op",
            &json!({"status": {"progress": {"step": 9}}}),
            Scope::Status,
            false,
        )
        .unwrap_err();
        assert_eq!(err[0].manager, "trainer");
        apply(
            &mut obj,
            &mut m,
            "op",
            &json!({"status": {"progress": {"step": 9}}}),
            Scope::Status,
            true,
        )
        .unwrap();
        assert!(!m.contains_key("trainer"));
    }

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut t, &json!({"a": null, "b": {"c": 5}, "e": [1]}));
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "e": [1]}));
    }

    #[test]
    fn label_paths_keep_dots() {
        let mut obj = json!({"metadata": {"labels": {"a.io/b": "1", "c": "2"}}});
        remove_path(
            &mut obj,
            &["metadata".into(), "labels".into(), "a.io/b".into()],
        );
        assert_eq!(obj, json!({"metadata": {"labels": {"c": "2"}}}));
        remove_path(&mut obj, &["metadata".into(), "labels".into(), "c".into()]);
        assert_eq!(obj, json!({"metadata": {}}));
    }
}
