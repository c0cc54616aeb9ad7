//! ZeRO stages over Gloo, with several local `lf-trainer` processes on the tiny model of
//! `low_memory_common` (2 layers, hidden 256):
//! - equivalence: world sizes 2 and 3 with the same global batch give the parameters of one
//!   process after the same steps, within 1e-5 (fp32), for stages 0–3 with LoRA and full
//!   fine-tuning (and DoRA, QLoRA under ZeRO-3), gradient clipping on;
//! - memory: the gradient and optimiser-state bytes rank 0 holds (its `trainer_log.jsonl` memory
//!   record) equal the planner's per-rank prediction for that stage and world size within 2%;
//! - checkpoints: each rank saves its optimiser shard; a resume with the same world size, and one
//!   with another (the state re-sliced), continues the uninterrupted loss curve and ends on the
//!   same parameters.

#[path = "low_memory_common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{losses, memory, write_config};
use lf_trainer::memory_report::MemoryBytes;
use tch::Tensor;

/// Global batch 6 = 6 × 1 = 3 × 2 = 2 × 3.
const GLOBAL_BATCH: usize = 6;
const STEPS: usize = 4;

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port().to_string()
}

/// Starts `lf-trainer train CFG` as `world` local ranks with the global batch split evenly
/// (one process: no rendezvous at all), rank 0 reporting to `status` when given, and returns each
/// rank's output.
fn ranks(cfg: &Path, world: usize, overrides: &[String], status: Option<&Path>) -> Vec<Output> {
    ranks_with_env(cfg, world, overrides, status, &[])
}

/// [`ranks`] with extra environment variables for every rank.
fn ranks_with_env(
    cfg: &Path,
    world: usize,
    overrides: &[String],
    status: Option<&Path>,
    envs: &[(&str, &str)],
) -> Vec<Output> {
    // The port is free when picked but may be taken before rank 0 binds it (another test, another
    // process): then rank 0 fails with EADDRINUSE and the gang is started again on a new port. A
    // bounded `ddp_timeout` keeps the other ranks from waiting half an hour for a rank 0 that died.
    for _ in 0..3 {
        let outputs = ranks_once(cfg, world, overrides, status, envs);
        let port_taken = outputs.iter().any(|o| {
            let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
            err.contains("eaddrinuse") || err.contains("address already in use")
        });
        if !port_taken {
            return outputs;
        }
    }
    panic!("three ports in a row were taken before rank 0 could bind them");
}

fn ranks_once(
    cfg: &Path,
    world: usize,
    overrides: &[String],
    status: Option<&Path>,
    envs: &[(&str, &str)],
) -> Vec<Output> {
    let batch = format!("per_device_train_batch_size={}", GLOBAL_BATCH / world);
    let port = free_port();
    let own_timeout = std::fs::read_to_string(cfg).is_ok_and(|t| t.contains("ddp_timeout"));
    let procs: Vec<_> = (0..world)
        .map(|rank| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_lf-trainer"));
            c.arg("train")
                .arg(cfg)
                .arg(&batch)
                .args(overrides)
                .env_remove("LF_CONFIG")
                .env_remove("LF_JOB_NAME")
                .env_remove("LF_STATUS_FILE")
                .env_remove("LF_METRICS_ADDR")
                .env("OMP_NUM_THREADS", "1")
                .envs(envs.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            if world > 1 && !own_timeout {
                c.arg("ddp_timeout=300");
            }
            if world > 1 {
                c.env("MASTER_ADDR", "127.0.0.1")
                    .env("MASTER_PORT", &port)
                    .env("WORLD_SIZE", world.to_string())
                    .env("RANK", rank.to_string())
                    .env("LOCAL_RANK", rank.to_string());
            }
            if let (0, Some(path)) = (rank, status) {
                c.env("LF_STATUS_FILE", path);
            }
            c.spawn().unwrap()
        })
        .collect();
    procs
        .into_iter()
        .map(|p| p.wait_with_output().unwrap())
        .collect()
}

/// Trains `cfg` with `world` local ranks; every rank must succeed.
fn run(cfg: &Path, world: usize, overrides: &[String]) {
    let failures: Vec<String> = ranks(cfg, world, overrides, None)
        .iter()
        .enumerate()
        .filter(|(_, o)| !o.status.success())
        .map(|(rank, o)| {
            format!(
                "rank {rank} of {world}: {}\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every tensor of the top-level `*.safetensors` files of `out` (the adapter, or the full
/// model), sorted by name.
fn result_tensors(out: &Path) -> Vec<(String, Tensor)> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(out).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            all.extend(Tensor::read_safetensors(&p).unwrap());
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!all.is_empty(), "no weights in {}", out.display());
    all
}

fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        let d = (ta.to_kind(tch::Kind::Float) - tb.to_kind(tch::Kind::Float))
            .abs()
            .max()
            .double_value(&[]);
        worst = worst.max(d);
    }
    worst
}

fn config(dir: &Path, method: &str, extra: &str) -> PathBuf {
    let method = match method {
        "full" => "finetuning_type: full\nlearning_rate: 1.0e-4\n",
        "dora" => "use_dora: true\n",
        "offload" => "offload_optimizer: cpu\n",
        "freeze" => "finetuning_type: freeze\nfreeze_trainable_layers: 1\nlearning_rate: 1.0e-4\n",
        _ => "",
    };
    write_config(
        dir,
        &format!("max_steps: {STEPS}\nmax_grad_norm: 0.5\nseed: 7\n{method}{extra}"),
    )
}

fn within(measured: u64, planned: u64, what: &str, tol: f64) {
    let rel = (measured as f64 - planned as f64).abs() / (planned.max(1) as f64);
    assert!(
        rel <= tol,
        "{what}: measured {measured} vs planned {planned} ({:.2}%)",
        rel * 100.0
    );
}

/// Every category of rank 0's model-state bytes within 2% of the planner's.
fn states_within(tag: &str, m: &MemoryBytes, p: &MemoryBytes) {
    for (what, measured, planned) in common::categories(m, p) {
        within(measured, planned, &format!("{tag}: {what}"), 0.02);
    }
}

