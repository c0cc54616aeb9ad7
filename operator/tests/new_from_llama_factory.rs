//! `lf-operator new --from`: LLaMA-Factory's own training examples (the fixtures of
//! `operator/api/tests/fixtures/llama-factory`) become FineTuneJobs that parse back, validate
//! against the committed CRD (schema: `tests/reference/crd_validate.py`; CEL rules: kube's
//! evaluator), keep the recipe, and plan exactly as `lf-operator plan` plans the printed file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use lf_api::{FineTuneJob, TrainingConfig};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// LLaMA-Factory's layout: `deepspeed: examples/deepspeed/...` resolves from here.
fn llama_factory_root() -> PathBuf {
    repo_root().join("operator/api/tests/fixtures/llama-factory")
}

fn python() -> PathBuf {
    let path = std::env::var_os("LF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    assert!(
        path.exists(),
        "the Python reference stack is missing: {} (run scripts/install-python-ref.sh or set LF_PYTHON)",
        path.display()
    );
    path
}

fn lf_operator(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lf-operator"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run lf-operator")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The CEL rules of the committed CRD, evaluated on `yaml`'s object.
fn cel_errors(yaml: &str) -> Vec<String> {
    let crd = std::fs::read_to_string(repo_root().join("crds/finetunejobs.yaml")).expect("crd");
    let crd: CustomResourceDefinition = serde_yaml::from_str(&crd).expect("the CRD parses");
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("a schema");
    let schema = serde_json::to_value(schema).expect("schema as JSON");
    let object: serde_json::Value = serde_yaml::from_str(yaml).expect("the manifest is YAML");
    match kube::core::cel::Validator::new().validate(&schema, &object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().iter().map(|e| e.to_string()).collect(),
    }
}

/// The recipe as the trainer reads the example, without what the operator fills in.
fn recipe(example: &Path) -> TrainingConfig {
    let mut c = TrainingConfig::parse_yaml_file(example)
        .expect("the example parses")
        .config;
    c.model_name_or_path = None;
    c.output_dir = None;
    c.dataset_dir = TrainingConfig::default().dataset_dir;
    c.deepspeed = None;
    c
}

