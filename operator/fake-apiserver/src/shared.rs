//! What the HTTP side (`service`), the watch streams (`watch`) and the [`crate::FakeApiServer`]
//! handle share: the state behind every clone, the faults to inject, the requests received, and
//! the response body type.

use std::convert::Infallible;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use http::Method;
use http_body_util::combinators::UnsyncBoxBody;

use crate::error::ApiError;
use crate::store::Store;

/// The response body type: a full JSON document or a stream of watch events.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One request the server received (for assertions on what a controller did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    /// `fieldManager` of writes, when given.
    pub field_manager: Option<String>,
    /// The HTTP status code answered.
    pub code: u16,
}

/// A failure to answer instead of handling matching requests (see
/// [`crate::FakeApiServer::inject_failure`]).
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    pub method: Method,
    pub path_contains: String,
    pub remaining: u32,
    pub error: ApiError,
}

/// State shared by every clone of the service and the [`crate::FakeApiServer`] handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    /// The latest resourceVersion, so watches wake up on changes.
    pub changed: tokio::sync::watch::Sender<u64>,
    pub requests: Mutex<Vec<RequestRecord>>,
    pub faults: Mutex<Vec<Fault>>,
}

impl Shared {
    /// Locks the store, recovering from a poisoned lock (a panicking test thread).
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn notify(&self, store: &Store) {
        self.changed.send_replace(store.resource_version());
    }
}
