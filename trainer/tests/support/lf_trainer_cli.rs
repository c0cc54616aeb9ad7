//! The real `lf-trainer` binary, run from integration tests (include with
//! `#[path = "support/lf_trainer_cli.rs"] mod lf_trainer_cli;`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `lf-trainer ARGS` run in `dir`, without the variables a pod sets (so the command line alone
/// drives it); fails the test with its stderr unless it exits 0.
pub fn run_in(dir: &Path, args: &[String]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_lf-trainer"))
        .current_dir(dir)
        .args(args)
        .env_remove("LF_CONFIG")
        .env_remove("LF_JOB_NAME")
        .env_remove("LF_STATUS_FILE")
        .env_remove("LF_METRICS_ADDR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lf-trainer {args:?} exited {:?}:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// [`run_in`] from the repository root; returns its stdout.
pub fn run(args: &[String]) -> String {
    String::from_utf8_lossy(&run_in(&repo(), args).stdout).into_owned()
}