#[test]
fn training_examples_become_valid_jobs_that_plan_as_the_printed_file() {
    // (example, notices stderr must name, ZeRO stage the plan must choose if fixed)
    let cases: &[(&str, &[&str], Option<u64>)] = &[
        (
            "train_lora/llama3_lora_sft.yaml",
            &["trust_remote_code"],
            None,
        ),
        (
            "train_lora/llama3_lora_pretrain.yaml",
            &["trust_remote_code"],
            None,
        ),
        ("train_qlora/llama3_lora_sft_otfq.yaml", &[], None),
        (
            "train_full/llama3_full_sft.yaml",
            &["trust_remote_code", "deepspeed"],
            Some(3),
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let root = llama_factory_root();
    let mut files = Vec::new();
    for (example, notices, zero) in cases {
        let rel = format!("examples/{example}");
        let args = [
            "new",
            "--from",
            &rel,
            "--gpu-memory",
            "80",
            "--max-gpus",
            "8",
        ];
        let out = lf_operator(&args, &root);
        let (yaml, err) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{example}: {err}");
        for key in *notices {
            assert!(err.contains(&format!("note: `{key}`")), "{example}: {err}");
        }

        let job = FineTuneJob::from_yaml_str(&yaml).unwrap_or_else(|e| panic!("{example}: {e}"));
        // The API server's view (plain serde) and the strict parse agree once a `deepspeed`
        // object is applied, and that is the example's recipe.
        let mut plain: FineTuneJob = serde_yaml::from_str(&yaml).expect("serde reads it too");
        let mut strict = job.clone();
        for j in [&mut plain, &mut strict] {
            j.spec.training = j
                .spec
                .training
                .with_deepspeed_applied()
                .expect("applies")
                .config;
        }
        assert_eq!(plain.spec, strict.spec, "{example}");
        assert_eq!(strict.spec.training, recipe(&root.join(&rel)), "{example}");
        assert_eq!(cel_errors(&yaml), Vec::<String>::new(), "{example}");

        let file = dir.path().join(example.replace('/', "-"));
        std::fs::write(&file, &yaml).expect("write");
        let file_arg = file.to_str().expect("utf-8 path");
        let plan = lf_operator(&["plan", "-f", file_arg], &root);
        assert!(plan.status.success(), "{example}: {}", text(&plan.stderr));
        let table = text(&plan.stdout);
        assert!(
            err.ends_with(&table),
            "{example}: `new` planned differently:\n{err}\n---\n{table}"
        );
        let json = lf_operator(&["plan", "-f", file_arg, "-o", "json"], &root);
        let chosen: serde_json::Value = serde_json::from_slice(&json.stdout).expect("plan json");
        if let Some(stage) = zero {
            assert_eq!(chosen["zeroStage"].as_u64(), Some(*stage), "{example}");
        }
        let render = lf_operator(&["render", "-f", file_arg], &root);
        assert!(
            render.status.success(),
            "{example}: {}",
            text(&render.stderr)
        );
        files.push(file);
    }
    let validate = Command::new(python())
        .arg(repo_root().join("tests/reference/crd_validate.py"))
        .arg(repo_root().join("crds/finetunejobs.yaml"))
        .args(&files)
        .output()
        .expect("run crd_validate.py");
    assert!(
        validate.status.success(),
        "{}{}",
        text(&validate.stdout),
        text(&validate.stderr)
    );
}

/// What the trainer refuses, `new` refuses with the trainer's words; nothing goes to stdout.
#[test]
fn rejected_and_unknown_options_fail_with_the_trainers_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = "model_name_or_path: meta-llama/Meta-Llama-3-8B\ndataset: alpaca_en\n";
    for (name, extra) in [
        (
            "hqq.yaml",
            "quantization_bit: 4\nquantization_method: hqq\n",
        ),
        ("typo.yaml", "lora_rnak: 8\n"),
        (
            "nvme.yaml",
            "deepspeed: {zero_optimization: {stage: 3, offload_param: {device: nvme}}}\n",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{base}{extra}")).expect("write");
        let trainer_says = TrainingConfig::parse_yaml_file(&path)
            .expect_err("the trainer's parser refuses it")
            .to_string();
        let path_arg = path.to_str().expect("utf-8 path");
        let out = lf_operator(
            &["new", "--from", path_arg, "--gpu-memory", "80"],
            dir.path(),
        );
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(out.stdout.is_empty(), "{name}: printed a job");
        let err = text(&out.stderr);
        let expected = lf_operator::load::one_line(&format!("{path_arg}: {trainer_says}"));
        assert_eq!(err.trim_end(), format!("error: {expected}"), "{name}");
    }
}

/// A job that does not fit is still printed (to be edited), the table and the reason follow on
/// stderr, and the exit status is 1.
#[test]
fn a_job_that_does_not_fit_is_printed_and_exits_1() {
    let root = llama_factory_root();
    let args = [
        "new",
        "--from",
        "examples/train_full/llama3_full_sft.yaml",
        "--gpu-memory",
        "8",
        "--max-gpus",
        "1",
    ];
    let out = lf_operator(&args, &root);
    assert_eq!(out.status.code(), Some(1));
    FineTuneJob::from_yaml_str(&text(&out.stdout)).expect("the job is printed");
    let err = text(&out.stderr);
    assert!(err.contains("options tried"), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: ") && last.contains("fit"), "{err}");
}

/// A local model directory: its config.json goes into spec.model.architecture, so a model no
/// preset knows (the quick-start model) plans.
#[test]
fn a_local_model_is_planned_from_its_config_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = repo_root().join("examples/quickstart/model");
    let path = dir.path().join("opposites_lora_sft.yaml");
    let yaml = format!(
        "model_name_or_path: {}\ntrust_remote_code: true\nstage: sft\nfinetuning_type: lora\ndataset: opposites\ncutoff_len: 64\noutput_dir: saves/opposites\n",
        model.display()
    );
    std::fs::write(&path, yaml).expect("write");
    let path_arg = path.to_str().expect("utf-8 path");
    let args = [
        "new",
        "--from",
        path_arg,
        "--gpu-memory",
        "8",
        "--name",
        "opposites",
    ];
    let out = lf_operator(&args, dir.path());
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("`model_type: llama` is built in"), "{err}");
    let job = FineTuneJob::from_yaml_str(&text(&out.stdout)).expect("parses");
    assert_eq!(job.metadata.name.as_deref(), Some("opposites"));
    let arch = job.spec.model.architecture.expect("config.json inlined");
    assert_eq!((arch.hidden_size, arch.num_hidden_layers), (128, 4));
    assert_eq!(job.spec.output.sub_path.as_deref(), Some("saves/opposites"));
}
