//! Pod status as the kubelet reports it, built from what the node knows of each container (pure).

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// The kubelet's limit on a termination message read from the file.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// The fallback to logs: at most this many lines ...
pub const MAX_LOG_LINES: usize = 80;
/// ... and at most this many bytes.
pub const MAX_LOG_BYTES: usize = 2048;

/// How a container run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Termination {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
    pub container_id: Option<String>,
}

/// A container's current state.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
        pid: i32,
    },
    Terminated(Termination),
}

/// What the node knows of one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    pub state: State,
    pub last_termination: Option<Termination>,
    pub restart_count: i32,
    pub ready: bool,
}

impl ContainerRecord {
    pub fn new(name: &str, image: &str, waiting_reason: &str) -> Self {
        ContainerRecord {
            name: name.to_string(),
            image: image.to_string(),
            state: State::Waiting {
                reason: waiting_reason.to_string(),
                message: None,
            },
            last_termination: None,
            restart_count: 0,
            ready: false,
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    pub fn succeeded(&self) -> bool {
        matches!(&self.state, State::Terminated(t) if t.exit_code == 0)
    }
}

/// What the node knows of one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRecord {
    pub restart_policy: String,
    pub init: Vec<ContainerRecord>,
    pub containers: Vec<ContainerRecord>,
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub start_time: Option<Timestamp>,
    pub sandbox_ready: bool,
    /// The pod is being stopped for good (deleted, node shutdown): no container restarts, and the
    /// phase becomes terminal once all containers stopped.
    pub terminal: bool,
    /// A phase imposed by the node (node shutdown), with the pod-level reason and message.
    pub forced: Option<Forced>,
    /// Types of the pod's readiness gates, with whether their condition is True (from the pod).
    pub readiness_gates: Vec<(String, Option<bool>)>,
}

/// A phase the node imposes.
#[derive(Debug, Clone, PartialEq)]
pub struct Forced {
    pub phase: String,
    pub reason: String,
    pub message: String,
}

/// The exit code the kubelet reports: the process's code, or 128 + the signal that killed it.
pub fn exit_code(code: Option<i32>, signal: Option<i32>) -> i32 {
    match (code, signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 128,
    }
}

/// "Completed" for 0, "Error" otherwise.
pub fn exit_reason(exit_code: i32) -> &'static str {
    if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

/// The terminated reason of a container that ran its command: "OOMKilled" when the kernel's OOM
/// killer killed a process of its cgroup, whatever the exit code (as containerd reports it), else
/// [`exit_reason`].
pub fn termination_reason(exit_code: i32, oom_killed: bool) -> &'static str {
    if oom_killed {
        "OOMKilled"
    } else {
        exit_reason(exit_code)
    }
}

fn tail_bytes(data: &[u8], max: usize) -> &[u8] {
    &data[data.len().saturating_sub(max)..]
}

/// The last `MAX_LOG_LINES` lines of a log, at most `MAX_LOG_BYTES` bytes.
pub fn log_tail(log: &[u8]) -> &[u8] {
    let trimmed_end = log.strip_suffix(b"\n").unwrap_or(log);
    let mut start = 0;
    let mut lines = 0;
    for (i, &b) in trimmed_end.iter().enumerate().rev() {
        if b == b'\n' {
            lines += 1;
            if lines == MAX_LOG_LINES {
                start = i + 1;
                break;
            }
        }
    }
    tail_bytes(&log[start..], MAX_LOG_BYTES)
}

/// The termination message: the file's last 4096 bytes; with `FallbackToLogsOnError`, when the
/// file is empty and the container failed, the tail of its log.
pub fn termination_message(
    file: &[u8],
    log: &[u8],
    fallback_to_logs: bool,
    failed: bool,
) -> Option<String> {
    let data = if !file.is_empty() {
        tail_bytes(file, MAX_MESSAGE_BYTES)
    } else if fallback_to_logs && failed {
        log_tail(log)
    } else {
        &[]
    };
    (!data.is_empty()).then(|| String::from_utf8_lossy(data).into_owned())
}

