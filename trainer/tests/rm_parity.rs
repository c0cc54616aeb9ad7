//! `stage: rm` against TRL's RewardTrainer (`tests/reference/reward_trl.py`, the Python reference
//! stack must be installed): on a tiny random Llama, a PEFT `SEQ_CLS` LoRA adapter with its
//! `score` head (B drawn non-zero, so every gradient is) and five preference pairs, the
//! `lf-trainer` binary and TRL agree on the first step's loss and metrics and on every trainable
//! gradient, LoRA and value head (one SGD step with learning rate 1000: the saved weights'
//! difference from the start over 1000 is the gradient, well above their fp32 rounding), and after
//! three SGD steps on every step's metrics and every parameter. The adapter lf-trainer saves loads
//! in transformers + PEFT as a reward model and gives the rewards TRL's adapter gives, and the
//! ones lf-trainer's own evaluation reported. Each step is one micro-batch of all five pairs. The
//! measured figures are printed (`--nocapture`).

mod preference_common;
mod tiny_run;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use preference_common::{adapter, log_records, rel, trl_log, worst};
use serde_json::Value;
use tch::Tensor;
use tiny_run::{python, stderr, trainer};

/// The bound on every relative difference (fp32 on both sides).
const TOLERANCE: f64 = 1e-5;
/// The one-step run's learning rate (see the module docs).
const GRADIENT_LR: f64 = 1000.0;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/reward_trl.py")
}

