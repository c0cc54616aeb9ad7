//! The `lf-trainer` binary on a tiny random Llama made by `tests/reference/trainer_make_tiny.py`
//! (the Python reference stack must be installed): the assets and how a test runs the binary.
#![allow(dead_code)] // each test file uses a part

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn python() -> PathBuf {
    match std::env::var_os("LF_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
    }
}

#[path = "../support/process_dir.rs"]
mod process_dir;

/// The tiny model and data, made once per test process (removed when it exits).
pub fn assets() -> &'static Path {
    static DIR: OnceLock<&'static Path> = OnceLock::new();
    DIR.get_or_init(|| {
        let py = python();
        assert!(
            py.exists(),
            "the Python reference stack is missing: {} (set LF_PYTHON or run the install script)",
            py.display()
        );
        let dir = process_dir::process_tempdir();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/trainer_make_tiny.py");
        let out = Command::new(&py).arg(&script).arg(dir).output().unwrap();
        assert!(
            out.status.success(),
            "trainer_make_tiny.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let a = assets();
    let text = format!(
        "model_name_or_path: {m}\ndataset: tiny\ndataset_dir: {d}\ntemplate: alpaca\ncutoff_len: 64\noutput_dir: {o}\n\
         per_device_train_batch_size: 4\ngradient_accumulation_steps: 2\nlearning_rate: 1.0e-3\nmax_steps: 6\n\
         logging_steps: 2\nsave_steps: 2\nsave_total_limit: 2\nlora_rank: 4\nmax_new_tokens: 5\ndo_sample: false\n{extra}",
        m = a.join("model").display(),
        d = a.join("data").display(),
        o = dir.join("out").display(),
    );
    let path = dir.join("train.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn trainer(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lf-trainer"));
    c.args(args)
        .env_remove("LF_CONFIG")
        .env_remove("LF_JOB_NAME")
        .env_remove("LF_STATUS_FILE")
        .env_remove("LF_METRICS_ADDR");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Generous: the bound a hang (a blocked `open`, a runaway template) would exceed, not a speed
/// target.
pub const LIMIT: Duration = Duration::from_secs(120);

/// Runs the trainer, killing it after [`LIMIT`]: `(exit code, stderr)`.
pub fn run_bounded(args: &[&str]) -> (Option<i32>, String) {
    let err_path = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lf-trainer"))
        .args(args)
        .env_remove("LF_CONFIG")
        .env_remove("LF_JOB_NAME")
        .env_remove("LF_STATUS_FILE")
        .env_remove("LF_METRICS_ADDR")
        .stdout(Stdio::null())
        .stderr(err_path.reopen().unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} still running after {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(err_path.path()).unwrap_or_default();
    (status.code(), stderr)
}
