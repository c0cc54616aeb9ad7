//! Every rendered object validates against the official Kubernetes schemas, strictly (unknown
//! fields are errors), for Kubernetes 1.33 and the newest version kubernetes-validate bundles,
//! through `tests/reference/render_validate.py` (the `kubernetes-validate` package).

mod common;

use std::process::Command;

use common::{all_cases, golden_context, python, repo_root, run_ok};
use lf_render::RenderContext;

#[test]
fn every_render_validates_against_kubernetes_schemas() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut files = Vec::new();
    for case in all_cases() {
        // The first attempt as the goldens show it, and a later attempt resuming a checkpoint with
        // sidecars allowed, so both shapes are checked.
        let contexts = [
            golden_context(),
            RenderContext {
                attempt: 4,
                resume_from: Some("/output/checkpoint-300".into()),
                sidecar_injection_default: true,
                metrics_from: Vec::new(),
                ..golden_context()
            },
        ];
        for ctx in contexts {
            let rendered = lf_render::render(&case.job, &case.plan, &ctx)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let path = dir
                .path()
                .join(format!("{}-attempt{}.yaml", case.name, ctx.attempt));
            std::fs::write(&path, rendered.to_yaml_stream()).expect("write the rendered stream");
            files.push(path);
        }
    }
    assert!(files.len() >= 4, "too few renders: {files:?}");
    let script = repo_root().join("tests/reference/render_validate.py");
    let out = run_ok(Command::new(python()).arg(&script).args(&files));
    assert!(out.contains("valid"), "{out}");
}

/// The validator is not vacuous: a stream with an unknown field, and one with a wrongly typed
/// field, are rejected.
#[test]
fn validator_rejects_invalid_objects() {
    let case = common::fixture("minimal");
    let rendered = lf_render::render(&case.job, &case.plan, &golden_context()).expect("renders");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let script = repo_root().join("tests/reference/render_validate.py");

    let mut job = serde_json::to_value(&rendered.job).expect("json");
    job["spec"]["template"]["spec"]["containers"][0]["bogusField"] = serde_json::json!(true);
    let mut service = serde_json::to_value(&rendered.service).expect("json");
    service["spec"]["publishNotReadyAddresses"] = serde_json::json!(42);
    for (name, object) in [("unknown-field", job), ("wrong-type", service)] {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, serde_yaml::to_string(&object).expect("yaml")).expect("write");
        let out = Command::new(python())
            .arg(&script)
            .arg(&path)
            .output()
            .expect("run the validator");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{name} was accepted:\n{text}");
        assert!(text.contains("FAILED"), "{name}: {text}");
    }
}
