//! The planner's numbers are internally consistent: the peak covers every static component and the
//! largest transient row, grows with batch and sequence length, and never grows with a higher ZeRO
//! stage for full fine-tuning (or with optimiser offload).

use lf_api::training::TrainingConfig;
use lf_api::Plan;
use lf_planner::{evaluate, preset, PlannerInput};

fn input(model: &str, yaml: &str) -> PlannerInput {
    let arch = preset(model).unwrap_or_else(|| panic!("no preset {model}"));
    let training = TrainingConfig::from_yaml_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
    PlannerInput::new(model, arch, training, 80 << 30)
}

const CASES: &[(&str, &str)] = &[
    ("meta-llama/Meta-Llama-3-8B", "bf16: true\nlora_rank: 16"),
    (
        "meta-llama/Meta-Llama-3-8B",
        "bf16: true\nquantization_bit: 4\nlora_rank: 32\nlora_dropout: 0.05",
    ),
    (
        "meta-llama/Meta-Llama-3-8B",
        "bf16: true\nfinetuning_type: full",
    ),
    (
        "meta-llama/Llama-3.2-1B",
        "pure_bf16: true\nfinetuning_type: full\noptim: adamw_8bit",
    ),
    (
        "meta-llama/Llama-2-7b-hf",
        "fp16: true\nfinetuning_type: freeze\nflash_attn: eager",
    ),
    (
        "Qwen/Qwen2.5-7B",
        "bf16: true\nuse_dora: true\ngradient_checkpointing: false",
    ),
    (
        "meta-llama/Llama-2-70b-hf",
        "bf16: true\nlora_rank: 64\nloss_chunk_size: 0",
    ),
];

fn check_peak_covers_components(p: &Plan, what: &str) {
    let b = &p.per_gpu;
    let static_part = b.weights_bytes + b.optimizer_bytes + b.buffers_bytes;
    let largest_transient = b
        .activations_bytes
        .max(b.logits_bytes)
        .max(b.gradients_bytes);
    assert!(
        b.peak_bytes >= static_part + largest_transient + b.overhead_bytes,
        "{what}: {b:?}"
    );
    for (name, v) in [
        ("weights", b.weights_bytes),
        ("gradients", b.gradients_bytes),
        ("optimizer", b.optimizer_bytes),
        ("activations", b.activations_bytes),
        ("logits", b.logits_bytes),
        ("buffers", b.buffers_bytes),
    ] {
        assert!(b.peak_bytes >= v, "{what}: peak below {name}");
    }
    let sum = b.weights_bytes
        + b.gradients_bytes
        + b.optimizer_bytes
        + b.activations_bytes
        + b.logits_bytes
        + b.buffers_bytes
        + b.overhead_bytes;
    assert!(
        b.peak_bytes <= sum,
        "{what}: peak above the sum of the rows"
    );
}

#[test]
fn peak_covers_every_component() {
    for (model, yaml) in CASES {
        for (gpus, stage) in [(1u32, 0u8), (4, 1), (4, 2), (8, 3)] {
            for offload in [false, true] {
                let p = evaluate(&input(model, yaml), gpus, stage, offload, 2);
                check_peak_covers_components(
                    &p,
                    &format!("{model} {yaml:?} {gpus} GPUs ZeRO-{stage} offload {offload}"),
                );
            }
        }
    }
}

#[test]
fn monotone_in_micro_batch_and_sequence_length() {
    for (model, yaml) in CASES {
        // Large accumulation keeps gradients persistent at every micro-batch, so only the batch changes.
        // The recomputation is fixed (`auto` would trade it for the batch and fill the GPU).
        let recompute = if yaml.contains("gradient_checkpointing") {
            ""
        } else {
            "\ngradient_checkpointing: true"
        };
        let yaml = format!(
            "{yaml}{recompute}\ngradient_accumulation_steps: 64\nper_device_train_batch_size: 16"
        );
        let base = input(model, &yaml);
        let mut last = 0;
        for micro in [1u32, 2, 4, 8, 16] {
            let p = evaluate(&base, 1, 0, false, micro).per_gpu.peak_bytes;
            assert!(
                p >= last,
                "{model}: peak fell from {last} to {p} at micro-batch {micro}"
            );
            last = p;
        }
        let mut last = 0;
        for s in [256usize, 512, 1024, 2048, 4096, 8192] {
            let mut i = base.clone();
            i.training.cutoff_len = s;
            let p = evaluate(&i, 1, 0, false, 1).per_gpu.peak_bytes;
            assert!(
                p >= last,
                "{model}: peak fell from {last} to {p} at cutoff_len {s}"
            );
            last = p;
        }
    }
}

