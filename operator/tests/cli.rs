//! The `lf-operator` binary's offline commands and their error paths: one `error:` line, a
//! non-zero exit code, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lf-operator"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(args: &[&str]) -> Output {
    bin()
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run lf-operator")
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

const GOOD: &str = include_str!("../../examples/llama3-8b-lora-24gb.yaml");

/// Asserts a clean failure: exit code 1, exactly one stderr line starting `error:` containing
/// every needle, and no panic.
fn assert_one_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` not in: {stderr}");
    }
}

#[test]
fn committed_crds_match_the_generated_one() {
    let out = run(&["crdgen"]);
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    assert!(generated.contains("name: finetunejobs.lf-operator.io"));
    for rel in ["crds/finetunejobs.yaml", "charts/crds/finetunejobs.yaml"] {
        let committed = std::fs::read_to_string(repo_root().join(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}; run `lf-operator crdgen --write`"));
        assert!(committed == generated, "{rel} differs from the generated CRD; run `cargo run -p lf-operator -- crdgen --write`");
    }
}

#[test]
fn crdgen_write_writes_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["crdgen", "--write", "--root"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = std::fs::read_to_string(dir.path().join("crds/finetunejobs.yaml")).unwrap();
    let b = std::fs::read_to_string(dir.path().join("charts/crds/finetunejobs.yaml")).unwrap();
    assert_eq!(a, b);
}

#[test]
fn plan_prints_json_table_and_evaluates_a_fixed_configuration() {
    let out = run(&[
        "plan",
        "-f",
        "examples/llama3-8b-lora-24gb.yaml",
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "modelParams",
        "trainableParams",
        "gpus",
        "nodes",
        "gpusPerNode",
        "zeroStage",
        "offloadOptimizer",
        "microBatchSize",
        "gradientAccumulationSteps",
        "gpuMemoryBytes",
        "fits",
        "perGpu",
    ] {
        assert!(plan.get(key).is_some(), "{key} missing");
    }
    assert_eq!(plan["fits"], true);

    let out = run(&["plan", "-f", "examples/llama3-8b-lora-24gb.yaml"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("CHOSEN"));

    let out = run(&[
        "plan",
        "-f",
        "examples/llama3-8b-full-zero3.yaml",
        "--gpus",
        "8",
        "--zero-stage",
        "3",
        "-o",
        "yaml",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (plan["gpus"].as_u64(), plan["zeroStage"].as_u64()),
        (Some(8), Some(3))
    );
}

/// `plan -o json|yaml` prints one Plan whether it fits or not: the chosen or evaluated plan, or
/// the closest option tried, with `fits`; the exit code says the same (0 fits, 1 does not).
#[test]
fn plan_json_has_one_shape_whether_or_not_it_fits() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = write(
        &dir,
        "tiny.yaml",
        &GOOD.replace("gpuMemoryGib: 24", "gpuMemoryGib: 4"),
    );
    let cases: [(&[&str], bool); 4] = [
        (&["-f", "examples/llama3-8b-lora-24gb.yaml"], true),
        (&["-f", &tiny], false),
        (
            &[
                "-f",
                "examples/llama3-8b-full-zero3.yaml",
                "--gpus",
                "8",
                "--zero-stage",
                "3",
            ],
            true,
        ),
        (
            &[
                "-f",
                "examples/llama3-8b-full-zero3.yaml",
                "--gpus",
                "1",
                "--zero-stage",
                "0",
            ],
            false,
        ),
    ];
    for (args, fits) in cases {
        for format in ["json", "yaml"] {
            let mut argv = vec!["plan", "-o", format];
            argv.extend_from_slice(args);
            let out = run(&argv);
            let plan: serde_json::Value = if format == "json" {
                serde_json::from_slice(&out.stdout)
            } else {
                serde_yaml::from_slice(&out.stdout).map_err(serde::de::Error::custom)
            }
            .unwrap_or_else(|e| panic!("{argv:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
            let keys: Vec<&String> = plan.as_object().expect("an object").keys().collect();
            for key in ["gpus", "zeroStage", "microBatchSize", "perGpu", "summary"] {
                assert!(
                    plan.get(key).is_some(),
                    "{argv:?}: {key} missing in {keys:?}"
                );
            }
            assert!(
                plan.get("chosen").is_none() && plan.get("options").is_none(),
                "{argv:?}: {keys:?}"
            );
            assert_eq!(plan["fits"], fits, "{argv:?}");
            assert_eq!(
                out.status.code(),
                Some(if fits { 0 } else { 1 }),
                "{argv:?}"
            );
            if !fits {
                assert_one_error(&out, &["fit"]);
            }
        }
    }
}

#[test]
fn render_prints_every_object() {
    let out = run(&[
        "render",
        "-f",
        "examples/llama3-8b-lora-24gb.yaml",
        "--attempt",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v = serde_yaml::Value::deserialize(d).unwrap();
            v["kind"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Service",
            "NetworkPolicy",
            "Job"
        ]
    );
    assert!(text.contains("name: llama3-8b-lora-24gb-2"));
}

use serde::Deserialize;

#[test]
fn bad_inputs_give_one_clear_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir
        .path()
        .join("missing.yaml")
        .to_string_lossy()
        .into_owned();
    assert_one_error(
        &run(&["plan", "-f", &missing]),
        &["cannot read", "missing.yaml"],
    );

    let f = write(
        &dir,
        "yaml.yaml",
        "apiVersion: lf-operator.io/v1alpha1\nkind: FineTuneJob\nspec: [unclosed\n",
    );
    assert_one_error(&run(&["plan", "-f", &f]), &["yaml.yaml", "YAML"]);

    let f = write(
        &dir,
        "typo.yaml",
        &GOOD.replace("lora_rank: 16", "lora_rnak: 16"),
    );
    assert_one_error(
        &run(&["plan", "-f", &f]),
        &["typo.yaml", "lora_rnak", "did you mean `lora_rank`"],
    );

    let f = write(
        &dir,
        "type.yaml",
        &GOOD.replace("gpuMemoryGib: 24", "gpuMemoryGib: lots"),
    );
    assert_one_error(&run(&["render", "-f", &f]), &["type.yaml", "gpuMemoryGib"]);

    let f = write(
        &dir,
        "missing-field.yaml",
        &GOOD.replace(
            "  output: {claimName: outputs, subPath: llama3-8b-lora}\n",
            "",
        ),
    );
    assert_one_error(&run(&["plan", "-f", &f]), &["missing-field.yaml", "output"]);

    let f = write(
        &dir,
        "kind.yaml",
        &GOOD.replace("kind: FineTuneJob", "kind: PyTorchJob"),
    );
    assert_one_error(&run(&["plan", "-f", &f]), &["PyTorchJob"]);

    let f = write(
        &dir,
        "tiny.yaml",
        &GOOD.replace("gpuMemoryGib: 24", "gpuMemoryGib: 4"),
    );
    let out = run(&["plan", "-f", &f, "-o", "json"]);
    assert_one_error(&out, &["tiny.yaml", "no configuration fits"]);
    assert_one_error(
        &run(&["render", "-f", &f]),
        &["tiny.yaml", "no configuration fits"],
    );

    let out = run(&[
        "plan",
        "-f",
        "examples/llama3-8b-lora-24gb.yaml",
        "--gpus",
        "1",
        "--zero-stage",
        "0",
        "--gpu-memory",
        "8",
    ]);
    assert_one_error(&out, &["does not fit"]);
}

#[test]
fn run_without_a_cluster_fails_cleanly() {
    let home = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["run", "--log-format", "text", "--http-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", home.path().join("nonexistent"))
        .env("HOME", home.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_one_error(&out, &["Kubernetes client"]);
}
