//! The bundled preference example (`examples/quickstart/dpo.yaml`) visibly learns a preference:
//! after the quick start's SFT (its `quickstart.yaml` recipe, 150 steps), the adapter prefers the
//! bare answer ("cold") on the held-out pairs; DPO on the training pairs makes it prefer the
//! sentence ("the opposite of hot is cold .") on questions about opposites it never saw in either
//! fine-tune. The held-out preference accuracy before and after is printed (`--nocapture`).

use std::path::Path;

use serde_json::Value;

#[path = "support/lf_trainer_cli.rs"]
mod lf_trainer_cli;

use lf_trainer_cli::{repo, run as lf_trainer};

fn accuracy(dir: &Path, adapter: &Path, out: &str) -> f64 {
    let results = dir.join(out);
    lf_trainer(&[
        "eval".into(),
        "examples/quickstart/dpo.yaml".into(),
        format!("adapter_name_or_path={}", adapter.display()),
        format!("output_dir={}", results.display()),
    ]);
    let text = std::fs::read_to_string(results.join("all_results.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["eval_preference_accuracy"].as_f64().unwrap()
}

#[test]
fn dpo_after_sft_learns_the_preferred_style_on_held_out_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let sft = dir.path().join("sft");
    // The quick start's training section (examples/quickstart.yaml), as a trainer config.
    let q = repo().join("examples/quickstart");
    let sft_cfg = dir.path().join("sft.yaml");
    std::fs::write(
        &sft_cfg,
        format!(
            "model_name_or_path: {}\ndataset_dir: {}\ndataset: opposites\ntemplate: auto\n\
             cutoff_len: 64\nlora_rank: 8\nlora_target: all\nper_device_train_batch_size: 8\n\
             learning_rate: 1.0e-3\nlr_scheduler_type: cosine\nwarmup_ratio: 0.05\nmax_steps: 150\n\
             logging_steps: 50\nsave_steps: 0\noutput_dir: {}\n",
            q.join("model").display(),
            q.join("data").display(),
            sft.display()
        ),
    )
    .unwrap();
    lf_trainer(&["train".into(), sft_cfg.display().to_string()]);

    let before = accuracy(dir.path(), &sft, "before");
    let dpo = dir.path().join("dpo");
    lf_trainer(&[
        "train".into(),
        "examples/quickstart/dpo.yaml".into(),
        format!("adapter_name_or_path={}", sft.display()),
        format!("output_dir={}", dpo.display()),
    ]);
    let after = accuracy(dir.path(), &dpo, "after");
    println!(
        "held-out preference accuracy (24 pairs): SFT adapter {:.1}%, after DPO {:.1}%",
        100.0 * before,
        100.0 * after
    );
    assert!(
        before < 0.5,
        "the SFT adapter already prefers the sentences ({before})"
    );
    assert!(
        after >= 0.9,
        "DPO did not teach the preference ({before} -> {after})"
    );
}
