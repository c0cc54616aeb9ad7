//! The Helm chart at `charts/` lints, renders (default and non-default values) and validates:
//! `tests/reference/chart_check.py` does the work with the real Helm SDK (helm-python-sdk) and
//! kubernetes-validate; this test runs it so `cargo test` covers the chart.

mod common;

use std::process::Command;

use common::{python, repo_root, run_ok};

#[test]
fn chart_lints_renders_and_validates() {
    let root = repo_root();
    let out = run_ok(
        Command::new(python())
            .arg(root.join("tests/reference/chart_check.py"))
            .arg(root.join("charts")),
    );
    assert!(out.contains("chart check: ok"), "{out}");
}