/// World sizes 2 and 3 × stages × LoRA/full against one process; and rank 0's memory record
/// against the planner for each.
#[test]
fn partitioned_training_equals_one_process_and_the_planners_memory() {
    for method in ["lora", "full", "dora", "offload", "freeze"] {
        let single = tempfile::tempdir().unwrap();
        run(&config(single.path(), method, ""), 1, &[]);
        let reference = result_tensors(&single.path().join("out"));
        let mut table = Vec::new();
        let cases: &[(usize, u8)] = match method {
            // DoRA's magnitude is initialised from gathered base weights under ZeRO-3.
            "dora" => &[(2, 2), (2, 3), (3, 3)],
            // Optimiser offload composes with every stage; freeze trains a subset of layers.
            "offload" => &[(2, 1), (2, 3)],
            "freeze" => &[(2, 2), (2, 3)],
            _ => &[(2, 0), (2, 1), (2, 2), (2, 3), (3, 1), (3, 2), (3, 3)],
        };
        for &(world, stage) in cases {
            let dir = tempfile::tempdir().unwrap();
            let cfg = config(dir.path(), method, &format!("zero_stage: {stage}\n"));
            run(&cfg, world, &[]);
            let out = dir.path().join("out");
            let d = max_diff(&reference, &result_tensors(&out));
            assert!(
                d < 1e-5,
                "{method}, zero_stage {stage}, world {world}: parameters differ by {d}"
            );
            let rec = memory(&out);
            let rec = rec.first().expect("a memory record");
            let (m, p) = (rec.measured, rec.planned);
            states_within(
                &format!("{method}, zero_stage {stage}, world {world}"),
                &m,
                &p,
            );
            let weights = m.trainable_weight_bytes + m.frozen_weight_bytes;
            let planned_weights = p.trainable_weight_bytes + p.frozen_weight_bytes;
            table.push(format!(
                "{method:<5} stage {stage} world {world}: max |Δparam| {d:.1e}; rank 0 weights {weights}/{planned_weights} B, grads {}/{} B, optimizer {}/{} B, host optimizer {}/{} B (measured/planned)",
                m.gradient_bytes, p.gradient_bytes, m.optimizer_bytes, p.optimizer_bytes,
                m.offloaded_optimizer_bytes, p.offloaded_optimizer_bytes
            ));
        }
        println!("{}", table.join("\n"));
    }
}

/// With a bucket of 5,000 elements every reduction and gather of stages 0–2 runs as many
/// collectives (a LoRA `A` of the tiny model has 2,048 elements, a full linear 163,840): the
/// result still equals one process.
#[test]
fn small_gradient_buckets_give_the_same_parameters() {
    for method in ["lora", "full"] {
        let single = tempfile::tempdir().unwrap();
        run(&config(single.path(), method, ""), 1, &[]);
        let reference = result_tensors(&single.path().join("out"));
        for (world, stage) in [(2, 0), (2, 1), (3, 2)] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = config(dir.path(), method, &format!("zero_stage: {stage}\n"));
            let outs = ranks_with_env(&cfg, world, &[], None, &[("LF_BUCKET_ELEMENTS", "5000")]);
            for o in &outs {
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            }
            let d = max_diff(&reference, &result_tensors(&dir.path().join("out")));
            assert!(
                d < 1e-5,
                "{method}, stage {stage}, world {world}, small buckets: parameters differ by {d}"
            );
        }
    }
}

/// The buckets rank 0 reduced during backward and at the step (`overlap_comm`'s log line).
fn overlapped_buckets(stderr: &[u8]) -> Option<(u64, u64)> {
    // Without the terminal colours tracing puts around field names.
    let mut text = String::new();
    let mut in_escape = false;
    for c in String::from_utf8_lossy(stderr).chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (false, c) => text.push(c),
            (true, _) => {}
        }
    }
    let line = text.lines().find(|l| l.contains("during_backward="))?;
    let field = |key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((field("during_backward=")?, field("at_step=")?))
}

/// `overlap_comm` (issue 18, item 4): ZeRO 0, 1 and 2 at world 2, with gradient accumulation 2
/// and clipping, end on the same parameters (≤ 1e-6) whether each unit's gradients are reduced
/// during the last micro-batch's backward or all at the step; with every layer recomputed (each
/// layer its own unit) and with none (the layers that kept their graph finish together), LoRA and
/// full fine-tuning, and on packed rows (`neat_packing`). The overlapping runs must have reduced buckets during backward, and the
/// others none.
#[test]
fn overlap_comm_gives_the_same_parameters_as_reducing_at_the_step() {
    let cases: &[(&str, u8, &str)] = &[
        ("lora", 0, "gradient_checkpointing: true\n"),
        ("lora", 1, "gradient_checkpointing: true\n"),
        ("lora", 2, "gradient_checkpointing: true\n"),
        ("lora", 2, "gradient_checkpointing: false\n"),
        ("full", 0, "gradient_checkpointing: false\n"),
        ("full", 2, "gradient_checkpointing: true\n"),
        ("lora", 1, "neat_packing: true\n"),
    ];
    let mut table = Vec::new();
    for &(method, stage, checkpointing) in cases {
        let mut results = Vec::new();
        for overlap in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let extra = format!(
                "zero_stage: {stage}\ngradient_accumulation_steps: 2\noverlap_comm: {overlap}\n{checkpointing}"
            );
            let cfg = config(dir.path(), method, &extra);
            let outs = ranks(&cfg, 2, &[], None);
            for o in &outs {
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            }
            let buckets = overlapped_buckets(&outs[0].stderr);
            if overlap {
                let (during, _) = buckets.expect("rank 0 logs the overlapped buckets");
                assert!(
                    during > 0,
                    "{method} stage {stage}: no bucket started during backward"
                );
            } else {
                assert!(
                    buckets.is_none(),
                    "{method} stage {stage}: overlapped without overlap_comm"
                );
            }
            results.push((result_tensors(&dir.path().join("out")), buckets));
        }
        let d = max_diff(&results[0].0, &results[1].0);
        let (during, at_step) = results[1].1.unwrap_or_default();
        table.push(format!(
            "{method:<4} stage {stage} {}: max |Δparam| {d:.1e}, buckets during backward {during}, at the step {at_step}",
            checkpointing.trim()
        ));
        assert!(
            d <= 1e-6,
            "{method}, zero_stage {stage}, {checkpointing}: overlap_comm changes the parameters by {d}"
        );
    }
    println!("{}", table.join("\n"));
}

