//! The FineTuneJob controller: plan, create the children of the current attempt, follow the Job
//! and its pods, restart failed gangs from the latest checkpoint, and keep the status true.
//!
//! This file is the wiring: the watches, the kube-runtime `Controller`, the error policy and the
//! metrics around each reconciliation. The rest, each file importing only those below it:
//!
//! - `reconcile`: the state machine of one reconciliation (reads the caches, carries out the
//!   decisions, writes);
//! - [`restart`]: the restart policy, a pure `decide(..) -> Decision`;
//! - [`serving`]: the server of a Succeeded job's result (`spec.serve`), its decision pure;
//! - [`transitions`]: the status transitions and their Events, pure (conditions by the one rule
//!   of [`lf_api::conditions`]);
//! - [`observe`] and [`classify`]: what the Job and pods say, pure; [`policy`]: what a tenant may
//!   ask for, pure;
//! - [`children`]: writing children; [`watches`]: the watches, filling [`cache`] (and [`index`]);
//!   [`context`]: the shared state.
//!
//! Each reconciliation is level-triggered and idempotent: it derives everything from the status
//! and the children that exist, and writes with server-side apply under
//! [`OPERATOR_FIELD_MANAGER`](lf_api::status::OPERATOR_FIELD_MANAGER). The status is written
//! before the children of a new attempt are created, so a crash at any point leaves either nothing
//! to undo or work the next reconciliation finishes. Decisions never rest on a cache that may
//! predate the operator's own last write (see [`Context::cache_may_lag`]).
//!
//! At scale (see `operator/examples/scale_bench.rs`): children are read from the watches' caches,
//! never listed per reconciliation; a small child is applied only when its rendered content
//! changed; at most [`ControllerConfig::concurrency`] reconciliations run at once.

pub mod cache;
pub mod children;
pub mod classify;
pub mod context;
pub mod faults;
pub mod index;
pub mod job_events;
pub mod observe;
mod outcomes;
pub mod output_claims;
pub mod ownership;
pub mod policy;
mod reconcile;
pub mod restart;
pub mod serving;
pub mod transitions;
mod waiting;
pub mod watches;

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kube::runtime::controller::{self as runtime, Action};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::Controller;
use kube::{Client, ResourceExt};
use lf_api::FineTuneJob;
use lf_render::LABEL_JOB_NAME;

pub use context::{Context, ControllerConfig, Error};

use crate::metrics::Metrics;

/// Runs the controller until `shutdown` resolves: one over the whole cluster, or, when
/// [`ControllerConfig::namespaces`] lists some (a namespace-scoped install), one per namespace,
/// each with its own watches and caches.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // The heartbeat beats from this task only: a reconciliation that blocks the thread, or a
    // controller that ended or panicked (the guard's drop), fails /healthz.
    let _flatline_on_exit = Flatline(metrics.clone());
    let beat = {
        let metrics = metrics.clone();
        async move {
            let mut tick = tokio::time::interval(HEARTBEAT_PERIOD);
            loop {
                tick.tick().await;
                metrics.beat();
            }
        }
    };
    let shutdown = shutdown.shared();
    let scopes: Vec<Option<String>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().cloned().map(Some).collect()
    };
    let controllers = scopes.into_iter().map(|namespace| {
        run_in(
            client.clone(),
            namespace,
            config.clone(),
            metrics.clone(),
            shutdown.clone(),
        )
    });
    tokio::select! {
        _ = futures::future::join_all(controllers) => {}
        _ = beat => {}
    }
}

