//! The environment of every trainer pod: the rendezvous contract of [`lf_api::runtime::env`], the
//! FineTuneJob's identity for status reporting, and NCCL settings (defaults below, overridden by
//! `spec.distributed.nccl`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};
use lf_api::runtime::{env, paths};
use lf_api::{FineTuneJob, Plan};

use crate::context::RenderContext;
use crate::error::RenderError;
use crate::grace::termination_grace;
use crate::names::{job_name, service_name};
use crate::tracking::tracker_env;

/// The rendezvous port on rank 0 when `spec.distributed.masterPort` is unset (torchrun's default).
pub const DEFAULT_MASTER_PORT: u16 = 29500;
/// Where the trainer serves `/metrics` (set explicitly so the container port matches).
pub const TRAINER_METRICS_ADDR: &str = "0.0.0.0:9400";
/// The port of [`TRAINER_METRICS_ADDR`].
pub const TRAINER_METRICS_PORT: i32 = 9400;
/// The annotation the Job controller puts the completion index in (also `JOB_COMPLETION_INDEX`).
pub const COMPLETION_INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// `HOME` of the trainer: the root filesystem is read-only, `/tmp` is a writable emptyDir, so
/// anything that caches under `$HOME` (the CUDA JIT cache `~/.nv`, for one) stays writable.
pub const HOME_DIR: &str = "/tmp";

/// NCCL and libtorch defaults, each overridable through `spec.distributed.nccl`:
///
/// - `NCCL_DEBUG=WARN`: NCCL prints its errors and warnings (an unreachable peer, a transport that
///   fell back) without the per-communicator INFO lines; set `INFO` to debug a network.
/// - `TORCH_NCCL_ASYNC_ERROR_HANDLING=1` and its pre-2.2 spelling `NCCL_ASYNC_ERROR_HANDLING=1`:
///   when a collective fails or exceeds `ddp_timeout`, the watchdog aborts the communicator and the
///   process exits, so the pod fails and the operator restarts the whole gang from the last
///   checkpoint, instead of every rank hanging until the Job's deadline.
/// - `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`: the caching allocator grows segments in
///   place instead of allocating new blocks, which removes most fragmentation; the planner's
///   overhead row already reserves for fragmentation, so this only adds margin.
///
/// Deliberately not set: `NCCL_SOCKET_IFNAME` (a pod has one interface besides loopback and NCCL
/// picks it; a wrong name is a hard failure, and on multi-NIC nodes only the user knows the right
/// one), `NCCL_IB_DISABLE` and `NCCL_P2P_DISABLE` (NCCL detects InfiniBand and NVLink/P2P itself;
/// disabling them silently costs bandwidth).
pub const NCCL_DEFAULTS: &[(&str, &str)] = &[
    ("NCCL_ASYNC_ERROR_HANDLING", "1"),
    ("NCCL_DEBUG", "WARN"),
    ("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"),
    ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
];

/// Variables the operator owns; `spec.distributed.nccl` may not set them.
pub const RESERVED: &[&str] = &[
    env::MASTER_ADDR,
    env::MASTER_PORT,
    env::WORLD_SIZE,
    env::NNODES,
    env::NPROC_PER_NODE,
    env::NODE_RANK,
    env::RANK,
    env::LOCAL_RANK,
    env::JOB_NAME,
    env::JOB_NAMESPACE,
    env::ATTEMPT,
    env::CONFIG,
    env::METRICS_ADDR,
    env::STATUS_FILE,
    "HOME",
];

/// `MASTER_PORT` of a job.
pub fn master_port(job: &FineTuneJob) -> u16 {
    job.spec
        .distributed
        .master_port
        .unwrap_or(DEFAULT_MASTER_PORT)
}

/// Checks `spec.distributed.nccl`: valid variable names, none of [`RESERVED`], and only what
/// [`lf_api::nccl::allowed`] admits (the CRD's CEL rule says the same at admission; this catches
/// objects stored before it, and `lf-operator render`/`local`, which no API server checks).
pub fn validate_nccl(job: &FineTuneJob) -> Result<(), RenderError> {
    if job.spec.distributed.nccl.len() > lf_api::nccl::MAX_VARIABLES {
        return Err(RenderError::InvalidNcclVariable {
            key: "*".into(),
            why: format!(
                "{} variables; at most {}",
                job.spec.distributed.nccl.len(),
                lf_api::nccl::MAX_VARIABLES
            ),
        });
    }
    for key in job.spec.distributed.nccl.keys() {
        let invalid = |why: &str| RenderError::InvalidNcclVariable {
            key: key.clone(),
            why: why.to_string(),
        };
        let valid_name = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(invalid("not an environment variable name (letters, digits and `_`, not starting with a digit)"));
        }
        if RESERVED.contains(&key.as_str()) {
            return Err(invalid("the operator sets this variable from the plan; remove it from spec.distributed.nccl"));
        }
        lf_api::nccl::check(key).map_err(|why| invalid(&why))?;
    }
    Ok(())
}