/// `overlap_comm` under the preference and reward stages: DPO, KTO and a reward model (LoRA, its
/// value head reduced at the step) at world 2 under ZeRO 0 and 2, with gradient accumulation 2,
/// end on exactly the parameters of reducing every gradient at the step (the same sums, element
/// by element), and the overlapping runs reduced buckets during backward. The reference and KL
/// passes run without gradients, outside the reduction.
#[test]
fn overlap_comm_under_preference_stages_gives_the_same_parameters() {
    let assets = preference_assets();
    add_feedback(assets.path());
    let a = assets.path();
    let lora = format!(
        "adapter_name_or_path: {}\nlora_rank: 4\nlora_alpha: 8\nlearning_rate: 1.0e-3\n",
        a.join("adapter0").display()
    );
    let cases = [
        ("dpo", 2, format!("stage: dpo\ndataset: pref\n{lora}")),
        ("kto", 0, format!("stage: kto\ndataset: feedback\n{lora}")),
        (
            "rm",
            2,
            "stage: rm\ndataset: pref\nlora_target: all\nlearning_rate: 1.0e-3\n".into(),
        ),
    ];
    for (what, stage, method) in cases {
        let mut results = Vec::new();
        for overlap in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let text = format!(
                "model_name_or_path: {m}\n{method}dataset_dir: {d}\ntemplate: empty\n\
                 output_dir: {o}\nzero_stage: {stage}\ngradient_accumulation_steps: 2\n\
                 overlap_comm: {overlap}\nmax_steps: {STEPS}\nsave_steps: 0\n\
                 max_grad_norm: 0.5\nlogging_steps: 1\nseed: 7\n",
                m = a.join("model").display(),
                d = a.join("data").display(),
                o = dir.path().join("out").display(),
            );
            let cfg = dir.path().join("pref.yaml");
            std::fs::write(&cfg, text).unwrap();
            let outs = ranks(&cfg, 2, &["per_device_train_batch_size=3".into()], None);
            for o in &outs {
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            }
            let buckets = overlapped_buckets(&outs[0].stderr);
            if overlap {
                let (during, _) = buckets.expect("rank 0 logs the overlapped buckets");
                assert!(during > 0, "{what}: no bucket started during backward");
            } else {
                assert!(buckets.is_none(), "{what}: overlapped without overlap_comm");
            }
            results.push((result_tensors(&dir.path().join("out")), buckets));
        }
        let d = max_diff(&results[0].0, &results[1].0);
        let (during, at_step) = results[1].1.unwrap_or_default();
        println!(
            "{what} stage {stage}: overlap_comm vs at the step: max |Δparam| {d:e}, buckets during backward {during}, at the step {at_step}"
        );
        assert_eq!(d, 0.0, "{what}: overlap_comm changes the parameters by {d}");
    }
}

