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
    let api: Api<FineTuneJob> = Api::all(client.clone());
    api.list(&ListParams::default().limit(1)).await.map_err(|e| {
        anyhow!("cannot list finetunejobs.lf-operator.io ({e}); is the CRD installed? `kubectl apply -f crds/finetunejobs.yaml`")
    })?;

    let metrics = Metrics::new()?;
    let ready = Readiness::default();
    let (addr, _server) = http::serve(opts.metrics_addr, metrics.clone(), ready.clone())
        .await
        .with_context(|| format!("cannot listen on {}", opts.metrics_addr))?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    ready.set(true);

    let Some(lease) = opts.lease else {
        controller::run(client, opts.controller, metrics, shutdown_signal()).await;
        return Ok(());
    };
    let mut elector = LeaderElector::new(client.clone(), lease);
    tokio::select! {
        _ = elector.acquire() => {}
        _ = shutdown_signal() => return Ok(()),
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        let _ = stop_rx.await;
    };
    let ctrl = tokio::spawn(controller::run(client, opts.controller, metrics, stop));
    let lost = tokio::select! {
        _ = elector.keep_leading() => true,
        _ = shutdown_signal() => false,
    };
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), ctrl).await;
    if lost {
        return Err(anyhow!(
            "lost the leader lease; exiting so that only one replica reconciles"
        ));
    }
    if let Err(e) = elector.release().await {
        tracing::warn!(error = %e, "cannot release the lease");
    }
    Ok(())
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
