//! `lf-node`: the smallest honest stand-in for a kubelet, for the test cluster. It registers a Node,
//! keeps its Lease and Ready condition fresh, and runs the pods bound to it as processes in their
//! own network and mount namespaces on this machine, each container in a memory cgroup with its
//! memory limit (no container runtime, no images: "image contents" are host directories
//! bind-mounted read-only).

mod cgroup;
mod config;
mod context;
mod env;
mod error;
mod hosts;
mod launch;
mod mountpoints;
mod network;
mod objects;
mod poddir;
mod pods;
mod probe;
mod quantity;
mod recover;
mod register;
mod status;
mod token;
mod volumes;
mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::core::v1::Taint;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch};

use crate::config::{Cidr, ImageMount, NodeConfig};
use crate::context::{lock, NodeCtx};

#[derive(Debug, Parser)]
#[command(
    name = "lf-node",
    version,
    about = "A kubelet stand-in: registers a Node and runs its pods as processes in network namespaces"
)]
struct Cli {
    /// The node's own kubeconfig (client certificate CN=system:node:<name>, O=system:nodes).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// The Node's name.
    #[arg(long)]
    name: String,
    /// GPUs to advertise as `nvidia.com/gpu`.
    #[arg(long, default_value_t = 0)]
    gpus: u32,
    /// CPU capacity (a quantity).
    #[arg(long, default_value = "16", value_parser = config::parse_quantity)]
    cpu: String,
    /// Memory capacity (a quantity).
    #[arg(long, default_value = "64Gi", value_parser = config::parse_quantity)]
    memory: String,
    /// Pod capacity.
    #[arg(long, default_value_t = 110)]
    pods: u32,
    /// A node label `k=v` (repeatable).
    #[arg(long = "label", value_parser = config::parse_key_value)]
    labels: Vec<(String, String)>,
    /// A node taint `key=value:Effect` or `key:Effect` (repeatable).
    #[arg(long = "taint", value_parser = config::parse_taint)]
    taints: Vec<Taint>,
    /// Pod addresses are taken from this network, `.2` upward.
    #[arg(long, default_value = "10.244.1.0/24", value_parser = config::parse_cidr)]
    pod_cidr: Cidr,
    /// An existing Linux bridge whose IPv4 address is the pods' gateway.
    #[arg(long)]
    bridge: String,
    /// The API server's address as seen from pods (KUBERNETES_SERVICE_HOST).
    #[arg(long)]
    api_host: String,
    /// The API server's port as seen from pods (KUBERNETES_SERVICE_PORT).
    #[arg(long)]
    api_port: u16,
    /// `SRC:DST`: a host directory every pod sees read-only at DST (repeatable).
    #[arg(long = "image-mount", value_parser = config::parse_image_mount)]
    image_mounts: Vec<ImageMount>,
    /// `K=V`: environment every container gets unless the pod sets it (repeatable).
    #[arg(long = "image-env", value_parser = config::parse_key_value)]
    image_env: Vec<(String, String)>,
    /// Per-pod directories: logs, emptyDir and projected volumes, termination-message files.
    #[arg(long)]
    state_dir: PathBuf,
    /// Also keep this file up to date with every pod record (for the host's tests).
    #[arg(long)]
    hosts_file: Option<PathBuf>,
    /// Share pod records with the other lf-node processes of this machine through this
    /// directory, so that pods of different nodes resolve each other's names (the node identity
    /// may not read other nodes' pods or the EndpointSlices CoreDNS would use).
    #[arg(long)]
    peer_hosts_dir: Option<PathBuf>,
}

