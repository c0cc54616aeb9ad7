//! `lf-operator run`: connect, check the CRD, serve metrics and probes, elect a leader, reconcile.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use kube::api::ListParams;
use kube::{Api, Client};
use lf_api::FineTuneJob;

use crate::controller::{self, ControllerConfig};
use crate::http::{self, Readiness};
use crate::lease::{LeaderElector, LeaseConfig};
use crate::metrics::Metrics;

/// Settings of `run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub metrics_addr: SocketAddr,
    pub controller: ControllerConfig,
    /// `None`: no leader election (a single replica).
    pub lease: Option<LeaseConfig>,
}

/// Resolves when SIGTERM or Ctrl-C arrives.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the operator until a signal (Ok) or lost leadership (Err, so the pod restarts).
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let client = Client::try_default().await.context(
        "cannot configure a Kubernetes client (in-cluster service account or KUBECONFIG / ~/.kube/config)",
    )?;
    // Every namespace it will watch (the whole cluster unless namespace-scoped) must be listable.
    let scopes: Vec<Option<&str>> = match opts.controller.namespaces.as_slice() {
        [] => vec![None],
        namespaces => namespaces.iter().map(|ns| Some(ns.as_str())).collect(),
    };
    for scope in scopes {
        let (api, where_): (Api<FineTuneJob>, String) = match scope {
            None => (Api::all(client.clone()), "cluster-wide".into()),
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                format!("in namespace {ns}"),
            ),
        };
        api.list(&ListParams::default().limit(1)).await.map_err(|e| {
            anyhow!("cannot list finetunejobs.lf-operator.io {where_} ({e}); is the CRD installed (`kubectl apply -f crds/finetunejobs.yaml`) and the operator's RBAC in place?")
        })?;
    }

    let metrics = Metrics::new()?;
    let ready = Readiness::default();
    let (addr, _server) = http::serve(opts.metrics_addr, metrics.clone(), ready.clone())
        .await
        .with_context(|| format!("cannot listen on {}", opts.metrics_addr))?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    ready.set(true);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        let _ = stop_rx.await;
    };
    let Some(lease) = opts.lease else {
        let ctrl = tokio::spawn(controller::run(client, opts.controller, metrics, stop));
        return until_signal_or_end(ctrl, stop_tx).await;
    };
    let mut elector = LeaderElector::new(client.clone(), lease);
    tokio::select! {
        _ = elector.acquire() => {}
        _ = shutdown_signal() => return Ok(()),
    }
    let mut ctrl = tokio::spawn(controller::run(client, opts.controller, metrics, stop));
    let end = tokio::select! {
        _ = elector.keep_leading() => End::LeaseLost,
        _ = shutdown_signal() => End::Signal,
        ended = &mut ctrl => End::Controller(ended),
    };
    match end {
        End::LeaseLost => {
            // Another replica may lead from now on: cancel every in-flight reconciliation at once
            // rather than letting them finish their writes.
            ctrl.abort();
            Err(anyhow!(
                "lost the leader lease; exiting so that only one replica reconciles"
            ))
        }
        End::Controller(ended) => {
            release(&mut elector).await;
            Err(controller_ended(ended))
        }
        End::Signal => {
            let _ = stop_tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(20), ctrl).await;
            release(&mut elector).await;
            Ok(())
        }
    }
}

/// What ended a leading replica's work.
enum End {
    Signal,
    LeaseLost,
    /// The controller's task ended by itself (it panicked, or its watches ended).
    Controller(Result<(), tokio::task::JoinError>),
}

/// Without leader election: runs until a signal (graceful stop) or until the controller ends.
async fn until_signal_or_end(
    mut ctrl: tokio::task::JoinHandle<()>,
    stop_tx: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    tokio::select! {
        ended = &mut ctrl => Err(controller_ended(ended)),
        _ = shutdown_signal() => {
            let _ = stop_tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(20), ctrl).await;
            Ok(())
        }
    }
}

/// The error a controller that ended by itself leaves: the process exits with it (and the pod
/// restarts) rather than living on without reconciling.
fn controller_ended(ended: Result<(), tokio::task::JoinError>) -> anyhow::Error {
    match ended {
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let what = (payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            anyhow!("the controller panicked ({what}); exiting so that the pod restarts")
        }
        Err(e) => anyhow!("the controller task was cancelled ({e}); exiting"),
        Ok(()) => anyhow!("the controller stopped by itself (its watches ended); exiting"),
    }
}

/// Gives the lease up so that another replica takes over at once.
async fn release(elector: &mut LeaderElector) {
    if let Err(e) = elector.release().await {
        tracing::warn!(error = %e, "cannot release the lease");
    }
}

/// Logs as JSON when `json` (the default off a terminal), else human-readable; `RUST_LOG`
/// filters (default `info`).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_controller_that_panics_or_ends_ends_the_process() {
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let panicking = tokio::spawn(async { panic!("reconcile bug") });
        let err = until_signal_or_end(panicking, tx).await.expect_err("exits");
        assert!(
            err.to_string().contains("panicked (reconcile bug)"),
            "{err}"
        );

        let (tx, _rx) = tokio::sync::oneshot::channel();
        let ended = tokio::spawn(async {});
        let err = until_signal_or_end(ended, tx).await.expect_err("exits");
        assert!(err.to_string().contains("stopped by itself"), "{err}");
    }
}
