//! Prometheus metrics of the controller.
//!
//! Counters and the duration histogram are updated by the reconciler; the per-job gauges (jobs per
//! phase, predicted and measured peak memory) are computed at scrape time from the controller's
//! cache of FineTuneJobs, so a deleted job's series disappear with it.

use std::sync::{Arc, RwLock};

use kube::runtime::reflector::Store;
use lf_api::status::Phase;
use lf_api::FineTuneJob;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounterVec, Opts, Registry, TextEncoder,
};

/// The metrics and their registry.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `lf_operator_reconciliations_total{result="ok|error"}`.
    pub reconciliations: IntCounterVec,
    /// `lf_operator_reconcile_duration_seconds`.
    pub duration: Histogram,
    /// `lf_operator_reconcile_errors_total{error}`.
    pub errors: IntCounterVec,
    /// `lf_operator_restarts_total{reason}`: gang restarts decided, by failure reason.
    pub restarts: IntCounterVec,
    /// `lf_operator_controller_heartbeat_timestamp_seconds`: when the controller's task last
    /// showed it was alive (0: no controller runs in this process, e.g. a standby replica).
    heartbeat: Gauge,
    jobs: JobGauges,
}

/// How old the controller's heartbeat may be before `/healthz` fails.
pub const HEARTBEAT_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

fn unix_now() -> f64 {
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH))
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// A metric registration that cannot fail for these fixed names; kept as an error for honesty.
#[derive(Debug, thiserror::Error)]
#[error("cannot register metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// The controller is alive now.
    pub fn beat(&self) {
        self.heartbeat.set(unix_now());
    }

    /// The controller stopped (its heartbeat then fails `/healthz` at once).
    pub fn flatline(&self) {
        self.heartbeat.set(f64::MIN_POSITIVE);
    }

    /// How old the controller's heartbeat is; `None` when no controller ran in this process.
    pub fn heartbeat_age(&self) -> Option<std::time::Duration> {
        let at = self.heartbeat.get();
        (at != 0.0).then(|| std::time::Duration::from_secs_f64((unix_now() - at).max(0.0)))
    }
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "lf_operator_reconciliations_total",
                "Reconciliations of FineTuneJobs, by result",
            ),
            &["result"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "lf_operator_reconcile_duration_seconds",
                "Duration of one reconciliation",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "lf_operator_reconcile_errors_total",
                "Failed reconciliations, by error kind",
            ),
            &["error"],
        )?;
        let restarts = IntCounterVec::new(
            Opts::new(
                "lf_operator_restarts_total",
                "Gang restarts (new attempts), by failure reason",
            ),
            &["reason"],
        )?;
        let heartbeat = Gauge::new(
            "lf_operator_controller_heartbeat_timestamp_seconds",
            "When the controller's task last showed it was alive (unix seconds; 0: not running here)",
        )?;
        let jobs = JobGauges::new()?;
        registry.register(Box::new(reconciliations.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(restarts.clone()))?;
        registry.register(Box::new(heartbeat.clone()))?;
        registry.register(Box::new(jobs.clone()))?;
        Ok(Metrics {
            registry,
            reconciliations,
            duration,
            errors,
            restarts,
            heartbeat,
            jobs,
        })
    }

    /// Lets the per-job gauges read a controller's cache (one per watched namespace, or one for
    /// the whole cluster).
    pub fn attach_store(&self, store: Store<FineTuneJob>) {
        if let Ok(mut s) = self.jobs.stores.write() {
            s.push(store);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Gauges derived from the cached FineTuneJobs at scrape time.
#[derive(Clone)]
struct JobGauges {
    stores: Arc<RwLock<Vec<Store<FineTuneJob>>>>,
    phase: GaugeVec,
    predicted: GaugeVec,
    measured: GaugeVec,
}

const PHASES: [Phase; 6] = [
    Phase::Pending,
    Phase::Planning,
    Phase::Running,
    Phase::Succeeded,
    Phase::Failed,
    Phase::Suspended,
];

impl JobGauges {
    fn new() -> Result<Self, prometheus::Error> {
        Ok(JobGauges {
            stores: Arc::new(RwLock::new(Vec::new())),
            phase: GaugeVec::new(
                Opts::new("lf_operator_jobs", "FineTuneJobs by phase"),
                &["phase"],
            )?,
            predicted: GaugeVec::new(
                Opts::new(
                    "lf_operator_job_predicted_peak_bytes",
                    "Planned peak GPU memory per GPU",
                ),
                &["namespace", "name"],
            )?,
            measured: GaugeVec::new(
                Opts::new(
                    "lf_operator_job_measured_peak_bytes",
                    "Peak GPU memory the trainer measured on rank 0",
                ),
                &["namespace", "name"],
            )?,
        })
    }

    fn refresh(&self) {
        self.phase.reset();
        self.predicted.reset();
        self.measured.reset();
        for p in PHASES {
            self.phase.with_label_values(&[p.as_str()]).set(0.0);
        }
        let Ok(stores) = self.stores.read() else {
            return;
        };
        for job in stores.iter().flat_map(|store| store.state()) {
            let status = job.status.clone().unwrap_or_default();
            self.phase.with_label_values(&[status.phase.as_str()]).inc();
            let ns = job.metadata.namespace.clone().unwrap_or_default();
            let name = job.metadata.name.clone().unwrap_or_default();
            if let Some(plan) = &status.plan {
                self.predicted
                    .with_label_values(&[ns.as_str(), name.as_str()])
                    .set(plan.per_gpu.peak_bytes as f64);
            }
            if let Some(m) = status.progress.as_ref().and_then(|p| p.measured_peak_bytes) {
                self.measured
                    .with_label_values(&[ns.as_str(), name.as_str()])
                    .set(m as f64);
            }
        }
    }
}

impl Collector for JobGauges {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.phase.desc();
        d.extend(self.predicted.desc());
        d.extend(self.measured.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        let mut out = self.phase.collect();
        out.extend(self.predicted.collect());
        out.extend(self.measured.collect());
        out
    }
}
