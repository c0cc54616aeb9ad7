//! Reading a FineTuneJob file for the offline commands (`plan`, `render`).

use std::path::{Path, PathBuf};

use lf_api::FineTuneJob;

/// Why a FineTuneJob file cannot be used. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// Reads and strictly parses one FineTuneJob (unknown keys of `spec.training` are errors with a
/// suggestion; wrong types name the key). The message is one line.
pub fn load_job(path: &Path) -> Result<FineTuneJob, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |message: String| LoadError::Invalid {
        path: path.to_path_buf(),
        message: one_line(&message),
    };
    if text.trim().is_empty() {
        return Err(invalid(
            "the file is empty; expected a FineTuneJob (apiVersion: lf-operator.io/v1alpha1)"
                .into(),
        ));
    }
    let job = FineTuneJob::from_yaml_str(&text).map_err(|e| invalid(e.to_string()))?;
    let (api_version, kind) = header(&text);
    if kind.as_deref().is_some_and(|k| k != "FineTuneJob") {
        return Err(invalid(format!(
            "kind is `{}`, expected `FineTuneJob`",
            kind.unwrap_or_default()
        )));
    }
    if api_version
        .as_deref()
        .is_some_and(|v| v != "lf-operator.io/v1alpha1")
    {
        return Err(invalid(format!(
            "apiVersion is `{}`, expected `lf-operator.io/v1alpha1`",
            api_version.unwrap_or_default()
        )));
    }
    if job.metadata.name.as_deref().is_none_or(str::is_empty) {
        return Err(invalid("metadata.name is missing".into()));
    }
    Ok(job)
}

fn header(text: &str) -> (Option<String>, Option<String>) {
    let value: serde_yaml::Value = serde_yaml::from_str(text).unwrap_or(serde_yaml::Value::Null);
    let get = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_string);
    (get("apiVersion"), get("kind"))
}

/// Joins a multi-line message into one line.
pub fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
