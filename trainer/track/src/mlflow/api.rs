//! MLflow's REST API (`/api/2.0/mlflow/...`, and `/api/2.0/mlflow-artifacts/...` of a server that
//! serves artifacts), the calls a training run needs, each bounded by a timeout.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use lf_api::runtime::env;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::TrackError;

/// Where the server is and how to authenticate, from MLflow's own environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlflowSettings {
    /// `MLFLOW_TRACKING_URI`: `http://` or `https://` (a file store cannot be reached remotely).
    pub tracking_uri: String,
    /// `MLFLOW_EXPERIMENT_NAME`; unset: the server's `Default` experiment.
    pub experiment_name: Option<String>,
    /// `MLFLOW_TRACKING_TOKEN` (bearer), or `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`.
    authorization: Option<String>,
}

impl MlflowSettings {
    /// Reads the settings from `var` (the process environment in the trainer). `Ok(None)` when
    /// `MLFLOW_TRACKING_URI` is unset.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, TrackError> {
        let Some(uri) = var(env::MLFLOW_TRACKING_URI).filter(|s| !s.trim().is_empty()) else {
            return Ok(None);
        };
        let uri = uri.trim().trim_end_matches('/').to_string();
        if !(uri.starts_with("http://") || uri.starts_with("https://")) {
            return Err(TrackError::Config(format!(
                "MLFLOW_TRACKING_URI={uri}: lf-trainer reports to an MLflow tracking server (http:// or https://), \
                 not to a local store; start one with `mlflow server` and point MLFLOW_TRACKING_URI at it"
            )));
        }
        let authorization = match var(env::MLFLOW_TRACKING_TOKEN).filter(|t| !t.is_empty()) {
            Some(token) => Some(format!("Bearer {token}")),
            None => var(env::MLFLOW_TRACKING_USERNAME).map(|user| {
                let password = var(env::MLFLOW_TRACKING_PASSWORD).unwrap_or_default();
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                format!("Basic {encoded}")
            }),
        };
        Ok(Some(MlflowSettings {
            tracking_uri: uri,
            experiment_name: var(env::MLFLOW_EXPERIMENT_NAME).filter(|s| !s.is_empty()),
            authorization,
        }))
    }
}

/// One metric point of `runs/log-batch`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metric {
    pub key: String,
    pub value: f64,
    /// Milliseconds since the epoch.
    pub timestamp: u64,
    pub step: u64,
}

/// One parameter of `runs/log-batch`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MlflowParam {
    pub key: String,
    pub value: String,
}

/// A run as the server created it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRef {
    pub run_id: String,
    pub experiment_id: String,
    pub artifact_uri: String,
}

/// The REST client.
pub struct Client {
    settings: MlflowSettings,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(settings: MlflowSettings, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Client { settings, agent }
    }

    pub fn settings(&self) -> &MlflowSettings {
        &self.settings
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/2.0/{path}", self.settings.tracking_uri)
    }

