//! One pod's life on the node, as the kubelet's pod worker: sandbox (network namespace, address,
//! hosts file), volumes, init containers in order, then the containers, restarts per restartPolicy
//! with backoff, probes, token refreshes, status through pods/status, graceful deletion (SIGTERM,
//! SIGKILL after the grace period, final status, delete with grace 0 and a uid precondition) and
//! cleanup. One task per pod uid, fed the latest Pod object through a watch channel.

use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::Api;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::cgroup::ContainerCgroup;
use crate::context::{lock, shutting_down, NodeCtx};
use crate::env::PodFacts;
use crate::error::{ContainerError, Error};
use crate::hosts::{self, HostRecord};
use crate::launch;
use crate::network::{self, Sandbox};
use crate::poddir::{PodDir, RuntimeRecord};
use crate::probe::ProbeState;
use crate::status::{self, ContainerRecord, Forced, PodRecord, State, Termination};
use crate::token::TokenSource;
use crate::volumes::{self, Prepared};

mod containers;

/// The latest Pod object, or `None` once it is gone from the API.
pub type PodRx = watch::Receiver<Option<Arc<Pod>>>;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// A container that ran this long gets its restart backoff reset.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
/// Node shutdown caps every pod's grace period.
const SHUTDOWN_GRACE_CAP: i64 = 30;
/// Pods gone from the API without graceful deletion get this long after SIGTERM.
const VANISHED_GRACE: i64 = 2;
const SHUTDOWN_MESSAGE: &str = "Pod was terminated in response to imminent node shutdown.";
/// No API call may hold a worker longer than this (a dying API server must not stall the node).
const API_TIMEOUT: Duration = Duration::from_secs(15);
/// Preparing volumes makes several calls (objects, PVs, tokens).
const VOLUMES_TIMEOUT: Duration = Duration::from_secs(60);
/// During node shutdown the API server may be going away too: one short try.
const SHUTDOWN_API_TIMEOUT: Duration = Duration::from_secs(2);

fn timed_out(what: &str) -> Error {
    Error::Invalid(format!("{what}: timed out"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Init,
    Main,
}

#[derive(Debug)]
struct Exit {
    kind: Kind,
    index: usize,
    generation: u64,
    status: Option<ExitStatus>,
    finished_at: Timestamp,
}

/// The node's runtime view of one container.
#[derive(Debug, Default)]
struct Runtime {
    pid: Option<i32>,
    generation: u64,
    started: Option<Instant>,
    /// A pending restart (backoff) or retry (config error).
    retry_at: Option<Instant>,
    backoff: Duration,
    readiness: Option<ProbeState>,
    liveness: Option<ProbeState>,
    /// SIGKILL escalation after a failed liveness probe.
    kill_at: Option<Instant>,
    /// The running instance's memory cgroup.
    cgroup: Option<ContainerCgroup>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Setup,
    Running,
    /// Terminal phase reached (or found terminal at startup): nothing runs, the sandbox is gone.
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Deleted,
    Shutdown,
    Vanished,
}

#[derive(Debug)]
struct Terminating {
    why: Why,
    deadline: Instant,
    killed: bool,
}

enum LaunchFailure {
    /// The API could not be read: retried, the container stays waiting.
    Transient(Error),
    /// The kubelet's CreateContainerConfigError / CreateContainerError.
    Container(ContainerError),
    /// The runtime could not start the command: a StartError termination (exit code 128).
    Start(String),
}

pub struct Worker {
    ctx: Arc<NodeCtx>,
    rx: PodRx,
    pod: Arc<Pod>,
    gone: bool,
    shutdown_seen: bool,
    api: Api<Pod>,
    ns: String,
    name: String,
    uid: String,
    key: String,
    hostname: String,
    dir: PodDir,
    record: PodRecord,
    init_rt: Vec<Runtime>,
    main_rt: Vec<Runtime>,
    stage: Stage,
    setup_retry_at: Instant,
    setup_backoff: Duration,
    sandbox: Option<Sandbox>,
    prepared: Option<Prepared>,
    tokens: Vec<(TokenSource, Instant)>,
    terminating: Option<Terminating>,
    /// Never write status (a pod found terminal at startup: its status is final).
    frozen: bool,
    last_sent: Option<PodStatus>,
    extra_conditions: Vec<PodCondition>,
    status_retry_at: Option<Instant>,
    status_backoff: Duration,
    exit_tx: mpsc::UnboundedSender<Exit>,
    exit_rx: mpsc::UnboundedReceiver<Exit>,
}

fn restart_policy(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into())
}

fn grace_seconds(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or(pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30)
        .max(0)
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

/// Reads at most the last `max` bytes of a file.
fn read_tail(path: &Path, max: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return vec![];
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(max))).is_err() {
        return vec![];
    }
    let mut buf = vec![];
    let _ = f.read_to_end(&mut buf);
    buf
}

