//! What a tracker is: a [`Sink`] of the run's hyper-parameters ([`Param`]) and scalars.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::TrackError;

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