/// QLoRA under ZeRO stages 1–3: under stage 3 the packed 4-bit base is partitioned as packed
/// storage (codes and block constants) and gathered per layer; training (and the final `do_eval`)
/// equals one QLoRA process, and rank 0 holds the bytes the planner predicts (about 1/world of
/// the weights under stage 3).
#[test]
fn qlora_under_zero_equals_one_process_and_stage_3_partitions_the_packed_base() {
    // `do_eval` without an evaluation schedule: the final evaluation runs on every rank.
    let qlora = "quantization_bit: 4\nquantization_type: nf4\ndouble_quantization: true\ndo_eval: true\nval_size: 0.125\n";
    let single = tempfile::tempdir().unwrap();
    run(&config(single.path(), "lora", qlora), 1, &[]);
    let reference = result_tensors(&single.path().join("out"));
    let eval_loss = |out: &Path| -> f64 {
        let text = std::fs::read_to_string(out.join("all_results.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["eval_loss"]
            .as_f64()
            .unwrap_or_else(|| panic!("no eval_loss in {text}"))
    };
    let reference_eval = eval_loss(&single.path().join("out"));
    for (world, stage) in [(2, 1), (2, 2), (2, 3), (3, 3)] {
        let dir = tempfile::tempdir().unwrap();
        run(
            &config(dir.path(), "lora", &format!("{qlora}zero_stage: {stage}\n")),
            world,
            &[],
        );
        let out = dir.path().join("out");
        let d = max_diff(&reference, &result_tensors(&out));
        assert!(
            d < 1e-5,
            "QLoRA ZeRO-{stage} world {world}: adapter differs by {d}"
        );
        let e = eval_loss(&out);
        assert!(
            (e - reference_eval).abs() <= 1e-5 * reference_eval.abs().max(1.0),
            "QLoRA ZeRO-{stage} world {world}: eval loss {e} vs {reference_eval}"
        );
        let rec = memory(&out);
        let (m, p) = (rec[0].measured, rec[0].planned);
        states_within(&format!("QLoRA ZeRO-{stage} world {world}"), &m, &p);
        println!(
            "QLoRA stage {stage} world {world}: max |Δparam| {d:.1e}; rank 0 frozen {}/{} B, adapters {}/{} B (measured/planned)",
            m.frozen_weight_bytes, p.frozen_weight_bytes, m.trainable_weight_bytes, p.trainable_weight_bytes
        );
    }
}

/// ZeRO-3 needs every rank to run the same passes. With 48 training examples (`val_size` 0.25 of
/// 64) and a global batch of 14, each epoch's last micro-batch has 6 examples, all on rank 0
/// (rank 1 runs a label-free batch); the 16 evaluation examples make 3 batches of 6 for 2 ranks.
/// Training (7 steps, across an epoch boundary) and evaluation still finish and equal one process.
#[test]
fn zero3_with_uneven_batches_and_evaluation_equals_one_process() {
    let extra =
        "val_size: 0.25\neval_strategy: steps\neval_steps: 3\nper_device_eval_batch_size: 6\n";
    let single = tempfile::tempdir().unwrap();
    let cfg = config(single.path(), "lora", extra);
    let steps = "max_steps=7".to_string();
    let status = ranks(
        &cfg,
        1,
        &["per_device_train_batch_size=14".into(), steps.clone()],
        None,
    );
    assert!(
        status[0].status.success(),
        "{}",
        String::from_utf8_lossy(&status[0].stderr)
    );
    let out1 = single.path().join("out");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "lora", &format!("{extra}zero_stage: 3\n"));
    let outs = ranks(
        &cfg,
        2,
        &["per_device_train_batch_size=7".into(), steps],
        None,
    );
    for o in &outs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let out2 = dir.path().join("out");
    let d = max_diff(&result_tensors(&out1), &result_tensors(&out2));
    assert!(d < 1e-5, "adapter differs by {d}");
    let evals = |out: &Path| -> Vec<f64> {
        std::fs::read_to_string(out.join("trainer_log.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("eval_loss").and_then(|e| e.as_f64()))
            .collect()
    };
    let (e1, e2) = (evals(&out1), evals(&out2));
    assert!(!e1.is_empty() && e1.len() == e2.len(), "{e1:?} vs {e2:?}");
    for (a, b) in e1.iter().zip(&e2) {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "eval loss {a} vs {b}"
        );
    }
}

/// Stages 2 and 3 over 2 ranks save per-rank optimiser shards at step 2 (stage 3 gathers the
/// adapter on every rank first); resuming from that checkpoint with 2 ranks and with 3 ranks
/// (re-sliced state) gives the uninterrupted run's losses for steps 3–4 and its final adapter.
#[test]
fn sharded_checkpoints_resume_with_the_same_and_another_world_size() {
    for stage in [2, 3] {
        resume_case(stage);
    }
}

fn resume_case(stage: u8) {
    let full = tempfile::tempdir().unwrap();
    let extra = format!("zero_stage: {stage}\nsave_steps: 2\nsave_total_limit: 3\n");
    let extra = extra.as_str();
    run(&config(full.path(), "lora", extra), 2, &[]);
    let out = full.path().join("out");
    let ckpt = out.join("checkpoint-2");
    for r in 0..2 {
        let f = ckpt.join(format!("optimizer.rank-{r:05}-of-00002.safetensors"));
        assert!(f.exists(), "{} missing", f.display());
    }
    assert!(!ckpt.join("optimizer.safetensors").exists());
    let reference = result_tensors(&out);
    let reference_losses = losses(&out);
    for world in [2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "lora", extra);
        let resume = format!("resume_from_checkpoint={}", ckpt.display());
        run(&cfg, world, &[resume, "overwrite_output_dir=false".into()]);
        let got = dir.path().join("out");
        let d = max_diff(&reference, &result_tensors(&got));
        assert!(
            d < 1e-5,
            "stage {stage} resumed with {world} ranks: adapter differs by {d}"
        );
        let tail: Vec<_> = losses(&got).into_iter().filter(|(s, _)| *s > 2).collect();
        let want: Vec<_> = reference_losses.iter().filter(|(s, _)| *s > 2).collect();
        assert_eq!(tail.len(), want.len(), "{tail:?} vs {want:?}");
        for ((s, l), (_, w)) in tail.iter().zip(want) {
            assert!(
                (l - w).abs() <= 1e-5 * w.abs().max(1.0),
                "stage {stage}, step {s} after resuming with {world} ranks: loss {l} vs {w}"
            );
        }
    }
}

/// Adafactor cannot be cut into element ranges: a clear configuration error on every rank.
#[test]
fn adafactor_under_zero_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "lora", "zero_stage: 1\noptim: adafactor\n");
    let outs = ranks(&cfg, 2, &[], None);
    for o in outs {
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("adafactor") && err.contains("zero_stage"),
            "{err}"
        );
    }
}

/// The pre-flight all-reduce probe of a multi-process run reaches rank 0's status (the same
/// progress the operator copies onto the FineTuneJob).
#[test]
fn preflight_bus_bandwidth_is_on_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "lora", "");
    let status = dir.path().join("status.json");
    for o in ranks(&cfg, 2, &[], Some(&status)) {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let text = std::fs::read_to_string(&status).unwrap();
    // One JSON document per update.
    let gbps = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| find_key(&v, "busBandwidthGbps").and_then(|x| x.as_f64()))
        .next_back()
        .unwrap_or_else(|| panic!("no busBandwidthGbps in {text}"));
    assert!(gbps > 0.0 && gbps.is_finite(), "{gbps}");
}

fn find_key<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m
            .get(key)
            .or_else(|| m.values().find_map(|x| find_key(x, key))),
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

/// A rank killed mid-training under ZeRO-3 (every layer's forward is a collective gather): the
/// other rank fails with the communication exit code well within `ddp_timeout`, naming what it
/// was doing, instead of hanging.
#[test]
fn a_rank_killed_mid_training_under_zero3_fails_the_other_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "lora", "zero_stage: 3\nddp_timeout: 30\n");
    let port = free_port();
    let log = dir.path().join("out/trainer_log.jsonl");
    let spawn = |rank: usize| {
        Command::new(env!("CARGO_BIN_EXE_lf-trainer"))
            .arg("train")
            .arg(&cfg)
            .args(["per_device_train_batch_size=3", "max_steps=100000"])
            .env_remove("LF_CONFIG")
            .env_remove("LF_STATUS_FILE")
            .env_remove("LF_METRICS_ADDR")
            .env("OMP_NUM_THREADS", "1")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &port)
            .env("WORLD_SIZE", "2")
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let survivor = spawn(0);
    let mut victim = spawn(1);
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 2) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "training never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    victim.kill().unwrap();
    let killed = std::time::Instant::now();
    let _ = victim.wait();
    let out = survivor.wait_with_output().unwrap();
    let took = killed.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(lf_api::runtime::exit_code::COMMUNICATION),
        "{err}"
    );
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
    println!(
        "survivor exited {:?} {took:?} after the kill: {}",
        out.status.code(),
        err.lines().last().unwrap_or_default()
    );
}

