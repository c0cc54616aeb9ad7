//! `stage: dpo` against TRL (`tests/reference/preference_trl.py`, the Python reference stack must
//! be installed), for every `pref_loss` (sigmoid, hinge, ipo against TRL's DPOTrainer, orpo against
//! its ORPOTrainer, simpo against its CPOTrainer) and `pref_ftx`: on a tiny random Llama, a PEFT
//! LoRA adapter and four preference pairs, the `lf-trainer` binary and TRL's trainer agree on the
//! tokenised pairs, on the first step's loss and `rewards/*`/`logps/*` metrics, on every adapter
//! gradient (one SGD step with learning rate 1 from B = 0: the adapter after it holds −gradient),
//! on the adapter and the metrics after three SGD steps, and after three AdamW steps.
//! Each step covers all four pairs (batch 2 × accumulation 2), so sampling order plays no part.
//! The measured figures are printed (`--nocapture`).

mod preference_common;
mod tiny_run;

use std::path::Path;
use std::process::Command;

use lf_api::training::TrainingConfig;
use preference_common::{adapter, log_records, max_abs, metric_scale, rel, trl_log, worst};
use serde_json::Value;
use tiny_run::{python, stderr, trainer};

/// The bound on every relative difference of the first step (fp32 on both sides).
const FIRST_STEP_TOLERANCE: f64 = 1e-5;
/// The bound on AdamW's parameters (a fraction of one step) and metrics after three steps.
const ADAMW_STEP_FRACTION: f64 = 1e-3;

/// One comparison: TRL's loss name, our settings, and the micro-batch layout of the 4 pairs.
struct Case {
    trl: &'static str,
    /// `pref_loss: …` and anything else our config adds.
    ours: &'static str,
    batch: usize,
    accumulation: usize,
}

fn reference(dir: &Path, case: &Case) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/preference_trl.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(dir)
        .arg(case.trl)
        .arg(case.batch.to_string())
        .arg(case.accumulation.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "preference_trl.py {} failed:\n{}",
        case.trl,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn config(dir: &Path, case: &Case, run: &str, optim: &str, lr: f64, steps: u32) -> String {
    format!(
        "model_name_or_path: {m}\nadapter_name_or_path: {a}\nstage: dpo\n{ours}\n\
         dataset: pref\ndataset_dir: {d}\ntemplate: empty\ncutoff_len: 1024\noutput_dir: {o}\n\
         lora_rank: 4\nlora_alpha: 8\nper_device_train_batch_size: {b}\ngradient_accumulation_steps: {g}\n\
         optim: {optim}\nlearning_rate: {lr}\nlr_scheduler_type: constant\nmax_grad_norm: 0\n\
         weight_decay: 0\nadam_epsilon: 1e-4\nmax_steps: {steps}\nlogging_steps: 1\nsave_steps: 0\n",
        ours = case.ours,
        b = case.batch,
        g = case.accumulation,
        m = dir.join("model").display(),
        a = dir.join("adapter0").display(),
        d = dir.join("data").display(),
        o = dir.join(run).join("ours").display(),
    )
}

fn train(dir: &Path, case: &Case, run: &str, optim: &str, lr: f64, steps: u32) -> String {
    train_with(dir, case, run, optim, lr, steps, "")
}

/// [`train`] with `extra` appended to the config.
fn train_with(
    dir: &Path,
    case: &Case,
    run: &str,
    optim: &str,
    lr: f64,
    steps: u32,
    extra: &str,
) -> String {
    let text = config(dir, case, run, optim, lr, steps) + extra;
    let path = dir.join(format!("{run}.yaml"));
    std::fs::write(&path, &text).unwrap();
    let out = trainer(&["train", path.to_str().unwrap()], &[]);
    assert!(out.status.success(), "lf-trainer failed:\n{}", stderr(&out));
    text
}

/// Our tokenisation of the pairs equals TRL's.
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
        let mut chosen = prompt.clone();
        chosen.extend(ids(&theirs["chosen_ids"]));
        let mut rejected = prompt.clone();
        rejected.extend(ids(&theirs["rejected_ids"]));
        assert_eq!(ours.input_ids, chosen);
        assert_eq!(ours.rejected.as_ref().unwrap().input_ids, rejected);
        let masked = ours.labels.iter().take_while(|&&l| l == -100).count();
        assert_eq!(masked, prompt.len(), "the prompt is masked");
    }
}

fn scale(key: &str, theirs: &Value) -> f64 {
    metric_scale(key, theirs, BETA)
}

/// `pref_beta` of the reference runs.
const BETA: f64 = 0.1;

const METRICS: &[&str] = &[
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
];

