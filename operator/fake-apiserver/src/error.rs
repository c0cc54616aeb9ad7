//! Errors as the API server reports them: a `Status` object with an HTTP code and a reason.

use serde_json::{json, Value};

use crate::fields::Conflict;
use crate::registry::ResourceType;

/// A failed request: HTTP status code, `reason` (`NotFound`, `AlreadyExists`, `Conflict`,
/// `Invalid`, `BadRequest`, `MethodNotAllowed`, `UnsupportedMediaType`) and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub fn not_found(t: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", resource_name(t)),
        )
    }
    pub fn already_exists(t: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", resource_name(t)),
        )
    }
    pub fn conflict_version(t: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                resource_name(t)
            ),
        )
    }
    pub fn conflict_fields(t: &ResourceType, name: &str, conflicts: &[Conflict]) -> Self {
        let list: Vec<String> = conflicts
            .iter()
            .map(|c| format!("conflict with \"{}\": .{}", c.manager, c.path.join(".")))
            .collect();
        Self::new(
            409,
            "Conflict",
            format!(
                "Apply failed with {} conflict(s) on {} \"{name}\": {}",
                conflicts.len(),
                resource_name(t),
                list.join(", ")
            ),
        )
    }
    pub fn invalid(kind: &str, name: &str, message: &str) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {message}"),
        )
    }
    pub fn bad_request(message: &str) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// The `Status` body.
    pub fn to_status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

fn resource_name(t: &ResourceType) -> String {
    if t.group.is_empty() {
        t.plural.clone()
    } else {
        format!("{}.{}", t.plural, t.group)
    }
}
