//! `stage: kto` against TRL's KTOTrainer (`tests/reference/kto_trl.py`, the Python reference stack
//! must be installed): on a tiny random Llama, a PEFT LoRA adapter (B = 0, where TRL's reference,
//! a frozen copy of the starting adapter, and ours, the base with the adapter off, coincide) and
//! six unpaired examples (four desirable, two undesirable; `kto_rejected_weight` 1.5), the
//! `lf-trainer` binary and TRL agree on the tokenised examples and their KL sequences, on the first
//! step's loss and metrics, on every adapter gradient (one SGD step with learning rate 1 from
//! B = 0: B after it holds −gradient), on the adapter and every step's metrics after three SGD
//! steps (the KL estimate is above 0 from the second step on, so its term is exercised), and after
//! three AdamW steps. Each step is one micro-batch of all six examples. Evaluating on the training
//! examples after each step gives the loss the next step starts from. The measured figures are
//! printed (`--nocapture`).

mod preference_common;
mod tiny_run;

use std::path::Path;
use std::process::Command;

use lf_api::training::TrainingConfig;
use preference_common::{adapter, log_records, max_abs, metric_scale, rel, trl_log, worst};
use serde_json::Value;
use tiny_run::{python, stderr, trainer};

/// The bound on every relative difference of SGD runs (fp32 on both sides).
const TOLERANCE: f64 = 1e-5;
/// The bound on AdamW's parameters (a fraction of one step) and metrics after three steps.
const ADAMW_STEP_FRACTION: f64 = 1e-3;
/// `pref_beta` of the reference runs.
const BETA: f64 = 0.1;

const METRICS: &[&str] = &[
    "loss",
    "kl",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
];

fn reference(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/kto_trl.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kto_trl.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn train(dir: &Path, run: &str, optim: &str, lr: f64, steps: u32, extra: &str) -> String {
    let text = format!(
        "model_name_or_path: {m}\nadapter_name_or_path: {a}\nstage: kto\npref_beta: {BETA}\n\
         kto_chosen_weight: 1.0\nkto_rejected_weight: 1.5\n\
         dataset: feedback\ndataset_dir: {d}\ntemplate: empty\ncutoff_len: 1024\noutput_dir: {o}\n\
         lora_rank: 4\nlora_alpha: 8\nper_device_train_batch_size: 6\ngradient_accumulation_steps: 1\n\
         optim: {optim}\nlearning_rate: {lr}\nlr_scheduler_type: constant\nmax_grad_norm: 0\n\
         weight_decay: 0\nadam_epsilon: 1e-4\nmax_steps: {steps}\nlogging_steps: 1\nsave_steps: 0\n{extra}",
        m = dir.join("model").display(),
        a = dir.join("adapter0").display(),
        d = dir.join("data").display(),
        o = dir.join(run).join("ours").display(),
    );
    let path = dir.join(format!("{run}.yaml"));
    std::fs::write(&path, &text).unwrap();
    let out = trainer(&["train", path.to_str().unwrap()], &[]);
    assert!(out.status.success(), "lf-trainer failed:\n{}", stderr(&out));
    text
}

/// Our tokenisation of the examples, their tags and their KL sequences equal TRL's.
fn same_tokens(dir: &Path, cfg_text: &str) {
    let trl: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("trl_ids.json")).unwrap()).unwrap();
    let cfg = TrainingConfig::from_yaml_str(cfg_text).unwrap();
    let tok = lf_data::load_tokenizer(&dir.join("model")).unwrap();
    let ctx = lf_data::DataContext {
        rank: 0,
        world_size: 1,
        cache_dir: dir.join("cache"),
    };
    let data = lf_data::prepare(&cfg, &tok, &ctx).unwrap();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    assert_eq!(data.train.len(), trl.len());
    for (ours, theirs) in data.train.iter().zip(&trl) {
        let prompt = ids(&theirs["prompt_ids"]);
        let with = |key: &str| [prompt.clone(), ids(&theirs[key])].concat();
        assert_eq!(ours.input_ids, with("completion_ids"));
        assert_eq!(ours.kto_tag, theirs["label"].as_bool());
        let kl = ours.rejected.as_deref().unwrap();
        assert_eq!(kl.input_ids, with("KL_completion_ids"));
        for e in [ours, kl] {
            let masked = e.labels.iter().take_while(|&&l| l == -100).count();
            assert_eq!(masked, prompt.len(), "the prompt is masked");
        }
    }
}

