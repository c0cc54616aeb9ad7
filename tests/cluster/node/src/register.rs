//! The Node object and its liveness: registration (or a status update after a restart), the
//! `kube-node-lease` Lease renewed every 10 s, and the node status (Ready heartbeat) every 40 s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;

use crate::config::NodeConfig;
use crate::context::NodeCtx;
use crate::error::{Error, Result};

pub const KUBELET_VERSION: &str = "v1.37.2";
pub const RUNTIME_VERSION: &str = "lf-node://0.1.0";
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const LEASE_DURATION_SECONDS: i32 = 40;
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
pub const STATUS_EVERY_RENEWALS: u32 = 4;
/// The longest one registration, renewal or status call may take.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Facts about the host the node reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFacts {
    pub machine_id: String,
    pub boot_id: String,
    pub kernel_version: String,
    pub os_image: String,
    /// Size of the state dir's filesystem, in bytes.
    pub ephemeral_storage: u64,
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl HostFacts {
    pub fn gather(config: &NodeConfig) -> Self {
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| "Linux".into());
        HostFacts {
            machine_id: read_trim("/etc/machine-id"),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
            kernel_version: read_trim("/proc/sys/kernel/osrelease"),
            os_image,
            ephemeral_storage: filesystem_size(&config.state_dir).unwrap_or(100 << 30),
        }
    }
}

fn filesystem_size(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) writes into the zeroed struct we own; `c` is a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_blocks as u64 * st.f_frsize as u64)
}

/// `amd64`/`arm64` for the Rust architecture names.
pub fn go_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The node's labels: the kubelet's well-known ones, then `--label`.
pub fn labels(config: &NodeConfig) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), config.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        (
            "kubernetes.io/arch".to_string(),
            go_arch(std::env::consts::ARCH).to_string(),
        ),
    ]);
    l.extend(config.labels.clone());
    l
}

/// Capacity (= allocatable: nothing is reserved).
pub fn capacity(config: &NodeConfig, facts: &HostFacts) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_string(), Quantity(config.cpu.clone())),
        ("memory".to_string(), Quantity(config.memory.clone())),
        ("pods".to_string(), Quantity(config.pods.to_string())),
        (
            "ephemeral-storage".to_string(),
            Quantity(facts.ephemeral_storage.to_string()),
        ),
        (
            "nvidia.com/gpu".to_string(),
            Quantity(config.gpus.to_string()),
        ),
    ])
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    since: Timestamp,
    now: Timestamp,
) -> NodeCondition {
    NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(since)),
    }
}

/// The node status: resources, Ready and the pressure conditions, addresses, node info.
pub fn node_status(
    config: &NodeConfig,
    facts: &HostFacts,
    internal_ip: &str,
    since: Timestamp,
    now: Timestamp,
) -> NodeStatus {
    let cap = capacity(config, facts);
    NodeStatus {
        capacity: Some(cap.clone()),
        allocatable: Some(cap),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
                since,
                now,
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
                since,
                now,
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
                since,
                now,
            ),
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status",
                since,
                now,
            ),
        ]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: internal_ip.into(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: config.name.clone(),
            },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: go_arch(std::env::consts::ARCH).into(),
            boot_id: facts.boot_id.clone(),
            container_runtime_version: RUNTIME_VERSION.into(),
            kernel_version: facts.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: facts.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: facts.os_image.clone(),
            system_uuid: facts.machine_id.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Node to create.
pub fn node_object(config: &NodeConfig, status: NodeStatus) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            labels: Some(labels(config)),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: (!config.taints.is_empty()).then(|| config.taints.clone()),
            ..Default::default()
        }),
        status: Some(status),
    }
}

/// Keeps the Node registered and alive until shutdown.
pub struct Heartbeat {
    client: Client,
    ctx: Arc<NodeCtx>,
    facts: HostFacts,
    since: Timestamp,
    node_uid: Option<String>,
}

impl Heartbeat {
    pub fn new(ctx: Arc<NodeCtx>) -> Self {
        Heartbeat {
            client: ctx.client.clone(),
            facts: HostFacts::gather(&ctx.config),
            ctx,
            since: Timestamp::now(),
            node_uid: None,
        }
    }

    fn status(&self) -> NodeStatus {
        node_status(
            &self.ctx.config,
            &self.facts,
            &self.ctx.host_ip(),
            self.since,
            Timestamp::now(),
        )
    }

