//! The run's experiment trackers (`report_to`), on rank 0: started before the first step with the
//! config as hyper-parameters, fed every logging record by the reporter, and ended after the final
//! save with the adapter as an artifact — or as failed, whatever error ends the run first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lf_api::runtime::env;
use lf_api::training::report_to::{self, Tracker};
use lf_api::training::{FinetuningType, TrainingConfig};
use lf_track::mlflow::{Client, Mlflow, MlflowSettings};
use lf_track::tensorboard::TensorBoard;
use lf_track::{Param, Sink, Trackers};

use crate::error::TrainerError;

/// How long the end of a run waits for the trackers (MLflow's last points and the artifact).
const FINISH_BUDGET: Duration = Duration::from_secs(60);
/// How long a failing run waits for them.
const FAIL_BUDGET: Duration = Duration::from_secs(10);
/// How long one request to a tracking server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The trackers of a run; dropped without [`RunTrackers::succeeded`], the run is marked failed.
pub struct RunTrackers(Option<Trackers>);

impl RunTrackers {
    /// No trackers (other ranks, `report_to: none`).
    pub fn none() -> Self {
        RunTrackers(None)
    }

    /// Starts what `report_to` selects for the run writing to `output_dir`; `resumed`: an
    /// interrupted run continues (MLflow continues its run). `var` reads the environment.
    pub fn start(
        cfg: &TrainingConfig,
        output_dir: &Path,
        resumed: bool,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, TrainerError> {
        let selection =
            report_to::parse(&cfg.report_to).map_err(|e| TrainerError::config(e.to_string()))?;
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if selection.contains(Tracker::Tensorboard) {
            let dir = cfg
                .logging_dir
                .as_ref()
                .map_or_else(|| output_dir.join("runs"), PathBuf::from);
            let tb = TensorBoard::create(&dir, unix_now())
                .map_err(|e| TrainerError::config(format!("report_to tensorboard: {e}")))?;
            tracing::info!(file = %tb.path().display(), "TensorBoard events");
            sinks.push(Box::new(tb));
        }
        if selection.contains(Tracker::Mlflow) {
            match MlflowSettings::from_env(&var).map_err(|e| TrainerError::config(e.to_string()))? {
                Some(settings) => {
                    let client = Client::new(settings, REQUEST_TIMEOUT);
                    let name = run_name(cfg, output_dir, &var);
                    sinks.push(Box::new(Mlflow::new(client, name, output_dir, resumed)));
                }
                None if selection.is_explicit(Tracker::Mlflow) => {
                    return Err(TrainerError::config(
                        "report_to: mlflow needs MLFLOW_TRACKING_URI (the tracking server's http(s) address); in a FineTuneJob, \
                         put it in the Secret named by spec.tracking.secretName",
                    ))
                }
                None => tracing::warn!("report_to: all: MLFLOW_TRACKING_URI is not set, so nothing goes to MLflow"),
            }
        }
        if sinks.is_empty() {
            return Ok(RunTrackers(None));
        }
        let trackers = Trackers::start(sinks);
        tracing::info!(trackers = ?trackers.names(), "experiment trackers");
        let config = serde_json::to_value(cfg).map_err(|e| TrainerError::runtime(e.to_string()))?;
        trackers.params(Param::from_config(&config));
        Ok(RunTrackers(Some(trackers)))
    }

    pub fn get(&self) -> Option<&Trackers> {
        self.0.as_ref()
    }

    /// The run succeeded: the trackers get the adapter files among `written` as artifacts.
    pub fn succeeded(mut self, cfg: &TrainingConfig, written: &[PathBuf]) {
        if let Some(t) = self.0.take() {
            t.finish(true, artifacts(cfg, written), FINISH_BUDGET);
        }
    }
}

impl Drop for RunTrackers {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.finish(false, Vec::new(), FAIL_BUDGET);
        }
    }
}

/// `run_name`, else the FineTuneJob's name, else the output directory's name.
fn run_name(
    cfg: &TrainingConfig,
    output_dir: &Path,
    var: impl Fn(&str) -> Option<String>,
) -> String {
    cfg.run_name
        .clone()
        .or_else(|| var(env::JOB_NAME).filter(|n| !n.is_empty()))
        .or_else(|| {
            output_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "lf-trainer".into())
}

/// A LoRA-family run's adapter files, as `adapter/<file>`; full and freeze runs upload nothing
/// (their weights stay on the output volume).
fn artifacts(cfg: &TrainingConfig, written: &[PathBuf]) -> Vec<(String, PathBuf)> {
    if cfg.finetuning_type != FinetuningType::Lora {
        return Vec::new();
    }
    written
        .iter()
        .filter_map(|p| Some((format!("adapter/{}", p.file_name()?.to_str()?), p.clone())))
        .collect()
}

/// A tracker setting: the environment variable `key` (through `var`), else the file named `key` in
/// the directory `LF_TRACKING_DIR` names (a Secret mounted as files in a cluster), without its
/// trailing newline. Empty values count as unset.
pub fn setting(key: &str, var: impl Fn(&str) -> Option<String>) -> Option<String> {
    if let Some(v) = var(key).filter(|v| !v.is_empty()) {
        return Some(v);
    }
    let dir = var(env::TRACKING_DIR).filter(|d| !d.is_empty())?;
    let text = std::fs::read_to_string(Path::new(&dir).join(key)).ok()?;
    Some(text.trim_end_matches(['\n', '\r']).to_string()).filter(|v| !v.is_empty())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_environment_else_from_the_mounted_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("MLFLOW_TRACKING_URI"),
            "http://mlflow:5000\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("MLFLOW_TRACKING_TOKEN"), "").unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let var = |k: &str| match k {
            "LF_TRACKING_DIR" => Some(d.clone()),
            "MLFLOW_EXPERIMENT_NAME" => Some("from-env".to_string()),
            _ => None,
        };
        assert_eq!(
            setting("MLFLOW_TRACKING_URI", var).as_deref(),
            Some("http://mlflow:5000")
        );
        assert_eq!(
            setting("MLFLOW_EXPERIMENT_NAME", var).as_deref(),
            Some("from-env")
        );
        assert_eq!(setting("MLFLOW_TRACKING_TOKEN", var), None, "empty file");
        assert_eq!(setting("MLFLOW_TRACKING_USERNAME", var), None, "no file");
        assert_eq!(
            setting("MLFLOW_TRACKING_URI", |_| None),
            None,
            "no directory"
        );
    }
}
