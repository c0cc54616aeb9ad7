//! The containers of a pod: starting them in order (init containers one by one, to completion),
//! the launch itself, exits, restarts with backoff per restartPolicy, probes, and token refreshes.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

use super::{
    grace_seconds, read_tail, secs, timed_out, Exit, Kind, LaunchFailure, Runtime, Stage, Worker,
    API_TIMEOUT, BACKOFF_RESET_AFTER, FIRST_BACKOFF, MAX_BACKOFF,
};
use crate::cgroup::ContainerCgroup;
use crate::context::lock;
use crate::env::{self, PodFacts};
use crate::hosts;
use crate::launch::{self, LaunchSpec};
use crate::objects;
use crate::probe::{self, ProbeState};
use crate::quantity;
use crate::status::{self, State, Termination};
use crate::volumes;

/// The container's memory limit in bytes (`resources.limits.memory`), as the runtime enforces it.
fn memory_limit(c: &Container) -> Option<u64> {
    c.resources
        .as_ref()?
        .limits
        .as_ref()?
        .get("memory")
        .and_then(|q| quantity::bytes(&q.0))
}

impl Worker {
    pub(super) async fn start_due(&mut self) {
        let now = Instant::now();
        let due = |rt: &Runtime| rt.pid.is_none() && rt.retry_at.is_none_or(|t| now >= t);
        for i in 0..self.record.init.len() {
            let rec = &self.record.init[i];
            if rec.succeeded() {
                continue;
            }
            let waiting = matches!(rec.state, State::Waiting { .. });
            if waiting && due(&self.init_rt[i]) {
                self.launch(Kind::Init, i).await;
            }
            return;
        }
        for i in 0..self.record.containers.len() {
            let waiting = matches!(self.record.containers[i].state, State::Waiting { .. });
            if waiting && due(&self.main_rt[i]) {
                self.launch(Kind::Main, i).await;
            }
        }
    }

    async fn launch(&mut self, kind: Kind, index: usize) {
        let Some(c) = self.container(kind, index) else {
            return;
        };
        let result = self.prepare_launch(&c).await;
        let now = Instant::now();
        match result {
            Ok(spec) => self.spawn(kind, index, &c, spec),
            Err(LaunchFailure::Transient(e)) => {
                tracing::warn!(pod = %self.key, container = %c.name, error = %e, "reading the container's configuration; retrying");
                if let Some(rt) = self.rt_mut(kind, index) {
                    rt.retry_at = Some(now + Duration::from_secs(5));
                }
            }
            Err(LaunchFailure::Container(e)) => {
                tracing::warn!(pod = %self.key, container = %c.name, error = %e, "cannot create the container");
                if let Some(rec) = self.rec_mut(kind, index) {
                    rec.state = State::Waiting {
                        reason: e.reason.as_str().into(),
                        message: Some(e.message),
                    };
                }
                if let Some(rt) = self.rt_mut(kind, index) {
                    rt.retry_at = Some(now + rt.backoff);
                    rt.backoff = (rt.backoff * 2).min(MAX_BACKOFF);
                }
            }
            Err(LaunchFailure::Start(message)) => {
                tracing::warn!(pod = %self.key, container = %c.name, %message, "cannot start the container");
                self.start_error(kind, index, message);
            }
        }
    }

