//! The rendered Indexed Job's pods, as local process specs.
//!
//! Everything comes from the rendered objects: the container's command, arguments and environment,
//! the ConfigMap's training config, and the volume mounts, whose mount paths are rewritten to the
//! local directories of their claims. What differs from a cluster is listed in [`LocalPod`]'s docs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec};
use lf_api::runtime::env;
use lf_api::TrainingConfig;

use crate::volumes::VolumeMap;

/// Why the rendered objects cannot run locally.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("the rendered Job has no pod template with a container")]
    NoContainer,
    #[error("the rendered ConfigMap has no `{0}`")]
    NoConfig(String),
    #[error("the rendered training config does not parse: {0}")]
    Config(#[from] lf_api::ConfigError),
}

/// One pod of the gang as a local process: the trainer's arguments, its environment, and the
/// training config with local paths. Differences from the pod: `MASTER_ADDR` is 127.0.0.1 with a
/// free port, `NODE_RANK` is set directly instead of through the completion-index annotation, volume
/// paths are local directories, and status goes to `LF_STATUS_FILE` instead of the API server.
#[derive(Debug, Clone)]
pub struct LocalPod {
    pub node_rank: u32,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// The training config every pod reads, with mount paths rewritten to local directories.
pub fn local_training_config(
    config_map: &ConfigMap,
    job: &Job,
    volumes: &VolumeMap,
    config_dir: &Path,
) -> Result<TrainingConfig, PodError> {
    let key = Path::new(lf_api::runtime::paths::CONFIG_FILE)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = config_map
        .data
        .as_ref()
        .and_then(|d| d.get(&key))
        .ok_or_else(|| PodError::NoConfig(key.clone()))?;
    let config = TrainingConfig::from_yaml_str(text)?;
    let mounts = mount_map(pod_spec(job)?, volumes, config_dir);
    let mut value =
        serde_yaml::to_value(&config).map_err(|e| lf_api::ConfigError::Yaml(e.to_string()))?;
    if let Some(map) = value.as_mapping_mut() {
        for (_, v) in map.iter_mut() {
            if let serde_yaml::Value::String(s) = v {
                *s = rewrite_path(s, &mounts);
            }
        }
    }
    Ok(TrainingConfig::from_yaml_value(value)?)
}

/// The process specs of every pod (`nodes` of them), given the trainer's config file path.
pub fn local_pods(
    job: &Job,
    volumes: &VolumeMap,
    config_dir: &Path,
    config_file: &Path,
    master_port: u16,
    status_file: &Path,
) -> Result<Vec<LocalPod>, PodError> {
    let spec = pod_spec(job)?;
    let container = spec.containers.first().ok_or(PodError::NoContainer)?;
    let nodes = job
        .spec
        .as_ref()
        .and_then(|s| s.completions)
        .unwrap_or(1)
        .max(1) as u32;
    let mounts = mount_map(spec, volumes, config_dir);
    let args = container_args(container, &mounts, config_file);
    let mut pods = Vec::new();
    for node_rank in 0..nodes {
        let mut envs = BTreeMap::new();
        for e in container.env.iter().flatten() {
            let value = match (&e.value, e.name.as_str()) {
                (_, n) if n == env::NODE_RANK => node_rank.to_string(),
                (_, n) if n == env::MASTER_ADDR => "127.0.0.1".to_string(),
                (_, n) if n == env::MASTER_PORT => master_port.to_string(),
                (_, n) if n == env::CONFIG => config_file.display().to_string(),
                (Some(v), _) => rewrite_path(v, &mounts),
                // Other downward-API values have no local meaning.
                (None, _) => continue,
            };
            envs.insert(e.name.clone(), value);
        }
        // Locally the status goes to a file; the API-server reporter stays off.
        envs.remove(env::JOB_NAMESPACE);
        // Several local pods would clash on one metrics port; the summary reads the trainer's files.
        envs.remove(env::METRICS_ADDR);
        envs.insert(
            env::STATUS_FILE.to_string(),
            status_file.display().to_string(),
        );
        envs.entry(env::CONFIG.to_string())
            .or_insert_with(|| config_file.display().to_string());
        pods.push(LocalPod {
            node_rank,
            args: args.clone(),
            env: envs,
        });
    }
    Ok(pods)
}

fn pod_spec(job: &Job) -> Result<&PodSpec, PodError> {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .filter(|s| !s.containers.is_empty())
        .ok_or(PodError::NoContainer)
}

/// The container's arguments after the program name, with mount paths rewritten and the config
/// file pointed at the local copy.
fn container_args(
    container: &Container,
    mounts: &[(String, PathBuf)],
    config_file: &Path,
) -> Vec<String> {
    let mut all: Vec<String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .cloned()
        .collect();
    if !all.is_empty() {
        all.remove(0); // the trainer binary itself
    }
    all.into_iter()
        .map(|a| {
            if a == lf_api::runtime::paths::CONFIG_FILE {
                config_file.display().to_string()
            } else {
                rewrite_path(&a, mounts)
            }
        })
        .collect()
}

/// Mount path → local directory, longest mount paths first.
fn mount_map(spec: &PodSpec, volumes: &VolumeMap, config_dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Some(container) = spec.containers.first() else {
        return out;
    };
    for m in container.volume_mounts.iter().flatten() {
        let Some(vol) = spec.volumes.iter().flatten().find(|v| v.name == m.name) else {
            continue;
        };
        let local = if let Some(pvc) = &vol.persistent_volume_claim {
            volumes.resolve(&pvc.claim_name, m.sub_path.as_deref())
        } else if vol.config_map.is_some() {
            config_dir.to_path_buf()
        } else {
            continue; // emptyDirs (/dev/shm, /tmp) exist locally as they are
        };
        out.push((m.mount_path.trim_end_matches('/').to_string(), local));
    }
    out.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    out
}

fn rewrite_path(value: &str, mounts: &[(String, PathBuf)]) -> String {
    for (mount, local) in mounts {
        if value == mount {
            return local.display().to_string();
        }
        if let Some(rest) = value
            .strip_prefix(mount.as_str())
            .and_then(|r| r.strip_prefix('/'))
        {
            return local.join(rest).display().to_string();
        }
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_longest_mount_first() {
        let mounts = vec![
            ("/data/x".to_string(), PathBuf::from("/l/x")),
            ("/data".to_string(), PathBuf::from("/l/d")),
        ];
        let mut sorted = mounts.clone();
        sorted.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        assert_eq!(rewrite_path("/data/x/f.json", &sorted), "/l/x/f.json");
        assert_eq!(rewrite_path("/data/y", &sorted), "/l/d/y");
        assert_eq!(rewrite_path("/data", &sorted), "/l/d");
        assert_eq!(rewrite_path("/database", &sorted), "/database");
        assert_eq!(rewrite_path("auto", &sorted), "auto");
    }
}
