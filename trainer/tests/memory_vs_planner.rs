//! The planner's model-state prediction against what `lf-trainer` actually holds, per low-memory
//! option, on a tiny-but-not-trivial model (2 layers, hidden 256; see `low_memory_common`).
//!
//! For every option the `lf-trainer` binary trains 2 steps; after its first optimiser step it
//! writes a `{"memory": ...}` line to `trainer_log.jsonl` with bytes **measured from the tensors
//! it holds** (base weights as stored — quantised codes, absmax and double-quantisation constants
//! for QLoRA —, trainable parameters, their `.grad`, optimiser state on the device and in host
//! memory) next to lf-planner's prediction for the same config. This test checks that:
//!
//! * the `planned` figures are lf-planner's own ([`Inventory`] computed here from the model's
//!   `config.json` and the config), not a copy of its arithmetic;
//! * planned and measured weight bytes (frozen and trainable), gradient bytes and optimiser-state
//!   bytes agree within 1 % (offload: 0 optimiser bytes on the device on both sides, and the host
//!   side agrees within 1 %);
//! * for dense bases the measured frozen bytes equal the bytes of the checkpoint's tensors in the
//!   compute dtype (a measurement that involves neither the planner nor the trainer's accounting).
//!
//! `cargo test -p lf-trainer --test memory_vs_planner -- --nocapture` prints the table.

mod low_memory_common;

use std::path::Path;

use lf_api::training::{OffloadDevice, TrainingConfig};
use lf_api::ModelArchitecture;
use lf_planner::memory::Inventory;
use lf_trainer::memory_report::MemoryBytes;
use low_memory_common::{assets, family_assets, memory, train, write_config, write_config_for};

/// `(label, extra config)` of every option measured.
const OPTIONS: &[(&str, &str)] = &[
    ("LoRA, fp32 base, adamw", ""),
    ("LoRA, bf16 base", "bf16: true"),
    (
        "QLoRA nf4",
        "bf16: true\nquantization_bit: 4\nquantization_type: nf4\ndouble_quantization: false",
    ),
    (
        "QLoRA nf4 + double quant",
        "bf16: true\nquantization_bit: 4\nquantization_type: nf4\ndouble_quantization: true",
    ),
    (
        "QLoRA fp4",
        "bf16: true\nquantization_bit: 4\nquantization_type: fp4\ndouble_quantization: false",
    ),
    ("int8 base (bit 8)", "bf16: true\nquantization_bit: 8"),
    ("adamw_8bit", "optim: adamw_8bit"),
    ("adafactor", "optim: adafactor"),
    ("sgd", "optim: sgd"),
    ("offload_optimizer cpu", "offload_optimizer: cpu"),
    // Every layer's checkpoint in host memory, MLPs in tiles of 8 tokens; every example is
    // longer than 16 tokens (the alpaca template alone is), so each row is the `cutoff_len` the
    // planner plans for.
    (
        "offload_activations, cutoff 16",
        "gradient_checkpointing: true\noffload_activations: true\ncutoff_len: 16\nloss_chunk_size: 8",
    ),
    (
        "QLoRA nf4+DQ, adamw_8bit, offload",
        "bf16: true\nquantization_bit: 4\noptim: adamw_8bit\noffload_optimizer: cpu",
    ),
    ("pure_bf16, adafactor", "pure_bf16: true\noptim: adafactor"),
    ("full, fp32", "finetuning_type: full"),
    ("full, bf16 AMP", "finetuning_type: full\nbf16: true"),
    (
        "freeze 1 layer, bf16 AMP",
        "finetuning_type: freeze\nfreeze_trainable_layers: 1\nbf16: true",
    ),
    // Preference training holds no second copy: the reference is the base with the adapter off.
    (
        "DPO sigmoid, LoRA, bf16",
        "stage: dpo\ndataset: tiny_pref\nbf16: true",
    ),
    (
        "DPO sigmoid, QLoRA nf4+DQ",
        "stage: dpo\ndataset: tiny_pref\nbf16: true\nquantization_bit: 4",
    ),
    // A reference-free loss needs no reference at all, so full fine-tuning runs.
    (
        "ORPO, full, bf16 AMP",
        "stage: dpo\npref_loss: orpo\ndataset: tiny_pref\nfinetuning_type: full\nbf16: true",
    ),
    // A reference-based loss without LoRA holds a frozen copy of the starting weights.
    (
        "DPO sigmoid, full, bf16 AMP",
        "stage: dpo\ndataset: tiny_pref\nfinetuning_type: full\nbf16: true",
    ),
    (
        "DPO sigmoid, freeze 1 layer, fp32",
        "stage: dpo\ndataset: tiny_pref\nfinetuning_type: freeze\nfreeze_trainable_layers: 1",
    ),
];