    /// Creates the Node, or updates the status (and the allowed labels) of an existing one.
    pub async fn register(&mut self) -> Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let config = &self.ctx.config;
        let node = node_object(config, self.status());
        match api.create(&PostParams::default(), &node).await {
            Ok(created) => {
                tracing::info!(node = %config.name, "registered the node");
                self.node_uid = created.metadata.uid;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let existing = api.get(&config.name).await?;
                self.node_uid = existing.metadata.uid.clone();
                // Ready stays True across a quick restart: keep its transition time.
                if let Some(t) = existing
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
                    .and_then(|c| c.last_transition_time.as_ref())
                {
                    self.since = t.0;
                }
                let wanted = labels(config);
                let have = existing.metadata.labels.clone().unwrap_or_default();
                if wanted.iter().any(|(k, v)| have.get(k) != Some(v)) {
                    let patch = json!({"metadata": {"labels": wanted}});
                    if let Err(e) = api
                        .patch(&config.name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        tracing::warn!(error = %e, "updating the existing node's labels");
                    }
                }
                let taints = existing.spec.and_then(|s| s.taints).unwrap_or_default();
                for t in &config.taints {
                    if !taints
                        .iter()
                        .any(|h| h.key == t.key && h.value == t.value && h.effect == t.effect)
                    {
                        tracing::warn!(key = %t.key, "the existing node lacks a requested taint; a node may not change its own taints (NodeRestriction)");
                    }
                }
                tracing::info!(node = %config.name, "node exists (restart): updating its status");
            }
            Err(e) => return Err(e.into()),
        }
        self.patch_status().await
    }

    async fn patch_status(&self) -> Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let body = json!({"status": self.status()});
        api.patch_status(
            &self.ctx.config.name,
            &PatchParams::default(),
            &Patch::Strategic(&body),
        )
        .await?;
        Ok(())
    }

    async fn renew_lease(&self) -> Result<()> {
        let name = &self.ctx.config.name;
        let api: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let now = MicroTime(Timestamp::now());
        let patch = json!({"spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": now,
        }});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(LEASE_NAMESPACE.into()),
                        owner_references: self.node_uid.clone().map(|uid| {
                            vec![OwnerReference {
                                api_version: "v1".into(),
                                kind: "Node".into(),
                                name: name.clone(),
                                uid,
                                ..Default::default()
                            }]
                        }),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(name.clone()),
                        lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                        renew_time: Some(now),
                        ..Default::default()
                    }),
                };
                api.create(&PostParams::default(), &lease).await?;
                tracing::info!(lease = %name, "created the node lease");
                Ok(())
            }
            Err(e) => Err(Error::from(e)),
        }
    }

    /// Registers (retrying with backoff), then renews the lease and the status until shutdown.
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        registered: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let answer = tokio::time::timeout(API_TIMEOUT, self.register())
                .await
                .unwrap_or_else(|_| Err(Error::Invalid("registering: timed out".into())));
            match answer {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "registering the node");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        let _ = registered.send(());
        let mut tick = tokio::time::interval(LEASE_RENEW);
        let mut n: u32 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let renewed = tokio::time::timeout(API_TIMEOUT, self.renew_lease())
                .await
                .unwrap_or_else(|_| Err(Error::Invalid("timed out".into())));
            if let Err(e) = renewed {
                tracing::warn!(error = %e, "renewing the node lease");
            }
            if n.is_multiple_of(STATUS_EVERY_RENEWALS) {
                let patched = tokio::time::timeout(API_TIMEOUT, self.patch_status())
                    .await
                    .unwrap_or_else(|_| Err(Error::Invalid("timed out".into())));
                if let Err(e) = patched {
                    tracing::warn!(error = %e, "updating the node status");
                }
            }
            n = n.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_cidr, parse_taint};

    fn config() -> NodeConfig {
        NodeConfig {
            name: "lf-node-0".into(),
            gpus: 8,
            cpu: "16".into(),
            memory: "64Gi".into(),
            pods: 110,
            labels: BTreeMap::from([("nvidia.com/gpu.product".into(), "H100".into())]),
            taints: vec![parse_taint("nvidia.com/gpu=present:NoSchedule").unwrap()],
            pod_cidr: parse_cidr("10.244.1.0/24").unwrap(),
            bridge: "lfbr0".into(),
            api_host: "10.244.0.1".into(),
            api_port: 6443,
            image_mounts: vec![],
            image_env: vec![],
            state_dir: "/tmp/x".into(),
            hosts_file: None,
            peer_hosts_dir: None,
        }
    }

    #[test]
    fn node_object_has_resources_labels_taints_and_conditions() {
        let c = config();
        let facts = HostFacts {
            ephemeral_storage: 1000,
            ..Default::default()
        };
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let t1 = Timestamp::from_second(1_800_000_040).unwrap();
        let node = node_object(&c, node_status(&c, &facts, "10.244.0.1", t0, t1));
        let v = serde_json::to_value(&node).unwrap();
        assert_eq!(
            v["metadata"]["labels"]["kubernetes.io/hostname"],
            "lf-node-0"
        );
        assert_eq!(v["metadata"]["labels"]["kubernetes.io/os"], "linux");
        assert_eq!(v["metadata"]["labels"]["nvidia.com/gpu.product"], "H100");
        assert_eq!(v["spec"]["taints"][0]["effect"], "NoSchedule");
        let st = &v["status"];
        assert_eq!(st["capacity"]["nvidia.com/gpu"], "8");
        assert_eq!(st["allocatable"]["memory"], "64Gi");
        assert_eq!(st["allocatable"]["pods"], "110");
        assert_eq!(st["allocatable"]["ephemeral-storage"], "1000");
        let ready = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["reason"], "KubeletReady");
        assert_ne!(ready["lastHeartbeatTime"], ready["lastTransitionTime"]);
        assert_eq!(st["addresses"][0]["address"], "10.244.0.1");
        assert_eq!(st["nodeInfo"]["kubeletVersion"], KUBELET_VERSION);
        assert_eq!(st["nodeInfo"]["containerRuntimeVersion"], RUNTIME_VERSION);
        assert_eq!(go_arch("x86_64"), "amd64");
    }
}
