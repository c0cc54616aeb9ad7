//! The pod's volumes: the training config (ConfigMap), the model, the data and the adapter to start
//! from (read-only), the output,
//! `/dev/shm` sized from the plan, a writable `/tmp` under the read-only root filesystem, and the
//! status writer's API credentials.
//!
//! Locations on the same PersistentVolumeClaim share one pod volume (mounted several times with
//! different `subPath`s): a claim listed twice would be attached twice, which ReadWriteOnce
//! volumes refuse. The shared volume is read-only only when every mount of it is.

use k8s_openapi::api::core::v1::{
    ConfigMapProjection, ConfigMapVolumeSource, DownwardAPIProjection, DownwardAPIVolumeFile,
    EmptyDirVolumeSource, KeyToPath, ObjectFieldSelector, PersistentVolumeClaimVolumeSource,
    ProjectedVolumeSource, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use lf_api::crd::VolumeLocation;
use lf_api::runtime::paths;
use lf_api::{FineTuneJob, Plan};

use crate::config::config_key;
use crate::error::RenderError;
use crate::names::config_map_name;
use crate::tracking::tracking_volume;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// `/dev/shm` for a pod running `gpus_per_node` processes:
///
/// `256 MiB + (gpus_per_node > 1 ? gpus_per_node × 1 GiB : 0)`
///
/// - 256 MiB base: libtorch's and the c10d store's own shared-memory segments and the data
///   pipeline's buffers; Docker's 64 MiB default is what breaks loaders and NCCL in the first place.
/// - 1 GiB per local process when the pod runs several: NCCL's shared-memory transport (used
///   between the GPUs of one node when direct P2P is unavailable, and for its proxy) keeps, per
///   channel and per peer connection, its Simple (4 MiB `NCCL_BUFFSIZE`), LL128 (~4.6 MiB) and LL
///   buffers, ~9 MiB; with up to 32 channels and the two neighbours of the ring/tree algorithms
///   that is ~580 MiB per process, rounded up to 1 GiB for the second communicator ZeRO's
///   reduce-scatter/all-gather may create.
///
/// `sizeLimit` caps the tmpfs, it reserves nothing: only pages actually written count towards the
/// pod's memory. A pod that writes past the cap is evicted by the kubelet, with a clear reason.
pub fn shm_size_bytes(plan: &Plan) -> u64 {
    let per_process = if plan.gpus_per_node > 1 {
        plan.gpus_per_node as u64 * GIB
    } else {
        0
    };
    256 * MIB + per_process
}

/// A byte count as a Kubernetes quantity in MiB (`4352Mi`).
pub fn mebibytes(bytes: u64) -> Quantity {
    Quantity(format!("{}Mi", bytes.div_ceil(MIB)))
}

/// Name of the ConfigMap volume.
pub const CONFIG_VOLUME: &str = "config";
/// Name of the `/dev/shm` volume.
pub const SHM_VOLUME: &str = "dshm";
/// Name of the `/tmp` volume.
pub const TMP_VOLUME: &str = "tmp";
/// Where the writable scratch directory is mounted.
pub const TMP_DIR: &str = "/tmp";

/// Name of the volume holding the pod's API credentials.
pub const API_ACCESS_VOLUME: &str = "api-access";
/// Where Kubernetes clients look for in-cluster credentials (token, ca.crt, namespace).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Lifetime asked of the trainer's service-account token; the kubelet renews it at 80 %.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;

/// The API credentials of the status writer, mounted explicitly (the pod sets
/// `automountServiceAccountToken: false`), so that only the trainer container holds them, never an
/// injected sidecar or init container: a bound token of the job's own ServiceAccount (whose Role
/// allows `get`/`patch` on this FineTuneJob's status only, narrowed further by the chart's
/// ValidatingAdmissionPolicy to `progress` and `checkpoints`), the cluster's CA and the namespace
/// — the files the automatic mount would have provided, at the same place.
fn api_access_volume() -> Volume {
    Volume {
        name: API_ACCESS_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                        ..ServiceAccountTokenProjection::default()
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            ..KeyToPath::default()
                        }]),
                        ..ConfigMapProjection::default()
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                api_version: Some("v1".into()),
                                field_path: "metadata.namespace".into(),
                            }),
                            ..DownwardAPIVolumeFile::default()
                        }]),
                    }),
                    ..VolumeProjection::default()
                },
            ]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// One use of a PersistentVolumeClaim by the trainer.
struct Location<'a> {
    role: &'static str,
    key: &'static str,
    location: &'a VolumeLocation,
    mount_path: &'static str,
    read_only: bool,
}

