//! The low-memory options end to end through the `lf-trainer` binary on the CPU, on the tiny
//! model of `low_memory_common` (2 layers, hidden 256) and 8 examples of its alpaca data
//! (`max_samples: 8`, batch 4: 2 steps per epoch, so 24 steps memorise them and the loss falls
//! from ≈ ln(vocab) ≈ 4.5 to ≈ 3; on the full random-word data it plateaus near 4.2 whatever the
//! optimiser).
//!
//! * [`qlora_trains_resumes_and_matches_peft_on_bitsandbytes`]: QLoRA (NF4 + double quantisation,
//!   fp32 compute) trains 24 steps — the loss falls, the PEFT adapter and a checkpoint are
//!   written —; a second run resumed from the step-12 checkpoint logs the same losses for steps
//!   13–24 as the uninterrupted run and ends with the same adapter; and the adapter on
//!   **bitsandbytes'** quantised base through transformers + PEFT
//!   (`tests/reference/qlora_peft_logits.py`, `BitsAndBytesConfig(load_in_4bit, nf4, double
//!   quant, compute fp32)` on the CPU) gives the logits lf-trainer's model gives for the same
//!   token ids (base + adapter loaded the way `lf-trainer eval/chat` load them): within fp32
//!   noise against bitsandbytes' generic `matmul_4bit` path, and within bf16 rounding against its
//!   default CPU inference, which on AVX512-BF16 CPUs runs a fused bf16 kernel.
//! * [`phi3_qlora_matches_peft_on_bitsandbytes`]: the same comparison for a Phi-3, whose fused
//!   `qkv_proj` and `gate_up_proj` are quantised whole (as bitsandbytes quantises them), on 40
//!   tokens (past its window and its longrope switch).
//! * [`low_memory_optimizers_train`]: `adamw_8bit`, `adafactor` and `offload_optimizer: cpu` each
//!   train 24 steps with a falling loss and write the adapter and a checkpoint with optimiser
//!   state; the offloaded AdamW (fp32 master and moments on the host) follows plain AdamW's
//!   losses.

mod low_memory_common;

use std::path::Path;

use lf_api::training::TrainingConfig;
use low_memory_common::{losses, mean, python, reference_script, train, write_config, HIDDEN};
use tch::{Device, Kind, Tensor};

const STEPS: usize = 24;
/// What every run here shares: 8 examples, 24 steps, a checkpoint at step 12.
const RUN: &str = "max_samples: 8\nlearning_rate: 5.0e-3\nmax_steps: 24\nsave_steps: 12\n";
const QLORA: &str = "quantization_bit: 4\nquantization_type: nf4\ndouble_quantization: true\n";

/// The losses of all `STEPS` steps fall clearly: the mean of the last 3 is at most 85 % of the
/// mean of the first 3 (observed ≈ 65 %; the noise between neighbouring steps is ≈ 0.1).
fn assert_learns(label: &str, l: &[(u64, f64)]) {
    assert_eq!(l.len(), STEPS, "{label}: one logged loss per step: {l:?}");
    let (first, last) = (mean(&l[..3]), mean(&l[STEPS - 3..]));
    println!("{label:<28} loss first 3 {first:.4} → last 3 {last:.4}");
    assert!(
        last <= 0.85 * first,
        "{label}: the loss does not fall clearly ({first:.4} → {last:.4}): {l:?}"
    );
}

/// The adapter and the step-12 checkpoint (with optimiser state) exist.
fn assert_outputs(label: &str, out: &Path) {
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        assert!(out.join(f).is_file(), "{label}: no {f}");
    }
    let ck = lf_trainer::checkpoint::newest_valid(out)
        .unwrap_or_else(|| panic!("{label}: no complete checkpoint in {}", out.display()));
    assert_eq!(ck.step, 12, "{label}");
    assert!(
        ck.path.join("adapter_model.safetensors").is_file()
            && ck
                .path
                .join(lf_trainer::interfaces::OPTIMIZER_FILE)
                .is_file(),
        "{label}: checkpoint {} lacks the adapter or the optimizer state",
        ck.path.display()
    );
}

