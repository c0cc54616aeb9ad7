//! MLflow: one run on the tracking server at `MLFLOW_TRACKING_URI`, with the config as params, every
//! scalar as a metric at its step, and the trained adapter as artifacts. A server that is down or
//! overloaded never stops training: points wait in a bounded buffer and are sent again with
//! exponential backoff; at the end the sink tries for a bounded time, then reports what it could
//! not deliver. A resumed attempt continues the run the first one created (its id is kept in
//! `output_dir/mlflow_run.json`).

mod api;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use api::{Client, MlflowSettings};
use api::{Metric, MlflowParam, RunRef};

use crate::error::TrackError;
use crate::sink::{Param, Sink};

/// MLflow's limits on one `log-batch` call.
const MAX_PARAMS_PER_CALL: usize = 100;
const MAX_ITEMS_PER_CALL: usize = 1000;
/// MLflow's limit on a parameter's value.
const MAX_PARAM_CHARS: usize = 6000;
/// Metric points kept while the server is unreachable (the oldest go first beyond it).
const MAX_PENDING: usize = 100_000;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long `finish` keeps trying to deliver what is pending.
const FINISH_BUDGET: Duration = Duration::from_secs(30);
/// The file in `output_dir` naming the run a resumed attempt continues.
pub const RUN_FILE: &str = "mlflow_run.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedRun {
    tracking_uri: String,
    #[serde(flatten)]
    run: RunRef,
}

/// The MLflow sink.
pub struct Mlflow {
    client: Client,
    run_name: String,
    run_file: PathBuf,
    resume: bool,
    run: Option<RunRef>,
    params: Vec<MlflowParam>,
    metrics: VecDeque<Metric>,
    dropped: u64,
    backoff: Duration,
    retry_at: Option<Instant>,
    /// Consecutive failed attempts (a warning at the first, a notice when it recovers).
    failing: u32,
    /// A refusal that retrying cannot fix (the run could not be created): the sink stops.
    disabled: bool,
}

impl Mlflow {
    /// A sink for `run_name`; `resume` continues the run recorded in `output_dir` if it is on the
    /// same server.
    pub fn new(client: Client, run_name: String, output_dir: &Path, resume: bool) -> Self {
        Mlflow {
            client,
            run_name,
            run_file: output_dir.join(RUN_FILE),
            resume,
            run: None,
            params: Vec::new(),
            metrics: VecDeque::new(),
            dropped: 0,
            backoff: FIRST_BACKOFF,
            retry_at: None,
            failing: 0,
            disabled: false,
        }
    }

    fn pending(&self) -> bool {
        !self.disabled
            && (self.run.is_none() || !self.params.is_empty() || !self.metrics.is_empty())
    }

    /// The run to log to: the saved one when resuming on the same server, else a new one.
    fn ensure_run(&mut self) -> Result<RunRef, TrackError> {
        if let Some(run) = &self.run {
            return Ok(run.clone());
        }
        let uri = self.client.settings().tracking_uri.clone();
        let saved = std::fs::read(&self.run_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<SavedRun>(&b).ok())
            .filter(|s| self.resume && s.tracking_uri == uri);
        let run = match saved {
            Some(s) => {
                self.client.set_status(&s.run.run_id, "RUNNING", None)?;
                tracing::info!(run_id = %s.run.run_id, "MLflow: continuing the run of the interrupted attempt");
                s.run
            }
            None => {
                let experiment = self.client.experiment_id()?;
                let run = self
                    .client
                    .create_run(&experiment, &self.run_name, now_ms())?;
                let saved = SavedRun {
                    tracking_uri: uri.clone(),
                    run: run.clone(),
                };
                if let Ok(bytes) = serde_json::to_vec_pretty(&saved) {
                    if let Err(e) = std::fs::write(&self.run_file, bytes) {
                        tracing::warn!(file = %self.run_file.display(), error = %e, "MLflow: cannot record the run id; a resumed attempt will start a new run");
                    }
                }
                tracing::info!(run_id = %run.run_id, experiment_id = %run.experiment_id, tracking_uri = %uri, "MLflow: run created");
                run
            }
        };
        self.run = Some(run.clone());
        Ok(run)
    }

