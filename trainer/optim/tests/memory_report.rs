//! Measured memory for one tiny-but-real configuration: a Llama-style model with 8 decoder
//! layers, hidden 512, intermediate 1408, and LoRA r = 16 on all seven linears. Base-weight bytes
//! come from the tensors each scheme actually holds ([`QuantizedWeight::storage_bytes`]);
//! optimizer-state bytes from [`Optimizer::state_bytes`] after a real step. Run with
//! `--nocapture` to see the table.

mod common;

use common::{set_grad, training_config};
use lf_api::training::{OffloadDevice, Optim, QuantizationType};
use lf_quant::QuantizedWeight;
use tch::{Device, Kind, Tensor};

const LAYERS: usize = 8;
const HIDDEN: i64 = 512;
const INTERMEDIATE: i64 = 1408;
const RANK: i64 = 16;

/// (name, [out, in]) of every decoder linear.
fn linears() -> Vec<(String, [i64; 2])> {
    let mut v = Vec::new();
    for l in 0..LAYERS {
        for (m, shape) in [
            ("self_attn.q_proj", [HIDDEN, HIDDEN]),
            ("self_attn.k_proj", [HIDDEN, HIDDEN]),
            ("self_attn.v_proj", [HIDDEN, HIDDEN]),
            ("self_attn.o_proj", [HIDDEN, HIDDEN]),
            ("mlp.gate_proj", [INTERMEDIATE, HIDDEN]),
            ("mlp.up_proj", [INTERMEDIATE, HIDDEN]),
            ("mlp.down_proj", [HIDDEN, INTERMEDIATE]),
        ] {
            v.push((format!("model.layers.{l}.{m}"), shape));
        }
    }
    v
}

#[test]
fn measured_weight_and_optimizer_state_bytes() {
    tch::manual_seed(0);
    let linears = linears();
    let base_params: i64 = linears.iter().map(|(_, s)| s[0] * s[1]).sum();

    // ---- base weights ---------------------------------------------------------------------
    let mut bf16 = 0u64;
    let (mut nf4, mut nf4_dq, mut int8) = (0u64, 0u64, 0u64);
    let t0 = std::time::Instant::now();
    for (_, shape) in &linears {
        let w = (Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)) * 0.02)
            .to_kind(Kind::BFloat16);
        bf16 += (w.numel() * w.kind().elt_size_in_bytes()) as u64;
        nf4 += QuantizedWeight::quantize_4bit(&w, QuantizationType::Nf4, false)
            .expect("nf4")
            .storage_bytes();
        nf4_dq += QuantizedWeight::quantize_4bit(&w, QuantizationType::Nf4, true)
            .expect("nf4 dq")
            .storage_bytes();
        int8 += QuantizedWeight::quantize_8bit(&w)
            .expect("int8")
            .storage_bytes();
    }
    let secs = t0.elapsed().as_secs_f64();
    let per = |b: u64| b as f64 / base_params as f64;
    println!("config: {LAYERS} layers, hidden {HIDDEN}, intermediate {INTERMEDIATE}, LoRA r={RANK} on all linears");
    println!("decoder linear parameters: {base_params}");
    println!("{:<22}{:>14}{:>12}", "base weights", "bytes", "B/param");
    for (name, b) in [
        ("bf16", bf16),
        ("nf4", nf4),
        ("nf4 + double quant", nf4_dq),
        ("int8 (block 64)", int8),
    ] {
        println!("{name:<22}{b:>14}{:>12.4}", per(b));
    }
    println!(
        "(quantising {} linears three ways took {secs:.2}s on CPU)",
        linears.len()
    );
    assert_eq!(bf16, 2 * base_params as u64);
    assert!(
        (per(nf4) - 0.5625).abs() < 1e-3
            && (per(nf4_dq) - 0.5159).abs() < 2e-3
            && (per(int8) - 1.0625).abs() < 1e-3
    );

    // ---- LoRA optimizer states ------------------------------------------------------------
    let lora: Vec<(String, Tensor)> = linears
        .iter()
        .flat_map(|(name, [out, inp])| {
            [
                (
                    format!("{name}.lora_A.weight"),
                    Tensor::randn([RANK, *inp], (Kind::Float, Device::Cpu)),
                ),
                (
                    format!("{name}.lora_B.weight"),
                    Tensor::zeros([*out, RANK], (Kind::Float, Device::Cpu)),
                ),
            ]
        })
        .map(|(n, t)| (n, t.set_requires_grad(true)))
        .collect();
    let trainable: u64 = lora.iter().map(|(_, t)| t.numel() as u64).sum();
    let params: Vec<Tensor> = lora.iter().map(|(_, t)| t.shallow_clone()).collect();
    println!("LoRA trainable parameters (fp32): {trainable}");
    println!(
        "{:<26}{:>12}{:>12}{:>12}{:>10}",
        "optimizer", "device B", "host B", "master B", "B/param"
    );
    let mut measured = Vec::new();
    for (label, optim, offload) in [
        ("adamw_torch", Optim::AdamwTorch, false),
        ("adamw_8bit", Optim::Adamw8bit, false),
        ("adafactor", Optim::Adafactor, false),
        ("sgd", Optim::Sgd, false),
        ("adamw_torch + offload", Optim::AdamwTorch, true),
    ] {
        let mut cfg = training_config();
        cfg.optim = optim;
        if offload {
            cfg.offload_optimizer = OffloadDevice::Cpu;
        }
        let mut opt = lf_optim::build(&cfg, &lora).expect("build");
        opt.zero_grad(&params);
        for p in &params {
            set_grad(p, &Tensor::randn(p.size(), (Kind::Float, Device::Cpu)));
        }
        opt.step(&params, 1e-4).expect("step");
        let d = opt.state_bytes_detail();
        println!(
            "{label:<26}{:>12}{:>12}{:>12}{:>10.4}",
            d.device,
            d.host,
            d.master,
            opt.state_bytes() as f64 / trainable as f64
        );
        measured.push((label, d));
    }
    // Consistency with the documented per-parameter figures.
    let by = |l: &str| {
        measured
            .iter()
            .find(|(n, _)| *n == l)
            .map(|(_, d)| *d)
            .unwrap_or_default()
    };
    assert_eq!(by("adamw_torch").device, 8 * trainable);
    assert_eq!(by("sgd").device, 0);
    let q8 = by("adamw_8bit").device as f64 / trainable as f64;
    assert!(
        (q8 - (2.0 + 8.0 / 256.0)).abs() < 0.01,
        "8-bit AdamW holds {q8} B/param"
    );
    // Factored second moment: one f32 per row and per column of each matrix.
    let factored: u64 = lora
        .iter()
        .map(|(_, t)| 4 * t.size().iter().sum::<i64>() as u64)
        .sum();
    assert_eq!(by("adafactor").device, factored);
    let off = by("adamw_torch + offload");
    assert_eq!(
        (off.device, off.host, off.master),
        (0, 12 * trainable, 4 * trainable)
    );
}
