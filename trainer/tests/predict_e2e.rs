//! Batch prediction end to end through the `lf-trainer` binary on the bundled quick-start model
//! (`examples/quickstart/`): train then predict (`do_predict`), predict only with the saved
//! adapter (LLaMA-Factory's way: `do_predict` without a `dataset`, and `lf-trainer predict`), and
//! LLaMA-Factory's own `llama3_lora_predict.yaml` with only paths overridden. Both files must
//! exist, hold one line per evaluation example, and the metrics must equal a recomputation from
//! the written predictions.

use std::path::{Path, PathBuf};

use lf_trainer::predict::output::{read_predictions, Prediction, PREDICTIONS, PREDICT_RESULTS};
use serde_json::Value;

fn quickstart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart")
}

/// The held-out answers, in file order.
fn heldout_answers() -> Vec<String> {
    let path = quickstart().join("data/opposites_heldout.json");
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    rows.iter()
        .map(|r| r["output"].as_str().unwrap().to_string())
        .collect()
}

#[path = "support/lf_trainer_cli.rs"]
mod lf_trainer_cli;

use lf_trainer_cli::run_in as lf_trainer;

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let q = quickstart();
    let text = format!(
        "model_name_or_path: {}\ndataset_dir: {}\neval_dataset: opposites_heldout\ncutoff_len: 64\n\
         lora_rank: 4\ndo_sample: false\nmax_new_tokens: 6\nper_device_eval_batch_size: 4\n{text}",
        q.join("model").display(),
        q.join("data").display(),
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn results(out: &Path) -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(out.join(PREDICT_RESULTS)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Both files are there, one line per held-out example with its answer as the label, and the
/// metrics are the recomputation from the lines. With `template_text_in_label`, the label may go
/// on after the answer: the llama3 template's `<|eot_id|>` is plain text to the quick-start
/// tokenizer, which has no such special token.
fn check_outputs(out: &Path, template_text_in_label: bool) -> Vec<Prediction> {
    let predictions = read_predictions(out).unwrap();
    let answers = heldout_answers();
    assert_eq!(predictions.len(), answers.len());
    let text = std::fs::read_to_string(out.join(PREDICTIONS)).unwrap();
    assert_eq!(text.lines().count(), answers.len());
    for (p, a) in predictions.iter().zip(&answers) {
        if template_text_in_label {
            assert!(p.label.starts_with(a.as_str()), "{p:?}");
        } else {
            assert_eq!(p.label.trim(), a, "{p:?}");
        }
        assert!(p.prompt.contains("What is the opposite of"), "{p:?}");
    }
    let written = results(out);
    let recomputed = lf_trainer::predict::run::score(&predictions);
    for key in [
        "predict_bleu-4",
        "predict_rouge-1",
        "predict_rouge-2",
        "predict_rouge-l",
    ] {
        assert_eq!(written.get(key), recomputed.get(key), "{key}");
        let v = written[key].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&v), "{key} = {v}");
    }
    for key in [
        "predict_runtime",
        "predict_samples_per_second",
        "predict_steps_per_second",
    ] {
        assert!(written[key].as_f64().unwrap() > 0.0, "{key}: {written:?}");
    }
    predictions
}

#[test]
fn train_then_predict_and_predict_only_with_the_saved_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let trained = dir.path().join("trained");
    let cfg = write_config(
        dir.path(),
        "train.yaml",
        &format!(
            "dataset: opposites\noutput_dir: {}\nmax_steps: 3\nlearning_rate: 1.0e-3\n\
             per_device_train_batch_size: 8\nlogging_steps: 1\nsave_steps: 0\n\
             do_predict: true\npredict_with_generate: true\n",
            trained.display()
        ),
    );
    lf_trainer(dir.path(), &["train".into(), cfg.clone()]);
    assert!(trained.join("adapter_model.safetensors").is_file());
    let after_training = check_outputs(&trained, false);
    let all: Value =
        serde_json::from_str(&std::fs::read_to_string(trained.join("all_results.json")).unwrap())
            .unwrap();
    assert!(
        all.get("train_loss").is_some() && all.get("predict_bleu-4").is_some(),
        "{all}"
    );

    // LLaMA-Factory's predict config: no `dataset`, `do_train` unset, the adapter to load.
    let only = dir.path().join("only");
    let cfg_only = write_config(
        dir.path(),
        "predict.yaml",
        &format!(
            "adapter_name_or_path: {}\noutput_dir: {}\ndo_predict: true\npredict_with_generate: true\n",
            trained.display(),
            only.display()
        ),
    );
    lf_trainer(dir.path(), &["train".into(), cfg_only]);
    assert!(
        !only.join("adapter_model.safetensors").exists(),
        "a prediction config must not train"
    );
    let predicted = check_outputs(&only, false);
    // Greedy answers with the same adapter: the same predictions as right after training.
    assert_eq!(predicted, after_training);

    // `lf-trainer predict` on the training config does the same without training.
    let cmd = dir.path().join("cmd");
    lf_trainer(
        dir.path(),
        &[
            "predict".into(),
            cfg,
            format!("adapter_name_or_path={}", trained.display()),
            format!("output_dir={}", cmd.display()),
        ],
    );
    assert!(!cmd.join("adapter_model.safetensors").exists());
    assert_eq!(check_outputs(&cmd, false), after_training);
}

#[test]
fn llama_factorys_predict_example_runs_with_only_paths_overridden() {
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../operator/api/tests/fixtures/llama-factory");
    let dir = tempfile::tempdir().unwrap();
    let q = quickstart();
    // The adapter it loads: two steps of LoRA on the quick-start data with the same template.
    let adapter = dir.path().join("adapter");
    lf_trainer(
        &root,
        &[
            "train".into(),
            "examples/train_lora/llama3_lora_sft.yaml".into(),
            format!("model_name_or_path={}", q.join("model").display()),
            "dataset=opposites".into(),
            format!("dataset_dir={}", q.join("data").display()),
            format!("output_dir={}", adapter.display()),
            "max_steps=2".into(),
        ],
    );
    let out = dir.path().join("predict");
    lf_trainer(
        &root,
        &[
            "train".into(),
            "examples/train_lora/llama3_lora_predict.yaml".into(),
            format!("model_name_or_path={}", q.join("model").display()),
            format!("adapter_name_or_path={}", adapter.display()),
            "eval_dataset=opposites_heldout".into(),
            format!("dataset_dir={}", q.join("data").display()),
            format!("output_dir={}", out.display()),
        ],
    );
    assert!(!out.join("adapter_model.safetensors").exists());
    check_outputs(&out, true);
}
