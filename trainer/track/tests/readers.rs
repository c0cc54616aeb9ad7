//! What the trackers write, read back by the trackers' own readers: TensorBoard event files by
//! `tbparse` (TensorBoard's reader), and a run on a real `mlflow server` (PyPI) by `MlflowClient`,
//! including a server killed mid-run and started again.

use std::time::{Duration, Instant};

use lf_track::mlflow::{Client, Mlflow, MlflowSettings};
use lf_track::tensorboard::TensorBoard;
use lf_track::testing::{free_port, read_back, MlflowServer};
use lf_track::{Param, Sink, Trackers};
use serde_json::{json, Value};

fn params() -> Vec<Param> {
    Param::from_config(&json!({
        "learning_rate": 0.0002, "lora_rank": 8, "bf16": false, "template": "qwen3",
        "dataset": ["alpaca_en_demo", "identity"], "adapter_name_or_path": null,
    }))
}

/// The scalars of step `s` (loss falling, a constant learning rate).
fn step_values(s: u64) -> Vec<(String, f64)> {
    vec![
        ("train/loss".into(), 3.0 - 0.125 * s as f64),
        ("train/lr".into(), 0.0002),
    ]
}

#[test]
fn tensorboard_files_read_back_with_every_scalar_and_the_hparams() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("runs");
    let now = 1.7e9;
    let trackers = Trackers::start(vec![Box::new(TensorBoard::create(&logdir, now).unwrap())]);
    trackers.params(params());
    for s in 1..=6 {
        trackers.scalars(s, step_values(s));
    }
    trackers.finish(true, Vec::new(), Duration::from_secs(10));
    // A resumed attempt writes a second file into the same directory.
    let mut second = TensorBoard::create(&logdir, now + 60.0).unwrap();
    for s in 7..=8 {
        second.scalars(s, now + 60.0, &step_values(s)).unwrap();
    }
    second.finish(true, &[]).unwrap();

    let read = read_back(&["tensorboard", logdir.to_str().unwrap()]);
    let loss: Vec<(u64, f64)> =
        serde_json::from_value(read["scalars"]["train/loss"].clone()).unwrap();
    assert_eq!(loss.len(), 8, "{read}");
    for (s, v) in loss {
        assert_eq!(v as f32, (3.0 - 0.125 * s as f64) as f32, "step {s}");
    }
    assert_eq!(read["scalars"]["train/lr"].as_array().unwrap().len(), 8);
    let h = &read["hparams"];
    assert_eq!(h["learning_rate"], json!(0.0002), "{h}");
    assert_eq!(h["lora_rank"], json!(8.0));
    assert_eq!(h["bf16"], json!(false));
    assert_eq!(h["template"], json!("qwen3"));
    assert_eq!(h["dataset"], json!("[\"alpaca_en_demo\",\"identity\"]"));
    assert!(h.get("adapter_name_or_path").is_none());
}

#[test]
fn an_mlflow_server_receives_the_run_and_a_killed_server_stops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, output) = (dir.path().join("server"), dir.path().join("output"));
    std::fs::create_dir_all(&output).unwrap();
    let port = free_port();
    let uri = format!("http://127.0.0.1:{port}");
    let env = |k: &str| match k {
        "MLFLOW_TRACKING_URI" => Some(uri.clone()),
        "MLFLOW_EXPERIMENT_NAME" => Some("lf-track-test".to_string()),
        _ => None,
    };
    let settings = MlflowSettings::from_env(env).unwrap().unwrap();
    let adapter = output.join("adapter_config.json");
    std::fs::write(&adapter, br#"{"peft_type": "LORA", "r": 8}"#).unwrap();

    let server = MlflowServer::start(&store, port);
    let sink = Mlflow::new(
        Client::new(settings, Duration::from_secs(5)),
        "tiny-sft".into(),
        &output,
        false,
    );
    let trackers = Trackers::start(vec![Box::new(sink)]);
    trackers.params(params());
    for s in 1..=5 {
        trackers.scalars(s, step_values(s));
    }
    // Let the worker deliver, then take the server away mid-run.
    std::thread::sleep(Duration::from_secs(3));
    drop(server);
    let t = Instant::now();
    for s in 6..=10 {
        trackers.scalars(s, step_values(s));
    }
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "records for a dead server must not wait on it ({:?})",
        t.elapsed()
    );
    std::thread::sleep(Duration::from_secs(2));
    let _server = MlflowServer::start(&store, port);
    trackers.finish(
        true,
        vec![("adapter/adapter_config.json".into(), adapter.clone())],
        Duration::from_secs(60),
    );

    let saved: Value =
        serde_json::from_slice(&std::fs::read(output.join("mlflow_run.json")).unwrap()).unwrap();
    let run_id = saved["run_id"].as_str().unwrap();
    let run = read_back(&["mlflow", &uri, run_id]);
    assert_eq!(run["status"], "FINISHED", "{run}");
    assert_eq!(run["run_name"], "tiny-sft");
    assert_eq!(run["params"]["learning_rate"], "0.0002");
    assert_eq!(run["params"]["template"], "qwen3");
    assert_eq!(
        run["params"]["dataset"],
        "[\"alpaca_en_demo\",\"identity\"]"
    );
    let loss: Vec<(u64, f64)> =
        serde_json::from_value(run["metrics"]["train/loss"].clone()).unwrap();
    let expected: Vec<(u64, f64)> = (1..=10).map(|s| (s, 3.0 - 0.125 * s as f64)).collect();
    assert_eq!(
        loss, expected,
        "every step, those sent while the server was down included"
    );
    assert_eq!(
        run["artifacts"]["adapter/adapter_config.json"],
        json!(sha256_hex(&std::fs::read(&adapter).unwrap()))
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