/// The tiny model with a tied embedding (its `lm_head.weight` is then ignored by the loader).
fn tied_model(dir: &Path) -> PathBuf {
    let src = common::assets().join("model");
    let dst = dir.join("tied-model");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    let cfg = dst.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["tie_word_embeddings"] = true.into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    dst
}

/// A tied embedding belongs to two units (the embedding and the head). Full fine-tuning (the
/// embedding trains) and freeze (it is frozen) under ZeRO-3 save a checkpoint and the final
/// model, gathered unit by unit with rank 0 keeping the copies, with the same collectives on
/// every rank, and equal one process; resuming from the checkpoint ends on the same model.
#[test]
fn zero3_with_a_tied_embedding_checkpoints_and_equals_one_process() {
    let models = tempfile::tempdir().unwrap();
    let tied = tied_model(models.path());
    let model = format!(
        "model_name_or_path: {}\nsave_steps: 2\nddp_timeout: 60\n",
        tied.display()
    );
    for method in ["full", "freeze"] {
        let single = tempfile::tempdir().unwrap();
        run(&config(single.path(), method, &model), 1, &[]);
        let reference = result_tensors(&single.path().join("out"));
        let dir = tempfile::tempdir().unwrap();
        run(
            &config(dir.path(), method, &format!("{model}zero_stage: 3\n")),
            2,
            &[],
        );
        let out = dir.path().join("out");
        let d = max_diff(&reference, &result_tensors(&out));
        assert!(d < 1e-5, "{method}, tied, ZeRO-3: parameters differ by {d}");
        let weights = |out: &Path| {
            let mut t = Tensor::read_safetensors(
                out.join("checkpoint-2")
                    .join(lf_trainer::adapters::TRAINABLE_WEIGHTS),
            )
            .unwrap();
            t.sort_by(|a, b| a.0.cmp(&b.0));
            t
        };
        let d = max_diff(&weights(&single.path().join("out")), &weights(&out));
        assert!(
            d < 1e-5,
            "{method}, tied, ZeRO-3: checkpoint-2 differs by {d}"
        );
        // Resuming from it (each rank reads its ranges from the file) ends on the same model.
        let again = tempfile::tempdir().unwrap();
        let resume = format!(
            "resume_from_checkpoint={}",
            out.join("checkpoint-2").display()
        );
        run(
            &config(again.path(), method, &format!("{model}zero_stage: 3\n")),
            2,
            &[resume, "overwrite_output_dir=false".into()],
        );
        let d = max_diff(&reference, &result_tensors(&again.path().join("out")));
        assert!(
            d < 1e-5,
            "{method}, tied, ZeRO-3 resumed: parameters differ by {d}"
        );
    }
}

/// `family`'s tiny model (`common::family_assets`) with the load-balancing loss off: that loss
/// is a product of batch statistics, so a rank's share of the batch gives another value than the
/// whole batch (transformers' DDP computes it per rank too), while everything else must not
/// depend on how the batch is split.
fn without_aux_loss(family: &'static str, dir: &Path) -> PathBuf {
    let src = common::family_assets(family).join("model");
    let dst = dir.join(family);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    let cfg = dst.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["output_router_logits"] = false.into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    dst
}

/// Mixtures of experts (mixtral; qwen3_moe with a dense first layer) under ZeRO-2 and ZeRO-3
/// over two processes equal one process, LoRA (on the attention, the routers and the experts:
/// PEFT's `target_parameters`, one `lora_A`/`lora_B` pair per expert parameter holding every
/// expert's factors) and full fine-tuning (routers and experts train): a decoder layer with all
/// its experts and their adapters is one ZeRO-3 unit, gathered and released as a whole.
#[test]
fn mixtures_of_experts_under_zero_equal_one_process() {
    let models = tempfile::tempdir().unwrap();
    for family in ["mixtral", "qwen3_moe"] {
        let model = without_aux_loss(family, models.path());
        let data = common::family_assets(family).join("data");
        let experts = match family {
            "mixtral" => "q_proj,k_proj,v_proj,o_proj,gate,w1,w3,w2",
            _ => "q_proj,k_proj,v_proj,o_proj,gate,gate_up_proj,down_proj",
        };
        for method in ["lora", "full"] {
            let paths = format!(
                "model_name_or_path: {}\ndataset_dir: {}\n{}",
                model.display(),
                data.display(),
                if method == "lora" {
                    format!("lora_target: {experts}\n")
                } else {
                    String::new()
                }
            );
            let single = tempfile::tempdir().unwrap();
            run(&config(single.path(), method, &paths), 1, &[]);
            let reference = result_tensors(&single.path().join("out"));
            for stage in [2u8, 3] {
                let dir = tempfile::tempdir().unwrap();
                let cfg = config(dir.path(), method, &format!("{paths}zero_stage: {stage}\n"));
                run(&cfg, 2, &[]);
                let d = max_diff(&reference, &result_tensors(&dir.path().join("out")));
                println!("{family} {method}, zero_stage {stage}, world 2: max |Δparam| {d:.1e}");
                assert!(
                    d < 1e-5,
                    "{family} {method}, zero_stage {stage}, world 2: parameters differ by {d}"
                );
            }
        }
    }
}

