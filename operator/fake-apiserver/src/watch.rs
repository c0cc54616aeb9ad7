//! Streaming watches: newline-delimited `{"type": ..., "object": ...}` events, replayed from the
//! store's history after the requested resourceVersion and then followed live.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value};

use crate::registry::Target;
use crate::selector::{FieldSelector, LabelSelector};
use crate::shared::{Body, Shared};

/// Where a watch stands.
struct Cursor {
    shared: Arc<Shared>,
    target: Target,
    labels: LabelSelector,
    fields: FieldSelector,
    /// Index of the next history entry to look at.
    next: usize,
    pending: VecDeque<Bytes>,
    changed: tokio::sync::watch::Receiver<u64>,
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

impl Cursor {
    /// Moves events after `next` that this watch selects into `pending`.
    fn collect(&mut self) {
        let store = self.shared.store();
        let ns = self.target.namespace.as_deref();
        for change in &store.history[self.next.min(store.history.len())..] {
            if change.type_index != self.target.type_index
                || ns.is_some_and(|n| n != change.namespace)
            {
                continue;
            }
            let selects = |o: &Value| self.labels.matches(o) && self.fields.matches(o);
            let now = selects(&change.object);
            let before = change.previous.as_ref().is_some_and(selects);
            let kind = match (change.kind, before, now) {
                ("MODIFIED", true, true) => "MODIFIED",
                ("MODIFIED", false, true) => "ADDED",
                ("MODIFIED", true, false) => "DELETED",
                (k, _, true) if k != "MODIFIED" => k,
                _ => continue,
            };
            self.pending.push_back(line(kind, &change.object));
        }
        self.next = store.history.len();
    }
}

/// A watch response. Without `since`, current objects are sent first as `ADDED` (what a real API
/// server does for `resourceVersion=0` or none).
pub(crate) fn response(
    shared: Arc<Shared>,
    target: Target,
    labels: LabelSelector,
    fields: FieldSelector,
    since: Option<u64>,
) -> Response<Body> {
    let (next, pending) = {
        let store = shared.store();
        match since {
            Some(rv) => (
                store
                    .history
                    .iter()
                    .position(|c| c.resource_version > rv)
                    .unwrap_or(store.history.len()),
                VecDeque::new(),
            ),
            None => {
                let items = store.list(
                    target.type_index,
                    target.namespace.as_deref(),
                    &labels,
                    &fields,
                );
                (
                    store.history.len(),
                    items.iter().map(|o| line("ADDED", o)).collect(),
                )
            }
        }
    };
    let changed = shared.changed.subscribe();
    let cursor = Cursor {
        shared,
        target,
        labels,
        fields,
        next,
        pending,
        changed,
    };
    let stream = futures::stream::unfold(cursor, |mut cursor| async move {
        loop {
            if let Some(bytes) = cursor.pending.pop_front() {
                return Some((Ok::<_, Infallible>(Frame::data(bytes)), cursor));
            }
            cursor.changed.borrow_and_update();
            cursor.collect();
            if !cursor.pending.is_empty() {
                continue;
            }
            if cursor.changed.changed().await.is_err() {
                return None;
            }
        }
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