/// The pod's volumes and the trainer container's mounts.
pub fn volumes(
    job: &FineTuneJob,
    plan: &Plan,
) -> Result<(Vec<Volume>, Vec<VolumeMount>), RenderError> {
    let spec = &job.spec;
    let model = spec
        .model
        .source
        .as_ref()
        .ok_or(RenderError::MissingModelSource)?;
    if spec
        .checkpointing
        .as_ref()
        .is_some_and(|c| c.location.is_some())
    {
        return Err(RenderError::Unsupported {
            key: "spec.checkpointing.location".into(),
            why: "lf-trainer writes checkpoints into the output location (output_dir/checkpoint-N) and resumes from there; \
                  remove spec.checkpointing.location (checkpoints go to spec.output)"
                .into(),
        });
    }
    let adapter = spec.model.adapter.as_ref().map(|location| Location {
        role: "adapter",
        key: "spec.model.adapter",
        location,
        mount_path: paths::ADAPTER_DIR,
        read_only: true,
    });
    let locations = [
        Location {
            role: "model",
            key: "spec.model.source",
            location: model,
            mount_path: paths::MODEL_DIR,
            read_only: true,
        },
        Location {
            role: "data",
            key: "spec.data.source",
            location: &spec.data.source,
            mount_path: paths::DATA_DIR,
            read_only: true,
        },
        Location {
            role: "output",
            key: "spec.output",
            location: &spec.output,
            mount_path: paths::OUTPUT_DIR,
            read_only: false,
        },
    ];

    let mut volumes = vec![
        Volume {
            name: CONFIG_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(job),
                items: Some(vec![KeyToPath {
                    key: config_key().into(),
                    path: config_key().into(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: SHM_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(mebibytes(shm_size_bytes(plan))),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: TMP_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    volumes.push(api_access_volume());
    let mut mounts = vec![
        VolumeMount {
            name: API_ACCESS_VOLUME.into(),
            mount_path: SERVICE_ACCOUNT_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: CONFIG_VOLUME.into(),
            mount_path: paths::CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: SHM_VOLUME.into(),
            mount_path: paths::SHM_DIR.into(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: TMP_VOLUME.into(),
            mount_path: TMP_DIR.into(),
            ..VolumeMount::default()
        },
    ];

    // One volume per claim, named after the first role that uses it.
    let mut claims: Vec<(String, String, bool)> = Vec::new(); // (claim, volume name, read-only)
    for loc in locations.iter().chain(adapter.iter()) {
        let sub_path = validate_sub_path(loc.key, loc.location)?;
        let claim = &loc.location.claim_name;
        if claim.is_empty() {
            return Err(RenderError::InvalidVolume {
                key: format!("{}.claimName", loc.key),
                why: "must not be empty".into(),
            });
        }
        let volume = match claims.iter_mut().find(|(c, _, _)| c == claim) {
            Some(entry) => {
                entry.2 &= loc.read_only;
                entry.1.clone()
            }
            None => {
                claims.push((claim.clone(), loc.role.to_string(), loc.read_only));
                loc.role.to_string()
            }
        };
        mounts.push(VolumeMount {
            name: volume,
            mount_path: loc.mount_path.into(),
            sub_path,
            read_only: loc.read_only.then_some(true),
            ..VolumeMount::default()
        });
    }
    if let Some((volume, mount)) = tracking_volume(job) {
        volumes.push(volume);
        mounts.push(mount);
    }
    for (claim, name, read_only) in claims {
        volumes.push(Volume {
            name,
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim,
                read_only: read_only.then_some(true),
            }),
            ..Volume::default()
        });
    }
    Ok((volumes, mounts))
}

/// A `subPath` must be relative and must not leave the volume (Kubernetes rejects both).
pub(crate) fn validate_sub_path(
    key: &str,
    location: &VolumeLocation,
) -> Result<Option<String>, RenderError> {
    let Some(sub) = location
        .sub_path
        .as_deref()
        .map(|s| s.trim_end_matches('/'))
        .filter(|s| !s.is_empty())
    else {
        return Ok(None);
    };
    let invalid = |why: &str| RenderError::InvalidVolume {
        key: format!("{key}.subPath"),
        why: format!("`{sub}` {why}"),
    };
    if sub.starts_with('/') {
        return Err(invalid("must be relative to the volume's root"));
    }
    if sub.split('/').any(|part| part == "..") {
        return Err(invalid("must not contain `..`"));
    }
    Ok(Some(sub.to_string()))
}