fn parity(case: Case) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let loss = case.trl;
    reference(dir, &case);

    let sgd = train(dir, &case, "sgd", "sgd", 1.0, 1);
    same_tokens(dir, &sgd);
    let theirs = trl_log(&dir.join("sgd"));
    let ours = log_records(&dir.join("sgd/ours"));
    for key in METRICS {
        let (a, b) = (ours[0][key].as_f64(), theirs[0][key].as_f64());
        let (a, b) = (a.unwrap_or_else(|| panic!("we log no {key}")), b.unwrap());
        let d = (a - b).abs() / scale(key, &theirs[0]);
        println!("{loss} step 1 {key}: ours {a:.8} TRL {b:.8} (relative difference {d:.2e})");
        assert!(d <= FIRST_STEP_TOLERANCE, "{loss} {key}: ours {a}, TRL {b}");
    }
    // B starts at 0, so after one SGD step with learning rate 1 it is −gradient; A's gradient is
    // 0 at B = 0, so A is unchanged on both sides.
    let (ours, theirs) = (adapter(&dir.join("sgd/ours")), adapter(&dir.join("sgd")));
    let (d, name) = worst(&ours, &theirs);
    println!("{loss} first-step gradients: largest relative difference {d:.2e} ({name})");
    assert!(
        d <= FIRST_STEP_TOLERANCE,
        "{loss}: gradient of {name} differs by {d:e}"
    );
    let start = adapter(&dir.join("adapter0"));
    for (name, b) in theirs.iter().filter(|(n, _)| n.contains("lora_B")) {
        assert!(
            b.abs().max().double_value(&[]) > 0.0,
            "{name}: a zero gradient proves nothing"
        );
    }
    for (name, a) in start.iter().filter(|(n, _)| n.contains("lora_A")) {
        assert_eq!(rel(&ours[name], a), 0.0, "{name} moved at B = 0");
    }

    // Three SGD steps: the adapter, and every step's metrics (the rewards move after step 1).
    // Evaluating on the training pairs after each step gives the loss the next step starts from.
    let eval =
        "eval_dataset: pref\neval_strategy: steps\neval_steps: 1\nper_device_eval_batch_size: 3\n";
    train_with(dir, &case, "sgd3", "sgd", 1.0, 3, eval);
    let logged = log_records(&dir.join("sgd3/ours"));
    for step in 0..2 {
        let (e, next) = (
            logged[step]["eval_loss"].as_f64().unwrap(),
            logged[step + 1]["loss"].as_f64().unwrap(),
        );
        println!(
            "{loss} eval_loss after step {}: {e:.8}, step {} loss {next:.8}",
            step + 1,
            step + 2
        );
        assert!(
            (e - next).abs() <= FIRST_STEP_TOLERANCE * next.abs(),
            "{loss}: {e} vs {next}"
        );
        // The evaluation's metrics, under TRL's eval_ names, are the next step's too.
        let (evaluated, trained) = (&logged[step], &logged[step + 1]);
        for key in &METRICS[1..] {
            let e = evaluated[format!("eval_{key}")].as_f64().unwrap();
            let t = trained[key].as_f64().unwrap();
            let d = (e - t).abs() / scale(key, trained);
            assert!(d <= FIRST_STEP_TOLERANCE, "{loss} eval_{key}: {e} vs {t}");
        }
    }
    let (ours, theirs) = (adapter(&dir.join("sgd3/ours")), adapter(&dir.join("sgd3")));
    let (d, name) = worst(&ours, &theirs);
    println!("{loss} adapter after 3 SGD steps: largest relative difference {d:.2e} ({name})");
    assert!(d <= FIRST_STEP_TOLERANCE, "{loss}: {name} differs by {d:e}");
    compare_logs(loss, "SGD", &dir.join("sgd3"), FIRST_STEP_TOLERANCE);

    // Three AdamW steps (adam_epsilon 1e-4 on both sides: Adam divides each gradient by its own
    // magnitude, so with 1e-8 an element whose gradient is below the rounding of the others takes
    // a full step of arbitrary sign). The bound is a fraction of one step (learning rate 1e-2).
    let lr = 1e-2;
    train(dir, &case, "adamw", "adamw_torch", lr, 3);
    let (ours, theirs) = (
        adapter(&dir.join("adamw/ours")),
        adapter(&dir.join("adamw")),
    );
    let max_abs = max_abs(&ours, &theirs);
    println!(
        "{loss} adapter after 3 AdamW steps: largest difference {max_abs:.2e} = {:.2e} of a step",
        max_abs / lr
    );
    assert!(
        max_abs <= ADAMW_STEP_FRACTION * lr,
        "{loss}: AdamW parameters differ by {max_abs:e}"
    );
    compare_logs(loss, "AdamW", &dir.join("adamw"), ADAMW_STEP_FRACTION);
}

/// Every logged step's metrics of our run in `dir/ours` against TRL's `dir/log.json`.
fn compare_logs(loss: &str, what: &str, dir: &Path, tolerance: f64) {
    let theirs = trl_log(dir);
    let ours = log_records(&dir.join("ours"));
    assert_eq!(ours.len(), 3);
    let mut worst: f64 = 0.0;
    for (step, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        for key in METRICS {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            let d = (x - y).abs() / scale(key, b);
            worst = worst.max(d);
            assert!(
                d <= tolerance,
                "{loss} {what} step {} {key}: ours {x}, TRL {y}",
                step + 1
            );
        }
    }
    println!("{loss} {what} steps 1-3 metrics: largest relative difference {worst:.2e}");
}