/// The pod phase, following the kubelet's rules.
pub fn phase(record: &PodRecord) -> &'static str {
    if let Some(forced) = &record.forced {
        return match forced.phase.as_str() {
            "Succeeded" => "Succeeded",
            "Failed" => "Failed",
            "Running" => "Running",
            _ => "Pending",
        };
    }
    let never = record.restart_policy == "Never";
    let init_failed = record
        .init
        .iter()
        .any(|c| matches!(&c.state, State::Terminated(t) if t.exit_code != 0));
    if init_failed && (never || record.terminal) {
        return "Failed";
    }
    if !record.init.iter().all(ContainerRecord::succeeded) {
        return if record.terminal && !record.init.iter().any(ContainerRecord::is_running) {
            "Failed"
        } else {
            "Pending"
        };
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &record.containers {
        match &c.state {
            State::Running { .. } => running += 1,
            State::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            State::Waiting { .. } if c.last_termination.is_some() => stopped += 1,
            State::Waiting { .. } => waiting += 1,
        }
    }
    if waiting > 0 {
        return if record.terminal && running == 0 {
            "Failed"
        } else {
            "Pending"
        };
    }
    if running > 0 {
        return "Running";
    }
    if stopped == 0 {
        return "Pending";
    }
    if record.terminal {
        return if stopped == succeeded {
            "Succeeded"
        } else {
            "Failed"
        };
    }
    match record.restart_policy.as_str() {
        "Always" => "Running",
        _ if stopped == succeeded => "Succeeded",
        "Never" => "Failed",
        _ => "Running",
    }
}

/// A condition the node owns, before its transition time is decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub type_: &'static str,
    pub status: bool,
    pub reason: Option<String>,
    pub message: Option<String>,
}

fn names(list: &[&ContainerRecord]) -> String {
    format!(
        "[{}]",
        list.iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// The conditions the kubelet owns: PodReadyToStartContainers, Initialized, ContainersReady, Ready.
pub fn wanted_conditions(record: &PodRecord, phase: &str) -> Vec<Wanted> {
    let mut out = vec![Wanted {
        type_: "PodReadyToStartContainers",
        status: record.sandbox_ready,
        reason: None,
        message: None,
    }];
    let incomplete: Vec<&ContainerRecord> = record.init.iter().filter(|c| !c.succeeded()).collect();
    out.push(if incomplete.is_empty() {
        Wanted {
            type_: "Initialized",
            status: true,
            reason: None,
            message: None,
        }
    } else {
        Wanted {
            type_: "Initialized",
            status: false,
            reason: Some("ContainersNotInitialized".into()),
            message: Some(format!(
                "containers with incomplete status: {}",
                names(&incomplete)
            )),
        }
    });
    let unready: Vec<&ContainerRecord> = record
        .containers
        .iter()
        .filter(|c| !(c.ready && c.is_running()))
        .collect();
    let containers_ready = match phase {
        "Succeeded" => (false, Some("PodCompleted".to_string()), None),
        "Failed" => (false, Some("PodFailed".to_string()), None),
        _ if !unready.is_empty() => (
            false,
            Some("ContainersNotReady".to_string()),
            Some(format!(
                "containers with unready status: {}",
                names(&unready)
            )),
        ),
        _ => (true, None, None),
    };
    out.push(Wanted {
        type_: "ContainersReady",
        status: containers_ready.0,
        reason: containers_ready.1.clone(),
        message: containers_ready.2.clone(),
    });
    let gate_problem = record
        .readiness_gates
        .iter()
        .find(|(_, ok)| *ok != Some(true))
        .map(|(gate, ok)| match ok {
            None => {
                format!("corresponding condition of pod readiness gate {gate:?} does not exist.")
            }
            Some(_) => {
                format!("the status of pod readiness gate {gate:?} is not \"True\", but False")
            }
        });
    out.push(match (containers_ready.0, gate_problem) {
        (true, Some(msg)) => Wanted {
            type_: "Ready",
            status: false,
            reason: Some("ReadinessGatesNotReady".into()),
            message: Some(msg),
        },
        (ready, _) => Wanted {
            type_: "Ready",
            status: ready,
            reason: containers_ready.1,
            message: containers_ready.2,
        },
    });
    out
}

/// The owned conditions with their transition times: kept from `previous` when the status did not
/// change, `now` otherwise.
pub fn conditions(
    previous: &[PodCondition],
    wanted: Vec<Wanted>,
    now: Timestamp,
) -> Vec<PodCondition> {
    wanted
        .into_iter()
        .map(|w| {
            let status = if w.status { "True" } else { "False" }.to_string();
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == w.type_ && p.status == status)
                .and_then(|p| p.last_transition_time.clone())
                .unwrap_or(Time(now));
            PodCondition {
                type_: w.type_.to_string(),
                status,
                reason: w.reason,
                message: w.message,
                last_transition_time: Some(last_transition_time),
                last_probe_time: None,
                observed_generation: None,
            }
        })
        .collect()
}

fn terminated(t: &Termination) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        // The kubelet never fills `signal` (CRI does not report it); the exit code says 128+N.
        signal: None,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: t.started_at.map(Time),
        finished_at: Some(Time(t.finished_at)),
        container_id: t.container_id.clone(),
    }
}

