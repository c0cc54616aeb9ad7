//! lf-operator: the FineTuneJob controller and the offline commands of the `lf-operator` binary.
//!
//! - [`commands`]: `crdgen`, `plan`, `render`, `new` (pure, no cluster).
//! - [`from_llama_factory`] and [`manifest`]: a LLaMA-Factory YAML as a FineTuneJob manifest (`new`).
//! - [`controller`]: the reconciler (plan → children → follow pods → restart/resume → status).
//! - [`lease`]: leader election on a `coordination.k8s.io/v1` Lease.
//! - [`metrics`] and [`http`]: Prometheus metrics, `/healthz` and `/readyz`.
//! - [`run`]: `lf-operator run`, wiring the above together.

/// The image trainer pods run when neither `spec.image` nor the operator's `--trainer-image` says
/// otherwise: the project's one image (both binaries), at this build's own version — the chart's
/// `appVersion` — never a moving tag such as `latest`.
pub const DEFAULT_TRAINER_IMAGE: &str = concat!(
    "ghcr.io/lf-operator/lf-operator:",
    env!("CARGO_PKG_VERSION")
);

pub mod commands;
pub mod controller;
pub mod from_llama_factory;
pub mod http;
pub mod lease;
pub mod load;
pub mod manifest;
pub mod metrics;
pub mod run;
