//! lf-operator: the FineTuneJob controller and the offline commands of the `lf-operator` binary.
//!
//! - [`commands`]: `crdgen`, `plan`, `render`, `new` (pure, no cluster).
//! - [`from_llama_factory`] and [`manifest`]: a LLaMA-Factory YAML as a FineTuneJob manifest (`new`).
//! - [`controller`]: the reconciler (plan → children → follow pods → restart/resume → status).
//! - [`lease`]: leader election on a `coordination.k8s.io/v1` Lease.
//! - [`metrics`] and [`http`]: Prometheus metrics, `/healthz` and `/readyz`.
//! - [`run`]: `lf-operator run`, wiring the above together.

pub mod commands;
pub mod controller;
pub mod from_llama_factory;
pub mod http;
pub mod lease;
pub mod load;
pub mod manifest;
pub mod metrics;
pub mod run;
