//! The search order (fewest GPUs, lowest stage, offload last, largest micro-batch keeping the global
//! batch), fixed choices, failure messages, re-planning after an OOM, job errors, and speed.

use std::time::Instant;

use lf_api::crd::{OffloadChoice, ZeroStageChoice};
use lf_api::training::TrainingConfig;
use lf_api::FineTuneJob;
use lf_planner::{evaluate, preset, replan_after_oom, search, PlanError, PlannerInput};

const GIB: u64 = 1 << 30;

fn input(model: &str, yaml: &str, gib: u64, per_node: u32, max: u32) -> PlannerInput {
    let arch = preset(model).unwrap();
    let training = TrainingConfig::from_yaml_str(yaml).unwrap();
    PlannerInput {
        gpus_per_node: per_node,
        max_gpus: max,
        ..PlannerInput::new(model, arch, training, gib * GIB)
    }
}

#[test]
fn fewest_gpus_then_lowest_stage() {
    let i = input(
        "meta-llama/Meta-Llama-3-8B",
        "bf16: true\nfinetuning_type: full\nper_device_train_batch_size: 1",
        80,
        8,
        16,
    );
    let r = search(&i);
    let chosen = r.chosen.clone().expect("fits");
    // Every option before the chosen one uses no more GPUs and, with equal GPUs, a lower stage; none fits.
    for o in &r.options[..r.options.len() - 1] {
        assert!(!o.fits);
        assert!(
            o.gpus < chosen.gpus || (o.gpus == chosen.gpus && o.zero_stage < chosen.zero_stage)
        );
    }
    // Nothing with fewer GPUs fits at any stage.
    for gpus in 1..chosen.gpus {
        for stage in 0..=3 {
            assert!(
                !evaluate(&i, gpus, stage, false, 1).fits,
                "{gpus} GPUs ZeRO-{stage} fits but was not chosen"
            );
        }
    }
    assert!(!chosen.offload_optimizer);
    assert!(r.options.last().unwrap().chosen);
}

#[test]
fn one_gpu_when_it_fits_and_global_batch_is_kept() {
    let i = input(
        "meta-llama/Meta-Llama-3-8B",
        "bf16: true\nper_device_train_batch_size: 8\ngradient_accumulation_steps: 4",
        80,
        8,
        8,
    );
    let p = search(&i).chosen.unwrap();
    assert_eq!((p.gpus, p.zero_stage), (1, 0));
    assert_eq!(p.global_batch(), 32);
    // On 24 GB the micro-batch shrinks and accumulation grows to keep 32.
    let i = input("meta-llama/Meta-Llama-3-8B", "bf16: true\nper_device_train_batch_size: 8\ngradient_accumulation_steps: 4\ncutoff_len: 4096", 24, 1, 1);
    let p = search(&i).chosen.unwrap();
    assert!(p.micro_batch_size < 8, "{p:?}");
    assert_eq!(p.global_batch(), 32);
}

#[test]
fn offload_only_when_nothing_else_fits_or_asked() {
    let yaml =
        "bf16: true\nfinetuning_type: full\nper_device_train_batch_size: 1\ncutoff_len: 1024";
    let i = input("meta-llama/Llama-3.2-3B", yaml, 40, 1, 1);
    let p = search(&i).chosen.expect("offload makes it fit");
    assert!(p.offload_optimizer);
    let none = PlannerInput {
        offload: OffloadChoice::None,
        ..i.clone()
    };
    let r = search(&none);
    assert!(r.chosen.is_none());
    let msg = r.failure_message().unwrap();
    assert!(
        msg.contains("ZeRO-0 on 1 GPU") && msg.contains("dominate"),
        "{msg}"
    );
    let cpu = PlannerInput {
        offload: OffloadChoice::Cpu,
        max_gpus: 8,
        gpus_per_node: 8,
        ..i
    };
    assert!(search(&cpu).chosen.unwrap().offload_optimizer);
}

#[test]
fn fixed_stage_is_respected() {
    let i = PlannerInput {
        zero: ZeroStageChoice::Zero2,
        ..input(
            "meta-llama/Meta-Llama-3-8B",
            "bf16: true\nfinetuning_type: full\nper_device_train_batch_size: 1",
            80,
            8,
            8,
        )
    };
    let r = search(&i);
    assert!(r.options.iter().all(|o| o.zero_stage == 2));
    assert_eq!(r.chosen.unwrap().zero_stage, 2);
}

#[test]
fn impossible_job_explains_itself() {
    let i = input(
        "meta-llama/Llama-2-70b-hf",
        "bf16: true\nfinetuning_type: full",
        24,
        1,
        1,
    );
    let r = search(&i);
    assert!(r.chosen.is_none());
    let msg = r.failure_message().unwrap();
    assert!(
        msg.starts_with("no configuration fits on 24.0 GiB GPUs"),
        "{msg}"
    );
    assert!(msg.contains("ZeRO-0 on 1 GPU + optimizer offload"), "{msg}");
    assert!(msg.contains("closest:"), "{msg}");
    assert!(lf_planner::format_table(&r).contains("NO CONFIGURATION FITS"));
}

