//! A FineTuneJob as a YAML manifest for a person to read and finish: `spec.training` with only
//! the keys that differ from their defaults (as the user would write it), and a comment on each
//! placeholder volume claim (`change-me-…`) saying what it must hold.

use lf_api::{FineTuneJob, TrainingConfig};

use crate::from_llama_factory::{DATASETS_CLAIM, MODELS_CLAIM, OUTPUTS_CLAIM};

/// Why a job cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the FineTuneJob as YAML: {0}")]
pub struct ManifestError(String);

/// What each placeholder claim must hold, written beside it.
const PLACEHOLDERS: [(&str, &str); 3] = [
    (
        MODELS_CLAIM,
        "CHANGE ME: the PersistentVolumeClaim holding the model (subPath: its directory)",
    ),
    (
        DATASETS_CLAIM,
        "CHANGE ME: the PersistentVolumeClaim holding dataset_info.json and the data files",
    ),
    (
        OUTPUTS_CLAIM,
        "CHANGE ME: a writable PersistentVolumeClaim for the adapter, checkpoints and logs",
    ),
];

/// `job` as YAML, headed by `header` (each line becomes a comment). Parsed back with
/// [`FineTuneJob::from_yaml_str`], it is `job` again.
pub fn to_yaml(job: &FineTuneJob, header: &str) -> Result<String, ManifestError> {
    let err = |e: serde_yaml::Error| ManifestError(e.to_string());
    let mut value = serde_yaml::to_value(job).map_err(err)?;
    let training = explicit_keys(&job.spec.training).map_err(err)?;
    if let Some(spec) = value.get_mut("spec").and_then(|s| s.as_mapping_mut()) {
        spec.insert("training".into(), training);
    }
    let body = serde_yaml::to_string(&value).map_err(err)?;
    let mut out: String = header.lines().map(|l| format!("# {l}\n")).collect();
    for line in body.lines() {
        out.push_str(line);
        if let Some((_, why)) = PLACEHOLDERS
            .iter()
            .find(|(claim, _)| line.trim_end().ends_with(&format!("claimName: {claim}")))
        {
            out.push_str("  # ");
            out.push_str(why);
        }
        out.push('\n');
    }
    Ok(out)
}

/// The keys of `config` whose values differ from the defaults, in the config's own order.
fn explicit_keys(config: &TrainingConfig) -> Result<serde_yaml::Value, serde_yaml::Error> {
    let defaults = serde_yaml::to_value(TrainingConfig::default())?;
    let mut value = serde_yaml::to_value(config)?;
    if let Some(map) = value.as_mapping_mut() {
        map.retain(|k, v| defaults.get(k) != Some(v));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = r#"
apiVersion: lf-operator.io/v1alpha1
kind: FineTuneJob
metadata: {name: demo}
spec:
  model: {name: meta-llama/Meta-Llama-3-8B, source: {claimName: change-me-models}}
  data: {source: {claimName: change-me-datasets}}
  output: {claimName: change-me-outputs, subPath: saves/sft}
  resources: {gpuMemoryGib: 24}
  training: {lora_rank: 16, dataset: alpaca_en, bf16: true}
"#;

    #[test]
    fn training_shows_only_what_differs_and_round_trips() {
        let job = FineTuneJob::from_yaml_str(JOB).unwrap();
        let yaml = to_yaml(&job, "made by a test").unwrap();
        assert!(yaml.starts_with("# made by a test\n"), "{yaml}");
        let training: Vec<&str> = yaml
            .lines()
            .skip_while(|l| !l.contains("training:"))
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .map(str::trim)
            .collect();
        assert_eq!(
            training,
            ["lora_rank: 16", "bf16: true", "dataset: alpaca_en"],
            "{yaml}"
        );
        let back = FineTuneJob::from_yaml_str(&yaml).unwrap();
        assert_eq!((back.metadata, back.spec), (job.metadata, job.spec));
    }

    #[test]
    fn every_placeholder_claim_is_commented() {
        let job = FineTuneJob::from_yaml_str(JOB).unwrap();
        let yaml = to_yaml(&job, "").unwrap();
        for claim in [MODELS_CLAIM, DATASETS_CLAIM, OUTPUTS_CLAIM] {
            let line = yaml
                .lines()
                .find(|l| l.contains(&format!("claimName: {claim}")))
                .unwrap_or_else(|| panic!("{claim} missing:\n{yaml}"));
            assert!(line.contains("# CHANGE ME"), "{line}");
        }
        // A claim that is no placeholder gets no comment.
        let named = JOB.replace("change-me-outputs", "outputs");
        let yaml = to_yaml(&FineTuneJob::from_yaml_str(&named).unwrap(), "").unwrap();
        let line = yaml.lines().find(|l| l.contains("claimName: outputs"));
        assert!(line.is_some_and(|l| !l.contains('#')), "{yaml}");
    }
}
