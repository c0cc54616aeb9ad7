//! The server of a Succeeded job's result (`spec.serve`): a ConfigMap with the config
//! `lf-trainer serve` reads (the job's own training config with the served paths filled in), a
//! Deployment of replicas running it (restricted pod security, readiness on `/health`, one GPU
//! each, placed as the job's pods were) and a Service in front of them.
//!
//! A LoRA result is served on the base model: the base under `/models/<base>` and the adapter
//! under `/adapters/<job>`, so a request's `model` is the FineTuneJob's name (the base is served
//! too, under its own name). A full or freeze result is a whole model, served from
//! `/served/<job>`. Both volumes are mounted read-only. The pod template carries the served
//! revision (the job's UID, its completion time and the checkpoint), so serving another result
//! rolls the Deployment.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    HTTPGetAction, KeyToPath, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lf_api::runtime::paths;
use lf_api::serving::ServeSpec;
use lf_api::training::FinetuningType;
use lf_api::FineTuneJob;

use crate::error::RenderError;
use crate::meta::{labels, object_meta, selector, Component};
use crate::names::serve_name;
use crate::pod::{image, restricted_container, restricted_pod, TRAINER_BINARY};
use crate::volumes::{mebibytes, validate_sub_path, TMP_DIR, TMP_VOLUME};

/// The server container's name.
pub const SERVER_CONTAINER: &str = "server";
/// The ConfigMap key (and file name) of the server's config.
pub const SERVE_CONFIG_KEY: &str = "serve.yaml";
/// Where a LoRA result is mounted: `<dir>/<job name>`, served under the job's name.
pub const ADAPTERS_DIR: &str = "/adapters";
/// Where a full or freeze result is mounted: `<dir>/<job name>`.
pub const SERVED_MODELS_DIR: &str = "/served";
/// The pod template annotation naming the served result; a new value rolls the Deployment.
pub const SERVED_REVISION: &str = "lf-operator.io/served-revision";
/// CPUs a replica requests when `spec.serve.cpu` is unset.
pub const DEFAULT_SERVE_CPUS: &str = "2";

/// What the caller decided about the server, beyond the FineTuneJob.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeContext {
    /// The image when `spec.image` is unset.
    pub default_image: String,
    /// The served result: `None` for the final one, else a checkpoint's directory in the
    /// trainer pod (`/output/checkpoint-N`, from `status.checkpoints`).
    pub checkpoint_path: Option<String>,
    /// Identifies the served result (a change rolls the Deployment).
    pub revision: String,
    /// KV-cache positions a replica may hold (`--max-kv-tokens`), from the planner.
    pub kv_tokens: u64,
    /// A replica's host memory estimate (bytes), from the planner: the request when
    /// `spec.serve.memory` is unset, twice that the limit.
    pub host_memory_bytes: u64,
}

/// The server's objects, in creation order.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedServe {
    pub config_map: ConfigMap,
    pub service: Service,
    pub deployment: Deployment,
}

/// The server of `job`'s result; `Ok(None)` when `spec.serve` is unset.
pub fn serve(job: &FineTuneJob, ctx: &ServeContext) -> Result<Option<RenderedServe>, RenderError> {
    let Some(serve) = &job.spec.serve else {
        return Ok(None);
    };
    crate::names::validate_name(job)?;
    let layout = Layout::new(job, ctx)?;
    Ok(Some(RenderedServe {
        config_map: config_map(job, &layout)?,
        service: service(job, serve),
        deployment: deployment(job, serve, ctx, &layout)?,
    }))
}

/// Where the base model and the result are mounted, and from which volumes.
struct Layout {
    /// `(claim, subPath, mount path)` of the base model (LoRA only) and of the result.
    mounts: Vec<(String, Option<String>, String)>,
    model_name_or_path: String,
    adapter_name_or_path: Option<String>,
}