/// The environment every pod of the attempt gets. Values are the same for every pod except
/// `NODE_RANK`, which comes from the completion-index annotation through the downward API
/// (`LF_JOB_NAMESPACE` too, from the pod's namespace). Order: the rendezvous contract, the
/// FineTuneJob's identity, NCCL/libtorch settings sorted by name, then where the tracker settings'
/// files are ([`tracker_env`]).
pub fn worker_env(job: &FineTuneJob, plan: &Plan, ctx: &RenderContext) -> Vec<EnvVar> {
    let master_addr = format!("{}-0.{}", job_name(job, ctx.attempt), service_name(job));
    let mut vars = vec![
        value(env::MASTER_ADDR, master_addr),
        value(env::MASTER_PORT, master_port(job).to_string()),
        value(
            env::WORLD_SIZE,
            (plan.nodes * plan.gpus_per_node).to_string(),
        ),
        value(env::NNODES, plan.nodes.to_string()),
        value(env::NPROC_PER_NODE, plan.gpus_per_node.to_string()),
        field(
            env::NODE_RANK,
            &format!("metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"),
        ),
        value(env::JOB_NAME, job.metadata.name.clone().unwrap_or_default()),
        field(env::JOB_NAMESPACE, "metadata.namespace"),
        value(env::ATTEMPT, ctx.attempt.to_string()),
        value(env::CONFIG, paths::CONFIG_FILE.to_string()),
        value(env::METRICS_ADDR, TRAINER_METRICS_ADDR.to_string()),
        value(
            env::LAUNCHER_GRACE_SECONDS,
            termination_grace(plan).0.to_string(),
        ),
        value("HOME", HOME_DIR.to_string()),
    ];
    let mut tuning: BTreeMap<String, String> = NCCL_DEFAULTS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in &job.spec.distributed.nccl {
        tuning.insert(k.clone(), v.clone());
    }
    vars.extend(tuning.into_iter().map(|(k, v)| value(&k, v)));
    vars.extend(tracker_env(job));
    vars
}

fn value(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value),
        value_from: None,
    }
}

fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_with(nccl: &[(&str, &str)]) -> FineTuneJob {
        let mut job = FineTuneJob::from_yaml_str(
            "metadata: {name: demo}\nspec:\n  model: {name: meta-llama/Meta-Llama-3-8B}\n  data: {source: {claimName: data}}\n  output: {claimName: out}\n  resources: {gpuMemoryGib: 24}\n",
        )
        .expect("job");
        for (k, v) in nccl {
            job.spec
                .distributed
                .nccl
                .insert(k.to_string(), v.to_string());
        }
        job
    }

    #[test]
    fn only_communication_library_variables_are_accepted() {
        let ok = job_with(&[
            ("NCCL_IB_HCA", "mlx5"),
            ("TORCH_DISTRIBUTED_DEBUG", "DETAIL"),
            ("UCX_TLS", "rc"),
            ("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:False"),
        ]);
        assert!(validate_nccl(&ok).is_ok());
        for bad in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "PATH",
            "KUBERNETES_SERVICE_HOST",
            "NCCL_NET_PLUGIN",
            "FI_PROVIDER_PATH",
        ] {
            let err = validate_nccl(&job_with(&[(bad, "/data/x.so")]))
                .expect_err(bad)
                .to_string();
            assert!(
                err.starts_with(&format!(
                    "spec.distributed.nccl.{bad}: `{bad}` is not allowed"
                )) && err.contains("NCCL_*")
                    && err.contains("FI_*")
                    && !err.contains('\n'),
                "{err}"
            );
        }
        let many: Vec<(String, String)> = (0..65)
            .map(|i| (format!("NCCL_X{i}"), "1".to_string()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let err = validate_nccl(&job_with(&many)).unwrap_err().to_string();
        assert!(err.contains("at most 64"), "{err}");
    }
}
