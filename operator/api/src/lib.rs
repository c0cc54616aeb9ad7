//! The types both binaries share, each defined once:
//!
//! - [`training`]: the training config (LLaMA-Factory argument names). It is `spec.training` in the
//!   FineTuneJob, the file the operator renders into the pod, and what `lf-trainer` reads.
//! - [`architecture`]: a Llama-family model's shape, read from a Hugging Face `config.json`.
//! - [`crd`] and [`status`]: the `FineTuneJob` custom resource (`lf-operator.io/v1alpha1`).
//! - [`conditions`]: its conditions and the phase transitions that set them (the controller's and
//!   `lf-operator local`'s one rule).
//! - [`nccl`]: the environment variables a tenant may set for the communication libraries.
//! - [`plan`]: the memory plan the operator chooses and the status shows.
//! - [`serving`]: `spec.serve` and `status.serving` (the trained result behind an HTTP API).
//! - [`runtime`]: the contract between a rendered pod and the trainer (environment, paths, exit
//!   codes, termination message).

pub mod architecture;
pub mod conditions;
pub mod crd;
pub mod nccl;
pub mod plan;
pub mod reference;
pub mod runtime;
pub mod serving;
pub mod status;
mod suggest;
pub mod training;

pub use architecture::ModelArchitecture;
pub use crd::{FineTuneJob, FineTuneJobSpec};
pub use plan::{MemoryBreakdown, Plan, Recomputation};
pub use status::FineTuneJobStatus;
pub use training::{ConfigError, TrainingConfig};