fn read_tensors(path: &Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn qlora_trains_resumes_and_matches_peft_on_bitsandbytes() {
    let dir = tempfile::tempdir().unwrap();
    let full_dir = dir.path().join("uninterrupted");
    std::fs::create_dir_all(&full_dir).unwrap();
    let cfg = write_config(&full_dir, &format!("{RUN}{QLORA}"));
    train(&cfg, &[]);
    let out = full_dir.join("out");
    let full = losses(&out);
    assert_learns("QLoRA nf4 + double quant", &full);
    assert_outputs("QLoRA", &out);

    // Resume from the step-12 checkpoint into a fresh output directory: the data order, the
    // adapter and the optimiser state are restored, so steps 13–24 repeat the same arithmetic.
    // Both runs use one libtorch thread on the same machine, so the results are reproducible bit
    // for bit; the tolerance only allows for fp32 rounding noise (1e-6 relative) should a kernel
    // ever pick a different summation order, which is 1e5 times below the step-to-step change
    // of the loss (≈ 0.1).
    let resumed_dir = dir.path().join("resumed");
    std::fs::create_dir_all(&resumed_dir).unwrap();
    let checkpoint = out.join("checkpoint-12");
    let cfg_resumed = write_config(
        &resumed_dir,
        &format!(
            "{RUN}{QLORA}resume_from_checkpoint: {}\n",
            checkpoint.display()
        ),
    );
    let o = train(&cfg_resumed, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("resumed from"), "{err}");
    let resumed = losses(&resumed_dir.join("out"));
    let steps: Vec<u64> = resumed.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, (13..=24).collect::<Vec<u64>>(), "{resumed:?}");
    let mut worst = 0f64;
    for ((s, a), (t, b)) in full[12..].iter().zip(&resumed) {
        assert_eq!(s, t);
        let d = (a - b).abs();
        worst = worst.max(d);
        assert!(
            d <= 1e-6 * a.abs().max(1.0),
            "step {s}: uninterrupted loss {a} vs resumed {b}"
        );
    }
    let (a, b) = (
        read_tensors(&out.join("adapter_model.safetensors")),
        read_tensors(&resumed_dir.join("out/adapter_model.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    let adapter_diff = a
        .iter()
        .zip(&b)
        .map(|((n, x), (m, y))| {
            assert_eq!(n, m);
            max_abs_diff(x, y)
        })
        .fold(0f64, f64::max);
    assert!(
        adapter_diff <= 1e-5,
        "final adapters differ by {adapter_diff}"
    );
    println!(
        "resume from step 12: max |loss diff| over steps 13-24 {worst:.3e}, max |adapter diff| {adapter_diff:.3e}"
    );

    // The adapter on bitsandbytes' 4-bit base through transformers + PEFT.
    let model_dir = low_memory_common::assets().join("model");
    assert_matches_peft_on_bitsandbytes("llama", &model_dir, &out, &cfg, dir.path(), 16);
}

/// Phi-3's fused `qkv_proj` and `gate_up_proj` stored as NF4 + double quantisation (each
/// quantised whole, as bitsandbytes quantises them): QLoRA trains 24 steps through the binary on
/// the tiny Phi-3 of `low_memory_common` (half of each head rotated, a window of 16, longrope
/// past 32 positions), and its adapter on bitsandbytes' base through transformers + PEFT gives
/// lf-trainer's logits on 40 tokens (the long RoPE factors and the window both in play).
#[test]
fn phi3_qlora_matches_peft_on_bitsandbytes() {
    let dir = tempfile::tempdir().unwrap();
    let a = low_memory_common::family_assets("phi3");
    let cfg = low_memory_common::write_config_for(a, dir.path(), &format!("{RUN}{QLORA}"));
    train(&cfg, &[]);
    let out = dir.path().join("out");
    assert_learns("phi3 QLoRA nf4 + double quant", &losses(&out));
    let adapter: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        adapter["target_modules"],
        serde_json::json!(["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])
    );
    assert_matches_peft_on_bitsandbytes("phi3", &a.join("model"), &out, &cfg, dir.path(), 40);
}

/// The adapter in `out` on bitsandbytes' 4-bit base of `model_dir` through transformers + PEFT
/// (`qlora_peft_logits.py`) gives the logits lf-trainer's model gives for `n` token ids (base +
/// adapter loaded the way `lf-trainer eval/chat` load them, from the training config `cfg`).
fn assert_matches_peft_on_bitsandbytes(
    label: &str,
    model_dir: &Path,
    out: &Path,
    cfg: &Path,
    dir: &Path,
    n: i64,
) {
    let ids: Vec<i64> = (0..n).map(|i| (1 + 11 * i) % 89).collect();
    let ids_arg = ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let reference = dir.join("peft_logits.safetensors");
    let py = std::process::Command::new(python())
        .arg(reference_script("qlora_peft_logits.py"))
        .arg(model_dir)
        .arg(out)
        .arg(&reference)
        .args(["--ids", &ids_arg, "--compute-dtype", "float32"])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "qlora_peft_logits.py failed: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    println!("reference: {}", String::from_utf8_lossy(&py.stdout).trim());
    let reference: std::collections::HashMap<String, Tensor> =
        read_tensors(&reference).into_iter().collect();
    let (peft_logits, peft_base, peft_fused) = (
        &reference["logits"],
        &reference["base_logits"],
        &reference["fused_logits"],
    );

    let cfg = TrainingConfig::from_yaml_file(cfg)
        .unwrap()
        .with_overrides(&[format!("adapter_name_or_path={}", out.display())])
        .unwrap();
    let lm = lf_trainer::setup::model(&cfg, model_dir, Device::Cpu, false, None).unwrap();
    assert_eq!(lm.architecture().hidden_size as usize, HIDDEN);
    let ours = tch::no_grad(|| lm.forward_logits(&Tensor::from_slice(&ids).reshape([1, -1])))
        .to_kind(Kind::Float);
    assert_eq!(ours.size(), peft_logits.size());

    // Against bitsandbytes' generic 4-bit path (dequantize_4bit of its own codes, fp32 matmul):
    // both sides compute in fp32 from the same NF4 codes and double-quantised constants (lf-quant
    // is bit-identical to bitsandbytes, trainer/quant/tests/bnb_parity.rs), so the dequantised
    // weights are equal and only fp32 summation order differs (~1e-6 of the logit scale). We
    // allow 1e-4 of the logit scale — a bf16 rounding step is 3.9e-3 — and require the adapter's
    // own effect on the logits to be at least 100 times that, so a wrongly applied adapter
    // (scaling, transposition, a missing module) cannot pass.
    let scale = peft_logits.abs().max().double_value(&[]).max(1.0);
    let diff = max_abs_diff(&ours, peft_logits);
    let effect = max_abs_diff(peft_logits, peft_base);
    // Against bitsandbytes' default CPU inference, which on AVX512-BF16 machines runs a fused
    // kernel in bf16 (input and absmax cast to bf16 whatever bnb_4bit_compute_dtype says; see the
    // script's docstring): bf16-level agreement, 2e-2 of the logit scale (≈ 5 bf16 rounding steps
    // over the two layers and the head), still 10 times below the adapter's effect.
    let fused_diff = max_abs_diff(&ours, peft_fused);
    println!(
        "{label}: lf-trainer vs PEFT on bitsandbytes nf4+DQ (fp32 generic path): max |Δlogit| {diff:.3e} (logit scale {scale:.3}, relative {:.3e}); vs bitsandbytes' default CPU inference (fused bf16): {fused_diff:.3e} (relative {:.3e}); adapter effect {effect:.3}",
        diff / scale,
        fused_diff / scale
    );
    assert!(
        diff <= 1e-4 * scale,
        "{label}: logits differ from PEFT on the bitsandbytes base by {diff} (scale {scale})"
    );
    assert!(
        fused_diff <= 2e-2 * scale,
        "{label}: logits differ from PEFT on bitsandbytes' fused CPU path by {fused_diff} (scale {scale})"
    );
    assert!(
        effect >= 100.0 * 1e-4 * scale && effect >= 10.0 * 2e-2 * scale,
        "{label}: the adapter barely changes the logits ({effect}): the comparison would not see a wrong adapter"
    );
}

#[test]
fn low_memory_optimizers_train() {
    let dir = tempfile::tempdir().unwrap();
    let mut curves = Vec::new();
    for (label, extra) in [
        ("adamw_8bit", "optim: adamw_8bit\n"),
        ("adafactor", "optim: adafactor\n"),
        ("offload_optimizer cpu", "offload_optimizer: cpu\n"),
        ("adamw (reference)", ""),
    ] {
        let run_dir = dir.path().join(label.replace(' ', "_"));
        std::fs::create_dir_all(&run_dir).unwrap();
        let cfg = write_config(&run_dir, &format!("{RUN}{extra}"));
        train(&cfg, &[]);
        let out = run_dir.join("out");
        let l = losses(&out);
        assert_learns(label, &l);
        assert_outputs(label, &out);
        curves.push((label, l));
    }
    // Offloading moves where AdamW's fp32 state and master copy live, not its arithmetic (the
    // parameters are fp32 already, so the master copy equals them).
    let offload = &curves[2].1;
    let plain = &curves[3].1;
    for ((s, a), (_, b)) in offload.iter().zip(plain) {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "step {s}: offloaded AdamW loss {a} vs AdamW {b}"
        );
    }
    // Sanity: the three optimisers are not the same run.
    assert!(curves[0].1 != curves[1].1 && curves[1].1 != curves[2].1);
}