#[test]
fn dpo_sigmoid_equals_trl() {
    parity(Case {
        trl: "sigmoid",
        ours: "pref_loss: sigmoid",
        batch: 2,
        accumulation: 2,
    });
}

/// Without layer recomputation the decoder's graph is kept from the forward pass instead.
#[test]
fn dpo_sigmoid_without_recomputation_equals_trl() {
    parity(Case {
        trl: "sigmoid",
        ours: "pref_loss: sigmoid\ngradient_checkpointing: false",
        batch: 2,
        accumulation: 2,
    });
}

#[test]
fn dpo_hinge_equals_trl() {
    parity(Case {
        trl: "hinge",
        ours: "pref_loss: hinge",
        batch: 2,
        accumulation: 2,
    });
}

#[test]
fn dpo_ipo_equals_trl() {
    parity(Case {
        trl: "ipo",
        ours: "pref_loss: ipo",
        batch: 2,
        accumulation: 2,
    });
}

/// TRL's ORPO NLL is a token mean over the micro-batch, LLaMA-Factory's (ours) a mean over pairs
/// of per-pair means: equal with one pair per micro-batch. TRL's also covers the prompt, ours the
/// answer only: the reference script gives ORPO prompts of the BOS word alone.
#[test]
fn orpo_equals_trl() {
    parity(Case {
        trl: "orpo",
        ours: "pref_loss: orpo",
        batch: 1,
        accumulation: 4,
    });
}

#[test]
fn simpo_equals_trl_cpo() {
    parity(Case {
        trl: "simpo",
        ours: "pref_loss: simpo\nsimpo_gamma: 0.5",
        batch: 2,
        accumulation: 2,
    });
}

/// `pref_ftx` against TRL's added "sft" loss (a token mean per micro-batch: one pair each).
#[test]
fn dpo_with_pref_ftx_equals_trl() {
    parity(Case {
        trl: "sigmoid+ftx",
        ours: "pref_loss: sigmoid\npref_ftx: 0.5",
        batch: 1,
        accumulation: 4,
    });
}

/// A `model.safetensors` as named tensors.
fn weights(dir: &Path) -> std::collections::HashMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// `finetuning_type: full` against TRL's DPOTrainer on the whole model, whose reference is the
/// model loaded again from its directory (ours: a frozen copy of the starting weights). One SGD
/// step with learning rate 1000 from the tiny model: (start − after) / 1000 is the gradient of every
/// weight on both sides, well above their fp32 rounding; then every step's metrics of three SGD
/// steps with learning rate 1.
#[test]
fn dpo_full_equals_trl() {
    let case = Case {
        trl: "sigmoid-full",
        ours: "pref_loss: sigmoid\nfinetuning_type: full",
        batch: 2,
        accumulation: 2,
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    reference(dir, &case);
    let full = |run: &str, lr: f64, steps: u32| {
        let text = config(dir, &case, run, "sgd", lr, steps);
        let adapter = format!("adapter_name_or_path: {}\n", dir.join("adapter0").display());
        let path = dir.join(format!("{run}.yaml"));
        std::fs::write(&path, text.replace(&adapter, "")).unwrap();
        let out = trainer(&["train", path.to_str().unwrap()], &[]);
        assert!(out.status.success(), "lf-trainer failed:\n{}", stderr(&out));
    };
    full("sgd", 1000.0, 1);
    let theirs = trl_log(&dir.join("sgd"));
    let ours = log_records(&dir.join("sgd/ours"));
    for key in METRICS {
        let (a, b) = (
            ours[0][key].as_f64().unwrap(),
            theirs[0][key].as_f64().unwrap(),
        );
        let d = (a - b).abs() / scale(key, &theirs[0]);
        println!("full step 1 {key}: ours {a:.8} TRL {b:.8} (relative difference {d:.2e})");
        assert!(d <= FIRST_STEP_TOLERANCE, "full {key}: ours {a}, TRL {b}");
    }
    let start = weights(&dir.join("model"));
    let gradient = |after: &Path| {
        weights(after)
            .into_iter()
            .map(|(name, t)| {
                let g = (&start[&name] - t) / 1000.0;
                (name, g)
            })
            .collect::<std::collections::HashMap<_, _>>()
    };
    let (ours, theirs) = (gradient(&dir.join("sgd/ours")), gradient(&dir.join("sgd")));
    let (d, name) = worst(&ours, &theirs);
    println!(
        "full first-step gradients of {} tensors: largest relative difference {d:.2e} ({name})",
        theirs.len()
    );
    assert!(
        d <= FIRST_STEP_TOLERANCE,
        "gradient of {name} differs by {d:e}"
    );
    for (name, g) in &theirs {
        assert!(g.abs().max().double_value(&[]) > 0.0, "{name}: no gradient");
    }
    full("sgd3", 1.0, 3);
    compare_logs("full", "SGD", &dir.join("sgd3"), FIRST_STEP_TOLERANCE);
}