impl Layout {
    fn new(job: &FineTuneJob, ctx: &ServeContext) -> Result<Layout, RenderError> {
        let spec = &job.spec;
        let name = job.metadata.name.clone().unwrap_or_default();
        let output_sub = validate_sub_path("spec.output", &spec.output)?;
        let result_sub = match &ctx.checkpoint_path {
            None => output_sub,
            Some(path) => Some(checkpoint_sub_path(output_sub.as_deref(), path)?),
        };
        let result = |dir: &str| {
            (
                spec.output.claim_name.clone(),
                result_sub.clone(),
                format!("{dir}/{name}"),
            )
        };
        match spec.training.finetuning_type {
            FinetuningType::Lora => {
                let model = spec
                    .model
                    .source
                    .as_ref()
                    .ok_or(RenderError::MissingModelSource)?;
                let base = format!("{}/{}", paths::MODEL_DIR, base_id(&spec.model.name));
                let adapter = result(ADAPTERS_DIR);
                let base_mount = (
                    model.claim_name.clone(),
                    validate_sub_path("spec.model.source", model)?,
                    base.clone(),
                );
                Ok(Layout {
                    adapter_name_or_path: Some(adapter.2.clone()),
                    mounts: vec![base_mount, adapter],
                    model_name_or_path: base,
                })
            }
            FinetuningType::Full | FinetuningType::Freeze => {
                if ctx.checkpoint_path.is_some() {
                    return Err(RenderError::Unsupported {
                        key: "spec.serve.checkpointStep".into(),
                        why: "a full or freeze checkpoint holds the training state, not a model to load; serve the final model (remove checkpointStep)".into(),
                    });
                }
                let served = result(SERVED_MODELS_DIR);
                Ok(Layout {
                    model_name_or_path: served.2.clone(),
                    mounts: vec![served],
                    adapter_name_or_path: None,
                })
            }
        }
    }
}

/// The served name of the base model: the last part of `spec.model.name`, in the characters a
/// directory and a model id share.
fn base_id(model_name: &str) -> String {
    let last = model_name.rsplit('/').next().unwrap_or(model_name);
    let id: String = last
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .collect();
    match id.trim_matches('.') {
        "" => "base".into(),
        id => id.into(),
    }
}