/// One controller over `namespace` (all namespaces when `None`).
async fn run_in(
    client: Client,
    namespace: Option<String>,
    config: ControllerConfig,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (caches, triggers) = watches::watch(&client, namespace.as_deref());
    let controller = Controller::for_stream(triggers.ftjs, caches.ftjs.clone())
        .owns_stream(triggers.jobs)
        .owns_stream(triggers.services)
        .owns_stream(triggers.config_maps)
        .owns_stream(triggers.service_accounts)
        .owns_stream(triggers.roles)
        .owns_stream(triggers.role_bindings)
        .owns_stream(triggers.network_policies)
        .owns_stream(triggers.deployments)
        .watches_stream(triggers.pods, |pod| {
            let name = pod.labels().get(LABEL_JOB_NAME)?.clone();
            Some(ObjectRef::<FineTuneJob>::new(&name).within(pod.namespace()?.as_str()))
        })
        .with_config(runtime::Config::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown);
    metrics.attach_store(caches.ftjs.clone());
    let ctx = Arc::new(Context::new(client, config, metrics, caches));
    controller
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            let ctx = ctx.clone();
            async move {
                match result {
                    Ok((obj, _)) => tracing::debug!(job = %obj, "reconciled"),
                    Err(runtime::Error::ObjectNotFound(obj)) => {
                        // Deleted: nothing more to remember about it.
                        let ns = obj.namespace.as_deref().unwrap_or_default();
                        ctx.forget(&format!("{ns}/{}", obj.name));
                    }
                    Err(e) => tracing::debug!(error = %e, "reconcile loop"),
                }
            }
        })
        .await
}

/// How often the controller's task beats while it runs.
const HEARTBEAT_PERIOD: Duration = Duration::from_secs(5);

/// Stops the heartbeat when the controller's task ends, however it ends.
struct Flatline(Metrics);

impl Drop for Flatline {
    fn drop(&mut self) {
        self.0.flatline();
    }
}

/// The delay before retrying after the `n`-th failure in a row: 1 s doubling to 5 min, less a
/// jitter of up to a fifth (from `seed`), so that jobs failing together do not retry together.
pub fn backoff(n: u32, seed: u64) -> Duration {
    let base =
        Duration::from_secs(1u64 << n.saturating_sub(1).min(9)).min(Duration::from_secs(300));
    let fraction = (seed % 1000) as f64 / 1000.0;
    base.mul_f64(1.0 - 0.2 * fraction)
}

/// A different number each call (the standard library's randomly keyed hasher).
fn jitter_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// Requeues a failed reconciliation with exponential backoff and jitter ([`backoff`]).
pub fn error_policy(ftj: Arc<FineTuneJob>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .errors
        .with_label_values(&[error.metric_label()])
        .inc();
    let key = context::key(&ftj);
    let n = ctx.failed(key.clone());
    let delay = backoff(n, jitter_seed());
    tracing::warn!(job = %key, error = %error, retry_in_s = delay.as_secs(), "reconciliation failed");
    Action::requeue(delay)
}

/// Reconciles one FineTuneJob, counted and timed.
pub async fn reconcile(ftj: Arc<FineTuneJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.duration.start_timer();
    let result = reconcile::reconcile_job(&ftj, &ctx).await;
    timer.observe_duration();
    ctx.metrics
        .reconciliations
        .with_label_values(&[if result.is_ok() { "ok" } else { "error" }])
        .inc();
    if result.is_ok() {
        ctx.succeeded(&context::key(&ftj));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_minutes_with_jitter_below() {
        let secs = |n, seed| backoff(n, seed).as_secs_f64();
        assert_eq!(secs(1, 0), 1.0);
        assert_eq!(secs(2, 0), 2.0);
        assert_eq!(secs(9, 0), 256.0);
        assert_eq!(secs(10, 0), 300.0);
        assert_eq!(secs(u32::MAX, 0), 300.0);
        assert!((secs(4, 999) - 8.0 * (1.0 - 0.2 * 0.999)).abs() < 1e-9);
        let spread: std::collections::BTreeSet<u64> = (0..20)
            .map(|_| backoff(5, jitter_seed()).as_millis() as u64)
            .collect();
        assert!(spread.len() > 1, "jitter varies: {spread:?}");
        assert!(
            spread.iter().all(|ms| (12_800..=16_000).contains(ms)),
            "{spread:?}"
        );
    }
}