fn ratio(measured: u64, planned: u64) -> f64 {
    if planned == 0 {
        if measured == 0 {
            1.0
        } else {
            f64::INFINITY
        }
    } else {
        measured as f64 / planned as f64
    }
}

fn within_1_percent(measured: u64, planned: u64) -> bool {
    (ratio(measured, planned) - 1.0).abs() <= 0.01
}

/// Bytes of every tensor of the model's safetensors file, stored with `elem` bytes per element.
fn checkpoint_bytes(model_dir: &Path, elem: u64) -> u64 {
    tch::Tensor::read_safetensors(model_dir.join("model.safetensors"))
        .unwrap()
        .iter()
        .map(|(_, t)| t.numel() as u64 * elem)
        .sum()
}

#[test]
fn planner_predicts_the_model_state_the_trainer_holds() {
    let model_dir = assets().join("model");
    let arch = ModelArchitecture::from_json_str(
        &std::fs::read_to_string(model_dir.join("config.json")).unwrap(),
    )
    .unwrap();
    println!(
        "model: {} layers, hidden {}, intermediate {}, vocab {}, untied head; LoRA r=8 on all linears; bytes per process after the first optimiser step",
        arch.num_hidden_layers, arch.hidden_size, arch.intermediate_size, arch.vocab_size
    );
    println!(
        "{:<34} {:>10} {:>10} {:>7} | {:>9} {:>9} {:>7} | {:>9} {:>9} {:>7} | {:>9} {:>9} {:>7}",
        "option",
        "weights P",
        "measured",
        "ratio",
        "grads P",
        "measured",
        "ratio",
        "optim P",
        "measured",
        "ratio",
        "host P",
        "measured",
        "ratio"
    );
    let mut failures = Vec::new();
    let mut rows: Vec<(&str, MemoryBytes)> = Vec::new();
    for (label, extra) in OPTIONS {
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = write_config(dir.path(), extra);
        train(&cfg_path, &[]);
        let records = memory(&dir.path().join("out"));
        assert_eq!(
            records.len(),
            1,
            "{label}: one memory record per attempt: {records:?}"
        );
        let r = &records[0];
        assert_eq!(
            r.step, 1,
            "{label}: measured after the first optimiser step"
        );
        let (m, p) = (r.measured, r.planned);

        // The planned figures are the planner's, for this architecture and config.
        let cfg = TrainingConfig::from_yaml_file(&cfg_path).unwrap();
        let inv = Inventory::new(&arch, &cfg);
        let offload = cfg.offload_optimizer == OffloadDevice::Cpu;
        let states = inv.states(0, 1, offload);
        assert_eq!(p.frozen_weight_bytes, inv.frozen_weight_bytes, "{label}");
        assert_eq!(
            p.trainable_weight_bytes, inv.trainable_weight_bytes,
            "{label}"
        );
        assert_eq!(p.gradient_bytes, states.gradients, "{label}");
        assert_eq!(p.optimizer_bytes, states.optimizer, "{label}");
        assert_eq!(
            p.offloaded_optimizer_bytes,
            if offload {
                inv.offloaded_optimizer_bytes
            } else {
                0
            },
            "{label}"
        );

        let weights = (
            m.frozen_weight_bytes + m.trainable_weight_bytes,
            p.frozen_weight_bytes + p.trainable_weight_bytes,
        );
        println!(
            "{label:<34} {:>10} {:>10} {:>7.4} | {:>9} {:>9} {:>7.4} | {:>9} {:>9} {:>7.4} | {:>9} {:>9} {:>7.4}",
            weights.1,
            weights.0,
            ratio(weights.0, weights.1),
            p.gradient_bytes,
            m.gradient_bytes,
            ratio(m.gradient_bytes, p.gradient_bytes),
            p.optimizer_bytes,
            m.optimizer_bytes,
            ratio(m.optimizer_bytes, p.optimizer_bytes),
            p.offloaded_optimizer_bytes,
            m.offloaded_optimizer_bytes,
            ratio(m.offloaded_optimizer_bytes, p.offloaded_optimizer_bytes),
        );
        if p.offloaded_activation_bytes > 0 {
            println!(
                "{:<34} checkpoints in host memory: planned {}, measured {}",
                "", p.offloaded_activation_bytes, m.offloaded_activation_bytes
            );
        }
        for (what, measured, planned) in low_memory_common::categories(&m, &p) {
            if !within_1_percent(measured, planned) {
                failures.push(format!(
                    "{label}: {what}: measured {measured} vs planned {planned}"
                ));
            }
        }
        if offload {
            assert_eq!(m.optimizer_bytes, 0, "{label}: nothing stays on the device");
            assert!(m.offloaded_optimizer_bytes > 0, "{label}: {m:?}");
        } else if !extra.contains("sgd") {
            assert!(m.optimizer_bytes > 0, "{label}: {m:?}");
        }
        rows.push((label, m));
    }
    assert!(
        failures.is_empty(),
        "planner and trainer disagree:\n{}",
        failures.join("\n")
    );

    // Outside checks on the measurements themselves.
    let get = |label: &str| rows.iter().find(|(l, _)| *l == label).unwrap().1;
    let fp32 = get("LoRA, fp32 base, adamw");
    let bf16 = get("LoRA, bf16 base");
    assert_eq!(fp32.frozen_weight_bytes, checkpoint_bytes(&model_dir, 4));
    assert_eq!(bf16.frozen_weight_bytes, checkpoint_bytes(&model_dir, 2));
    assert_eq!(
        get("full, fp32").trainable_weight_bytes,
        checkpoint_bytes(&model_dir, 4)
    );
    let nf4 = get("QLoRA nf4").frozen_weight_bytes;
    let dq = get("QLoRA nf4 + double quant").frozen_weight_bytes;
    let int8 = get("int8 base (bit 8)").frozen_weight_bytes;
    assert!(
        dq < nf4 && nf4 < int8 && int8 < bf16.frozen_weight_bytes,
        "dq {dq} < nf4 {nf4} < int8 {int8} < bf16 {}",
        bf16.frozen_weight_bytes
    );
    // Only the LoRA tensors of ≥ 4096 elements (A of down_proj, B of gate/up_proj) get 8-bit
    // moments here; the rest keep fp32 ones.
    assert!(get("adamw_8bit").optimizer_bytes < fp32.optimizer_bytes * 3 / 4);
    assert!(get("adafactor").optimizer_bytes < fp32.optimizer_bytes / 4);
    assert_eq!(get("sgd").optimizer_bytes, 0);
    // Offload keeps an fp32 master copy next to the fp32 moments on the host.
    assert_eq!(
        get("offload_optimizer cpu").offloaded_optimizer_bytes,
        fp32.optimizer_bytes + fp32.trainable_weight_bytes
    );
}