/// The output volume's `subPath` of a checkpoint the trainer reported at `path` (under
/// [`paths::OUTPUT_DIR`]).
fn checkpoint_sub_path(output_sub: Option<&str>, path: &str) -> Result<String, RenderError> {
    let rest = path
        .strip_prefix(paths::OUTPUT_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .map(|r| r.trim_end_matches('/'))
        .filter(|r| !r.is_empty() && !r.split('/').any(|p| p == ".."))
        .ok_or_else(|| RenderError::Unsupported {
            key: "spec.serve.checkpointStep".into(),
            why: format!("the checkpoint's directory `{path}` is not inside the output volume"),
        })?;
    Ok(match output_sub {
        Some(sub) => format!("{sub}/{rest}"),
        None => rest.to_string(),
    })
}

/// The config `lf-trainer serve` reads: the job's training config (template, system prompt,
/// quantisation, generation defaults) with the served paths.
fn config_map(job: &FineTuneJob, layout: &Layout) -> Result<ConfigMap, RenderError> {
    let mut config = job
        .spec
        .training
        .with_deepspeed_applied()
        .map_err(|e| RenderError::InvalidTraining(e.to_string()))?
        .config;
    config.model_name_or_path = Some(layout.model_name_or_path.clone());
    config.adapter_name_or_path = layout.adapter_name_or_path.clone();
    config.output_dir = None;
    config.resume_from_checkpoint = None;
    Ok(ConfigMap {
        metadata: object_meta(job, serve_name(job), Component::Serve),
        data: Some(BTreeMap::from([(
            SERVE_CONFIG_KEY.to_string(),
            config.to_yaml_string(),
        )])),
        ..ConfigMap::default()
    })
}

/// The labels that select a job's server pods.
pub fn serve_selector(job: &FineTuneJob) -> BTreeMap<String, String> {
    selector(job, Component::Serve)
}

fn service(job: &FineTuneJob, serve: &ServeSpec) -> Service {
    Service {
        metadata: object_meta(job, serve_name(job), Component::Serve),
        spec: Some(ServiceSpec {
            selector: Some(serve_selector(job)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(serve.port),
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn deployment(
    job: &FineTuneJob,
    serve: &ServeSpec,
    ctx: &ServeContext,
    layout: &Layout,
) -> Result<Deployment, RenderError> {
    let spec = &job.spec;
    let image = image(job, &ctx.default_image)?;
    let config_dir = "/etc/lf-serve";
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: serve_name(job),
                items: Some(vec![KeyToPath {
                    key: SERVE_CONFIG_KEY.into(),
                    path: SERVE_CONFIG_KEY.into(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: TMP_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: config_dir.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: TMP_VOLUME.into(),
            mount_path: TMP_DIR.into(),
            ..VolumeMount::default()
        },
    ];
    // One read-only volume per claim (a ReadWriteOnce claim listed twice is attached twice).
    let mut claims: Vec<String> = Vec::new();
    for (claim, sub_path, mount_path) in &layout.mounts {
        let index = match claims.iter().position(|c| c == claim) {
            Some(i) => i,
            None => {
                claims.push(claim.clone());
                claims.len() - 1
            }
        };
        mounts.push(VolumeMount {
            name: format!("volume-{index}"),
            mount_path: mount_path.clone(),
            sub_path: sub_path.clone(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    volumes.extend(claims.iter().enumerate().map(|(i, claim)| Volume {
        name: format!("volume-{i}"),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.clone(),
            read_only: Some(true),
        }),
        ..Volume::default()
    }));

    let r = &spec.resources;
    let gpu = Quantity("1".into());
    let mut requests = BTreeMap::from([
        (r.gpu_resource_name.clone(), gpu.clone()),
        (
            "cpu".to_string(),
            Quantity(
                serve
                    .cpu
                    .clone()
                    .unwrap_or_else(|| DEFAULT_SERVE_CPUS.into()),
            ),
        ),
    ]);
    let mut limits = BTreeMap::from([(r.gpu_resource_name.clone(), gpu)]);
    match &serve.memory {
        Some(m) => {
            requests.insert("memory".into(), Quantity(m.clone()));
            limits.insert("memory".into(), Quantity(m.clone()));
        }
        None => {
            requests.insert("memory".into(), mebibytes(ctx.host_memory_bytes));
            limits.insert("memory".into(), mebibytes(2 * ctx.host_memory_bytes));
        }
    }
    let port = i32::from(serve.port);
    let container = Container {
        name: SERVER_CONTAINER.into(),
        image: Some(image),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![
            TRAINER_BINARY.into(),
            "serve".into(),
            "--host".into(),
            "0.0.0.0".into(),
            "--port".into(),
            serve.port.to_string(),
            "--max-running".into(),
            serve.max_concurrency.to_string(),
            "--max-kv-tokens".into(),
            ctx.kv_tokens.to_string(),
            format!("{config_dir}/{SERVE_CONFIG_KEY}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/health".into()),
                port: IntOrString::String("http".into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(2),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            limits: Some(limits),
            ..ResourceRequirements::default()
        }),
        volume_mounts: Some(mounts),
        security_context: Some(restricted_container()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    let pod_labels = labels(job, Component::Serve);
    let pod = PodSpec {
        containers: vec![container],
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(restricted_pod()),
        volumes: Some(volumes),
        node_selector: (!r.node_selector.is_empty()).then(|| r.node_selector.clone()),
        tolerations: (!r.tolerations.is_empty()).then(|| r.tolerations.clone()),
        affinity: r.affinity.clone(),
        priority_class_name: spec.scheduling.priority_class_name.clone(),
        scheduler_name: spec.scheduling.scheduler_name.clone(),
        ..PodSpec::default()
    };
    Ok(Deployment {
        metadata: object_meta(job, serve_name(job), Component::Serve),
        spec: DeploymentSpec {
            replicas: Some(serve.replicas as i32),
            selector: LabelSelector {
                match_labels: Some(serve_selector(job)),
                ..LabelSelector::default()
            },
            // A new result replaces the old one replica by replica, never serving with fewer
            // ready replicas than asked for.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([
                        (
                            "kubectl.kubernetes.io/default-container".to_string(),
                            SERVER_CONTAINER.to_string(),
                        ),
                        (SERVED_REVISION.to_string(), ctx.revision.clone()),
                    ])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    })
}

#[cfg(test)]
#[path = "serve_tests.rs"]
mod tests;
