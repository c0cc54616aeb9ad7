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
mod sink;
pub mod tensorboard;
#[cfg(feature = "test-support")]
pub mod testing;
mod worker;

pub use error::TrackError;
pub use scalars::scalars_of;
pub use sink::{Param, Sink};
pub use worker::Trackers;