impl Cli {
    fn into_config(self) -> anyhow::Result<(PathBuf, NodeConfig)> {
        let state_dir = std::path::absolute(&self.state_dir)
            .with_context(|| format!("resolving {}", self.state_dir.display()))?;
        Ok((
            self.kubeconfig,
            NodeConfig {
                name: self.name,
                gpus: self.gpus,
                cpu: self.cpu,
                memory: self.memory,
                pods: self.pods,
                labels: self.labels.into_iter().collect::<BTreeMap<_, _>>(),
                taints: self.taints,
                pod_cidr: self.pod_cidr,
                bridge: self.bridge,
                api_host: self.api_host,
                api_port: self.api_port,
                image_mounts: self.image_mounts,
                image_env: self.image_env,
                state_dir,
                hosts_file: self.hosts_file,
                peer_hosts_dir: self.peer_hosts_dir,
            },
        ))
    }
}

async fn client(kubeconfig: &PathBuf) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("loading the kubeconfig")?;
    Client::try_from(config).context("building the API client")
}

/// Re-reads the other nodes' pod records every second (with `--peer-hosts-dir`).
async fn poll_peers(ctx: Arc<NodeCtx>, mut shutdown: watch::Receiver<bool>) {
    if ctx.config.peer_hosts_dir.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => lock(&ctx.hosts).refresh_peers(),
            _ = context::shutting_down(&mut shutdown) => return,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let (kubeconfig, config) = Cli::parse().into_config()?;
    std::fs::create_dir_all(config.state_dir.join("pods"))
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    let client = client(&kubeconfig).await?;
    let bridge = network::bridge(&config.bridge)
        .await
        .with_context(|| format!("reading bridge {}", config.bridge))?;
    tracing::info!(node = %config.name, bridge = %bridge.name, gateway = %bridge.address, prefix = bridge.prefix, pod_cidr = ?config.pod_cidr, "starting");

    recover::cleanup_leftovers(&config.state_dir).await;
    let mut mountpoints = mountpoints::Mountpoints::load(&config.state_dir);
    mountpoints.cleanup();
    // Keyed by the state directory too: two clusters on one host (tests running side by side)
    // both have an `lf-node-1`, and one must never clean up the other's cgroups.
    let cgroups = cgroup::Cgroups::detect(&cgroup::instance_name(&config.name, &config.state_dir));
    if let Some(cg) = &cgroups {
        cg.remove_pods();
        // For tests/cluster/down.sh, which removes the tree when this node was killed before its
        // own clean-up could run.
        let record = config.state_dir.join("cgroup-root");
        if let Err(e) = std::fs::write(&record, cg.root.display().to_string()) {
            tracing::warn!(path = %record.display(), error = %e, "cannot record the cgroup root");
        }
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ctx = Arc::new(NodeCtx {
        client,
        service_env: env::service_env(&config.api_host, config.api_port),
        pool: Mutex::new(network::IpPool::new(config.pod_cidr)),
        hosts: Mutex::new(hosts::HostsTable::new(
            config.hosts_file.clone(),
            config.peer_hosts_dir.clone().map(|dir| hosts::PeerDir {
                dir,
                node: config.name.clone(),
            }),
        )),
        mountpoints: Mutex::new(mountpoints),
        cgroups,
        bridge,
        config,
        shutdown: shutdown_rx.clone(),
    });

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let peers = tokio::spawn(poll_peers(ctx.clone(), shutdown_rx.clone()));
    let (registered_tx, registered_rx) = oneshot::channel();
    let heartbeat =
        tokio::spawn(register::Heartbeat::new(ctx.clone()).run(shutdown_rx.clone(), registered_tx));
    let pods = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            if registered_rx.await.is_ok() {
                pods::run(ctx).await;
            }
        }
    });

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
    }
    let _ = shutdown_tx.send(true);
    if let Err(e) = pods.await {
        tracing::error!(error = %e, "pod manager task failed");
    }
    // The heartbeat stops on shutdown; a call in flight to a dying API server is not waited for.
    heartbeat.abort();
    peers.abort();
    lock(&ctx.hosts).leave();
    // Pods that did not stop in time: kill what is left in their namespaces, remove the rest.
    recover::cleanup_leftovers(&ctx.config.state_dir).await;
    lock(&ctx.mountpoints).cleanup();
    if let Some(cg) = &ctx.cgroups {
        cg.remove_node();
    }
    tracing::info!("stopped");
    Ok(())
}
