//! Progress and checkpoints onto the FineTuneJob status, from rank 0, on a background thread.
//!
//! The training loop calls [`StatusReporter::progress`] / [`StatusReporter::checkpoints`], which
//! only store the newest values; a background thread sends them at most every
//! [`MIN_INTERVAL`] (a checkpoint is sent at once). Two sinks:
//!
//! * in a cluster (`LF_JOB_NAME` + `LF_JOB_NAMESPACE`): server-side apply of `/status` under the
//!   field manager [`TRAINER_FIELD_MANAGER`], which owns `progress` and `checkpoints`;
//! * locally (`LF_STATUS_FILE`): the same apply patch appended as one JSON line to that file.
//!
//! A failed write is logged and retried on the next tick; it never stops training.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lf_api::runtime::env;
use lf_api::status::{CheckpointRecord, Progress, TRAINER_FIELD_MANAGER};
use lf_api::FineTuneJob;

/// The shortest time between two progress writes.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Where status goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Kube { name: String, namespace: String },
    File { path: PathBuf, name: Option<String> },
}

impl Sink {
    /// The sink the environment asks for: `LF_STATUS_FILE` wins (local runner), then
    /// `LF_JOB_NAME` + `LF_JOB_NAMESPACE`; `None` when neither is set.
    pub fn from_env() -> Option<Sink> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(path) = get(env::STATUS_FILE) {
            return Some(Sink::File {
                path: PathBuf::from(path),
                name: get(env::JOB_NAME),
            });
        }
        match (get(env::JOB_NAME), get(env::JOB_NAMESPACE)) {
            (Some(name), Some(namespace)) => Some(Sink::Kube { name, namespace }),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Pending {
    progress: Option<Progress>,
    checkpoints: Vec<CheckpointRecord>,
    predict: Option<BTreeMap<String, f64>>,
    dirty: bool,
    urgent: bool,
    closing: bool,
}

/// The server-side apply patch for `progress`, `checkpoints` and `predict`.
pub fn apply_patch(
    name: Option<&str>,
    progress: Option<&Progress>,
    checkpoints: &[CheckpointRecord],
    predict: Option<&BTreeMap<String, f64>>,
) -> serde_json::Value {
    let mut status = serde_json::Map::new();
    if let Some(p) = progress {
        status.insert(
            "progress".into(),
            serde_json::to_value(p).unwrap_or_default(),
        );
    }
    if !checkpoints.is_empty() {
        status.insert(
            "checkpoints".into(),
            serde_json::to_value(checkpoints).unwrap_or_default(),
        );
    }
    if let Some(metrics) = predict {
        status.insert(
            "predict".into(),
            serde_json::to_value(metrics).unwrap_or_default(),
        );
    }
    let mut patch = serde_json::json!({
        "apiVersion": "lf-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "status": status,
    });
    if let Some(name) = name {
        patch["metadata"] = serde_json::json!({ "name": name });
    }
    patch
}

/// Sends status updates from a background thread.
pub struct StatusReporter {
    shared: Arc<(Mutex<Pending>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatusReporter {
    /// Starts the reporter for `sink`.
    pub fn start(sink: Sink) -> StatusReporter {
        let shared = Arc::new((Mutex::new(Pending::default()), Condvar::new()));
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("lf-status".into())
            .spawn(move || run(sink, worker))
            .ok();
        StatusReporter { shared, thread }
    }

    fn update(&self, f: impl FnOnce(&mut Pending)) {
        let (lock, cvar) = &*self.shared;
        if let Ok(mut p) = lock.lock() {
            f(&mut p);
            p.dirty = true;
            cvar.notify_all();
        }
    }

    /// Records the newest progress (sent within [`MIN_INTERVAL`]).
    pub fn progress(&self, progress: Progress) {
        self.update(|p| p.progress = Some(progress));
    }

    /// Records the complete checkpoint list (sent at once).
    pub fn checkpoints(&self, list: Vec<CheckpointRecord>) {
        self.update(|p| {
            p.checkpoints = list;
            p.urgent = true;
        });
    }

    /// Records the batch prediction's metrics (sent at once).
    pub fn predict(&self, metrics: BTreeMap<String, f64>) {
        self.update(|p| {
            p.predict = Some(metrics);
            p.urgent = true;
        });
    }

    /// Sends what is pending and stops the thread (waits at most a few seconds).
    pub fn close(mut self) {
        self.update(|p| {
            p.closing = true;
            p.urgent = true;
        });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(sink: Sink, shared: Arc<(Mutex<Pending>, Condvar)>) {
    let mut writer = match Writer::new(&sink) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("status reporting is off: {e}");
            return;
        }
    };
    let mut last = Instant::now() - MIN_INTERVAL;
    let mut attempts_after_close = 0;
    loop {
        let (lock, cvar) = &*shared;
        let Ok(mut guard) = lock.lock() else { return };
        // Wait for something to send and for the interval to pass (checkpoints and close skip it).
        loop {
            let due = guard.dirty && (guard.urgent || last.elapsed() >= MIN_INTERVAL);
            if due || (guard.closing && !guard.dirty) {
                break;
            }
            let wait = if guard.dirty {
                MIN_INTERVAL.saturating_sub(last.elapsed())
            } else {
                MIN_INTERVAL
            };
            guard = match cvar.wait_timeout(guard, wait.max(Duration::from_millis(10))) {
                Ok((g, _)) => g,
                Err(_) => return,
            };
        }
        if guard.closing && !guard.dirty {
            return;
        }
        let patch = apply_patch(
            writer.name(),
            guard.progress.as_ref(),
            &guard.checkpoints,
            guard.predict.as_ref(),
        );
        let closing = guard.closing;
        guard.dirty = false;
        guard.urgent = false;
        drop(guard);
        last = Instant::now();
        if let Err(e) = writer.send(&patch) {
            tracing::warn!("status update failed (will retry): {e}");
            if let Ok(mut g) = lock.lock() {
                g.dirty = true;
            }
            if closing {
                attempts_after_close += 1;
                if attempts_after_close >= 3 {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

enum Writer {
    File { path: PathBuf, name: Option<String> },
    Kube(Box<KubeWriter>),
}

struct KubeWriter {
    name: String,
    rt: tokio::runtime::Runtime,
    api: kube::Api<FineTuneJob>,
}

impl Writer {
    fn new(sink: &Sink) -> Result<Writer, String> {
        match sink {
            Sink::File { path, name } => Ok(Writer::File {
                path: path.clone(),
                name: name.clone(),
            }),
            Sink::Kube { name, namespace } => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let client = rt
                    .block_on(kube::Client::try_default())
                    .map_err(|e| format!("no Kubernetes client: {e}"))?;
                let api = kube::Api::namespaced(client, namespace);
                Ok(Writer::Kube(Box::new(KubeWriter {
                    name: name.clone(),
                    rt,
                    api,
                })))
            }
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            Writer::File { name, .. } => name.as_deref(),
            Writer::Kube(k) => Some(&k.name),
        }
    }

    fn send(&mut self, patch: &serde_json::Value) -> Result<(), String> {
        match self {
            Writer::File { path, .. } => {
                use std::io::Write;
                let line = format!(
                    "{}\n",
                    serde_json::to_string(patch).map_err(|e| e.to_string())?
                );
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&*path)
                    .map_err(|e| e.to_string())?;
                // One write call per line, so a reader never sees half of two lines interleaved.
                f.write_all(line.as_bytes()).map_err(|e| e.to_string())
            }
            Writer::Kube(k) => {
                let KubeWriter { name, rt, api } = k.as_mut();
                let params = kube::api::PatchParams::apply(TRAINER_FIELD_MANAGER).force();
                let apply = kube::api::Patch::Apply(patch);
                let fut = api.patch_status(name, &params, &apply);
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), fut).await })
                    .map_err(|_| "timed out after 10 s".to_string())?
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sink_gets_patches_and_checkpoints_immediately() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.jsonl");
        let r = StatusReporter::start(Sink::File {
            path: path.clone(),
            name: Some("job".into()),
        });
        let p = Progress {
            step: 3,
            total_steps: 10,
            step_display: Progress::step_display(3, 10),
            ..Default::default()
        };
        r.progress(p.clone());
        let ck = CheckpointRecord {
            step: 3,
            path: "/out/checkpoint-3".into(),
            saved_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ),
            loss: Some(1.0),
        };
        r.checkpoints(vec![ck]);
        r.predict([("predict_bleu-4".to_string(), 66.6369375)].into());
        r.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["metadata"]["name"], "job");
        assert_eq!(last["status"]["progress"]["stepDisplay"], "3/10");
        assert_eq!(last["status"]["checkpoints"][0]["step"], 3);
        // Every patch carries all the trainer's fields (a server-side apply drops what it omits).
        assert_eq!(last["status"]["predict"]["predict_bleu-4"], 66.6369375);
    }
}
