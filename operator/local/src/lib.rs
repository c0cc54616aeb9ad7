//! `lf-operator local`: a FineTuneJob run on this machine exactly as a cluster would run it.
//!
//! The job is planned by the same planner, its objects are rendered by the same renderer, and the
//! Indexed Job's pods run as local processes with the environment and config file the pods would
//! get; only the volume paths are mapped to local directories and the rendezvous address is
//! 127.0.0.1. The trainer reports progress and checkpoints through a status file instead of the
//! API server, and the runner keeps the FineTuneJob status as the operator would.
//!
//! Flow: [`volumes`] maps claims to directories → [`pods`] turns the rendered Job into process
//! specs → [`supervise`] runs them, follows the status file and shows progress → [`summary`];
//! with `--serve`, [`serve`] puts the result behind `lf-trainer serve`.

pub mod pods;
pub mod progress;
pub mod serve;
pub mod status;
pub mod summary;
pub mod supervise;
pub mod volumes;

mod run;
mod stop;

pub use run::{find_trainer, run, LocalError, LocalOptions, LocalOutcome};