    /// The id of the experiment to log to, created when it does not exist.
    pub fn experiment_id(&self) -> Result<String, TrackError> {
        let Some(name) = &self.settings.experiment_name else {
            return Ok("0".into());
        };
        let url = self.url("mlflow/experiments/get-by-name");
        let request = self
            .with_auth(self.agent.get(&url))
            .query("experiment_name", name);
        match answer(&url, request.call()) {
            Ok(v) => string_at(&url, &v, &["experiment", "experiment_id"]),
            Err(TrackError::Refused { status: 404, .. }) => {
                let v = self.post("mlflow/experiments/create", json!({ "name": name }))?;
                string_at(&url, &v, &["experiment_id"])
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a run named `run_name` in `experiment_id`, started at `start_ms`.
    pub fn create_run(
        &self,
        experiment_id: &str,
        run_name: &str,
        start_ms: u64,
    ) -> Result<RunRef, TrackError> {
        let url = self.url("mlflow/runs/create");
        let v = self.post(
            "mlflow/runs/create",
            json!({
                "experiment_id": experiment_id,
                "run_name": run_name,
                "start_time": start_ms,
                "tags": [{"key": "mlflow.source.name", "value": "lf-trainer"}],
            }),
        )?;
        Ok(RunRef {
            run_id: string_at(&url, &v, &["run", "info", "run_id"])?,
            experiment_id: experiment_id.to_string(),
            artifact_uri: string_at(&url, &v, &["run", "info", "artifact_uri"])?,
        })
    }

    /// Logs params and metrics (MLflow's limits: at most 100 params and 1000 items per call).
    pub fn log_batch(
        &self,
        run_id: &str,
        params: &[MlflowParam],
        metrics: &[Metric],
    ) -> Result<(), TrackError> {
        self.post(
            "mlflow/runs/log-batch",
            json!({ "run_id": run_id, "params": params, "metrics": metrics }),
        )
        .map(drop)
    }

    /// Sets the run's status (`RUNNING`, `FINISHED`, `FAILED`).
    pub fn set_status(
        &self,
        run_id: &str,
        status: &str,
        end_ms: Option<u64>,
    ) -> Result<(), TrackError> {
        let mut body = json!({ "run_id": run_id, "status": status });
        if let Some(end) = end_ms {
            body["end_time"] = json!(end);
        }
        self.post("mlflow/runs/update", body).map(drop)
    }

    /// Uploads `file` as the artifact `name` of `run` through the server's artifact proxy
    /// (`mlflow server` serves artifacts unless started with `--no-serve-artifacts`).
    pub fn upload_artifact(&self, run: &RunRef, name: &str, file: &Path) -> Result<(), TrackError> {
        let Some(location) = run.artifact_uri.strip_prefix("mlflow-artifacts:") else {
            return Err(TrackError::Config(format!(
                "the run's artifact store is {}, which lf-trainer cannot write to; start the tracking server \
                 with artifact serving (the default of `mlflow server`)",
                run.artifact_uri
            )));
        };
        let location = location.trim_start_matches('/');
        let url = self.url(&format!("mlflow-artifacts/artifacts/{location}/{name}"));
        let mut body = std::fs::File::open(file).map_err(|e| TrackError::io("read", file, e))?;
        let request = self.with_auth(self.agent.put(&url));
        answer(&url, request.send(ureq::SendBody::from_reader(&mut body))).map(drop)
    }

    fn post(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value, TrackError> {
        let url = self.url(path);
        let request = self.with_auth(self.agent.post(&url));
        answer(&url, request.send_json(&body))
    }

    fn with_auth<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.settings.authorization {
            Some(auth) => request.header("Authorization", auth),
            None => request,
        }
    }
}

/// The JSON body of a 2xx answer; a typed error otherwise (transient for connection failures,
/// 429 and 5xx).
fn answer(
    url: &str,
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<serde_json::Value, TrackError> {
    let unavailable = |message: String| TrackError::Unavailable {
        url: url.to_string(),
        message,
    };
    let mut response = response.map_err(|e| unavailable(e.to_string()))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| unavailable(e.to_string()))?;
    if status == 429 || status >= 500 {
        return Err(unavailable(format!("HTTP {status}: {}", excerpt(&text))));
    }
    if !(200..300).contains(&status) {
        return Err(TrackError::Refused {
            url: url.to_string(),
            status,
            message: excerpt(&text),
        });
    }
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| TrackError::Refused {
        url: url.to_string(),
        status,
        message: format!("the answer is not JSON ({e}): {}", excerpt(&text)),
    })
}

fn string_at(url: &str, v: &serde_json::Value, path: &[&str]) -> Result<String, TrackError> {
    let mut at = v;
    for key in path {
        at = &at[key];
    }
    at.as_str()
        .map(str::to_string)
        .ok_or_else(|| TrackError::Refused {
            url: url.to_string(),
            status: 200,
            message: format!("the answer has no {}", path.join(".")),
        })
}

/// The first 300 characters of a server's answer, for an error message.
fn excerpt(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn settings_come_from_mlflow_environment_variables() {
        assert_eq!(MlflowSettings::from_env(env(&[])).unwrap(), None);
        let s = MlflowSettings::from_env(env(&[
            ("MLFLOW_TRACKING_URI", "http://mlflow:5000/"),
            ("MLFLOW_TRACKING_USERNAME", "u"),
            ("MLFLOW_TRACKING_PASSWORD", "p"),
            ("MLFLOW_EXPERIMENT_NAME", "sft"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.tracking_uri, "http://mlflow:5000");
        assert_eq!(s.experiment_name.as_deref(), Some("sft"));
        assert_eq!(s.authorization.as_deref(), Some("Basic dTpw"));
        let t = MlflowSettings::from_env(env(&[
            ("MLFLOW_TRACKING_URI", "https://m"),
            ("MLFLOW_TRACKING_TOKEN", "tok"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(t.authorization.as_deref(), Some("Bearer tok"));
        let e = MlflowSettings::from_env(env(&[("MLFLOW_TRACKING_URI", "./mlruns")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not to a local store"), "{e}");
    }

    #[test]
    fn an_unreachable_server_is_a_transient_error() {
        let settings =
            MlflowSettings::from_env(env(&[("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")]))
                .unwrap()
                .unwrap();
        let client = Client::new(settings, Duration::from_secs(2));
        let e = client.create_run("0", "r", 0).unwrap_err();
        assert!(e.is_transient(), "{e}");
    }
}
