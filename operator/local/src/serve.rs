//! `lf-operator local --serve`: after the job succeeded (now or in an earlier run), its result
//! behind `lf-trainer serve` on 127.0.0.1 — the training config the pods read, with the output's
//! adapter (LoRA) or model (full/freeze) — until Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::time::Duration;

use lf_api::training::FinetuningType;
use lf_api::TrainingConfig;

use crate::run::LocalError;
use crate::stop::stop_flag;

/// What to serve: the local training config and its `key=value` overrides for the result.
#[derive(Debug, Clone, PartialEq)]
pub struct ServePlan {
    pub config_file: PathBuf,
    pub overrides: Vec<String>,
    /// The name a request's `model` uses for the fine-tuned result (the output directory's name).
    pub model: String,
}

/// The serve command for a finished job in `workdir` (its `config/train.yaml`): a LoRA result is
/// served as the adapter over the base model, a full or freeze result as the model itself.
pub fn serve_plan(workdir: &Path) -> Result<ServePlan, LocalError> {
    let config_file = workdir.join("config").join("train.yaml");
    let text = std::fs::read_to_string(&config_file).map_err(|source| LocalError::Read {
        path: config_file.clone(),
        source,
    })?;
    let config = TrainingConfig::from_yaml_str(&text).map_err(|source| LocalError::Job {
        path: config_file.clone(),
        source,
    })?;
    let output = config
        .output_dir
        .as_deref()
        .map(PathBuf::from)
        .ok_or_else(|| LocalError::NoOutput(config_file.clone()))?;
    let model = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let key = match config.finetuning_type {
        FinetuningType::Lora => "adapter_name_or_path",
        FinetuningType::Full | FinetuningType::Freeze => "model_name_or_path",
    };
    Ok(ServePlan {
        config_file,
        overrides: vec![format!("{key}={}", output.display())],
        model,
    })
}

/// Runs `lf-trainer serve` for `plan` on 127.0.0.1:`port` until it exits or Ctrl-C/SIGTERM (then
/// it is stopped with SIGTERM, then killed after 10 s).
pub fn serve(trainer: &Path, plan: &ServePlan, port: u16) -> Result<(), LocalError> {
    let stop = stop_flag();
    let mut child = Command::new(trainer)
        .arg("serve")
        .arg(&plan.config_file)
        .args(&plan.overrides)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .spawn()
        .map_err(|source| LocalError::StartServe {
            path: trainer.to_path_buf(),
            source,
        })?;
    eprintln!(
        "serving `{}` at http://127.0.0.1:{port}/v1 (OpenAI API; also /generate, /health, /metrics); Ctrl-C stops it. Try:\n  curl -s http://127.0.0.1:{port}/v1/chat/completions -H 'Content-Type: application/json' -d '{{\"model\": \"{}\", \"messages\": [{{\"role\": \"user\", \"content\": \"hello\"}}], \"max_tokens\": 16}}'",
        plan.model, plan.model
    );
    loop {
        if let Some(status) = child.try_wait().map_err(wait_error(trainer))? {
            if status.success() || stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            return Err(LocalError::ServeExited(status.to_string()));
        }
        if stop.load(Ordering::SeqCst) {
            return terminate(&mut child, trainer);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_error(trainer: &Path) -> impl Fn(std::io::Error) -> LocalError + '_ {
    move |source| LocalError::StartServe {
        path: trainer.to_path_buf(),
        source,
    }
}

/// SIGTERM, up to 10 s, then SIGKILL.
fn terminate(child: &mut Child, trainer: &Path) -> Result<(), LocalError> {
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    for _ in 0..100 {
        if child.try_wait().map_err(wait_error(trainer))?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait().map_err(wait_error(trainer))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lora_result_is_served_as_its_adapter_and_a_full_one_as_the_model() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        let write = |extra: &str| {
            std::fs::write(
                dir.path().join("config/train.yaml"),
                format!(
                    "model_name_or_path: /m\noutput_dir: /w/volumes/quickstart-output\n{extra}"
                ),
            )
            .unwrap();
            serve_plan(dir.path()).unwrap()
        };
        let lora = write("finetuning_type: lora\n");
        assert_eq!(
            lora.overrides,
            ["adapter_name_or_path=/w/volumes/quickstart-output"]
        );
        assert_eq!(lora.model, "quickstart-output");
        let full = write("finetuning_type: full\n");
        assert_eq!(
            full.overrides,
            ["model_name_or_path=/w/volumes/quickstart-output"]
        );
        std::fs::remove_file(dir.path().join("config/train.yaml")).unwrap();
        assert!(serve_plan(dir.path()).is_err());
    }
}