impl Worker {
    /// Runs the pod until it is gone (deleted by the node after termination, or vanished) or the
    /// node shuts down. `existing` says the pod was bound to this node when the node started.
    pub async fn run(ctx: Arc<NodeCtx>, rx: PodRx, existing: bool) {
        let Some(pod) = rx.borrow().clone() else {
            return;
        };
        let mut w = Worker::new(ctx, rx, pod);
        w.adopt(existing);
        w.main_loop().await;
    }

    fn new(ctx: Arc<NodeCtx>, rx: PodRx, pod: Arc<Pod>) -> Self {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let hostname = hosts::pod_hostname(spec.hostname.as_deref(), &name);
        let dir = PodDir::new(&ctx.config.state_dir, &ns, &name, &uid);
        let has_init = spec.init_containers.as_ref().is_some_and(|v| !v.is_empty());
        let image = |c: &Container| c.image.clone().unwrap_or_default();
        let record = PodRecord {
            restart_policy: restart_policy(&pod),
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| ContainerRecord::new(&c.name, &image(c), "PodInitializing"))
                .collect(),
            containers: spec
                .containers
                .iter()
                .map(|c| {
                    let reason = if has_init {
                        "PodInitializing"
                    } else {
                        "ContainerCreating"
                    };
                    ContainerRecord::new(&c.name, &image(c), reason)
                })
                .collect(),
            pod_ip: None,
            host_ip: ctx.host_ip(),
            start_time: pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0)
                .or_else(|| Some(Timestamp::now())),
            sandbox_ready: false,
            terminal: false,
            forced: None,
            readiness_gates: vec![],
        };
        let new_rt = |n: usize| {
            (0..n)
                .map(|_| Runtime {
                    backoff: FIRST_BACKOFF,
                    ..Default::default()
                })
                .collect::<Vec<_>>()
        };
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        Worker {
            api: Api::namespaced(ctx.client.clone(), &ns),
            key: format!("{ns}/{name}"),
            init_rt: new_rt(record.init.len()),
            main_rt: new_rt(record.containers.len()),
            record,
            shutdown_seen: false,
            ctx,
            rx,
            pod,
            gone: false,
            ns,
            name,
            uid,
            hostname,
            dir,
            stage: Stage::Setup,
            setup_retry_at: Instant::now(),
            setup_backoff: FIRST_BACKOFF,
            sandbox: None,
            prepared: None,
            tokens: vec![],
            terminating: None,
            frozen: false,
            last_sent: None,
            extra_conditions: vec![],
            status_retry_at: None,
            status_backoff: FIRST_BACKOFF,
            exit_tx,
            exit_rx,
        }
    }

    /// Takes over what a previous run of the node left: terminal pods stay as they are; pods that
    /// were running fail (restartPolicy Never: their processes died with the node) or restart.
    fn adopt(&mut self, existing: bool) {
        let status = self.pod.status.clone().unwrap_or_default();
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            self.stage = Stage::Finished;
            self.frozen = true;
            return;
        }
        if !existing {
            return;
        }
        let now = Timestamp::now();
        // Only a container that was running lost its process with the node.
        let ran = |list: &Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
            list.iter()
                .flatten()
                .any(|cs| cs.state.as_ref().is_some_and(|s| s.running.is_some()))
        };
        if !ran(&status.container_statuses) && !ran(&status.init_container_statuses) {
            return;
        }
        let never = self.record.restart_policy == "Never";
        let restarted = Termination {
            exit_code: 137,
            signal: None,
            reason: "Error".into(),
            message: Some("lf-node restarted".into()),
            started_at: None,
            finished_at: now,
            container_id: None,
        };
        let adopt_list =
            |records: &mut Vec<ContainerRecord>,
             api: &Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
                for rec in records.iter_mut() {
                    let Some(cs) = api.iter().flatten().find(|cs| cs.name == rec.name) else {
                        continue;
                    };
                    let mut old = status::record_from_api(cs, now);
                    if let State::Running { started_at, pid } = old.state {
                        let mut t = restarted.clone();
                        t.started_at = Some(started_at);
                        t.container_id = Some(status::container_id(pid));
                        if never {
                            old.state = State::Terminated(t);
                        } else {
                            old.last_termination = Some(t);
                            old.state = State::Waiting {
                                reason: "ContainerCreating".into(),
                                message: None,
                            };
                        }
                    }
                    old.ready = false;
                    *rec = old;
                }
            };
        adopt_list(&mut self.record.init, &status.init_container_statuses);
        adopt_list(&mut self.record.containers, &status.container_statuses);
        if never {
            tracing::warn!(pod = %self.key, "pod was running when the node stopped: reporting it Failed");
            self.record.terminal = true;
            self.stage = Stage::Finished;
        } else {
            tracing::info!(pod = %self.key, "pod was running when the node stopped: restarting its containers");
        }
    }

    async fn main_loop(&mut self) {
        loop {
            if self.terminating.is_none() {
                if self.gone {
                    self.start_terminating(Why::Vanished);
                } else if self.pod.metadata.deletion_timestamp.is_some() {
                    self.start_terminating(Why::Deleted);
                } else if *self.ctx.shutdown.borrow() {
                    self.start_terminating(Why::Shutdown);
                }
            }
            if let Some(t) = &mut self.terminating {
                if !self
                    .init_rt
                    .iter()
                    .chain(&self.main_rt)
                    .any(|r| r.pid.is_some())
                {
                    let why = t.why;
                    self.finalize(why).await;
                    return;
                }
                if !t.killed && Instant::now() >= t.deadline {
                    t.killed = true;
                    tracing::info!(pod = %self.key, "grace period over: SIGKILL");
                    self.signal_all(libc::SIGKILL);
                }
            } else {
                match self.stage {
                    Stage::Setup if Instant::now() >= self.setup_retry_at => self.setup().await,
                    Stage::Running => {
                        self.start_due().await;
                        self.run_probes().await;
                        self.refresh_tokens().await;
                        self.finish_if_terminal().await;
                    }
                    _ => {}
                }
            }
            // At node shutdown only the final status is written (the API server may be going
            // away too, and every try costs time the pods' grace periods need).
            let shutting_down = self
                .terminating
                .as_ref()
                .is_some_and(|t| t.why == Why::Shutdown);
            if !shutting_down {
                self.sync_status().await;
            }
            self.wait().await;
        }
    }

    fn container(&self, kind: Kind, index: usize) -> Option<Container> {
        let spec = self.pod.spec.as_ref()?;
        match kind {
            Kind::Init => spec.init_containers.as_ref()?.get(index).cloned(),
            Kind::Main => spec.containers.get(index).cloned(),
        }
    }

    fn rec_mut(&mut self, kind: Kind, index: usize) -> Option<&mut ContainerRecord> {
        match kind {
            Kind::Init => self.record.init.get_mut(index),
            Kind::Main => self.record.containers.get_mut(index),
        }
    }

    fn rt_mut(&mut self, kind: Kind, index: usize) -> Option<&mut Runtime> {
        match kind {
            Kind::Init => self.init_rt.get_mut(index),
            Kind::Main => self.main_rt.get_mut(index),
        }
    }

    fn signal_all(&self, signal: i32) {
        for pid in self
            .init_rt
            .iter()
            .chain(&self.main_rt)
            .filter_map(|r| r.pid)
        {
            launch::signal_group(pid, signal);
        }
    }

    // ---- sandbox and volumes ----

    async fn setup(&mut self) {
        match self.try_setup().await {
            Ok(()) => {
                self.stage = Stage::Running;
                self.setup_backoff = FIRST_BACKOFF;
            }
            Err(e) => {
                tracing::warn!(pod = %self.key, error = %e, retry_in = ?self.setup_backoff, "setting up the pod");
                let message = e.to_string();
                for c in self
                    .record
                    .init
                    .iter_mut()
                    .chain(&mut self.record.containers)
                {
                    if let State::Waiting { message: m, .. } = &mut c.state {
                        *m = Some(message.clone());
                    }
                }
                self.setup_retry_at = Instant::now() + self.setup_backoff;
                self.setup_backoff = (self.setup_backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    fn save_runtime_record(&self) {
        let rec = RuntimeRecord {
            netns: self.sandbox.as_ref().map(|s| s.netns.clone()),
            veth: self.sandbox.as_ref().map(|s| s.veth.clone()),
            tmpfs: self
                .prepared
                .as_ref()
                .map(|p| p.tmpfs.clone())
                .unwrap_or_default(),
        };
        if let Err(e) = rec.save(&self.dir.runtime_record()) {
            tracing::warn!(pod = %self.key, error = %e, "saving the runtime record");
        }
    }

    async fn try_setup(&mut self) -> Result<(), Error> {
        self.dir.create()?;
        if self.sandbox.is_none() {
            let ip = lock(&self.ctx.pool).allocate().ok_or_else(|| {
                Error::Invalid(
                    "FailedCreatePodSandBox: no free address in the node's pod CIDR".into(),
                )
            })?;
            let sandbox = match network::create_sandbox(&self.ctx.bridge, &self.uid, ip).await {
                Ok(s) => s,
                Err(e) => {
                    lock(&self.ctx.pool).release(ip);
                    return Err(Error::Invalid(format!("FailedCreatePodSandBox: {e}")));
                }
            };
            let etc = network::etc_dir(&sandbox.netns);
            hosts::write_in_place(&etc.join("hostname"), &format!("{}\n", self.hostname))?;
            let spec = self.pod.spec.clone().unwrap_or_default();
            let record = HostRecord {
                ip: ip.to_string(),
                namespace: self.ns.clone(),
                hostname: self.hostname.clone(),
                subdomain: spec.subdomain.filter(|s| !s.is_empty()),
                aliases: spec
                    .host_aliases
                    .iter()
                    .flatten()
                    .map(|a| (a.ip.clone(), a.hostnames.clone().unwrap_or_default()))
                    .collect(),
                file: etc.join("hosts"),
            };
            lock(&self.ctx.hosts).insert(&self.uid, record);
            tracing::info!(pod = %self.key, ip = %ip, netns = %sandbox.netns, "pod sandbox ready");
            self.sandbox = Some(sandbox);
            self.record.pod_ip = Some(ip.to_string());
            self.record.sandbox_ready = true;
            self.save_runtime_record();
            // Publish the address before the (possibly slow) volume set-up.
            self.sync_status().await;
        }
        if self.prepared.is_none() {
            let pod = self.pod.clone();
            let facts = PodFacts {
                pod: &pod,
                pod_ip: self.record.pod_ip.as_deref(),
                host_ip: &self.record.host_ip,
                allocatable: self.ctx.config.allocatable(),
            };
            let prepared = tokio::time::timeout(
                VOLUMES_TIMEOUT,
                volumes::prepare(&self.ctx.client, &facts, &self.dir),
            )
            .await
            .map_err(|_| timed_out("preparing volumes"))??;
            let now = Instant::now();
            self.tokens = prepared
                .tokens
                .iter()
                .map(|(src, after)| (src.clone(), now + *after))
                .collect();
            self.prepared = Some(prepared);
            self.save_runtime_record();
        }
        for c in self
            .record
            .init
            .iter_mut()
            .chain(&mut self.record.containers)
        {
            if let State::Waiting { message, .. } = &mut c.state {
                *message = None;
            }
        }
        Ok(())
    }

    /// Removes the sandbox, the address, the hosts record and the volumes.
    async fn teardown(&mut self) {
        self.signal_all(libc::SIGKILL);
        if let Some(s) = self.sandbox.take() {
            // Drop the record first: a later rewrite must not recreate this pod's /etc/netns dir.
            lock(&self.ctx.hosts).remove(&self.uid);
            network::destroy_sandbox(&s.netns, &s.veth).await;
            // The staged mount sources' mountpoints (the mounts died with the namespaces).
            let _ = std::fs::remove_dir_all(launch::stage_root(&s.netns));
            lock(&self.ctx.pool).release(s.ip);
            tracing::info!(pod = %self.key, netns = %s.netns, "pod sandbox removed");
        }
        self.record.sandbox_ready = false;
        if let Some(cgroups) = self.ctx.cgroups.clone() {
            let uid = self.uid.clone();
            let _ = tokio::task::spawn_blocking(move || cgroups.remove_pod(&uid)).await;
        }
        let tmpfs = self.prepared.take().map(|p| p.tmpfs).unwrap_or_default();
        volumes::teardown(&self.dir, &tmpfs).await;
        self.tokens.clear();
        let _ = std::fs::remove_file(self.dir.runtime_record());
    }

    // ---- termination ----

    fn start_terminating(&mut self, why: Why) {
        let grace = match why {
            Why::Deleted => grace_seconds(&self.pod),
            Why::Shutdown => grace_seconds(&self.pod).min(SHUTDOWN_GRACE_CAP),
            Why::Vanished => grace_seconds(&self.pod).min(VANISHED_GRACE),
        };
        let was_terminal = matches!(status::phase(&self.record), "Succeeded" | "Failed");
        self.record.terminal = true;
        if why == Why::Shutdown && !was_terminal && !self.frozen {
            self.record.forced = Some(Forced {
                phase: "Failed".into(),
                reason: "Terminated".into(),
                message: SHUTDOWN_MESSAGE.into(),
            });
            self.extra_conditions.push(PodCondition {
                type_: "DisruptionTarget".into(),
                status: "True".into(),
                reason: Some("TerminationByKubelet".into()),
                message: Some(SHUTDOWN_MESSAGE.into()),
                last_transition_time: Some(Time(Timestamp::now())),
                ..Default::default()
            });
        }
        for rt in self.init_rt.iter_mut().chain(&mut self.main_rt) {
            rt.retry_at = None;
            rt.readiness = None;
            rt.liveness = None;
        }
        for c in self
            .record
            .init
            .iter_mut()
            .chain(&mut self.record.containers)
        {
            c.ready = false;
        }
        let running = self
            .init_rt
            .iter()
            .chain(&self.main_rt)
            .any(|r| r.pid.is_some());
        if running {
            tracing::info!(pod = %self.key, ?why, grace_seconds = grace, "stopping the pod: SIGTERM");
        }
        let killed = grace == 0;
        self.signal_all(if killed { libc::SIGKILL } else { libc::SIGTERM });
        self.terminating = Some(Terminating {
            why,
            deadline: Instant::now() + secs(grace),
            killed,
        });
    }

    /// Containers waiting for a restart report their last termination as their final state.
    fn settle_containers(&mut self) {
        for c in self
            .record
            .init
            .iter_mut()
            .chain(&mut self.record.containers)
        {
            if matches!(c.state, State::Waiting { .. }) {
                if let Some(t) = c.last_termination.take() {
                    c.state = State::Terminated(t);
                }
            }
        }
    }

    async fn finalize(&mut self, why: Why) {
        self.settle_containers();
        match why {
            Why::Deleted => {
                self.write_final_status(None).await;
                self.delete_from_api().await;
            }
            Why::Shutdown => self.write_final_status(Some(1)).await,
            Why::Vanished => {}
        }
        self.teardown().await;
        tracing::info!(pod = %self.key, ?why, "pod done on this node");
    }

    /// Writes the terminal status, retrying (at most `attempts` times when given) until the API
    /// took it, the pod is gone, or the node shuts down.
    async fn write_final_status(&mut self, attempts: Option<u32>) {
        let mut n = 0;
        loop {
            self.status_retry_at = None;
            if self.sync_status().await || self.gone || self.frozen {
                return;
            }
            n += 1;
            if attempts.is_some_and(|a| n >= a) || (attempts.is_none() && self.shutdown_now()) {
                tracing::warn!(pod = %self.key, "giving up on the final status");
                return;
            }
            tokio::time::sleep(self.status_backoff).await;
            self.poll_pod();
        }
    }

    fn shutdown_now(&self) -> bool {
        *self.ctx.shutdown.borrow()
    }

    fn poll_pod(&mut self) {
        if self.rx.has_changed().unwrap_or(true) {
            self.refresh_pod();
        }
    }

    /// The kubelet's last step: delete with grace 0 and a precondition on the uid.
    async fn delete_from_api(&mut self) {
        let mut backoff = FIRST_BACKOFF;
        while !self.gone {
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            let answer = tokio::time::timeout(API_TIMEOUT, self.api.delete(&self.name, &params))
                .await
                .map_err(|_| timed_out("deleting the pod"));
            match answer.and_then(|r| r.map_err(Error::from)) {
                Ok(_) => {
                    tracing::info!(pod = %self.key, "deleted the pod (grace 0)");
                    return;
                }
                Err(Error::Kube(kube::Error::Api(s))) if s.code == 404 || s.code == 409 => return,
                Err(e) => {
                    tracing::warn!(pod = %self.key, error = %e, retry_in = ?backoff, "deleting the pod");
                    if self.shutdown_now() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    self.poll_pod();
                }
            }
        }
    }

    // ---- status and events ----

    /// Patches pods/status when the status changed. `true` when the API has the current status.
    async fn sync_status(&mut self) -> bool {
        if self.frozen || self.gone {
            return false;
        }
        if self.status_retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let existing: Vec<PodCondition> = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        self.record.readiness_gates = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|g| {
                let ok = existing
                    .iter()
                    .find(|c| c.type_ == g.condition_type)
                    .map(|c| c.status == "True");
                (g.condition_type, ok)
            })
            .collect();
        let previous = self
            .last_sent
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or(existing);
        let mut status = status::pod_status(&self.record, &previous, Timestamp::now());
        if let Some(conds) = status.conditions.as_mut() {
            for extra in &self.extra_conditions {
                if !conds.iter().any(|c| c.type_ == extra.type_) {
                    conds.push(extra.clone());
                }
            }
        }
        if self.last_sent.as_ref() == Some(&status) {
            return true;
        }
        let body = status::patch_body(&self.uid, &status);
        let limit = if self.shutdown_now() {
            SHUTDOWN_API_TIMEOUT
        } else {
            API_TIMEOUT
        };
        let params = PatchParams::default();
        let patch = Patch::Strategic(&body);
        let answer =
            tokio::time::timeout(limit, self.api.patch_status(&self.name, &params, &patch))
                .await
                .map_err(|_| timed_out("patching pod status"));
        match answer.and_then(|r| r.map_err(Error::from)) {
            Ok(_) => {
                tracing::debug!(pod = %self.key, phase = ?status.phase, "status updated");
                self.last_sent = Some(status);
                self.status_retry_at = None;
                self.status_backoff = FIRST_BACKOFF;
                true
            }
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 404 => {
                self.gone = true;
                false
            }
            Err(e) => {
                tracing::warn!(pod = %self.key, error = %e, retry_in = ?self.status_backoff, "updating pod status");
                self.status_retry_at = Some(Instant::now() + self.status_backoff);
                self.status_backoff = (self.status_backoff * 2).min(MAX_BACKOFF);
                false
            }
        }
    }

    fn refresh_pod(&mut self) {
        let latest = self.rx.borrow_and_update().clone();
        match latest {
            Some(p) if p.metadata.uid.as_deref() == Some(self.uid.as_str()) => self.pod = p,
            Some(_) => {}
            None => self.gone = true,
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut next = Instant::now() + Duration::from_secs(60);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = next.min(t);
            }
        };
        if self.stage == Stage::Setup {
            consider(Some(self.setup_retry_at));
        }
        if self.stage == Stage::Running && self.terminating.is_none() {
            for rt in self.init_rt.iter().chain(&self.main_rt) {
                consider(rt.retry_at.filter(|_| rt.pid.is_none()));
                consider(rt.readiness.as_ref().map(|p| p.next_at));
                consider(rt.liveness.as_ref().map(|p| p.next_at));
                consider(rt.kill_at);
            }
            for (_, t) in &self.tokens {
                consider(Some(*t));
            }
        }
        if let Some(t) = &self.terminating {
            if !t.killed {
                consider(Some(t.deadline));
            }
        }
        consider(self.status_retry_at);
        next
    }

    async fn wait(&mut self) {
        let deadline = self.next_deadline();
        let mut shutdown = self.ctx.shutdown.clone();
        let watch_pod = !self.gone;
        let watch_shutdown = !self.shutdown_seen;
        tokio::select! {
            changed = self.rx.changed(), if watch_pod => {
                match changed {
                    Ok(()) => self.refresh_pod(),
                    Err(_) => self.gone = true,
                }
            }
            Some(exit) = self.exit_rx.recv() => self.on_exit(exit),
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutting_down(&mut shutdown), if watch_shutdown => {
                self.shutdown_seen = true;
            }
        }
    }
}
