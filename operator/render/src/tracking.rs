//! Experiment trackers in a cluster: MLflow's address and credentials come from the Secret
//! `spec.tracking.secretName`, mounted read-only as one file per MLflow variable (only those keys,
//! each optional) where the trainer finds them through `LF_TRACKING_DIR` — files, not environment
//! variables, so they do not show in `/proc/<pid>/environ`, crash reports or child processes. A job
//! whose `report_to` names MLflow without that Secret is refused before anything runs.

use k8s_openapi::api::core::v1::{EnvVar, KeyToPath, SecretVolumeSource, Volume, VolumeMount};
use lf_api::runtime::{env, paths};
use lf_api::training::report_to::{self, Tracker};
use lf_api::FineTuneJob;

use crate::error::RenderError;

/// Name of the volume holding the tracker settings.
pub const TRACKING_VOLUME: &str = "tracking";
/// Owner and group (the pod's `fsGroup`) may read the files; nobody may write them.
const SECRET_FILE_MODE: i32 = 0o440;

/// `report_to` names `mlflow` (not only through `all`) but the job gives no Secret to find the
/// tracking server in.
pub fn validate_tracking(job: &FineTuneJob) -> Result<(), RenderError> {
    let selection = report_to::parse(&job.spec.training.report_to)
        .map_err(|e| RenderError::InvalidTraining(e.to_string()))?;
    if selection.is_explicit(Tracker::Mlflow) && job.spec.tracking.is_none() {
        return Err(RenderError::InvalidTraining(format!(
            "report_to names mlflow, but the trainers cannot find the tracking server: create a Secret with {} \
             (and credentials if the server needs them) and set spec.tracking.secretName",
            env::MLFLOW_TRACKING_URI
        )));
    }
    Ok(())
}

/// `LF_TRACKING_DIR`, when the job has tracker settings.
pub fn tracker_env(job: &FineTuneJob) -> Option<EnvVar> {
    job.spec.tracking.as_ref().map(|_| EnvVar {
        name: env::TRACKING_DIR.into(),
        value: Some(paths::TRACKING_DIR.into()),
        value_from: None,
    })
}

/// The Secret's MLflow keys as files, and their read-only mount in the trainer container.
pub fn tracking_volume(job: &FineTuneJob) -> Option<(Volume, VolumeMount)> {
    let tracking = job.spec.tracking.as_ref()?;
    let items = env::MLFLOW
        .iter()
        .map(|key| KeyToPath {
            key: key.to_string(),
            path: key.to_string(),
            ..KeyToPath::default()
        })
        .collect();
    let volume = Volume {
        name: TRACKING_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(tracking.secret_name.clone()),
            items: Some(items),
            optional: Some(true),
            default_mode: Some(SECRET_FILE_MODE),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: TRACKING_VOLUME.into(),
        mount_path: paths::TRACKING_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    Some((volume, mount))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(extra: &str) -> FineTuneJob {
        FineTuneJob::from_yaml_str(&format!(
            "metadata: {{name: demo}}\nspec:\n  model: {{name: meta-llama/Meta-Llama-3-8B}}\n  data: {{source: {{claimName: data}}}}\n  output: {{claimName: out}}\n  resources: {{gpuMemoryGib: 24}}\n{extra}"
        ))
        .expect("job")
    }

    #[test]
    fn mlflow_needs_the_secret_and_all_does_not() {
        let e = validate_tracking(&job("  training: {report_to: mlflow}\n")).unwrap_err();
        assert!(e.to_string().contains("spec.tracking.secretName"), "{e}");
        assert!(validate_tracking(&job("  training: {report_to: all}\n")).is_ok());
        assert!(validate_tracking(&job("  training: {report_to: tensorboard}\n")).is_ok());
        let with_secret = "  training: {report_to: 'tensorboard,mlflow'}\n  tracking: {secretName: mlflow-creds}\n";
        assert!(validate_tracking(&job(with_secret)).is_ok());
    }

    #[test]
    fn the_secret_comes_as_files_of_the_mlflow_keys_only() {
        let plain = job("");
        assert!(tracker_env(&plain).is_none() && tracking_volume(&plain).is_none());
        let j = job("  tracking: {secretName: mlflow-creds}\n");
        assert_eq!(
            tracker_env(&j).and_then(|v| v.value).as_deref(),
            Some(paths::TRACKING_DIR)
        );
        let (volume, mount) = tracking_volume(&j).unwrap();
        let secret = volume.secret.unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("mlflow-creds"));
        assert_eq!(
            (secret.optional, secret.default_mode),
            (Some(true), Some(0o440))
        );
        let keys: Vec<String> = secret.items.unwrap().into_iter().map(|i| i.key).collect();
        assert_eq!(keys, env::MLFLOW);
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (paths::TRACKING_DIR, Some(true))
        );
    }
}
