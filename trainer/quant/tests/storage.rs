//! Stored bytes per parameter, measured from the tensors a quantised weight holds, and the
//! int8 scheme's documented error bound.

use lf_api::training::QuantizationType;
use lf_quant::QuantizedWeight;
use tch::{Device, Kind, Tensor};

#[test]
fn storage_bytes_per_parameter_match_the_qlora_arithmetic() {
    tch::manual_seed(0);
    // A Llama-8B-sized square projection: 4096 × 4096.
    let w = Tensor::randn([4096, 4096], (Kind::BFloat16, Device::Cpu)) * 0.02;
    let n = (4096 * 4096) as f64;
    let per_param = |q: &QuantizedWeight| q.storage_bytes() as f64 / n;

    let nf4 = QuantizedWeight::quantize_4bit(&w, QuantizationType::Nf4, false).expect("nf4");
    let t0 = std::time::Instant::now();
    let nf4_dq = QuantizedWeight::quantize_4bit(&w, QuantizationType::Nf4, true).expect("nf4 dq");
    println!(
        "nf4 + double quantisation of a 4096×4096 bf16 weight on CPU: {:.3}s",
        t0.elapsed().as_secs_f64()
    );
    let int8 = QuantizedWeight::quantize_8bit(&w).expect("int8");
    let t0 = std::time::Instant::now();
    let back = nf4_dq.dequantize(Kind::BFloat16);
    println!(
        "dequantising it to bf16: {:.3}s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(back.size(), [4096, 4096]);
    println!(
        "bytes/param: nf4 {:.5}, nf4+dq {:.5}, int8 {:.5}",
        per_param(&nf4),
        per_param(&nf4_dq),
        per_param(&int8)
    );
    // 0.5 + 4/64 = 0.5625 (plus 128 B of code tables).
    assert!(
        (per_param(&nf4) - 0.5625).abs() < 1e-5,
        "{}",
        per_param(&nf4)
    );
    // 0.5 + 1/64 + 4/(64·256) = 0.515869 (plus 1 KiB map, 128 B tables, 4 B offset).
    assert!(
        (per_param(&nf4_dq) - 0.515_869).abs() < 1e-4,
        "{}",
        per_param(&nf4_dq)
    );
    assert!(
        (per_param(&int8) - 1.0625).abs() < 1e-5,
        "{}",
        per_param(&int8)
    );
    assert_eq!(nf4.shape(), (4096, 4096));
}

#[test]
fn int8_error_is_within_half_a_step_per_block() {
    tch::manual_seed(1);
    let w = Tensor::randn([37, 101], (Kind::Float, Device::Cpu));
    let q = QuantizedWeight::quantize_8bit(&w).expect("int8");
    let back = q.dequantize(Kind::Float);
    // Per-block bound: |w − ŵ| ≤ absmax/254 (+ f32 rounding).
    let flat = w
        .reshape([-1])
        .constant_pad_nd([0, 64 - (37 * 101) % 64])
        .reshape([-1, 64]);
    let absmax = flat.abs().amax([1], true);
    let err = (back
        .reshape([-1])
        .constant_pad_nd([0, 64 - (37 * 101) % 64])
        .reshape([-1, 64])
        - &flat)
        .abs();
    let worst = (err - absmax / 254.0 * (1.0 + 1e-5))
        .max()
        .double_value(&[]);
    assert!(worst <= 1e-7, "int8 error exceeds half a step by {worst}");
    let rel = ((back - &w).square().mean(Kind::Float).sqrt() / w.square().mean(Kind::Float).sqrt())
        .double_value(&[]);
    println!("int8 relative RMS error on a Gaussian weight: {rel:.5}");
    assert!(rel < 0.02, "{rel}");
}

#[test]
fn bad_inputs_are_rejected_with_a_reason() {
    let v = Tensor::ones([8], (Kind::Float, Device::Cpu));
    assert!(
        QuantizedWeight::quantize_4bit(&v, QuantizationType::Nf4, false)
            .unwrap_err()
            .to_string()
            .contains("2-D")
    );
    let i = Tensor::ones([8, 8], (Kind::Int64, Device::Cpu));
    assert!(QuantizedWeight::quantize_8bit(&i)
        .unwrap_err()
        .to_string()
        .contains("Int64"));
    let nan = Tensor::full([4, 4], f64::NAN, (Kind::Float, Device::Cpu));
    assert!(
        QuantizedWeight::quantize_4bit(&nan, QuantizationType::Fp4, true)
            .unwrap_err()
            .to_string()
            .contains("NaN")
    );
}

#[test]
fn to_device_and_dequantize_round_trip_on_the_same_device() {
    let w = Tensor::randn([16, 64], (Kind::Float, Device::Cpu));
    let q = QuantizedWeight::quantize_4bit(&w, QuantizationType::Nf4, true).expect("nf4");
    let moved = q.to_device(Device::Cpu);
    assert_eq!(moved.storage_bytes(), q.storage_bytes());
    assert!(moved
        .dequantize(Kind::Float)
        .equal(&q.dequantize(Kind::Float)));
    // NF4 with absmax scaling: every element within the widest code gap (≈0.17·absmax).
    let err = (q.dequantize(Kind::Float) - &w)
        .abs()
        .max()
        .double_value(&[]);
    let absmax = w.abs().max().double_value(&[]);
    assert!(err <= 0.17 * absmax, "{err} vs absmax {absmax}");
}
