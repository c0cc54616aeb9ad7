//! What every reconciliation shares: the settings, the client, the caches, the metrics, and what
//! the controller remembers per FineTuneJob between reconciliations.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};
use lf_api::FineTuneJob;

use super::cache::Caches;
use crate::metrics::Metrics;

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The trainer image for jobs without `spec.image`.
    pub default_image: String,
    /// Whether service-mesh sidecars may be injected into trainer pods by default.
    pub sidecar_injection_default: bool,
    /// How often a settled job is looked at again without any change (a safety net).
    pub resync: Duration,
    /// How soon to look again while an old attempt's pods terminate.
    pub wait_poll: Duration,
    /// Name of this controller in Events.
    pub reporter: String,
    /// How many FineTuneJobs are reconciled at once (the others wait in the queue); bounds the
    /// operator's memory when many jobs change together.
    pub concurrency: u16,
    /// Who may connect to trainer pods' metrics port besides the job's own pods (rendered into
    /// each job's NetworkPolicy).
    pub trainer_metrics_from: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>,
    /// What a FineTuneJob may ask for beyond the defaults (images, priority classes, placement).
    pub tenant_policy: super::policy::TenantPolicy,
    /// Watch only these namespaces (a namespace-scoped install, with Roles instead of a
    /// ClusterRole); empty: the whole cluster.
    pub namespaces: Vec<String>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            default_image: crate::DEFAULT_TRAINER_IMAGE.into(),
            sidecar_injection_default: false,
            resync: Duration::from_secs(300),
            wait_poll: Duration::from_secs(2),
            reporter: "lf-operator".into(),
            concurrency: 32,
            trainer_metrics_from: Vec::new(),
            tenant_policy: super::policy::TenantPolicy::permissive(),
            namespaces: Vec::new(),
        }
    }
}

/// Why a reconciliation failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the FineTuneJob has no namespace")]
    MissingNamespace,
}

impl Error {
    /// The `error` label of `lf_operator_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "client",
            Error::MissingNamespace => "missing_namespace",
        }
    }
}

/// `namespace/name`, the key of what is remembered per FineTuneJob.
pub fn key(ftj: &FineTuneJob) -> String {
    format!("{}/{}", ftj.namespace().unwrap_or_default(), ftj.name_any())
}

/// What a reconciliation needs.
pub struct Context {
    pub client: Client,
    pub config: ControllerConfig,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// The watched FineTuneJobs and children (see [`Caches`]).
    pub caches: Caches,
    memory: Mutex<Memory>,
}

/// Per FineTuneJob (`namespace/name`).
#[derive(Default)]
struct Memory {
    /// Consecutive failures, for the error backoff.
    failures: HashMap<String, u32>,
    /// The `(uid, attempt)` whose orphans were last swept.
    swept: HashMap<String, (String, u32)>,
    /// The `resourceVersion` of this process's last status write, until the cache has shown it
    /// (before that, the cached FineTuneJob may predate the write).
    written: HashMap<String, String>,
    /// The Job this process last created, until the cache has shown it (before that, a missing
    /// Job in the cache is not evidence that it is missing).
    created: HashMap<String, String>,
}

impl Context {
    pub fn new(client: Client, config: ControllerConfig, metrics: Metrics, caches: Caches) -> Self {
        let reporter = Reporter {
            controller: config.reporter.clone(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Context {
            client,
            config,
            metrics,
            recorder,
            caches,
            memory: Mutex::new(Memory::default()),
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets what is kept about an object (it is gone).
    pub fn forget(&self, key: &str) {
        let mut m = self.memory();
        m.failures.remove(key);
        m.swept.remove(key);
        m.written.remove(key);
        m.created.remove(key);
    }

    /// Counts a failed reconciliation; returns how many failed in a row.
    pub fn failed(&self, key: String) -> u32 {
        let mut m = self.memory();
        let n = m.failures.entry(key).or_insert(0);
        *n += 1;
        *n
    }

    pub fn succeeded(&self, key: &str) {
        self.memory().failures.remove(key);
    }

    /// Whether this attempt's orphans still have to be looked for (once per attempt and process:
    /// only an earlier attempt, plan or operator version leaves children of other names).
    pub fn needs_sweep(&self, key: &str, uid: &str, attempt: u32) -> bool {
        self.memory()
            .swept
            .get(key)
            .is_none_or(|(u, a)| u != uid || *a != attempt)
    }

    pub fn swept(&self, key: String, uid: String, attempt: u32) {
        self.memory().swept.insert(key, (uid, attempt));
    }

    pub fn finished(&self, key: &str) {
        self.memory().swept.remove(key);
    }

    /// Records the `resourceVersion` a status write of ours produced.
    pub fn wrote_status(&self, key: String, resource_version: Option<String>) {
        let mut m = self.memory();
        match resource_version {
            Some(rv) => m.written.insert(key, rv),
            None => m.written.remove(&key),
        };
    }

    /// Whether the cached FineTuneJob (at `cached_rv`) may predate our last status write; once it
    /// shows the write (or a fresh read matched the cache, `caught_up`), it is trusted again.
    pub fn cache_may_lag(&self, key: &str, cached_rv: Option<&str>) -> bool {
        let mut m = self.memory();
        match m.written.get(key) {
            None => false,
            Some(rv) if Some(rv.as_str()) == cached_rv => {
                m.written.remove(key);
                false
            }
            Some(_) => true,
        }
    }

    pub fn caught_up(&self, key: &str) {
        self.memory().written.remove(key);
    }

    /// Records the Job this process created for a FineTuneJob.
    pub fn created_job(&self, key: String, job: String) {
        self.memory().created.insert(key, job);
    }

    /// Whether `job` was created by this process and may not be in the cache yet; the record is
    /// dropped when the cache shows it (`in_cache`).
    pub fn job_may_lag(&self, key: &str, job: &str, in_cache: bool) -> bool {
        let mut m = self.memory();
        if m.created.get(key).map(String::as_str) != Some(job) {
            return false;
        }
        if in_cache {
            m.created.remove(key);
            return false;
        }
        true
    }
}