#[test]
fn zero_stages_never_increase_the_peak_of_full_fine_tuning() {
    for model in [
        "meta-llama/Llama-3.2-1B",
        "meta-llama/Meta-Llama-3-8B",
        "meta-llama/Llama-2-70b-hf",
    ] {
        for accum in [1, 8] {
            let i = input(model, &format!("bf16: true\nfinetuning_type: full\nper_device_train_batch_size: 1\ngradient_accumulation_steps: {accum}"));
            for gpus in [2u32, 4, 8, 16] {
                let peaks: Vec<u64> = (0..=3)
                    .map(|s| evaluate(&i, gpus, s, false, 1).per_gpu.peak_bytes)
                    .collect();
                for w in peaks.windows(2) {
                    assert!(
                        w[1] <= w[0],
                        "{model} accum {accum} on {gpus} GPUs: ZeRO peaks {peaks:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn offload_and_quantisation_only_lower_the_peak() {
    for (model, yaml) in CASES {
        let i = input(model, yaml);
        for stage in 0..=3u8 {
            let on = evaluate(&i, 4, stage, true, 1).per_gpu.peak_bytes;
            let off = evaluate(&i, 4, stage, false, 1).per_gpu.peak_bytes;
            assert!(
                on <= off,
                "{model} {yaml:?} ZeRO-{stage}: offload raised the peak"
            );
        }
    }
    let lora = evaluate(
        &input("meta-llama/Meta-Llama-3-8B", "bf16: true"),
        1,
        0,
        false,
        1,
    )
    .per_gpu;
    let q8 = evaluate(
        &input(
            "meta-llama/Meta-Llama-3-8B",
            "bf16: true\nquantization_bit: 8",
        ),
        1,
        0,
        false,
        1,
    )
    .per_gpu;
    let q4 = evaluate(
        &input(
            "meta-llama/Meta-Llama-3-8B",
            "bf16: true\nquantization_bit: 4",
        ),
        1,
        0,
        false,
        1,
    )
    .per_gpu;
    assert!(q4.weights_bytes < q8.weights_bytes && q8.weights_bytes < lora.weights_bytes);
}

#[test]
fn gradient_checkpointing_and_chunked_loss_save_memory() {
    let on = evaluate(
        &input(
            "meta-llama/Meta-Llama-3-8B",
            "bf16: true\ncutoff_len: 4096\ngradient_checkpointing: true",
        ),
        1,
        0,
        false,
        1,
    )
    .per_gpu;
    let off = evaluate(
        &input(
            "meta-llama/Meta-Llama-3-8B",
            "bf16: true\ncutoff_len: 4096\ngradient_checkpointing: false",
        ),
        1,
        0,
        false,
        1,
    )
    .per_gpu;
    assert!(
        off.activations_bytes > 10 * on.activations_bytes,
        "{on:?} {off:?}"
    );
    let full = evaluate(
        &input(
            "meta-llama/Meta-Llama-3-8B",
            "bf16: true\ncutoff_len: 4096\nloss_chunk_size: 0\ngradient_checkpointing: true",
        ),
        1,
        0,
        false,
        1,
    )
    .per_gpu;
    assert!(full.logits_bytes > 3 * on.logits_bytes, "{on:?} {full:?}");
    let eager = evaluate(
        &input(
            "meta-llama/Meta-Llama-3-8B",
            "bf16: true\ncutoff_len: 4096\nflash_attn: eager\ngradient_checkpointing: true",
        ),
        1,
        0,
        false,
        1,
    )
    .per_gpu;
    // One layer's s² scores + probabilities: 6·a·s²·b bytes in bf16.
    assert_eq!(
        eager.activations_bytes - on.activations_bytes + 4 * 32 * 4096,
        6 * 32 * 4096 * 4096
    );
}

/// The trainer recomputes layers under ZeRO-3 even when `gradient_checkpointing` is off, so the
/// planner's stage-3 activations do not depend on that flag (and stages 0–2 do).
#[test]
fn zero3_activations_assume_layer_recomputation() {
    let model = "meta-llama/Meta-Llama-3-8B";
    let on = input(
        model,
        "bf16: true\nlora_rank: 16\ncutoff_len: 4096\ngradient_checkpointing: true",
    );
    let off = input(
        model,
        "bf16: true\nlora_rank: 16\ncutoff_len: 4096\ngradient_checkpointing: false",
    );
    let act = |i: &PlannerInput, stage| evaluate(i, 4, stage, false, 1).per_gpu.activations_bytes;
    assert_eq!(act(&on, 3), act(&off, 3));
    assert!(act(&off, 2) > act(&on, 2));
}
