//! `gradient_checkpointing: auto`: each configuration recomputes the fewest decoder layers that
//! fit with the headroom. Checked at the boundaries: the chosen count fits, one fewer does not
//! (evaluated with that count fixed through `recompute_layers`), on a sweep of GPU sizes that
//! goes from "everything recomputed" to "nothing recomputed"; explicit `true`/`false` and ZeRO-3
//! are obeyed.

use lf_api::training::TrainingConfig;
use lf_planner::{evaluate, preset, replan_after_oom, search, PlannerInput};

const MODEL: &str = "meta-llama/Meta-Llama-3-8B";
// Checkpoints stay on the GPU here (`offload_activations` is checked in lf-planner's long_context).
const LORA: &str =
    "bf16: true\nlora_rank: 16\ncutoff_len: 4096\nper_device_train_batch_size: 1\noffload_activations: false";

fn input(yaml: &str, gib: f64) -> PlannerInput {
    let arch = preset(MODEL).expect("preset");
    let training = TrainingConfig::from_yaml_str(yaml).expect("config");
    PlannerInput::new(MODEL, arch, training, (gib * (1u64 << 30) as f64) as u64)
}

/// `(recomputed, fits)` of the one-GPU, ZeRO-0 plan at micro-batch 1.
fn chosen(yaml: &str, gib: f64) -> (u32, bool) {
    let p = evaluate(&input(yaml, gib), 1, 0, false, 1);
    let r = p.recomputation.expect("the plan says what it recomputes");
    assert_eq!(r.layers, 32);
    (r.recomputed, p.fits)
}

#[test]
fn the_fewest_recomputed_layers_that_fit_across_gpu_sizes() {
    let auto = format!("{LORA}\ngradient_checkpointing: auto");
    let fixed = |r: u32| format!("{LORA}\ngradient_checkpointing: auto\nrecompute_layers: {r}");
    let mut seen = Vec::new();
    let mut last = u32::MAX;
    // 0.25 GiB steps from below the all-recomputed peak to above the none-recomputed one.
    for step in 0..=200 {
        let gib = 20.0 + 0.25 * step as f64;
        let (r, fits) = chosen(&auto, gib);
        if !fits {
            // Nothing fits: every layer (or all but one, whichever is lower) is reported.
            assert!(r >= 31, "{gib} GiB: {r}");
            assert!(!chosen(&fixed(32), gib).1 && !chosen(&fixed(31), gib).1);
            continue;
        }
        assert!(
            chosen(&fixed(r), gib).1,
            "{gib} GiB: {r} recomputed must fit"
        );
        if r > 0 {
            assert!(
                !chosen(&fixed(r - 1), gib).1,
                "{gib} GiB: {} recomputed fits too, so {r} is not the fewest",
                r - 1
            );
        }
        assert!(r <= last, "more memory never recomputes more: {gib} GiB");
        last = r;
        seen.push(r);
    }
    println!("recomputed layers chosen: {seen:?}");
    assert_eq!(
        seen.first(),
        Some(&32),
        "the tightest fit recomputes every layer"
    );
    assert_eq!(seen.last(), Some(&0), "ample memory recomputes none");
    assert!(
        seen.iter().any(|r| *r > 0 && *r < 31),
        "some GPU size keeps part of the layers"
    );
}

#[test]
fn explicit_settings_and_zero3_are_obeyed() {
    let on = format!("{LORA}\ngradient_checkpointing: true");
    let off = format!("{LORA}\ngradient_checkpointing: false");
    assert_eq!(chosen(&on, 80.0), (32, true));
    assert_eq!(chosen(&off, 24.0).0, 0);
    let p = evaluate(
        &input(&format!("{LORA}\ngradient_checkpointing: auto"), 80.0),
        2,
        3,
        false,
        1,
    );
    assert_eq!(p.recomputation.map(|r| r.recomputed), Some(32));
}

#[test]
fn the_table_and_the_summary_say_it() {
    let s = search(&input(
        &format!("{LORA}\ngradient_checkpointing: auto"),
        24.0,
    ));
    let plan = s.chosen.as_ref().expect("fits on 24 GiB");
    let r = plan.recomputation.expect("recomputation");
    assert!(r.recomputed > 0 && r.recomputed < 32, "{r:?}");
    let phrase = format!("recompute {} of 32 layers", r.recomputed);
    assert!(lf_planner::format_table(&s).contains(&phrase));
    assert!(lf_planner::plan_summary(plan).contains(&phrase));
}

#[test]
fn after_an_oom_the_same_configuration_recomputes_more_layers() {
    // 30 GiB: part of the layers keep their activations.
    let input = input(&format!("{LORA}\ngradient_checkpointing: auto"), 30.0);
    let first = search(&input).chosen.expect("fits on 30 GiB");
    let before = first.recomputation.expect("recomputation").recomputed;
    let measured = (first.per_gpu.peak_bytes as f64 * 1.05) as u64;
    let again = replan_after_oom(&input, &first, Some(measured));
    let plan = again.chosen.expect("a plan below the failed one");
    let after = plan.recomputation.expect("recomputation").recomputed;
    println!("recomputed layers: {before} before the OOM, {after} after");
    assert_eq!(
        (plan.gpus, plan.zero_stage, plan.micro_batch_size),
        (first.gpus, first.zero_stage, first.micro_batch_size)
    );
    assert!(after > before, "{after} <= {before}");
    assert!(plan.per_gpu.peak_bytes < first.per_gpu.peak_bytes);
}
