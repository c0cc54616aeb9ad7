//! State shared by the node's tasks.

use std::sync::{Mutex, MutexGuard};

use kube::Client;
use tokio::sync::watch;

use crate::cgroup::Cgroups;
use crate::config::NodeConfig;
use crate::hosts::HostsTable;
use crate::mountpoints::Mountpoints;
use crate::network::{Bridge, IpPool};

/// The node: its API client, configuration, bridge, and the tables its pods share.
pub struct NodeCtx {
    pub client: Client,
    pub config: NodeConfig,
    pub bridge: Bridge,
    pub service_env: Vec<(String, String)>,
    pub pool: Mutex<IpPool>,
    pub hosts: Mutex<HostsTable>,
    pub mountpoints: Mutex<Mountpoints>,
    /// The node's memory cgroups; `None` where the host has none (limits are then not enforced).
    pub cgroups: Option<Cgroups>,
    /// Becomes `true` when the node shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl NodeCtx {
    /// The node's InternalIP (the bridge's address: the pods' gateway).
    pub fn host_ip(&self) -> String {
        self.bridge.address.to_string()
    }
}

/// Locks a mutex, going on with the data if a panicking holder poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves once the node is shutting down (or the shutdown sender is gone).
pub async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
