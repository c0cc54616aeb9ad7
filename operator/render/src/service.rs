//! The headless Service that gives each trainer pod a stable DNS name, `<job>-<index>.<service>`.
//!
//! `publishNotReadyAddresses: true` publishes a pod's record as soon as it has an IP, not when it
//! is ready (trainer pods have no readiness probe and are never "ready" in a useful sense): rank
//! 0's name resolves while every rank is still starting, which is the rendezvous DNS race
//! Kubeflow's users hit.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lf_api::FineTuneJob;

use crate::env::master_port;
use crate::meta::{object_meta, trainer_selector, Component};
use crate::names::service_name;

/// The rendezvous Service.
pub fn service(job: &FineTuneJob) -> Service {
    let port = master_port(job) as i32;
    Service {
        metadata: object_meta(job, service_name(job), Component::Rendezvous),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(trainer_selector(job)),
            ports: Some(vec![ServicePort {
                name: Some("rendezvous".into()),
                port,
                target_port: Some(IntOrString::String("rendezvous".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
