//! LLaMA-Factory's own example configs run through the real `lf-trainer` binary on the bundled
//! quick-start model (`examples/quickstart/`): each file is used as it is (the settings of
//! hiyouga/LLaMA-Factory's `examples/`, kept in `operator/api/tests/fixtures/llama-factory`), with
//! only paths and the step count overridden on the command line, as a user pointing an example at
//! local files would. Train, predict, export and chat must exit 0 and write their outputs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The overrides a run may give: paths and the step count, nothing that changes the recipe.
const PATH_AND_STEP_KEYS: &[&str] = &[
    "model_name_or_path",
    "adapter_name_or_path",
    "dataset",
    "eval_dataset",
    "dataset_dir",
    "output_dir",
    "export_dir",
    "max_steps",
];

/// The fixtures' root: `deepspeed: examples/deepspeed/...` resolves from here, as it does in a
/// LLaMA-Factory checkout.
fn llama_factory_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../operator/api/tests/fixtures/llama-factory")
}

fn quickstart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart")
}

/// `lf-trainer <command> examples/<example> <overrides>`, run from the fixtures' root with
/// `stdin` as its input.
fn run(command: &str, example: &str, overrides: &[(&str, String)], stdin: &str) -> Output {
    for (key, _) in overrides {
        assert!(
            PATH_AND_STEP_KEYS.contains(key),
            "`{key}` is neither a path nor a step count: the example would not run unchanged"
        );
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_lf-trainer"))
        .current_dir(llama_factory_root())
        .arg(command)
        .arg(format!("examples/{example}"))
        .args(overrides.iter().map(|(k, v)| format!("{k}={v}")))
        .env_remove("LF_CONFIG")
        .env_remove("LF_JOB_NAME")
        .env_remove("LF_STATUS_FILE")
        .env_remove("LF_METRICS_ADDR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lf-trainer starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("lf-trainer finishes");
    assert!(
        out.status.success(),
        "lf-trainer {command} examples/{example} exited {:?}:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The overrides of a training example: the quick-start model and dataset, `out`, 2 steps.
fn train_overrides(out: &Path) -> Vec<(&'static str, String)> {
    let q = quickstart();
    vec![
        ("model_name_or_path", q.join("model").display().to_string()),
        ("dataset", "opposites".into()),
        ("dataset_dir", q.join("data").display().to_string()),
        ("output_dir", out.display().to_string()),
        ("max_steps", "2".into()),
    ]
}

fn train(example: &str, out: &Path) -> Output {
    run("train", example, &train_overrides(out), "")
}

fn assert_files(dir: &Path, files: &[&str]) {
    for f in files {
        let path = dir.join(f);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 0, "{} is missing or empty", path.display());
    }
}

const ADAPTER: &[&str] = &[
    "adapter_model.safetensors",
    "adapter_config.json",
    "trainer_log.jsonl",
    "all_results.json",
];

/// Two optimiser steps were logged (the run trained, it did not only load).
fn assert_trained_two_steps(out: &Path) {
    let state = std::fs::read_to_string(out.join("trainer_state.json")).expect("trainer_state");
    let state: serde_json::Value = serde_json::from_str(&state).expect("trainer_state is JSON");
    assert_eq!(state["global_step"], 2, "{state}");
}

/// `train_lora/llama3_lora_sft.yaml`, then on its adapter `train_lora/llama3_lora_predict.yaml`
/// (batch prediction over `eval_dataset`), `merge_lora/llama3_lora_sft.yaml`, and
/// `inference/llama3_lora_sft.yaml` answering a question read from stdin.
#[test]
fn lora_sft_then_predict_merge_and_chat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let adapter = dir.path().join("sft");
    let o = train("train_lora/llama3_lora_sft.yaml", &adapter);
    assert_files(&adapter, ADAPTER);
    assert_trained_two_steps(&adapter);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("trust_remote_code"), "no notice:\n{err}");

    predict(&adapter, &dir.path().join("predict"));

    let model = quickstart().join("model").display().to_string();
    let merged = dir.path().join("merged");
    run(
        "export",
        "merge_lora/llama3_lora_sft.yaml",
        &[
            ("model_name_or_path", model.clone()),
            ("adapter_name_or_path", adapter.display().to_string()),
            ("export_dir", merged.display().to_string()),
        ],
        "",
    );
    assert_files(
        &merged,
        &["model.safetensors", "config.json", "tokenizer.json"],
    );

    let o = run(
        "chat",
        "inference/llama3_lora_sft.yaml",
        &[
            ("model_name_or_path", model),
            ("adapter_name_or_path", adapter.display().to_string()),
        ],
        "What is the opposite of hot?\n",
    );
    let reply = String::from_utf8_lossy(&o.stdout);
    assert!(!reply.trim().is_empty(), "chat printed no reply");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("infer_backend"), "no notice:\n{err}");
}

#[test]
fn lora_pretrain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("pt");
    train("train_lora/llama3_lora_pretrain.yaml", &out);
    assert_files(&out, ADAPTER);
    assert_trained_two_steps(&out);
}

/// On-the-fly 4-bit QLoRA with `quantization_method: bitsandbytes` and its `val_size: 0.1`
/// evaluation.
#[test]
fn qlora_on_the_fly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("qlora");
    train("train_qlora/llama3_lora_sft_otfq.yaml", &out);
    assert_files(&out, ADAPTER);
    assert_trained_two_steps(&out);
    let config = std::fs::read_to_string(out.join("adapter_config.json")).expect("config");
    assert!(config.contains("lora"), "{config}");
}

/// Full fine-tuning with `deepspeed: examples/deepspeed/ds_z3_config.json`, read and mapped.
#[test]
fn full_sft_with_deepspeed_zero3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("full");
    let o = train("train_full/llama3_full_sft.yaml", &out);
    assert_files(
        &out,
        &[
            "model.safetensors",
            "config.json",
            "tokenizer.json",
            "all_results.json",
        ],
    );
    assert_trained_two_steps(&out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("ds_z3_config.json") && err.contains("zero_stage: 3"),
        "the DeepSpeed file was not read:\n{err}"
    );
}

/// Runs the predict example with `adapter` into `out`; its files are LLaMA-Factory's.
fn predict(adapter: &Path, out: &Path) {
    let q = quickstart();
    run(
        "train",
        "train_lora/llama3_lora_predict.yaml",
        &[
            ("model_name_or_path", q.join("model").display().to_string()),
            ("adapter_name_or_path", adapter.display().to_string()),
            ("eval_dataset", "opposites_heldout".into()),
            ("dataset_dir", q.join("data").display().to_string()),
            ("output_dir", out.display().to_string()),
        ],
        "",
    );
    assert_files(
        out,
        &["generated_predictions.jsonl", "predict_results.json"],
    );
    let lines = std::fs::read_to_string(out.join("generated_predictions.jsonl")).expect("read");
    let first: serde_json::Value =
        serde_json::from_str(lines.lines().next().expect("a prediction")).expect("JSON line");
    for key in ["prompt", "predict", "label"] {
        assert!(first[key].is_string(), "{key} missing: {first}");
    }
    let results = std::fs::read_to_string(out.join("predict_results.json")).expect("read");
    let results: serde_json::Value = serde_json::from_str(&results).expect("JSON");
    for key in [
        "predict_bleu-4",
        "predict_rouge-1",
        "predict_rouge-2",
        "predict_rouge-l",
    ] {
        assert!(results[key].is_number(), "{key} missing: {results}");
    }
}
