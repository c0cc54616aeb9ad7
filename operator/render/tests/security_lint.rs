//! checkov, the security linter a platform team runs on manifests, passes on every rendered example
//! (first attempt and a resumed one) and on the Helm chart, except the findings justified in
//! `tests/reference/security_lint.py` (one table, each with its reason; an exception that matches
//! nothing fails too). checkov lives in its own environment (`.venv-checkov`, from
//! `scripts/install-python-ref.sh`; `LF_CHECKOV` overrides it).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{all_cases, golden_context, python, repo_root, run_ok};

fn checkov() -> PathBuf {
    let path = std::env::var_os("LF_CHECKOV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv-checkov/bin/checkov"));
    assert!(
        path.exists(),
        "checkov is missing: {} does not exist (run scripts/install-python-ref.sh or set LF_CHECKOV)",
        path.display()
    );
    path
}

#[test]
fn rendered_objects_and_chart_pass_checkov() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut files = Vec::new();
    for mut case in all_cases() {
        // The operator renders into the FineTuneJob's namespace; `default` is itself a finding.
        case.job.metadata.namespace = Some("ml-team".into());
        let rendered = lf_render::render(&case.job, &case.plan, &golden_context())
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let path = dir.path().join(format!("{}.yaml", case.name));
        std::fs::write(&path, rendered.to_yaml_stream()).expect("write the rendered stream");
        files.push(path);
    }
    let script = repo_root().join("tests/reference/security_lint.py");
    let out = run_ok(
        Command::new(python())
            .arg(&script)
            .arg(checkov())
            .args(&files),
    );
    assert!(out.contains("security lint: ok"), "{out}");
    eprintln!("{out}");
}