    /// Sends what is pending, params first, in batches within MLflow's limits.
    fn send_pending(&mut self) -> Result<(), TrackError> {
        let run = self.ensure_run()?;
        while !self.params.is_empty() {
            let n = self.params.len().min(MAX_PARAMS_PER_CALL);
            match self.client.log_batch(&run.run_id, &self.params[..n], &[]) {
                Err(e) if !e.is_transient() => {
                    tracing::warn!(error = %e, "MLflow refused the run's parameters (a resumed run whose config changed?); they are not logged again")
                }
                r => r?,
            }
            self.params.drain(..n);
        }
        while !self.metrics.is_empty() {
            let n = self.metrics.len().min(MAX_ITEMS_PER_CALL);
            let batch: Vec<Metric> = self.metrics.iter().take(n).cloned().collect();
            match self.client.log_batch(&run.run_id, &[], &batch) {
                Err(e) if !e.is_transient() => {
                    tracing::warn!(error = %e, points = n, "MLflow refused metric points; they are dropped")
                }
                r => r?,
            }
            self.metrics.drain(..n);
        }
        Ok(())
    }

    /// One delivery attempt, with the backoff bookkeeping.
    fn flush(&mut self) {
        if !self.pending() {
            return;
        }
        match self.send_pending() {
            Ok(()) => {
                if self.failing > 0 {
                    tracing::info!(
                        attempts = self.failing,
                        "MLflow: the tracking server answers again; buffered points delivered"
                    );
                }
                self.failing = 0;
                self.backoff = FIRST_BACKOFF;
                self.retry_at = None;
            }
            Err(e) if e.is_transient() => {
                if self.failing == 0 {
                    tracing::warn!(error = %e, buffered = self.metrics.len(), "MLflow: the tracking server is unreachable; training continues and points are buffered and retried");
                }
                self.failing += 1;
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                tracing::error!(error = %e, "MLflow: the tracking server refused the run; nothing more is reported to it");
                self.disabled = true;
            }
        }
    }
}

impl Sink for Mlflow {
    fn name(&self) -> &'static str {
        "mlflow"
    }

    fn params(&mut self, params: &[Param], _wall_time: f64) -> Result<(), TrackError> {
        self.params.extend(params.iter().map(|p| {
            let value = match &p.value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            MlflowParam {
                key: p.key.clone(),
                value: value.chars().take(MAX_PARAM_CHARS).collect(),
            }
        }));
        if self.retry_at.is_none() {
            self.flush();
        }
        Ok(())
    }

    fn scalars(
        &mut self,
        step: u64,
        wall_time: f64,
        values: &[(String, f64)],
    ) -> Result<(), TrackError> {
        if self.disabled {
            return Ok(());
        }
        let timestamp = (wall_time * 1000.0) as u64;
        self.metrics
            .extend(values.iter().map(|(key, value)| Metric {
                key: key.clone(),
                value: *value,
                timestamp,
                step,
            }));
        while self.metrics.len() > MAX_PENDING {
            self.metrics.pop_front();
            self.dropped += 1;
        }
        if self.retry_at.is_none() {
            self.flush();
        }
        Ok(())
    }

    fn retry_in(&self) -> Option<Duration> {
        let at = self.retry_at.filter(|_| self.pending())?;
        Some(at.saturating_duration_since(Instant::now()))
    }

    fn retry(&mut self) {
        self.flush();
    }

    fn finish(&mut self, ok: bool, artifacts: &[(String, PathBuf)]) -> Result<(), TrackError> {
        let deadline = Instant::now() + FINISH_BUDGET;
        while self.pending() && Instant::now() < deadline {
            self.flush();
            if let Some(wait) = self.retry_in() {
                std::thread::sleep(wait.min(deadline.saturating_duration_since(Instant::now())));
            }
        }
        if self.dropped > 0 || self.pending() {
            tracing::warn!(
                dropped = self.dropped,
                undelivered = self.metrics.len(),
                "MLflow: some metric points never reached the tracking server"
            );
        }
        let Some(run) = self.run.clone().filter(|_| !self.disabled) else {
            return Ok(());
        };
        if ok {
            for (name, file) in artifacts {
                self.client.upload_artifact(&run, name, file)?;
            }
        }
        let status = if ok { "FINISHED" } else { "FAILED" };
        self.client.set_status(&run.run_id, status, Some(now_ms()))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