/// Every logged step's metrics of our run in `dir/ours` against TRL's; the largest difference.
fn compare_logs(what: &str, dir: &Path, tolerance: f64) -> f64 {
    let theirs = trl_log(dir);
    let ours = log_records(&dir.join("ours"));
    assert_eq!(ours.len(), 3);
    let mut worst: f64 = 0.0;
    for (step, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        for key in METRICS {
            let x = a[key].as_f64().unwrap_or_else(|| panic!("we log no {key}"));
            let y = b[key].as_f64().unwrap();
            let d = (x - y).abs() / metric_scale(key, b, BETA);
            if step == 0 {
                println!(
                    "kto {what} step 1 {key}: ours {x:.8} TRL {y:.8} (relative difference {d:.2e})"
                );
            }
            worst = worst.max(d);
            assert!(
                d <= tolerance,
                "kto {what} step {} {key}: ours {x}, TRL {y}",
                step + 1
            );
        }
    }
    println!("kto {what} steps 1-3 metrics: largest relative difference {worst:.2e}");
    worst
}

#[test]
fn kto_equals_trl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    reference(dir);

    // One SGD step: B starts at 0, so after it B is −gradient; A's gradient is 0 at B = 0.
    let sgd = train(dir, "sgd", "sgd", 1.0, 1, "");
    same_tokens(dir, &sgd);
    let (ours, theirs) = (adapter(&dir.join("sgd/ours")), adapter(&dir.join("sgd")));
    let (d, name) = worst(&ours, &theirs);
    println!("kto first-step gradients: largest relative difference {d:.2e} ({name})");
    assert!(d <= TOLERANCE, "gradient of {name} differs by {d:e}");
    for (name, b) in theirs.iter().filter(|(n, _)| n.contains("lora_B")) {
        assert!(
            b.abs().max().double_value(&[]) > 0.0,
            "{name}: a zero gradient proves nothing"
        );
    }
    let start = adapter(&dir.join("adapter0"));
    for (name, a) in start.iter().filter(|(n, _)| n.contains("lora_A")) {
        assert_eq!(rel(&ours[name], a), 0.0, "{name} moved at B = 0");
    }

    // Three SGD steps, evaluating on the training examples after each.
    let eval =
        "eval_dataset: feedback\neval_strategy: steps\neval_steps: 1\nper_device_eval_batch_size: 6\n";
    train(dir, "sgd3", "sgd", 1.0, 3, eval);
    compare_logs("SGD", &dir.join("sgd3"), TOLERANCE);
    let theirs_log = trl_log(&dir.join("sgd3"));
    for (step, record) in theirs_log.iter().enumerate().take(3).skip(1) {
        let kl = record["kl"].as_f64().unwrap();
        println!("kto step {} KL estimate (TRL): {kl:.8}", step + 1);
        assert!(
            kl > 0.0,
            "step {}: TRL's KL estimate is {kl}: its term is not exercised",
            step + 1
        );
    }
    let logged = log_records(&dir.join("sgd3/ours"));
    for step in 0..2 {
        let e = logged[step]["eval_loss"].as_f64().unwrap();
        let next = logged[step + 1]["loss"].as_f64().unwrap();
        println!(
            "kto eval_loss after step {}: {e:.8}, step {} loss {next:.8}",
            step + 1,
            step + 2
        );
        assert!((e - next).abs() <= TOLERANCE * next.abs(), "{e} vs {next}");
        // The evaluation's metrics, under TRL's eval_ names, are the next step's too.
        let (evaluated, trained) = (&logged[step], &logged[step + 1]);
        for key in &METRICS[1..] {
            let e = evaluated[format!("eval_{key}")].as_f64().unwrap();
            let t = trained[key].as_f64().unwrap();
            let d = (e - t).abs() / metric_scale(key, trained, BETA);
            assert!(d <= TOLERANCE, "eval_{key}: {e} vs {t}");
        }
    }
    let (ours, theirs) = (adapter(&dir.join("sgd3/ours")), adapter(&dir.join("sgd3")));
    let (d, name) = worst(&ours, &theirs);
    println!("kto adapter after 3 SGD steps: largest relative difference {d:.2e} ({name})");
    assert!(d <= TOLERANCE, "{name} differs by {d:e}");

    // Three AdamW steps (learning rate 1e-2): the bound is a fraction of one step.
    let lr = 1e-2;
    train(dir, "adamw", "adamw_torch", lr, 3, "");
    let m = max_abs(
        &adapter(&dir.join("adamw/ours")),
        &adapter(&dir.join("adamw")),
    );
    println!(
        "kto adapter after 3 AdamW steps: largest difference {m:.2e} = {:.2e} of a step",
        m / lr
    );
    assert!(
        m <= ADAMW_STEP_FRACTION * lr,
        "AdamW parameters differ by {m:e}"
    );
    compare_logs("AdamW", &dir.join("adamw"), ADAMW_STEP_FRACTION);
}