/// `stage: dpo` (LoRA, the reference log-probabilities with the adapter off) on the twelve pairs of
/// `preference_trl.py assets`: two and three ZeRO-2 ranks end on one process's adapter; resumed
/// from step 2 with two ranks, the loss curve continues and the adapter ends the same. The status
/// (the FineTuneJob's progress) carries the preference metrics of `trainer_log.jsonl`.
#[test]
fn preference_training_under_zero2_equals_one_process_and_resumes() {
    let assets = preference_assets();
    let a = assets.path();
    let config = |dir: &Path| -> PathBuf {
        let text = format!(
            "model_name_or_path: {m}\nadapter_name_or_path: {ad}\nstage: dpo\ndataset: pref\n\
             dataset_dir: {d}\ntemplate: empty\noutput_dir: {o}\nlora_rank: 4\nlora_alpha: 8\n\
             zero_stage: 2\nmax_steps: {STEPS}\nsave_steps: 2\nlearning_rate: 1.0e-3\n\
             max_grad_norm: 0.5\nlogging_steps: 1\nseed: 7\n",
            m = a.join("model").display(),
            ad = a.join("adapter0").display(),
            d = a.join("data").display(),
            o = dir.join("out").display(),
        );
        let path = dir.join("dpo.yaml");
        std::fs::write(&path, text).unwrap();
        path
    };
    let one = tempfile::tempdir().unwrap();
    let status = one.path().join("status.jsonl");
    let outputs = ranks(&config(one.path()), 1, &[], Some(&status));
    assert!(
        outputs[0].status.success(),
        "{}",
        String::from_utf8_lossy(&outputs[0].stderr)
    );
    let out = one.path().join("out");
    let reference = result_tensors(&out);
    let reference_losses = losses(&out);
    assert_eq!(reference_losses.len(), STEPS);
    let last_log: serde_json::Value = std::fs::read_to_string(out.join("trainer_log.jsonl"))
        .unwrap()
        .lines()
        .rfind(|l| l.contains("rewards/accuracies"))
        .map(|l| serde_json::from_str(l).unwrap())
        .expect("trainer_log.jsonl has the preference metrics");
    let last_status: serde_json::Value = std::fs::read_to_string(&status)
        .unwrap()
        .lines()
        .rfind(|l| l.contains("\"preference\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .expect("the status has the preference metrics");
    let progress = &last_status["status"]["progress"];
    assert_eq!(progress["step"].as_u64(), Some(STEPS as u64));
    for (log_key, status_key) in [
        ("rewards/chosen", "rewardsChosen"),
        ("rewards/accuracies", "rewardsAccuracies"),
        ("rewards/margins", "rewardsMargins"),
        ("logps/rejected", "logpsRejected"),
    ] {
        assert_eq!(
            progress["preference"][status_key].as_f64(),
            last_log[log_key].as_f64(),
            "{status_key}: {progress}"
        );
    }
    for world in [2, 3] {
        let dir = tempfile::tempdir().unwrap();
        run(&config(dir.path()), world, &[]);
        let d = max_diff(&reference, &result_tensors(&dir.path().join("out")));
        println!("dpo, ZeRO-2, world {world}: adapter differs from one process by {d:.2e}");
        assert!(
            d < 1e-5,
            "dpo, ZeRO-2, world {world}: adapter differs by {d}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let resume = format!(
        "resume_from_checkpoint={}",
        out.join("checkpoint-2").display()
    );
    run(
        &config(dir.path()),
        2,
        &[resume, "overwrite_output_dir=false".into()],
    );
    let got = dir.path().join("out");
    let d = max_diff(&reference, &result_tensors(&got));
    println!("dpo resumed at step 2 with 2 ranks: adapter differs by {d:.2e}");
    assert!(d < 1e-5, "dpo resumed: adapter differs by {d}");
    let tail: Vec<_> = losses(&got).into_iter().filter(|(s, _)| *s > 2).collect();
    let want: Vec<_> = reference_losses.iter().filter(|(s, _)| *s > 2).collect();
    assert_eq!(tail.len(), want.len(), "{tail:?} vs {want:?}");
    for ((s, l), (_, w)) in tail.iter().zip(want) {
        assert!(
            (l - w).abs() <= 1e-5 * w.abs().max(1.0),
            "dpo step {s} after resuming: loss {l} vs {w}"
        );
    }
}

/// Named tensors of a training result.
type Tensors = Vec<(String, Tensor)>;

/// `preference_trl.py assets`: the tiny model, `adapter0` and the twelve pairs (`dataset: pref`).
fn preference_assets() -> tempfile::TempDir {
    let assets = tempfile::tempdir().unwrap();
    let out = Command::new(common::python())
        .arg(common::reference_script("preference_trl.py"))
        .arg(assets.path())
        .arg("assets")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "preference_trl.py assets: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assets
}

/// A run's output directory and the tensors it saved.
type World = (tempfile::TempDir, Tensors);

/// `assets`' model trained with `method` (config lines, the dataset among them) under
/// `zero_stage` by one process and by two (the global batch `batch` split between them).
fn preference_worlds(assets: &Path, method: &str, zero_stage: u8, batch: usize) -> (World, World) {
    let config = |dir: &Path| -> PathBuf {
        let text = format!(
            "model_name_or_path: {m}\n{method}\
             dataset_dir: {d}\ntemplate: empty\noutput_dir: {o}\nzero_stage: {zero_stage}\n\
             max_steps: {STEPS}\nsave_steps: 0\nmax_grad_norm: 0.5\n\
             logging_steps: 1\nseed: 7\n",
            m = assets.join("model").display(),
            d = assets.join("data").display(),
            o = dir.join("out").display(),
        );
        let path = dir.join("pref.yaml");
        std::fs::write(&path, text).unwrap();
        path
    };
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let per_device = |world: usize| vec![format!("per_device_train_batch_size={}", batch / world)];
    run(&config(one.path()), 1, &per_device(1));
    run(&config(two.path()), 2, &per_device(2));
    let world1 = result_tensors(&one.path().join("out"));
    let world2 = result_tensors(&two.path().join("out"));
    ((one, world1), (two, world2))
}

/// The twelve pairs of `preference_trl.py assets` trained under ZeRO-2 with `method` (config
/// lines) by one process and by two: the assets, and the result of each (tensors of the output).
fn preference_zero2_worlds(method: &str) -> (tempfile::TempDir, Tensors, Tensors) {
    let assets = preference_assets();
    let ((_, world1), (_, world2)) = preference_worlds(
        assets.path(),
        &format!("dataset: pref\n{method}"),
        2,
        GLOBAL_BATCH,
    );
    (assets, world1, world2)
}

/// The largest difference of `b` from `a`, absolute and relative to the largest magnitude of
/// `a`'s tensor it is in.
fn max_diffs(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let (mut abs, mut rel) = (0.0f64, 0.0f64);
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        let (ta, tb) = (ta.to_kind(tch::Kind::Float), tb.to_kind(tch::Kind::Float));
        let d = (&ta - &tb).abs().max().double_value(&[]);
        let scale = ta.abs().max().double_value(&[]).max(f64::MIN_POSITIVE);
        abs = abs.max(d);
        rel = rel.max(d / scale);
    }
    (abs, rel)
}

/// Adds the KTO dataset `feedback` to `assets`' data: twelve tagged examples (ten desirable)
/// with one answer, so that every KL sequence (a prompt with another example's answer, rotated
/// within chunks of `per_device_train_batch_size`) is an example itself whatever the chunks:
/// one process's six examples and two processes' three each then have the same KL sequences, and
/// the same estimate only when it is taken over both processes.
fn add_feedback(assets: &Path) {
    let data = assets.join("data");
    let rows: Vec<serde_json::Value> = (0..12)
        .map(|i| {
            serde_json::json!({
                "instruction": format!("<s> question number {i} about the river"),
                "output": " the river flows near the old tree </s>",
                "kto_tag": i % 6 != 5,
            })
        })
        .collect();
    std::fs::write(
        data.join("feedback.json"),
        serde_json::to_string(&rows).unwrap(),
    )
    .unwrap();
    let info_path = data.join("dataset_info.json");
    let mut info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&info_path).unwrap()).unwrap();
    info["feedback"] = serde_json::json!({
        "file_name": "feedback.json",
        "columns": {"prompt": "instruction", "response": "output", "kto_tag": "kto_tag"},
    });
    std::fs::write(&info_path, info.to_string()).unwrap();
}

