//! `report_to` end to end: the `lf-trainer` binary trains the tiny model reporting to TensorBoard
//! and to a real `mlflow server`; each tracker, read back by its own reader, holds every scalar of
//! `trainer_log.jsonl` at its step, the system metrics, the config as hyper-parameters, and
//! (MLflow) the adapter.

use std::path::Path;

use lf_track::testing::{free_port, read_back, MlflowServer};
use serde_json::Value;
use sha2::Digest;

mod tiny_run;

use tiny_run::{stderr, trainer, write_config};

/// `(step, value)` of `key` in every progress record of `trainer_log.jsonl`.
fn logged(out: &Path, key: &str) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("trainer_log.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|r| Some((r["current_steps"].as_u64()?, r[key].as_f64()?)))
        .collect()
}

fn points(v: &Value) -> Vec<(u64, f64)> {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

#[test]
fn tensorboard_and_mlflow_receive_every_logged_scalar_and_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let server = MlflowServer::start(&dir.path().join("mlflow"), free_port());
    let uri = server.uri();
    let cfg = write_config(
        dir.path(),
        "report_to: [tensorboard, mlflow]\nrun_name: tiny-sft\n",
    );
    let o = trainer(
        &["train", cfg.to_str().unwrap()],
        &[
            ("MLFLOW_TRACKING_URI", Path::new(&uri)),
            ("MLFLOW_EXPERIMENT_NAME", Path::new("lf-trainer-test")),
        ],
    );
    assert!(o.status.success(), "train failed: {}", stderr(&o));
    let out = dir.path().join("out");
    let loss = logged(&out, "loss");
    assert_eq!(loss.iter().map(|p| p.0).collect::<Vec<_>>(), [2, 4, 6]);

    let tb = read_back(&["tensorboard", out.join("runs").to_str().unwrap()]);
    let tb_loss = points(&tb["scalars"]["train/loss"]);
    assert_eq!(tb_loss.len(), loss.len(), "{tb}");
    for ((s, v), (ts, tv)) in loss.iter().zip(&tb_loss) {
        assert_eq!((*s, *v as f32), (*ts, *tv as f32));
    }
    for tag in [
        "train/lr",
        "train/grad_norm",
        "train/throughput",
        "train/step_time/data",
        "system/rss_bytes",
        "system/cpu_percent",
        "system/host_memory_available_bytes",
    ] {
        assert_eq!(points(&tb["scalars"][tag]).len(), 3, "{tag} in {tb}");
    }
    assert_eq!(tb["hparams"]["lora_rank"], serde_json::json!(4.0));

    let saved: Value =
        serde_json::from_slice(&std::fs::read(out.join("mlflow_run.json")).unwrap()).unwrap();
    let run = read_back(&["mlflow", &uri, saved["run_id"].as_str().unwrap()]);
    assert_eq!(run["status"], "FINISHED", "{run}");
    assert_eq!(run["run_name"], "tiny-sft");
    assert_eq!(run["params"]["learning_rate"], "0.001");
    assert_eq!(run["params"]["report_to"], "tensorboard,mlflow");
    assert_eq!(
        points(&run["metrics"]["train/loss"]),
        loss,
        "exact, step by step"
    );
    assert_eq!(points(&run["metrics"]["train/lr"]), logged(&out, "lr"));
    let adapter = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let digest: String = sha2::Sha256::digest(&adapter)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        run["artifacts"]["adapter/adapter_model.safetensors"],
        digest.as_str()
    );
    assert!(
        run["artifacts"]["adapter/adapter_config.json"].is_string(),
        "{run}"
    );
}

#[test]
fn mlflow_without_a_tracking_uri_and_wandb_are_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "report_to: mlflow\n");
    let o = trainer(&["train", cfg.to_str().unwrap()], &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("needs MLFLOW_TRACKING_URI"),
        "{}",
        stderr(&o)
    );
    assert!(
        !dir.path().join("out/trainer_log.jsonl").exists(),
        "nothing trained"
    );

    let cfg = write_config(dir.path(), "report_to: wandb\n");
    let o = trainer(&["train", cfg.to_str().unwrap()], &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("wandb sync --sync-tensorboard"),
        "{}",
        stderr(&o)
    );
}
