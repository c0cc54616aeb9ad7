//! The job's NetworkPolicy: its trainer pods accept connections from each other only (the c10d
//! store on the rendezvous port, NCCL's and Gloo's data ports, which are chosen at run time and so
//! cannot be listed), and on the metrics port from the peers the operator is configured with
//! (e.g. the Prometheus namespace). Egress is left open: the trainers reach the API server (their
//! status), DNS and each other. Without a network plugin that enforces NetworkPolicies, it is a
//! declaration only.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lf_api::FineTuneJob;

use crate::env::TRAINER_METRICS_PORT;
use crate::meta::{object_meta, trainer_selector, Component};
use crate::names::network_policy_name;

/// The NetworkPolicy of `job`'s trainer pods; `metrics_from`: who else may scrape their metrics.
pub fn network_policy(job: &FineTuneJob, metrics_from: &[NetworkPolicyPeer]) -> NetworkPolicy {
    let own_pods = LabelSelector {
        match_labels: Some(trainer_selector(job)),
        ..LabelSelector::default()
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            pod_selector: Some(own_pods.clone()),
            ..NetworkPolicyPeer::default()
        }]),
        ports: None,
    }];
    if !metrics_from.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(metrics_from.to_vec()),
            ports: Some(vec![NetworkPolicyPort {
                port: Some(IntOrString::Int(TRAINER_METRICS_PORT)),
                protocol: Some("TCP".into()),
                end_port: None,
            }]),
        });
    }
    NetworkPolicy {
        metadata: object_meta(job, network_policy_name(job), Component::Trainer),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(own_pods),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            egress: None,
        }),
    }
}