/// The status the API shows for one container (an init container is ready once it succeeded).
pub fn container_status(c: &ContainerRecord, init: bool) -> ContainerStatus {
    let (state, container_id) = match &c.state {
        State::Waiting { reason, message } => (
            ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            c.last_termination
                .as_ref()
                .and_then(|t| t.container_id.clone()),
        ),
        State::Running { started_at, pid } => (
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started_at)),
                }),
                ..Default::default()
            },
            Some(container_id(*pid)),
        ),
        State::Terminated(t) => (
            ContainerState {
                terminated: Some(terminated(t)),
                ..Default::default()
            },
            t.container_id.clone(),
        ),
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image.clone(),
        container_id,
        ready: if init {
            c.succeeded()
        } else {
            c.ready && c.is_running()
        },
        started: Some(c.is_running()),
        restart_count: c.restart_count,
        state: Some(state),
        last_state: c.last_termination.as_ref().map(|t| ContainerState {
            terminated: Some(terminated(t)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn termination_from_api(t: &ContainerStateTerminated, now: Timestamp) -> Termination {
    Termination {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: t
            .reason
            .clone()
            .unwrap_or_else(|| exit_reason(t.exit_code).into()),
        message: t.message.clone(),
        started_at: t.started_at.as_ref().map(|x| x.0),
        finished_at: t.finished_at.as_ref().map(|x| x.0).unwrap_or(now),
        container_id: t.container_id.clone(),
    }
}

/// What a previous run of the node reported for a container (adopting pods after a restart).
pub fn record_from_api(cs: &ContainerStatus, now: Timestamp) -> ContainerRecord {
    let state = cs.state.clone().unwrap_or_default();
    let state = if let Some(r) = &state.running {
        State::Running {
            started_at: r.started_at.as_ref().map(|t| t.0).unwrap_or(now),
            pid: cs
                .container_id
                .as_deref()
                .and_then(|id| id.strip_prefix("lf-node://"))
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
        }
    } else if let Some(t) = &state.terminated {
        State::Terminated(termination_from_api(t, now))
    } else {
        let w = state.waiting.unwrap_or_default();
        State::Waiting {
            reason: w.reason.unwrap_or_else(|| "ContainerCreating".into()),
            message: w.message,
        }
    };
    ContainerRecord {
        name: cs.name.clone(),
        image: cs.image.clone(),
        state,
        last_termination: cs
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| termination_from_api(t, now)),
        restart_count: cs.restart_count,
        ready: cs.ready,
    }
}

/// The container ID the node reports for a process.
pub fn container_id(pid: i32) -> String {
    format!("lf-node://{pid}")
}

/// The whole status the node writes (through pods/status, as a strategic merge patch: conditions
/// it does not own, such as DisruptionTarget, stay as they are).
pub fn pod_status(record: &PodRecord, previous: &[PodCondition], now: Timestamp) -> PodStatus {
    let phase = phase(record);
    let conditions = conditions(previous, wanted_conditions(record, phase), now);
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(record.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: record.host_ip.clone(),
        }]),
        pod_ip: record.pod_ip.clone(),
        pod_ips: record
            .pod_ip
            .as_ref()
            .map(|ip| vec![PodIP { ip: ip.clone() }]),
        start_time: record.start_time.map(Time),
        container_statuses: Some(
            record
                .containers
                .iter()
                .map(|c| container_status(c, false))
                .collect(),
        ),
        init_container_statuses: (!record.init.is_empty()).then(|| {
            record
                .init
                .iter()
                .map(|c| container_status(c, true))
                .collect()
        }),
        reason: record.forced.as_ref().map(|f| f.reason.clone()),
        message: record.forced.as_ref().map(|f| f.message.clone()),
        ..Default::default()
    }
}

