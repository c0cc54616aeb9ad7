//! What the trackers write, read back by the trackers' own readers: TensorBoard event files by
//! `tbparse` (TensorBoard's reader), and a run on a real `mlflow server` (PyPI) by `MlflowClient`,
//! including a server killed mid-run and started again.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lf_track::mlflow::{Client, Mlflow, MlflowSettings};
use lf_track::tensorboard::TensorBoard;
use lf_track::{Param, Sink, Trackers};
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The reference stack's interpreter: `$LF_PYTHON` or `<repo>/.venv/bin/python`.
fn python() -> PathBuf {
    let py = std::env::var_os("LF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        py.exists(),
        "the Python reference stack is missing: {} (run scripts/install-python-ref.sh)",
        py.display()
    );
    py
}

fn read_back(args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(repo().join("tests/reference/trackers_check.py"))
        .args(args)
        .output()
        .expect("run trackers_check.py");
    assert!(
        out.status.success(),
        "trackers_check.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("trackers_check.py prints JSON")
}

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
    let mut trackers = Trackers::start(vec![Box::new(TensorBoard::create(&logdir, now).unwrap())]);
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

/// A `mlflow server` on `port` with its store in `dir`, killed on drop.
struct Server(Child);

impl Server {
    fn start(dir: &Path, port: u16) -> Server {
        let mlflow = python().with_file_name("mlflow");
        let child = Command::new(mlflow)
            .args(["server", "--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("artifacts"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mlflow server");
        let server = Server(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "mlflow server did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The port opens before the app is ready: wait for /health.
        let health = format!("http://127.0.0.1:{port}/health");
        while ureq::get(&health)
            .call()
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "mlflow server not healthy"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

    let server = Server::start(&store, port);
    let sink = Mlflow::new(
        Client::new(settings, Duration::from_secs(5)),
        "tiny-sft".into(),
        &output,
        false,
    );
    let mut trackers = Trackers::start(vec![Box::new(sink)]);
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
    let _server = Server::start(&store, port);
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