/// The same agreement on the families with more norms per layer or other linears: qwen3 (q/k
/// norms), Gemma 3 text (four hidden-size norms and q/k norms per layer, sliding layers shorter
/// than the sequences) and Phi-3 (fused `qkv_proj` and `gate_up_proj`, quantised whole; partial
/// rotary, longrope and a window), and on the mixtures of experts mixtral and qwen3_moe (every
/// expert resident and, for QLoRA, quantised one by one; a dense router; Qwen3-MoE's first layer
/// dense; trained with the load-balancing loss), for LoRA, QLoRA, full and freeze; and on the
/// mixtures of experts QLoRA with adapters on the router and the quantised experts too (PEFT's
/// `target_parameters`, named as PEFT's `target_modules` names them).
#[test]
fn planner_predicts_the_model_state_of_the_newer_families() {
    const FAMILY_OPTIONS: &[(&str, &str)] = &[
        ("LoRA, fp32 base, adamw", ""),
        (
            "QLoRA nf4 + double quant",
            "bf16: true\nquantization_bit: 4\nquantization_type: nf4\ndouble_quantization: true",
        ),
        ("full, fp32", "finetuning_type: full"),
        (
            "freeze 1 layer, bf16 AMP",
            "finetuning_type: freeze\nfreeze_trainable_layers: 1\nbf16: true",
        ),
    ];
    let mut failures = Vec::new();
    for family in ["qwen3", "gemma3_text", "phi3", "mixtral", "qwen3_moe"] {
        let a = family_assets(family);
        let model_dir = a.join("model");
        let arch = ModelArchitecture::from_json_str(
            &std::fs::read_to_string(model_dir.join("config.json")).unwrap(),
        )
        .unwrap();
        let experts = match family {
            "mixtral" => Some("q_proj,gate,w1,w3,w2"),
            "qwen3_moe" => Some("q_proj,gate,gate_proj,up_proj,down_proj"),
            _ => None,
        }
        .map(|t| {
            format!("bf16: true\nquantization_bit: 4\nquantization_type: nf4\nlora_target: {t}")
        });
        let options = FAMILY_OPTIONS
            .iter()
            .map(|&(l, e)| (l, e.to_string()))
            .chain(experts.map(|e| ("QLoRA, router + experts", e)));
        for (label, extra) in options {
            let dir = tempfile::tempdir().unwrap();
            let cfg_path = write_config_for(a, dir.path(), &extra);
            train(&cfg_path, &[]);
            let records = memory(&dir.path().join("out"));
            assert_eq!(records.len(), 1, "{family} {label}: {records:?}");
            let (m, p) = (records[0].measured, records[0].planned);
            let cfg = TrainingConfig::from_yaml_file(&cfg_path).unwrap();
            let inv = Inventory::new(&arch, &cfg);
            let states = inv.states(0, 1, false);
            assert_eq!(
                p.frozen_weight_bytes, inv.frozen_weight_bytes,
                "{family} {label}"
            );
            assert_eq!(
                p.trainable_weight_bytes, inv.trainable_weight_bytes,
                "{family} {label}"
            );
            assert_eq!(p.gradient_bytes, states.gradients, "{family} {label}");
            assert_eq!(p.optimizer_bytes, states.optimizer, "{family} {label}");
            for (what, measured, planned) in low_memory_common::categories(&m, &p) {
                println!("{family:<12} {label:<26} {what:<18} planned {planned:>9} measured {measured:>9}");
                if !within_1_percent(measured, planned) {
                    failures.push(format!(
                        "{family} {label}: {what}: measured {measured} vs planned {planned}"
                    ));
                }
            }
            if label == "LoRA, fp32 base, adamw" {
                assert_eq!(
                    m.frozen_weight_bytes,
                    checkpoint_bytes(&model_dir, 4),
                    "{family}"
                );
            }
            if label == "full, fp32" {
                assert_eq!(
                    m.trainable_weight_bytes,
                    checkpoint_bytes(&model_dir, 4),
                    "{family}"
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "planner and trainer disagree:\n{}",
        failures.join("\n")
    );
}
