//! `report_to`: which experiment trackers receive the run, as transformers spells it (`none`,
//! `all`, one name, or a comma list; a YAML list is read as the same comma list).
//!
//! lf-trainer writes TensorBoard event files itself and talks to an MLflow tracking server through
//! its REST API. Weights & Biases is refused: its offline run directory is the SDK's private
//! protobuf record log (`wandb_internal.proto`), versioned with each SDK release and not specified
//! anywhere, so a file we wrote could not be promised to sync. `wandb sync` uploads TensorBoard
//! event directories, which is the way there.

use serde::{Deserialize, Deserializer};

use super::error::ConfigError;

/// One experiment tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tracker {
    /// Event files under `logging_dir` (default `output_dir/runs`).
    Tensorboard,
    /// A run on the tracking server at `MLFLOW_TRACKING_URI`.
    Mlflow,
}

impl Tracker {
    pub fn name(self) -> &'static str {
        match self {
            Tracker::Tensorboard => "tensorboard",
            Tracker::Mlflow => "mlflow",
        }
    }
}

/// Why `wandb` is refused, and what to do instead.
pub const WANDB_REFUSED: &str = "`wandb` is not supported: its offline run files are the wandb SDK's private, \
     version-specific record format, which lf-trainer cannot write faithfully; use `report_to: tensorboard` and \
     upload `logging_dir` with `wandb sync --sync-tensorboard <dir>`";

/// The trackers `report_to` names, each once, in a fixed order. `all` is every tracker lf-trainer
/// has (TensorBoard and MLflow; MLflow only where `MLFLOW_TRACKING_URI` is set, see
/// [`Selection::explicit`]).
pub fn parse(report_to: &str) -> Result<Selection, ConfigError> {
    let mut trackers = Vec::new();
    let mut all = false;
    for name in report_to
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match name.to_ascii_lowercase().as_str() {
            "none" => {}
            "all" => all = true,
            "tensorboard" => trackers.push(Tracker::Tensorboard),
            "mlflow" => trackers.push(Tracker::Mlflow),
            "wandb" => return Err(ConfigError::invalid("report_to", WANDB_REFUSED)),
            other => {
                return Err(ConfigError::invalid(
                    "report_to",
                    format!(
                        "`{other}` is not a tracker lf-trainer reports to; use `none`, `all`, `tensorboard`, `mlflow` or a comma list of them"
                    ),
                ))
            }
        }
    }
    let explicit = trackers.clone();
    if all {
        trackers.extend([Tracker::Tensorboard, Tracker::Mlflow]);
    }
    trackers.sort();
    trackers.dedup();
    Ok(Selection { trackers, explicit })
}

/// What `report_to` selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub trackers: Vec<Tracker>,
    /// The trackers named one by one (not only through `all`): one of these that cannot start
    /// (MLflow without `MLFLOW_TRACKING_URI`) is an error, while `all` skips it with a warning.
    pub explicit: Vec<Tracker>,
}

impl Selection {
    pub fn contains(&self, t: Tracker) -> bool {
        self.trackers.contains(&t)
    }

    pub fn is_explicit(&self, t: Tracker) -> bool {
        self.explicit.contains(&t)
    }
}

/// Reads `report_to` as a string or a YAML list of strings (transformers takes both).
pub(crate) fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s,
        OneOrMany::Many(v) => v.join(","),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &str) -> Vec<&'static str> {
        parse(s)
            .unwrap()
            .trackers
            .iter()
            .map(|t| t.name())
            .collect()
    }

    #[test]
    fn names_lists_and_all() {
        assert!(names("none").is_empty());
        assert!(names("").is_empty());
        assert_eq!(names("tensorboard"), ["tensorboard"]);
        assert_eq!(
            names("mlflow, tensorboard,mlflow"),
            ["tensorboard", "mlflow"]
        );
        assert_eq!(names("all"), ["tensorboard", "mlflow"]);
        let all = parse("all").unwrap();
        assert!(all.explicit.is_empty());
        assert!(parse("all,mlflow").unwrap().is_explicit(Tracker::Mlflow));
    }

    #[test]
    fn wandb_and_unknown_are_refused_with_the_reason() {
        let e = parse("tensorboard,wandb").unwrap_err().to_string();
        assert!(e.contains("wandb sync --sync-tensorboard"), "{e}");
        let e = parse("comet_ml").unwrap_err().to_string();
        assert!(e.contains("`comet_ml` is not a tracker"), "{e}");
    }
}
