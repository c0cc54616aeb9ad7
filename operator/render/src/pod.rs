//! The trainer pod template: one container running `lf-trainer train` with the plan's GPUs, the
//! restricted pod security profile, and placement from `spec.resources` and `spec.scheduling`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lf_api::runtime::paths;
use lf_api::{FineTuneJob, Plan};

use crate::context::RenderContext;
use crate::env::{master_port, worker_env, TRAINER_METRICS_PORT};
use crate::error::RenderError;
use crate::grace::termination_grace;
use crate::meta::{labels, Component, LABEL_ATTEMPT};
use crate::names::{service_account_name, service_name};
use crate::volumes::{mebibytes, shm_size_bytes, volumes};

/// The trainer container's name (the pod failure policy's exit-code rule names it).
pub const CONTAINER_NAME: &str = "trainer";
/// The trainer binary on the image's PATH.
pub const TRAINER_BINARY: &str = "lf-trainer";
/// The non-root user and group the trainer runs as (the image's `lf` user).
pub const RUN_AS_USER: i64 = 65532;

/// Annotations and labels that keep service-mesh sidecars out of trainer pods: a sidecar keeps
/// running after the trainer exits, so the pod (and the gang) never completes.
pub const SIDECAR_OPT_OUT_ANNOTATIONS: &[(&str, &str)] = &[
    ("linkerd.io/inject", "disabled"),
    ("sidecar.istio.io/inject", "false"),
];
/// Istio also reads the opt-out as a label (and prefers it).
pub const SIDECAR_OPT_OUT_LABELS: &[(&str, &str)] = &[("sidecar.istio.io/inject", "false")];

/// The pod template of an attempt.
pub fn pod_template(
    job: &FineTuneJob,
    plan: &Plan,
    ctx: &RenderContext,
) -> Result<PodTemplateSpec, RenderError> {
    let spec = &job.spec;
    let (volumes, mounts) = volumes(job, plan)?;
    let image = image(job, &ctx.default_image)?;

    let mut labels = labels(job, Component::Trainer);
    labels.insert(LABEL_ATTEMPT.to_string(), ctx.attempt.to_string());
    let mut annotations = BTreeMap::from([(
        "kubectl.kubernetes.io/default-container".to_string(),
        CONTAINER_NAME.to_string(),
    )]);
    let sidecars_allowed = spec.run_policy.allow_sidecar_injection || ctx.sidecar_injection_default;
    if !sidecars_allowed {
        labels.extend(
            SIDECAR_OPT_OUT_LABELS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        annotations.extend(
            SIDECAR_OPT_OUT_ANNOTATIONS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
    }

    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(image),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![
            TRAINER_BINARY.into(),
            "train".into(),
            paths::CONFIG_FILE.into(),
        ]),
        env: Some(worker_env(job, plan, ctx)),
        ports: Some(vec![
            ContainerPort {
                name: Some("rendezvous".into()),
                container_port: master_port(job) as i32,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("metrics".into()),
                container_port: TRAINER_METRICS_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        resources: Some(resources(job, plan)),
        volume_mounts: Some(mounts),
        security_context: Some(restricted_container()),
        termination_message_path: Some(paths::TERMINATION_LOG.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };

    let resources_spec = &spec.resources;
    let pod = PodSpec {
        containers: vec![container],
        restart_policy: Some("Never".into()),
        termination_grace_period_seconds: Some(termination_grace(plan).1 as i64),
        subdomain: Some(service_name(job)),
        service_account_name: Some(service_account_name(job)),
        // The token is mounted by hand, in the trainer container only (`volumes::api_access_volume`).
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(restricted_pod()),
        volumes: Some(volumes),
        node_selector: (!resources_spec.node_selector.is_empty())
            .then(|| resources_spec.node_selector.clone()),
        tolerations: (!resources_spec.tolerations.is_empty())
            .then(|| resources_spec.tolerations.clone()),
        affinity: resources_spec.affinity.clone(),
        priority_class_name: spec.scheduling.priority_class_name.clone(),
        scheduler_name: spec.scheduling.scheduler_name.clone(),
        ..PodSpec::default()
    };
    Ok(PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(pod),
    })
}

/// The image the pods run: `spec.image`, else the operator's default.
pub(crate) fn image(job: &FineTuneJob, default_image: &str) -> Result<String, RenderError> {
    let image = job
        .spec
        .image
        .clone()
        .unwrap_or_else(|| default_image.to_string());
    if image.trim().is_empty() {
        return Err(RenderError::MissingImage);
    }
    Ok(image)
}

/// The container side of the restricted Pod Security Standard, on the image's `lf` user with a
/// read-only root filesystem.
pub(crate) fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// The pod side of the restricted Pod Security Standard.
pub(crate) fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: Some(RUN_AS_USER),
        // Model volumes hold hundreds of GiB: never chown them recursively on every start.
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

/// CPUs a trainer process requests when `spec.resources.cpu` is unset: its training loop and the
/// threads that feed it and write checkpoints. No CPU limit either way: CFS throttling stalls the
/// step loop and, with it, every rank waiting on it.
pub const DEFAULT_CPUS_PER_PROCESS: u32 = 2;

/// GPU requests = limits = the plan's GPUs per node (extended resources must be equal).
///
/// CPU: `spec.resources.cpu`, else [`DEFAULT_CPUS_PER_PROCESS`] per local process; never a limit.
///
/// Memory: `spec.resources.memory` as request and limit (a runaway host allocation is the pod's
/// OOM, not the node's). Unset, the planner's host memory per process
/// ([`Plan::host_memory_bytes`]) times the local processes plus the `/dev/shm` cap (tmpfs pages
/// count towards the pod's memory) is the request, and twice that the limit: an estimate must not
/// become an OOM kill, yet a leak still stops at the pod.
pub fn resources(job: &FineTuneJob, plan: &Plan) -> ResourceRequirements {
    let r = &job.spec.resources;
    let processes = plan.gpus_per_node.max(1) as u64;
    let gpus = Quantity(plan.gpus_per_node.to_string());
    let mut requests = BTreeMap::from([(r.gpu_resource_name.clone(), gpus.clone())]);
    let mut limits = BTreeMap::from([(r.gpu_resource_name.clone(), gpus)]);
    let cpu = r
        .cpu
        .clone()
        .unwrap_or_else(|| (processes * DEFAULT_CPUS_PER_PROCESS as u64).to_string());
    requests.insert("cpu".into(), Quantity(cpu));
    match &r.memory {
        Some(memory) => {
            requests.insert("memory".into(), Quantity(memory.clone()));
            limits.insert("memory".into(), Quantity(memory.clone()));
        }
        None => {
            let request = processes * plan.host_memory_bytes + shm_size_bytes(plan);
            requests.insert("memory".into(), mebibytes(request));
            limits.insert("memory".into(), mebibytes(2 * request));
        }
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits),
        ..ResourceRequirements::default()
    }
}