fn reference(dir: &Path) {
    let out = Command::new(python())
        .arg(script())
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reward_trl.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The rewards transformers + PEFT give each pair `[chosen, rejected]` with `adapter` loaded.
fn hf_rewards(dir: &Path, adapter: &Path) -> Vec<[f64; 2]> {
    score(&dir.join("model"), adapter)
}

/// The rewards transformers (+ PEFT with `adapter`, or `-` for a whole reward model in `model`)
/// give each pair `[chosen, rejected]`.
fn score(model: &Path, adapter: &Path) -> Vec<[f64; 2]> {
    let out = Command::new(python())
        .arg(script())
        .arg("--score")
        .arg(model)
        .arg(adapter)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reward_trl.py --score failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

fn train(dir: &Path, run: &str, lr: f64, steps: u32, extra: &str) {
    let adapter = format!("adapter_name_or_path: {}\n", dir.join("adapter0").display());
    train_with(
        dir,
        run,
        lr,
        steps,
        &format!("{adapter}save_steps: 0\n{extra}"),
    );
}

fn train_with(dir: &Path, run: &str, lr: f64, steps: u32, extra: &str) {
    let text = format!(
        "model_name_or_path: {m}\nstage: rm\n\
         dataset: pref\ndataset_dir: {d}\ntemplate: empty\ncutoff_len: 1024\noutput_dir: {o}\n\
         lora_rank: 4\nlora_alpha: 8\nlora_target: all\nper_device_train_batch_size: 5\n\
         gradient_accumulation_steps: 1\noptim: sgd\nlearning_rate: {lr}\nlr_scheduler_type: constant\n\
         max_grad_norm: 0\nweight_decay: 0\nmax_steps: {steps}\nlogging_steps: 1\n{extra}",
        m = dir.join("model").display(),
        d = dir.join("data").display(),
        o = dir.join(run).join("ours").display(),
    );
    let path = dir.join(format!("{run}.yaml"));
    std::fs::write(&path, &text).unwrap();
    let out = trainer(&["train", path.to_str().unwrap()], &[]);
    assert!(out.status.success(), "lf-trainer failed:\n{}", stderr(&out));
}

/// What a metric's difference is relative to: its value, or for the margin and the mean reward
/// (differences and sums of rewards, which carry the rewards' rounding) the largest reward.
fn scale(key: &str, theirs: &Value) -> f64 {
    let v = |k: &str| theirs[k].as_f64().unwrap().abs();
    let own = v(key).max(1e-6);
    match key {
        "margin" | "mean_reward" => own.max(v("min_reward")).max(v("max_reward")),
        _ => own,
    }
}

const METRICS: &[&str] = &["loss", "accuracy", "margin", "mean_reward"];

/// Every logged step's metrics of our run in `dir/ours` against TRL's; the largest difference.
fn compare_logs(what: &str, dir: &Path, steps: usize) -> f64 {
    let theirs = trl_log(dir);
    let ours = log_records(&dir.join("ours"));
    assert_eq!(ours.len(), steps);
    let mut worst: f64 = 0.0;
    for (step, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        for key in METRICS {
            let x = a[key].as_f64().unwrap_or_else(|| panic!("we log no {key}"));
            let y = b[key].as_f64().unwrap();
            let d = (x - y).abs() / scale(key, b);
            println!(
                "rm {what} step {} {key}: ours {x:.8} TRL {y:.8} (relative difference {d:.2e})",
                step + 1
            );
            worst = worst.max(d);
            assert!(
                d <= TOLERANCE,
                "rm {what} step {} {key}: ours {x}, TRL {y}",
                step + 1
            );
        }
    }
    worst
}

#[test]
fn reward_model_equals_trl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    reference(dir);

    // One SGD step: (start − after) / lr is each trainable tensor's gradient.
    train(dir, "sgd", GRADIENT_LR, 1, "");
    compare_logs("SGD", &dir.join("sgd"), 1);
    let start = adapter(&dir.join("adapter0"));
    let ours = adapter(&dir.join("sgd/ours"));
    let grads: HashMap<String, Tensor> = ours
        .iter()
        .map(|(name, after)| (name.clone(), (&start[name] - after) / GRADIENT_LR))
        .collect();
    let theirs: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("sgd/grads.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let (d, name) = worst(&grads, &theirs);
    println!(
        "rm first-step gradients ({} tensors, LoRA A and B and the value head): largest relative difference {d:.2e} ({name})",
        theirs.len()
    );
    assert!(theirs.contains_key("base_model.model.score.weight"));
    assert!(d <= TOLERANCE, "gradient of {name} differs by {d:e}");
    for (name, g) in &theirs {
        assert!(
            g.abs().max().double_value(&[]) > 0.0,
            "{name}: a zero gradient proves nothing"
        );
    }
    let head = "base_model.model.score.weight";
    println!(
        "rm value head gradient: relative difference {:.2e}",
        rel(&grads[head], &theirs[head])
    );

    // Three SGD steps, evaluating on the training pairs after each.
    let eval =
        "eval_dataset: pref\neval_strategy: steps\neval_steps: 1\nper_device_eval_batch_size: 5\n";
    train(dir, "sgd3", 0.5, 3, eval);
    let w = compare_logs("SGD", &dir.join("sgd3"), 3);
    println!("rm steps 1-3 metrics: largest relative difference {w:.2e}");
    let (ours, theirs) = (adapter(&dir.join("sgd3/ours")), adapter(&dir.join("sgd3")));
    let (d, name) = worst(&ours, &theirs);
    println!("rm adapter and head after 3 SGD steps: largest relative difference {d:.2e} ({name})");
    assert!(d <= TOLERANCE, "{name} differs by {d:e}");
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("sgd3/ours/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["task_type"], "SEQ_CLS");

    // Our adapter in transformers + PEFT: TRL's rewards, and our evaluation's.
    let from_ours = hf_rewards(dir, &dir.join("sgd3/ours"));
    let from_trl = hf_rewards(dir, &dir.join("sgd3"));
    let largest = from_trl
        .iter()
        .flatten()
        .fold(0.0f64, |m, r| m.max(r.abs()));
    let d = from_ours
        .iter()
        .flatten()
        .zip(from_trl.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
        / largest;
    println!("rm rewards of the saved adapters in transformers + PEFT: ours vs TRL's, largest difference {d:.2e} of the largest reward {largest:.4}");
    assert!(d <= TOLERANCE, "rewards differ by {d:e}");
    let last = log_records(&dir.join("sgd3/ours")).pop().unwrap();
    let d = eval_matches("LoRA after step 3, our adapter", &from_ours, &last);
    assert!(
        d <= TOLERANCE,
        "our evaluation and transformers differ by {d:e}"
    );
}

/// The mean rewards of the chosen and of the rejected sequences `rewards` give, against the
/// `eval_rewards/*` of `record`; the largest difference relative to the largest reward.
fn eval_matches(what: &str, rewards: &[[f64; 2]], record: &Value) -> f64 {
    let largest = rewards.iter().flatten().fold(0.0f64, |m, r| m.max(r.abs()));
    let n = rewards.len() as f64;
    let mut worst: f64 = 0.0;
    for (key, i) in [("eval_rewards/chosen", 0), ("eval_rewards/rejected", 1)] {
        let hf = rewards.iter().map(|p| p[i]).sum::<f64>() / n;
        let logged = record[key].as_f64().unwrap_or_else(|| panic!("no {key}"));
        let d = (hf - logged).abs() / largest;
        println!("rm {what} {key}: ours {logged:.8}, transformers {hf:.8} ({d:.2e})");
        worst = worst.max(d);
    }
    worst
}

/// `full` fine-tuning: the export is a `LlamaForSequenceClassification` that transformers loads
/// (one label, the pad token, `score.weight`) and scores the pairs as lf-trainer's evaluation
/// of the same weights did; a run resumed from its first checkpoint ends on the same weights.
#[test]
fn a_full_reward_model_exports_and_resumes() {
    whole_model_exports_and_resumes("full", "finetuning_type: full\n");
}

/// `freeze` (the top decoder layer and the value head train): as for `full`, the export loads in
/// transformers and scores as the evaluation did, and a resume ends on the same weights.
#[test]
fn a_freeze_reward_model_exports_and_resumes() {
    whole_model_exports_and_resumes(
        "freeze",
        "finetuning_type: freeze\nfreeze_trainable_layers: 1\n",
    );
}

/// Trains a `full`/`freeze` (`method` lines) reward model two steps, evaluating after each and
/// checkpointing after the first; checks the export against transformers and the resume.
fn whole_model_exports_and_resumes(what: &str, method: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    reference_assets(dir);
    let eval =
        "eval_dataset: pref\neval_strategy: steps\neval_steps: 1\nper_device_eval_batch_size: 5\n";
    train_with(
        dir,
        what,
        0.05,
        2,
        &format!("{method}{eval}save_steps: 1\n"),
    );
    let out = dir.join(what).join("ours");
    let logged = log_records(&out);
    assert_eq!(logged.len(), 2);
    // Training moved the rewards: the evaluations differ.
    assert_ne!(logged[0]["eval_margin"], logged[1]["eval_margin"]);
    let rewards = score(&out, Path::new("-"));
    let d = eval_matches(&format!("{what}, exported model"), &rewards, &logged[1]);
    assert!(
        d <= TOLERANCE,
        "{what}: the exported model's rewards differ by {d:e}"
    );

    let checkpoint = out.join("checkpoint-1");
    assert!(checkpoint.join("value_head.safetensors").exists());
    let resumed_run = format!("{what}-resumed");
    train_with(
        dir,
        &resumed_run,
        0.05,
        2,
        &format!("{method}resume_from_checkpoint: {}\n", checkpoint.display()),
    );
    // It trained step 2 only, from the checkpoint's weights and value head (a head initialised
    // again would have started step 2 from the first step's starting head).
    let resumed = log_records(&dir.join(&resumed_run).join("ours"));
    let steps: Vec<u64> = resumed
        .iter()
        .map(|r| r["current_steps"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [2]);
    let a = score(&out, Path::new("-"));
    let b = score(&dir.join(&resumed_run).join("ours"), Path::new("-"));
    let worst = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    println!(
        "rm {what}: resumed from checkpoint-1 vs uninterrupted, rewards differ by {worst:.2e}"
    );
    assert!(worst <= 1e-6, "{what}: resumed run differs by {worst:e}");
}

/// QLoRA (a 4-bit base, the adapter and the value head trained): the checkpoint saves the adapter
/// with its head, and a run resumed from it evaluates the pairs after its step as the
/// uninterrupted run did (transformers has no CPU 4-bit base to score it with, so the check is
/// lf-trainer's own evaluation of the reloaded weights).
#[test]
fn a_qlora_reward_model_saves_and_reloads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    reference_assets(dir);
    let qlora = "quantization_bit: 4\n";
    let eval =
        "eval_dataset: pref\neval_strategy: steps\neval_steps: 1\nper_device_eval_batch_size: 5\n";
    train_with(
        dir,
        "qlora",
        0.05,
        2,
        &format!("{qlora}{eval}save_steps: 1\n"),
    );
    let logged = log_records(&dir.join("qlora/ours"));
    assert_eq!(logged.len(), 2);
    assert_ne!(logged[0]["eval_margin"], logged[1]["eval_margin"]);
    let checkpoint = dir.join("qlora/ours/checkpoint-1");
    let saved = Tensor::read_safetensors(checkpoint.join("adapter_model.safetensors")).unwrap();
    assert!(
        saved
            .iter()
            .any(|(n, _)| n == "base_model.model.score.weight"),
        "the QLoRA checkpoint holds no value head"
    );
    train_with(
        dir,
        "qlora-resumed",
        0.05,
        2,
        &format!(
            "{qlora}{eval}resume_from_checkpoint: {}\n",
            checkpoint.display()
        ),
    );
    let resumed = log_records(&dir.join("qlora-resumed/ours"));
    assert_eq!(resumed.len(), 1);
    let mut worst: f64 = 0.0;
    for key in [
        "eval_rewards/chosen",
        "eval_rewards/rejected",
        "eval_margin",
    ] {
        let (a, b) = (
            logged[1][key]
                .as_f64()
                .unwrap_or_else(|| panic!("no {key}")),
            resumed[0][key]
                .as_f64()
                .unwrap_or_else(|| panic!("no {key}")),
        );
        let d = (a - b).abs() / a.abs().max(1e-3);
        println!("rm QLoRA {key}: uninterrupted {a:.8}, resumed {b:.8} ({d:.2e})");
        worst = worst.max(d);
    }
    assert!(
        worst <= TOLERANCE,
        "QLoRA resumed evaluation differs by {worst:e}"
    );
}

/// The model and data of `reward_trl.py`, without its TRL runs.
fn reference_assets(dir: &Path) {
    let out = Command::new(python())
        .arg(script())
        .arg(dir)
        .arg("assets")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reward_trl.py assets failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