#[test]
fn replan_after_oom_lowers_the_peak() {
    let i = input("meta-llama/Meta-Llama-3-8B", "bf16: true\nfinetuning_type: full\nper_device_train_batch_size: 4\ngradient_accumulation_steps: 2", 80, 8, 16);
    let first = search(&i).chosen.unwrap();
    for measured in [
        None,
        Some(first.per_gpu.peak_bytes * 6 / 5),
        Some(first.per_gpu.peak_bytes / 2),
    ] {
        let r = replan_after_oom(&i, &first, measured);
        let next = r
            .chosen
            .unwrap_or_else(|| panic!("no re-plan for {measured:?}"));
        assert!(next.per_gpu.peak_bytes < first.per_gpu.peak_bytes);
        let scale = match measured {
            Some(m) if m > first.per_gpu.peak_bytes => m as f64 / first.per_gpu.peak_bytes as f64,
            _ => 1.1,
        };
        assert!(
            (next.per_gpu.peak_bytes as f64 * scale) as u64 + next.headroom_bytes
                <= next.gpu_memory_bytes + 1
        );
        assert!(
            next.summary.contains("after a measured OOM"),
            "{}",
            next.summary
        );
    }
    // Nowhere to go: a 1-GPU job already at micro-batch 1, recomputing every layer.
    let tight = input(
        "meta-llama/Meta-Llama-3-8B",
        "bf16: true\nper_device_train_batch_size: 1\ngradient_checkpointing: true",
        24,
        1,
        1,
    );
    let p = search(&tight).chosen.unwrap();
    let r = replan_after_oom(
        &PlannerInput {
            offload: OffloadChoice::None,
            ..tight
        },
        &p,
        None,
    );
    assert!(r.chosen.is_none());
    assert!(r.failure_message().is_some());
}

/// `spec.resources.gpus` fixes the count: the search keeps to it (even where fewer would fit),
/// re-planning after an OOM never adds GPUs, and counts a pod layout cannot hold are refused.
#[test]
fn fixed_gpu_count_is_kept() {
    let fixed = |resources: &str| PlannerInput::from_job(&job("Meta-Llama-3-8B", "", resources));
    let i = fixed("{gpuMemoryGib: 80, gpusPerNode: 2, gpus: 4}").unwrap();
    assert_eq!(
        (i.fixed_gpus, i.max_gpus, i.gpu_candidates()),
        (Some(4), 4, vec![4])
    );
    let plan = search(&i).chosen.expect("LoRA on 4 x 80 GiB fits");
    assert_eq!((plan.gpus, plan.nodes, plan.gpus_per_node), (4, 2, 2));
    let after_oom = replan_after_oom(&i, &plan, None);
    assert!(after_oom.options.iter().all(|o| o.gpus == 4));
    let err = fixed("{gpuMemoryGib: 80, gpusPerNode: 4, gpus: 6}")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.resources.gpus") && err.contains("multiple"),
        "{err}"
    );
    let err = fixed("{gpuMemoryGib: 80, gpusPerNode: 2, maxGpus: 2, gpus: 4}")
        .unwrap_err()
        .to_string();
    assert!(err.contains("exceeds maxGpus"), "{err}");
    // Without it, the same job takes the fewest GPUs that fit.
    let free = fixed("{gpuMemoryGib: 80, gpusPerNode: 2, maxGpus: 4}").unwrap();
    assert_eq!(search(&free).chosen.expect("fits").gpus, 1);
}