/// ZeRO-3 under the preference and reward stages: two ranks, the parameters partitioned (and
/// for `full` DPO the frozen reference model too, as the planner counts it; for `rm` the value
/// head with the head unit), end on one process's result, for DPO with LoRA (the reference the
/// adapter off) and with full fine-tuning, KTO (its KL estimate taken over both ranks' KL
/// sequences) and reward models (LoRA, and full: the exported `…ForSequenceClassification`).
#[test]
fn preference_and_reward_training_under_zero3_equal_one_process() {
    let assets = preference_assets();
    add_feedback(assets.path());
    let a = assets.path();
    let lora = format!(
        "adapter_name_or_path: {}\nlora_rank: 4\nlora_alpha: 8\nlearning_rate: 1.0e-3\n",
        a.join("adapter0").display()
    );
    let cases = [
        ("dpo LoRA", format!("stage: dpo\ndataset: pref\n{lora}")),
        (
            "dpo full",
            "stage: dpo\ndataset: pref\nfinetuning_type: full\nlearning_rate: 1.0e-4\n".into(),
        ),
        ("kto LoRA", format!("stage: kto\ndataset: feedback\n{lora}")),
        (
            "rm LoRA",
            "stage: rm\ndataset: pref\nlora_target: all\nlearning_rate: 1.0e-3\n".into(),
        ),
        (
            "rm full",
            "stage: rm\ndataset: pref\nfinetuning_type: full\nlearning_rate: 1.0e-4\n".into(),
        ),
    ];
    for (what, method) in cases {
        let ((one, world1), (two, world2)) = preference_worlds(a, &method, 3, GLOBAL_BATCH);
        let (d, rel) = max_diffs(&world1, &world2);
        println!(
            "{what}, ZeRO-3, world 2 vs world 1: max |Δparam| {d:.2e}, max relative {rel:.2e} ({} tensors)",
            world1.len()
        );
        assert!(
            d < 1e-5,
            "{what}, ZeRO-3, world 2: parameters differ by {d}"
        );
        // Rank 0 holds the planner's per-rank model state (the reference's shards among the
        // frozen weights of `full` DPO).
        let rec = memory(&two.path().join("out"));
        let rec = rec.first().expect("a memory record");
        let (m, p) = (rec.measured, rec.planned);
        println!(
            "{what}, ZeRO-3, world 2: rank 0 frozen weights {}/{} B, trainable {}/{} B (measured/planned)",
            m.frozen_weight_bytes, p.frozen_weight_bytes, m.trainable_weight_bytes, p.trainable_weight_bytes
        );
        states_within(&format!("{what}, ZeRO-3, world 2"), &m, &p);
        if what.starts_with("kto") {
            // The KL term was live (above 0) in some step, and both runs logged the same.
            let kl = |dir: &Path| -> Vec<f64> {
                std::fs::read_to_string(dir.join("out/trainer_log.jsonl"))
                    .unwrap()
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .filter_map(|v| v["kl"].as_f64())
                    .collect()
            };
            let (k1, k2) = (kl(one.path()), kl(two.path()));
            println!("kto KL estimate per step: world 1 {k1:?}, world 2 {k2:?}");
            assert_eq!(k1.len(), STEPS, "{k1:?}");
            assert!(k1.iter().any(|&k| k > 0.0), "the KL term stayed 0: {k1:?}");
            for (x, y) in k1.iter().zip(&k2) {
                assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "KL {x} vs {y}");
            }
        }
    }
}
/// Reward models under ZeRO-3 at world 2 checkpoint at step 2 (the value head gathered from its
/// shards: in its own file for `full`, in the adapter for LoRA) and a run resumed from there with
/// two ranks (each reading its ranges of the weights and of the head) ends on the uninterrupted
/// run's result, value head included.
#[test]
fn reward_models_under_zero3_resume() {
    let assets = preference_assets();
    let a = assets.path();
    let cases = [
        (
            "full",
            "finetuning_type: full\nlearning_rate: 1.0e-4\n",
            "score.weight",
        ),
        (
            "LoRA",
            "lora_target: all\nlearning_rate: 1.0e-3\n",
            "base_model.model.score.weight",
        ),
    ];
    for (what, method, head) in cases {
        let config = |dir: &Path| -> PathBuf {
            let text = format!(
                "model_name_or_path: {m}\nstage: rm\ndataset: pref\n{method}\
                 dataset_dir: {d}\ntemplate: empty\noutput_dir: {o}\n\
                 zero_stage: 3\nmax_steps: {STEPS}\nsave_steps: 2\nmax_grad_norm: 0.5\n\
                 logging_steps: 1\nseed: 7\n",
                m = a.join("model").display(),
                d = a.join("data").display(),
                o = dir.join("out").display(),
            );
            let path = dir.join("rm.yaml");
            std::fs::write(&path, text).unwrap();
            path
        };
        let whole = tempfile::tempdir().unwrap();
        run(&config(whole.path()), 2, &[]);
        let out = whole.path().join("out");
        let checkpoint = out.join("checkpoint-2");
        let resumed = tempfile::tempdir().unwrap();
        run(
            &config(resumed.path()),
            2,
            &[
                format!("resume_from_checkpoint={}", checkpoint.display()),
                "overwrite_output_dir=false".into(),
            ],
        );
        let got = result_tensors(&resumed.path().join("out"));
        assert!(got.iter().any(|(n, _)| n == head), "{what}: no value head");
        let (d, rel) = max_diffs(&result_tensors(&out), &got);
        println!(
            "rm {what}, ZeRO-3, resumed at step 2 with 2 ranks: max |Δparam| {d:.2e}, max relative {rel:.2e}"
        );
        assert!(
            d < 1e-6,
            "rm {what} resumed under ZeRO-3: parameters differ by {d}"
        );
    }
}

