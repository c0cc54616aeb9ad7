//! An in-memory Kubernetes API server for tests, served as a `tower::Service` that
//! [`kube::Client`] talks to directly (no sockets, no cluster).
//!
//! ```
//! # async fn demo() -> Result<(), kube::Error> {
//! use k8s_openapi::api::core::v1::ConfigMap;
//! let fake = lf_fake_apiserver::FakeApiServer::new();
//! let api: kube::Api<ConfigMap> = kube::Api::namespaced(fake.client(), "default");
//! let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "a"}})).unwrap();
//! api.create(&Default::default(), &cm).await?;
//! assert!(fake.get::<ConfigMap>("default", "a").is_some());
//! # Ok(()) }
//! ```
//!
//! What it serves, on the real paths (`/api/v1/...`, `/apis/<group>/<version>/...`):
//! - core/v1 (pods, services, configmaps, secrets, serviceaccounts, persistentvolumeclaims,
//!   events, namespaces), batch/v1 jobs, rbac/v1, coordination/v1 leases, events.k8s.io/v1, and any
//!   CustomResourceDefinition given to [`FakeApiServer::with_crd`];
//! - get, list and watch (label and field selectors; watches stream newline-delimited events,
//!   replayed after the requested `resourceVersion`, then live), create, replace (PUT, with
//!   optimistic concurrency on `resourceVersion`), JSON merge patch, server-side apply (field
//!   managers, conflicts, `force`), delete and deletecollection; the `/status` subresource;
//! - resourceVersion per write (no-op writes keep it and emit no event), `generation` bumped on
//!   spec changes, ownerReference cascade deletion (or orphaning).
//!
//! How it differs from a real API server (what only a real cluster can show):
//! - No controllers run: nothing creates a Job's pods, schedules or runs them, or sets Job
//!   conditions. Tests act as those controllers through the helpers ([`FakeApiServer::start_job_pods`],
//!   [`FakeApiServer::set_pod_running`], [`FakeApiServer::terminate_pod`],
//!   [`FakeApiServer::set_job_condition`]...).
//! - No admission, defaulting or schema/CEL validation; immutable fields (a Job's pod template)
//!   can be changed; RBAC is not enforced.
//! - Deletion is immediate: no finalizers, no `deletionTimestamp`, no graceful termination;
//!   foreground and background propagation both delete dependents at once.
//! - Server-side apply tracks ownership per field path of at most two levels (see [`fields`]),
//!   not per leaf field with list-map keys, and no `managedFields` are returned.
//! - Watches never time out, send no bookmarks, and never answer `410 Gone` (history is kept).
//! - No discovery endpoints, no JSON patch, no `dryRun`, no pagination (`limit` is ignored).

pub mod error;
pub mod fields;
mod helpers;
pub mod registry;
pub mod selector;
mod server;
mod service;
mod shared;
pub mod store;
mod watch;

pub use error::ApiError;
pub use helpers::Termination;
pub use registry::ResourceType;
pub use server::FakeApiServer;
pub use service::FakeService;
pub use shared::RequestRecord;