/// The pods/status strategic merge patch: `metadata.uid` as a precondition (as the kubelet sends
/// it), explicit nulls for an owned condition's absent reason/message (conditions merge by type and
/// an absent field would keep its old value), and podIPs/hostIPs replaced whole.
pub fn patch_body(uid: &str, status: &PodStatus) -> serde_json::Value {
    let mut status = serde_json::to_value(status).unwrap_or_default();
    if let Some(conds) = status
        .get_mut("conditions")
        .and_then(serde_json::Value::as_array_mut)
    {
        for c in conds
            .iter_mut()
            .filter_map(serde_json::Value::as_object_mut)
        {
            for key in ["reason", "message"] {
                c.entry(key).or_insert(serde_json::Value::Null);
            }
        }
    }
    // podIPs/hostIPs merge by ip: a new sandbox's address must replace the old one, not join it.
    for key in ["podIPs", "hostIPs"] {
        if let Some(list) = status
            .get_mut(key)
            .and_then(serde_json::Value::as_array_mut)
        {
            list.insert(0, serde_json::json!({"$patch": "replace"}));
        }
    }
    serde_json::json!({"metadata": {"uid": uid}, "status": status})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn term(code: i32) -> Termination {
        Termination {
            exit_code: code,
            signal: None,
            reason: exit_reason(code).into(),
            message: None,
            started_at: Some(ts(0)),
            finished_at: ts(5),
            container_id: Some(container_id(42)),
        }
    }

    fn record(policy: &str, states: Vec<State>) -> PodRecord {
        PodRecord {
            restart_policy: policy.into(),
            init: vec![],
            containers: states
                .into_iter()
                .enumerate()
                .map(|(i, state)| ContainerRecord {
                    state,
                    ..ContainerRecord::new(&format!("c{i}"), "img", "ContainerCreating")
                })
                .collect(),
            pod_ip: Some("10.244.1.2".into()),
            host_ip: "10.244.0.1".into(),
            start_time: Some(ts(0)),
            sandbox_ready: true,
            terminal: false,
            forced: None,
            readiness_gates: vec![],
        }
    }

    fn running() -> State {
        State::Running {
            started_at: ts(1),
            pid: 42,
        }
    }

    #[test]
    fn exit_codes_and_reasons() {
        assert_eq!(exit_code(Some(3), None), 3);
        assert_eq!(exit_code(None, Some(9)), 137);
        assert_eq!(exit_code(None, Some(15)), 143);
        assert_eq!(exit_reason(0), "Completed");
        assert_eq!(exit_reason(137), "Error");
        assert_eq!(termination_reason(137, true), "OOMKilled");
        assert_eq!(termination_reason(0, true), "OOMKilled");
        assert_eq!(termination_reason(137, false), "Error");
        assert_eq!(termination_reason(0, false), "Completed");
    }

    #[test]
    fn termination_message_from_file_then_logs() {
        assert_eq!(
            termination_message(b"oom", b"log", true, true).as_deref(),
            Some("oom")
        );
        assert_eq!(
            termination_message(b"", b"a\nb\n", true, true).as_deref(),
            Some("a\nb\n")
        );
        assert_eq!(termination_message(b"", b"a\nb\n", true, false), None);
        assert_eq!(termination_message(b"", b"a\nb\n", false, true), None);
        let big = vec![b'x'; 5000];
        assert_eq!(
            termination_message(&big, b"", false, true).unwrap().len(),
            MAX_MESSAGE_BYTES
        );
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let msg = termination_message(b"", log.as_bytes(), true, true).unwrap();
        assert!(msg.starts_with("line 20\n"), "{msg}");
        assert!(msg.ends_with("line 99\n"));
        let long: String = (0..10).map(|_| format!("{}\n", "y".repeat(500))).collect();
        let msg = termination_message(b"", long.as_bytes(), true, true).unwrap();
        assert_eq!(msg.len(), MAX_LOG_BYTES);
    }

    #[test]
    fn phases_follow_the_restart_policy() {
        assert_eq!(phase(&record("Never", vec![running()])), "Running");
        assert_eq!(
            phase(&record("Never", vec![State::Terminated(term(0))])),
            "Succeeded"
        );
        assert_eq!(
            phase(&record("Never", vec![State::Terminated(term(3))])),
            "Failed"
        );
        assert_eq!(
            phase(&record(
                "Never",
                vec![State::Terminated(term(0)), running()]
            )),
            "Running"
        );
        assert_eq!(
            phase(&record("OnFailure", vec![State::Terminated(term(0))])),
            "Succeeded"
        );
        assert_eq!(
            phase(&record("Always", vec![State::Terminated(term(0))])),
            "Running"
        );
        let mut r = record("Always", vec![State::Terminated(term(0))]);
        r.terminal = true;
        assert_eq!(phase(&r), "Succeeded");
        let mut r = record("Always", vec![State::Terminated(term(143))]);
        r.terminal = true;
        assert_eq!(phase(&r), "Failed");
        let waiting = State::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
        };
        assert_eq!(phase(&record("Never", vec![waiting.clone()])), "Pending");
        let mut r = record("OnFailure", vec![waiting]);
        r.containers[0].last_termination = Some(term(1));
        assert_eq!(phase(&r), "Running");
    }

    #[test]
    fn init_containers_gate_the_pod() {
        let mut r = record(
            "Never",
            vec![State::Waiting {
                reason: "PodInitializing".into(),
                message: None,
            }],
        );
        r.init = vec![ContainerRecord {
            state: running(),
            ..ContainerRecord::new("init", "img", "PodInitializing")
        }];
        assert_eq!(phase(&r), "Pending");
        let w = wanted_conditions(&r, "Pending");
        assert_eq!(w[1].type_, "Initialized");
        assert!(!w[1].status);
        assert_eq!(
            w[1].message.as_deref(),
            Some("containers with incomplete status: [init]")
        );
        r.init[0].state = State::Terminated(term(1));
        assert_eq!(phase(&r), "Failed");
        r.restart_policy = "OnFailure".into();
        assert_eq!(phase(&r), "Pending");
        r.init[0].state = State::Terminated(term(0));
        assert!(wanted_conditions(&r, "Pending")[1].status);
    }

    #[test]
    fn forced_phase_wins() {
        let mut r = record("Never", vec![State::Terminated(term(0))]);
        r.forced = Some(Forced {
            phase: "Failed".into(),
            reason: "Terminated".into(),
            message: "node shutdown".into(),
        });
        let s = pod_status(&r, &[], ts(9));
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        assert_eq!(s.reason.as_deref(), Some("Terminated"));
    }

    #[test]
    fn readiness_conditions() {
        let mut r = record("Never", vec![running()]);
        let w = wanted_conditions(&r, "Running");
        assert_eq!(w[2].type_, "ContainersReady");
        assert!(!w[2].status);
        assert_eq!(
            w[2].message.as_deref(),
            Some("containers with unready status: [c0]")
        );
        r.containers[0].ready = true;
        let w = wanted_conditions(&r, "Running");
        assert!(w[2].status && w[3].status);
        r.readiness_gates = vec![("example.com/gate".into(), None)];
        let w = wanted_conditions(&r, "Running");
        assert!(w[2].status && !w[3].status);
        assert_eq!(w[3].reason.as_deref(), Some("ReadinessGatesNotReady"));
        let r = record("Never", vec![State::Terminated(term(0))]);
        let w = wanted_conditions(&r, "Succeeded");
        assert_eq!(w[3].reason.as_deref(), Some("PodCompleted"));
    }

    #[test]
    fn transition_times_are_kept_while_the_status_holds() {
        let r = record("Never", vec![running()]);
        let first = pod_status(&r, &[], ts(10));
        let conds = first.conditions.unwrap();
        let again = pod_status(&r, &conds, ts(20)).conditions.unwrap();
        assert_eq!(conds, again);
        let mut r2 = r.clone();
        r2.containers[0].ready = true;
        let changed = pod_status(&r2, &conds, ts(30)).conditions.unwrap();
        let ready = changed.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.last_transition_time, Some(Time(ts(30))));
        let init = changed.iter().find(|c| c.type_ == "Initialized").unwrap();
        assert_eq!(init.last_transition_time, Some(Time(ts(10))));
    }

    #[test]
    fn records_round_trip_through_the_api_status() {
        let mut c = ContainerRecord::new("main", "img", "ContainerCreating");
        c.state = running();
        c.restart_count = 2;
        c.last_termination = Some(term(1));
        let back = record_from_api(&container_status(&c, false), ts(99));
        assert_eq!(back.state, c.state);
        assert_eq!(back.restart_count, 2);
        assert_eq!(back.last_termination, c.last_termination);
        let mut t = c.clone();
        t.state = State::Terminated(term(0));
        t.last_termination = None;
        let back = record_from_api(&container_status(&t, true), ts(99));
        assert_eq!(back.state, t.state);
        assert!(back.ready);
    }

    #[test]
    fn patch_clears_stale_condition_fields() {
        let r = record("Never", vec![State::Terminated(term(3))]);
        let body = patch_body("u-1", &pod_status(&r, &[], ts(1)));
        assert_eq!(body["metadata"]["uid"], "u-1");
        let ready = body["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["reason"], "PodFailed");
        assert!(ready.get("message").unwrap().is_null());
        assert_eq!(
            body["status"]["podIPs"],
            serde_json::json!([{"$patch": "replace"}, {"ip": "10.244.1.2"}])
        );
    }

    #[test]
    fn container_status_from_an_exit() {
        let mut t = term(3);
        t.message = Some("boom".into());
        let r = record("Never", vec![State::Terminated(t)]);
        let s = pod_status(&r, &[], ts(9));
        assert_eq!(s.pod_ips.as_ref().unwrap()[0].ip, "10.244.1.2");
        assert!(s.init_container_statuses.is_none());
        let cs = &s.container_statuses.unwrap()[0];
        let term = cs.state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(term.exit_code, 3);
        assert_eq!(term.reason.as_deref(), Some("Error"));
        assert_eq!(term.message.as_deref(), Some("boom"));
        assert_eq!(cs.container_id.as_deref(), Some("lf-node://42"));
        assert!(!cs.ready);
        assert_eq!(cs.started, Some(false));
        let json = serde_json::to_value(cs).unwrap();
        assert_eq!(json["state"]["terminated"]["exitCode"], 3);
    }
}