    async fn prepare_launch(&mut self, c: &Container) -> Result<LaunchSpec, LaunchFailure> {
        let pod = self.pod.clone();
        let (cms, secrets) = env::referenced_objects(&pod);
        let objects = tokio::time::timeout(
            API_TIMEOUT,
            objects::env_objects(&self.ctx.client, &self.ns, &cms, &secrets),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out("reading ConfigMaps and Secrets")))
        .map_err(LaunchFailure::Transient)?;
        let facts = PodFacts {
            pod: &pod,
            pod_ip: self.record.pod_ip.as_deref(),
            host_ip: &self.record.host_ip,
            allocatable: self.ctx.config.allocatable(),
        };
        let kube_env = env::container_env(&facts, &objects, c, &self.ctx.service_env)
            .map_err(LaunchFailure::Container)?;
        let argv = env::command_line(c, &kube_env).map_err(LaunchFailure::Container)?;
        let identity = launch::identity(&pod, c).map_err(LaunchFailure::Container)?;
        let termination_path = c
            .termination_message_path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/dev/termination-log".into());
        let termination_file = self.dir.termination_log(&c.name);
        let empty = Default::default();
        let volumes = self.prepared.as_ref().map(|p| &p.volumes).unwrap_or(&empty);
        let lookup = |n: &str| kube_env.get(n).map(str::to_string);
        let mounts = volumes::plan_mounts(
            c,
            volumes,
            &lookup,
            &self.ctx.config.image_mounts,
            Some((termination_file.clone(), termination_path)),
        )
        .map_err(LaunchFailure::Container)?;
        let full_env = env::runtime_env(kube_env, &self.hostname, &self.ctx.config.image_env);
        let working_dir = c
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into());
        let argv0 = argv.first().cloned().unwrap_or_default();
        launch::find_executable(&argv0, full_env.get("PATH"), &working_dir, &mounts)
            .map_err(LaunchFailure::Start)?;

        // Host side: an empty termination-message file the container's user can write, subPath
        // directories, and mount points (created on the host, recorded, removed at node exit).
        let start =
            |what: &str, e: &dyn std::fmt::Display| LaunchFailure::Start(format!("{what}: {e}"));
        std::fs::write(&termination_file, b"")
            .map_err(|e| start("termination-message file", &e))?;
        std::fs::set_permissions(&termination_file, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| start("termination-message file", &e))?;
        for m in mounts.iter().filter(|m| m.subpath && !m.source.exists()) {
            std::fs::create_dir_all(&m.source).map_err(|e| start("creating subPath", &e))?;
        }
        let file_targets = launch::file_targets(&mounts);
        {
            let mut registry = lock(&self.ctx.mountpoints);
            for (i, m) in mounts.iter().enumerate() {
                // Targets under an earlier mount are created inside it by the launch script.
                let nested = mounts[..i]
                    .iter()
                    .any(|p| p.target == "/" || m.target.starts_with(&format!("{}/", p.target)));
                if nested {
                    continue;
                }
                let target = Path::new(&m.target);
                let made = if file_targets.contains(&m.target) {
                    registry.ensure_file(target)
                } else {
                    registry.ensure_dir(target)
                };
                made.map_err(|e| start("creating mount point", &e))?;
            }
        }
        Ok(LaunchSpec {
            netns: self
                .sandbox
                .as_ref()
                .map(|s| s.netns.clone())
                .unwrap_or_default(),
            hostname: self.hostname.clone(),
            stage_dir: launch::stage_root(
                &self
                    .sandbox
                    .as_ref()
                    .map(|s| s.netns.clone())
                    .unwrap_or_default(),
            )
            .join(&c.name)
            .to_string_lossy()
            .into_owned(),
            mounts,
            file_targets,
            read_only_root: launch::read_only_root(c),
            working_dir,
            identity,
            env: full_env.vars().to_vec(),
            argv,
        })
    }

    /// A new instance of a container that ran before counts as a restart.
    fn count_restart(&mut self, kind: Kind, index: usize) {
        if let Some(rec) = self.rec_mut(kind, index) {
            if rec.last_termination.is_some() || matches!(rec.state, State::Terminated(_)) {
                rec.restart_count += 1;
            }
        }
    }

    /// A StartError termination (exit code 128), as the runtime reports a container it could not
    /// create or start.
    fn start_error(&mut self, kind: Kind, index: usize, message: String) {
        self.count_restart(kind, index);
        let term = Termination {
            exit_code: 128,
            signal: None,
            reason: "StartError".into(),
            message: Some(message),
            started_at: None,
            finished_at: Timestamp::now(),
            container_id: None,
        };
        self.finish_container(kind, index, term, Duration::ZERO);
    }

    fn spawn(&mut self, kind: Kind, index: usize, c: &Container, spec: LaunchSpec) {
        let log = self.dir.log(&c.name);
        let marker = self.dir.started_marker(&c.name);
        // The run this spawn starts (the generation it will get).
        let run = self.rt_mut(kind, index).map_or(1, |rt| rt.generation + 1);
        let cgroup = match &self.ctx.cgroups {
            Some(cgroups) => match cgroups.create(&self.uid, &c.name, run, memory_limit(c)) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    tracing::warn!(pod = %self.key, container = %c.name, error = %e, "creating the container's cgroup");
                    self.start_error(kind, index, format!("creating the container's cgroup: {e}"));
                    return;
                }
            },
            None => None,
        };
        let procs = cgroup.as_ref().map(ContainerCgroup::procs);
        let started = match launch::spawn(&spec, &log, &marker, procs.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pod = %self.key, container = %c.name, error = %e, "spawning the container");
                if let Some(cg) = cgroup {
                    cg.release();
                }
                self.start_error(kind, index, e.to_string());
                return;
            }
        };
        self.count_restart(kind, index);
        let now = Instant::now();
        let pid = started.pid;
        let generation = {
            let Some(rt) = self.rt_mut(kind, index) else {
                return;
            };
            rt.generation += 1;
            rt.pid = Some(pid);
            rt.started = Some(now);
            rt.retry_at = None;
            rt.kill_at = None;
            rt.cgroup = cgroup;
            rt.readiness = match kind {
                Kind::Main => c.readiness_probe.clone().map(|p| ProbeState::new(p, now)),
                Kind::Init => None,
            };
            rt.liveness = match kind {
                Kind::Main => c.liveness_probe.clone().map(|p| ProbeState::new(p, now)),
                Kind::Init => None,
            };
            rt.generation
        };
        let ready = kind == Kind::Main && c.readiness_probe.is_none();
        if let Some(rec) = self.rec_mut(kind, index) {
            rec.state = State::Running {
                started_at: Timestamp::now(),
                pid,
            };
            rec.ready = ready;
        }
        tracing::info!(pod = %self.key, container = %c.name, pid, log = %log.display(), "container started");
        let tx = self.exit_tx.clone();
        let mut child = started.child;
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            let _ = tx.send(Exit {
                kind,
                index,
                generation,
                status,
                finished_at: Timestamp::now(),
            });
        });
    }

    pub(super) fn on_exit(&mut self, exit: Exit) {
        let Some(c) = self.container(exit.kind, exit.index) else {
            return;
        };
        let (ran_for, pid, cgroup) = {
            let Some(rt) = self.rt_mut(exit.kind, exit.index) else {
                return;
            };
            if rt.generation != exit.generation || rt.pid.is_none() {
                return;
            }
            rt.readiness = None;
            rt.liveness = None;
            rt.kill_at = None;
            (
                rt.started.map(|s| s.elapsed()).unwrap_or_default(),
                rt.pid.take().unwrap_or_default(),
                rt.cgroup.take(),
            )
        };
        let code = exit.status.and_then(|s| s.code());
        let signal = exit.status.and_then(|s| s.signal());
        // Read before the leftovers are killed: the kernel counted its OOM kills by now.
        let oom_killed = cgroup.as_ref().is_some_and(|cg| cg.oom_killed(signal));
        // Whatever the command left behind in its process group and cgroup goes with it.
        launch::signal_group(pid, libc::SIGKILL);
        if let Some(cg) = cgroup {
            cg.release();
        }
        let started_at = match self.rec_mut(exit.kind, exit.index).map(|r| &r.state) {
            Some(State::Running { started_at, .. }) => Some(*started_at),
            _ => None,
        };
        let log = self.dir.log(&c.name);
        let term = if launch::reached_command(&self.dir.started_marker(&c.name)) {
            let exit_code = status::exit_code(code, signal);
            let file = read_tail(
                &self.dir.termination_log(&c.name),
                status::MAX_MESSAGE_BYTES as u64,
            );
            let fallback = c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
            let log_tail = if fallback && exit_code != 0 {
                read_tail(&log, 64 * 1024)
            } else {
                vec![]
            };
            Termination {
                exit_code,
                signal,
                reason: status::termination_reason(exit_code, oom_killed).into(),
                message: status::termination_message(&file, &log_tail, fallback, exit_code != 0),
                started_at,
                finished_at: exit.finished_at,
                container_id: Some(status::container_id(pid)),
            }
        } else {
            let tail = read_tail(&log, 64 * 1024);
            let detail = String::from_utf8_lossy(status::log_tail(&tail))
                .trim()
                .to_string();
            Termination {
                exit_code: 128,
                signal: None,
                reason: "StartError".into(),
                message: Some(format!("lf-node: container set-up failed: {detail}")),
                started_at,
                finished_at: exit.finished_at,
                container_id: Some(status::container_id(pid)),
            }
        };
        if oom_killed {
            tracing::warn!(pod = %self.key, container = %c.name, limit = ?memory_limit(&c), "the kernel's OOM killer killed a process of the container");
        }
        tracing::info!(pod = %self.key, container = %c.name, exit_code = term.exit_code, reason = %term.reason, "container exited");
        self.finish_container(exit.kind, exit.index, term, ran_for);
    }

    /// Records a container's end and schedules its restart when the policy wants one.
    fn finish_container(&mut self, kind: Kind, index: usize, term: Termination, ran_for: Duration) {
        let policy = self.record.restart_policy.clone();
        let stopping = self.terminating.is_some() || self.record.terminal;
        let restart = !stopping
            && match (kind, policy.as_str()) {
                (Kind::Init, "Never") => false,
                (Kind::Init, _) => term.exit_code != 0,
                (Kind::Main, "Always") => true,
                (Kind::Main, "OnFailure") => term.exit_code != 0,
                _ => false,
            };
        let pod_ref = format!("{}_{}({})", self.name, self.ns, self.uid);
        let now = Instant::now();
        let delay = match self.rt_mut(kind, index) {
            Some(rt) if restart => {
                if ran_for >= BACKOFF_RESET_AFTER {
                    rt.backoff = FIRST_BACKOFF;
                }
                let delay = rt.backoff;
                rt.backoff = (rt.backoff * 2).min(MAX_BACKOFF);
                rt.retry_at = Some(now + delay);
                delay
            }
            _ => Duration::ZERO,
        };
        let Some(rec) = self.rec_mut(kind, index) else {
            return;
        };
        rec.ready = false;
        if restart {
            rec.state = State::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: Some(format!(
                    "back-off {}s restarting failed container={} pod={pod_ref}",
                    delay.as_secs(),
                    rec.name
                )),
            };
            rec.last_termination = Some(term);
        } else {
            rec.state = State::Terminated(term);
        }
    }

    pub(super) async fn run_probes(&mut self) {
        let Some(ip) = self.record.pod_ip.clone() else {
            return;
        };
        let now = Instant::now();
        for i in 0..self.main_rt.len() {
            if self.main_rt[i].pid.is_none() {
                continue;
            }
            let Some(c) = self.container(Kind::Main, i) else {
                continue;
            };
            if let Some(mut p) = self.main_rt[i].readiness.take() {
                if now >= p.next_at {
                    let ok = probe::run(&p.probe, &ip, &c).await;
                    if let Some(ready) = p.record(ok, Instant::now()) {
                        if self.record.containers[i].ready != ready {
                            tracing::info!(pod = %self.key, container = %c.name, ready, "readiness changed");
                        }
                        self.record.containers[i].ready = ready;
                    }
                }
                self.main_rt[i].readiness = Some(p);
            }
            if let Some(kill_at) = self.main_rt[i].kill_at {
                if now >= kill_at {
                    if let Some(pid) = self.main_rt[i].pid {
                        launch::signal_group(pid, libc::SIGKILL);
                    }
                    self.main_rt[i].kill_at = None;
                }
                continue;
            }
            if let Some(mut p) = self.main_rt[i].liveness.take() {
                let mut keep = true;
                if now >= p.next_at {
                    let ok = probe::run(&p.probe, &ip, &c).await;
                    if p.record(ok, Instant::now()) == Some(false) {
                        tracing::warn!(pod = %self.key, container = %c.name, "liveness probe failed: restarting the container");
                        if let Some(pid) = self.main_rt[i].pid {
                            launch::signal_group(pid, libc::SIGTERM);
                        }
                        let grace = p
                            .probe
                            .termination_grace_period_seconds
                            .unwrap_or_else(|| grace_seconds(&self.pod));
                        self.main_rt[i].kill_at = Some(Instant::now() + secs(grace));
                        keep = false;
                    }
                }
                if keep {
                    self.main_rt[i].liveness = Some(p);
                }
            }
        }
    }

    pub(super) async fn refresh_tokens(&mut self) {
        let now = Instant::now();
        for i in 0..self.tokens.len() {
            if now < self.tokens[i].1 {
                continue;
            }
            let src = self.tokens[i].0.clone();
            let answer =
                tokio::time::timeout(API_TIMEOUT, crate::token::request(&self.ctx.client, &src))
                    .await
                    .unwrap_or_else(|_| Err(timed_out("token request")));
            match answer {
                Ok((token, after)) => {
                    match hosts::write_in_place(&src.file, &token) {
                        Ok(()) => {
                            tracing::info!(pod = %self.key, file = %src.file.display(), "refreshed a service-account token")
                        }
                        Err(e) => {
                            tracing::warn!(pod = %self.key, error = %e, "writing a refreshed token")
                        }
                    }
                    self.tokens[i].1 = Instant::now() + after;
                }
                Err(e) => {
                    tracing::warn!(pod = %self.key, error = %e, "refreshing a service-account token");
                    self.tokens[i].1 = Instant::now() + Duration::from_secs(10);
                }
            }
        }
    }

    pub(super) async fn finish_if_terminal(&mut self) {
        let running = self
            .init_rt
            .iter()
            .chain(&self.main_rt)
            .any(|r| r.pid.is_some());
        let phase = status::phase(&self.record);
        if !running && matches!(phase, "Succeeded" | "Failed") {
            tracing::info!(pod = %self.key, phase, "pod finished");
            self.sync_status().await;
            self.teardown().await;
            self.stage = Stage::Finished;
        }
    }
}