/// Preference and reward training where a process runs out of pairs, under ZeRO-2 (with
/// `overlap_comm`, on by default) and ZeRO-3: twelve examples in steps of ten leave each epoch's
/// last step two, so a rank may train a micro-batch without pairs (and evaluates a round without
/// any: twelve in batches of five), taking part in the gathers, the reductions started during
/// backward and KTO's KL all-reduce with nothing of its own. Training ends on one process's
/// result; the evaluations equal one process's for DPO and the reward model (KTO's estimate is
/// over each round's examples, which one process and two group differently).
#[test]
fn preference_with_uneven_batches_and_evaluation_equals_one_process() {
    let assets = preference_assets();
    add_feedback(assets.path());
    let a = assets.path();
    let lora = format!(
        "adapter_name_or_path: {}\nlora_rank: 4\nlora_alpha: 8\nlearning_rate: 1.0e-3\n",
        a.join("adapter0").display()
    );
    let eval = |dataset: &str| {
        format!(
            "eval_dataset: {dataset}\neval_strategy: steps\neval_steps: 2\nper_device_eval_batch_size: 5\n"
        )
    };
    let cases = [
        (
            "dpo full",
            format!(
                "stage: dpo\ndataset: pref\nfinetuning_type: full\nlearning_rate: 1.0e-4\n{}",
                eval("pref")
            ),
        ),
        (
            "kto LoRA",
            format!("stage: kto\ndataset: feedback\n{lora}{}", eval("feedback")),
        ),
        // SGD: AdamW's per-element normalisation turns the rounding of differently padded
        // micro-batches into whole update differences where a gradient is near 0 (one process
        // alone, batch 10 against 5 × 2 accumulation, ends 3.5e-5 apart on a LoRA B).
        (
            "rm LoRA",
            format!(
                "stage: rm\ndataset: pref\nlora_target: all\noptim: sgd\nlearning_rate: 0.05\n{}",
                eval("pref")
            ),
        ),
    ];
    for ((what, method), stage) in cases.iter().flat_map(|c| [(c, 2u8), (c, 3)]) {
        let ((one, world1), (two, world2)) = preference_worlds(a, method, stage, 10);
        let (d, rel) = max_diffs(&world1, &world2);
        println!(
            "{what}, ZeRO-{stage}, uneven batches, world 2 vs world 1: max |Δparam| {d:.2e}, max relative {rel:.2e}"
        );
        assert!(
            d < 1e-5,
            "{what}, ZeRO-{stage}, uneven batches: parameters differ by {d}"
        );
        let evals = |dir: &Path| -> Vec<f64> {
            std::fs::read_to_string(dir.join("out/trainer_log.jsonl"))
                .unwrap()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v.get("eval_loss").and_then(|e| e.as_f64()))
                .collect()
        };
        let (e1, e2) = (evals(one.path()), evals(two.path()));
        assert!(!e1.is_empty() && e1.len() == e2.len(), "{e1:?} vs {e2:?}");
        if !what.starts_with("kto") {
            for (x, y) in e1.iter().zip(&e2) {
                assert!(
                    (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                    "{what}: eval loss {x} vs {y}"
                );
            }
        }
    }
}

/// `stage: dpo` with `finetuning_type: full` (the reference a frozen copy of the starting
/// weights, on every rank): two ZeRO-2 ranks end on one process's model.
#[test]
fn full_preference_training_under_zero2_equals_one_process() {
    let (assets, reference, two) =
        preference_zero2_worlds("stage: dpo\nfinetuning_type: full\nlearning_rate: 1.0e-4\n");
    let moved = max_diff(&result_tensors(&assets.path().join("model")), &reference);
    assert!(moved > 1e-6, "the model did not train ({moved})");
    let d = max_diff(&reference, &two);
    println!(
        "dpo full, ZeRO-2, world 2: model differs from one process by {d:.2e} (training moved it {moved:.2e})"
    );
    assert!(d < 1e-5, "dpo full, ZeRO-2, world 2: model differs by {d}");
}

/// `stage: rm` with LoRA and its value head: two ZeRO-2 ranks end on one process's adapter and
/// head (each rank scores its own pairs; the loss is the mean over every rank's pairs).
#[test]
fn reward_model_under_zero2_equals_one_process() {
    let (_assets, reference, two) =
        preference_zero2_worlds("stage: rm\nlora_target: all\nlearning_rate: 1.0e-3\n");
    assert!(
        reference
            .iter()
            .any(|(name, _)| name == "base_model.model.score.weight"),
        "the adapter holds no value head"
    );
    let moved = reference
        .iter()
        .filter(|(name, _)| name.contains("lora_B"))
        .map(|(_, t)| t.abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    assert!(moved > 1e-6, "the adapter did not train ({moved})");
    let d = max_diff(&reference, &two);
    println!("rm LoRA, ZeRO-2, world 2: adapter and value head differ from one process by {d:.2e}");
    assert!(d < 1e-5, "rm, ZeRO-2, world 2: adapter differs by {d}");
}
