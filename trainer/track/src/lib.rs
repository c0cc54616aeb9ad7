//! Experiment trackers for lf-trainer (`report_to`): TensorBoard event files and an MLflow
//! tracking server.
//!
//! The loop hands each logging record to [`Trackers`]; every tracker runs on a thread of its own
//! behind a bounded queue, so a slow disk or an unreachable server never delays a training step
//! (when a queue is full, records are dropped and counted). [`scalars_of`] names a record's numbers
//! once for every tracker.

mod error;
pub mod mlflow;
mod scalars;
pub mod tensorboard;
#[cfg(feature = "test-support")]
pub mod testing;
mod worker;

use std::path::PathBuf;
use std::time::Duration;

pub use error::TrackError;
pub use scalars::scalars_of;
pub use worker::Trackers;

/// One hyper-parameter of the run (a config key and its value).
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub key: String,
    pub value: serde_json::Value,
}

impl Param {
    /// The top-level keys of a serialised config, each a param (nulls left out).
    pub fn from_config(config: &serde_json::Value) -> Vec<Param> {
        let serde_json::Value::Object(fields) = config else {
            return Vec::new();
        };
        fields
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| Param {
                key: k.clone(),
                value: v.clone(),
            })
            .collect()
    }
}

/// A tracker. Each runs on its own worker thread; an error is logged there and never reaches the
/// loop.
pub trait Sink: Send {
    fn name(&self) -> &'static str;
    /// The run's hyper-parameters, once at the start.
    fn params(&mut self, params: &[Param], wall_time: f64) -> Result<(), TrackError>;
    /// The scalars of one record at `step` (`wall_time`: seconds since the epoch).
    fn scalars(
        &mut self,
        step: u64,
        wall_time: f64,
        values: &[(String, f64)],
    ) -> Result<(), TrackError>;
    /// The run ended (`ok`: it succeeded); `artifacts` are `(name, file)` pairs to keep with it.
    fn finish(&mut self, ok: bool, artifacts: &[(String, PathBuf)]) -> Result<(), TrackError>;
    /// How long until the sink wants [`Sink::retry`] called (`None`: nothing to retry).
    fn retry_in(&self) -> Option<Duration> {
        None
    }
    /// Tries again to deliver what an earlier call could not.
    fn retry(&mut self) {}
}