fn job(model: &str, extra_model: &str, resources: &str) -> FineTuneJob {
    let text = format!(
        "apiVersion: lf-operator.io/v1alpha1\nkind: FineTuneJob\nmetadata: {{name: t}}\nspec:\n  model:\n    name: {model}\n{extra_model}  data: {{source: {{claimName: d}}}}\n  output: {{claimName: o}}\n  resources: {resources}\n  training: {{bf16: true}}\n"
    );
    FineTuneJob::from_yaml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn jobs_resolve_presets_inline_architectures_and_fail_clearly() {
    let i = PlannerInput::from_job(&job(
        "Meta-Llama-3-8B",
        "",
        "{gpuMemoryGib: 24, gpusPerNode: 1}",
    ))
    .unwrap();
    assert_eq!(i.arch.hidden_size, 4096);
    assert_eq!(
        (i.gpus_per_node, i.max_gpus, i.gpu_memory_bytes),
        (1, 1, 24 * GIB)
    );
    let err =
        PlannerInput::from_job(&job("acme/secret-13b", "", "{gpuMemoryGib: 24}")).unwrap_err();
    assert!(matches!(err, PlanError::UnknownModel { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("acme/secret-13b")
            && msg.contains("spec.model.architecture")
            && msg.contains("config.json"),
        "{msg}"
    );
    let inline = "    architecture: {model_type: llama, vocab_size: 32000, hidden_size: 2048, intermediate_size: 5632, num_hidden_layers: 22, num_attention_heads: 32, num_key_value_heads: 4}\n";
    let i = PlannerInput::from_job(&job("acme/tiny", inline, "{gpuMemoryGib: 24}")).unwrap();
    assert_eq!(lf_planner::model_params(&i.arch), 1_100_048_384);
    // A pasted Gemma 2 config that leaves out the keys Gemma2Config defaults: its head is tied
    // and its attention soft-capped (planned eager), as transformers builds it.
    let gemma = "    architecture: {model_type: gemma2, vocab_size: 256000, hidden_size: 3584, intermediate_size: 14336, num_hidden_layers: 42, num_attention_heads: 16, num_key_value_heads: 8, head_dim: 256}\n";
    let i = PlannerInput::from_job(&job("acme/gemma", gemma, "{gpuMemoryGib: 24}")).unwrap();
    assert!(i.arch.tie_word_embeddings);
    assert_eq!(i.arch.attention_softcap(), Some(50.0));
    assert_eq!(lf_planner::model_params(&i.arch), 9_241_705_984);
    let bad = "    architecture: {model_type: llama, vocab_size: 32000, hidden_size: 2048, intermediate_size: 5632, num_hidden_layers: 22, num_attention_heads: 30}\n";
    let err = PlannerInput::from_job(&job("acme/tiny", bad, "{gpuMemoryGib: 24}"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.model.architecture") && err.contains("divisible"),
        "{err}"
    );
}

#[test]
fn a_70b_search_takes_under_10_ms() {
    let i = input("meta-llama/Llama-2-70b-hf", "bf16: true\nlora_rank: 64\ncutoff_len: 4096\nper_device_train_batch_size: 4\ngradient_accumulation_steps: 16", 80, 8, 32);
    let full = input(
        "meta-llama/Llama-2-70b-hf",
        "bf16: true\nfinetuning_type: full\nper_device_train_batch_size: 8",
        80,
        8,
        32,
    );
    for inp in [i, full] {
        let _ = search(&inp);
        let start = Instant::now();
        let n = 20;
        for _ in 0..n {
            std::hint::black_box(search(&inp));
        }
        let each = start.elapsed() / n;
        println!("70B auto search: {each:?} per search");
        assert!(each.as_millis() < 10, "a 70B search took {each:?}");
    }
}

#[test]
fn a_deepspeed_object_in_spec_training_fixes_stage_and_offload() {
    let with = |distributed: &str| {
        let text = format!(
            "apiVersion: lf-operator.io/v1alpha1\nkind: FineTuneJob\nmetadata: {{name: t}}\nspec:\n  model: {{name: Meta-Llama-3-8B}}\n  data: {{source: {{claimName: d}}}}\n  output: {{claimName: o}}\n  resources: {{gpuMemoryGib: 80, gpusPerNode: 8}}\n{distributed}  training:\n    bf16: true\n    finetuning_type: full\n    deepspeed:\n      zero_optimization: {{stage: 3, offload_optimizer: {{device: cpu}}}}\n      bf16: {{enabled: auto}}\n      train_micro_batch_size_per_gpu: auto\n"
        );
        FineTuneJob::from_yaml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    };
    let i = PlannerInput::from_job(&with("")).unwrap();
    assert_eq!(i.zero, ZeroStageChoice::Zero3);
    assert_eq!(i.offload, OffloadChoice::Cpu);
    assert!(i.training.deepspeed.is_none());
    let plan = search(&i).chosen.expect("fits");
    assert_eq!((plan.zero_stage, plan.offload_optimizer), (3, true));
    // An explicit spec.distributed setting that disagrees is refused, naming both.
    let err = PlannerInput::from_job(&with("  distributed: {zeroStage: \"2\"}\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.distributed.zeroStage") && err.contains("zero_optimization.stage 3"),
        "{err}"
    );
}

/// LLaMA-Factory-style `lora_target: q_proj,v_proj` on a Phi-3 (whose q/k/v are one fused
/// `qkv_proj`) is refused by name, as PEFT would refuse it; the fused names plan.
#[test]
fn phi3_lora_targets_are_its_fused_linears() {
    let with_targets = |targets: &str| {
        let text = format!(
            "apiVersion: lf-operator.io/v1alpha1\nkind: FineTuneJob\nmetadata: {{name: t}}\nspec:\n  model:\n    name: microsoft/Phi-3-mini-4k-instruct\n  data: {{source: {{claimName: d}}}}\n  output: {{claimName: o}}\n  resources: {{gpuMemoryGib: 24}}\n  training: {{bf16: true, lora_target: \"{targets}\"}}\n"
        );
        PlannerInput::from_job(&FineTuneJob::from_yaml_str(&text).unwrap())
    };
    let err = with_targets("q_proj,v_proj").unwrap_err().to_string();
    assert!(
        err.contains("lora_target") && err.contains("qkv_proj") && err.contains("fuses"),
        "{err}"
    );
    let i = with_targets("qkv_proj,o_proj").unwrap();
    let plan = search(&i).chosen.expect("Phi-3-mini LoRA fits 24 GiB");
    assert!(plan.gpus >= 1);
}
