use super::*;

const LORA_SFT: &str = "
model_name_or_path: /models/Meta-Llama-3-8B-Instruct
trust_remote_code: true
stage: sft
do_train: true
finetuning_type: lora
lora_target: all
dataset: identity,alpaca_en_demo
template: llama3
output_dir: saves/llama3-8b/lora/sft
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
bf16: true
";

fn source(yaml: &str, stem: &str) -> LlamaFactoryYaml {
    let value: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    LlamaFactoryYaml {
        written_keys: LlamaFactoryYaml::keys_of(&value),
        parsed: TrainingConfig::parse_yaml_value(value, None).unwrap(),
        file_stem: stem.into(),
        architecture: None,
    }
}

fn opts(gib: f64, max: Option<u32>, per_node: Option<u32>) -> NewOptions {
    NewOptions {
        name: None,
        namespace: None,
        gpu_memory_gib: gib,
        max_gpus: max,
        gpus_per_node: per_node,
    }
}

#[test]
fn lora_sft_becomes_a_job_with_placeholder_volumes() {
    let mut o = opts(80.0, Some(8), None);
    o.namespace = Some("team-a".into());
    let (job, notices) = convert(&source(LORA_SFT, "llama3_lora_sft"), &o).unwrap();
    assert!(notices.is_empty(), "{notices:?}");
    assert_eq!(job.metadata.name.as_deref(), Some("llama3-lora-sft"));
    assert_eq!(job.metadata.namespace.as_deref(), Some("team-a"));
    let spec = &job.spec;
    assert_eq!(spec.model.name, "Meta-Llama-3-8B-Instruct");
    let model = spec.model.source.as_ref().unwrap();
    assert_eq!(
        (model.claim_name.as_str(), model.sub_path.as_deref()),
        (MODELS_CLAIM, Some("Meta-Llama-3-8B-Instruct"))
    );
    assert_eq!(spec.data.source.claim_name, DATASETS_CLAIM);
    assert_eq!(spec.data.source.sub_path.as_deref(), Some("data"));
    assert_eq!(spec.output.claim_name, OUTPUTS_CLAIM);
    assert_eq!(
        spec.output.sub_path.as_deref(),
        Some("saves/llama3-8b/lora/sft")
    );
    assert_eq!(
        (spec.resources.gpu_memory_gib, spec.resources.max_gpus),
        (80.0, Some(8))
    );
    assert_eq!(spec.resources.gpus_per_node, 8);
    // The paths are the operator's to fill; the recipe is the user's, unchanged.
    let t = &spec.training;
    assert_eq!(t.model_name_or_path, None);
    assert_eq!(t.output_dir, None);
    assert_eq!(t.dataset.as_deref(), Some("identity,alpaca_en_demo"));
    assert_eq!(t.gradient_accumulation_steps, 8);
    assert!(t.bf16 && t.trust_remote_code);
}

#[test]
fn deepspeed_stays_inline_and_only_the_users_own_keys_are_kept() {
    let yaml = format!(
        "{LORA_SFT}deepspeed: {{zero_optimization: {{stage: 3}}, train_micro_batch_size_per_gpu: auto}}\n"
    );
    let (job, _) = convert(&source(&yaml, "ds"), &opts(80.0, None, None)).unwrap();
    let t = &job.spec.training;
    assert!(t.deepspeed.is_some());
    // zero_stage came from the DeepSpeed object only: not copied beside it.
    assert_eq!(t.zero_stage, TrainingConfig::default().zero_stage);
    // What the planner and the pods see: the object applied.
    assert_eq!(t.with_deepspeed_applied().unwrap().config.zero_stage, 3);
    // A key the user wrote is kept even when DeepSpeed sets it too.
    let yaml = format!("{yaml}zero_stage: 3\n");
    let (job, _) = convert(&source(&yaml, "ds"), &opts(80.0, None, None)).unwrap();
    assert_eq!(job.spec.training.zero_stage, 3);
}

#[test]
fn operator_managed_paths_are_dropped_with_a_notice() {
    let yaml = format!("{LORA_SFT}resume_from_checkpoint: saves/x/checkpoint-5\nexport_dir: out\n");
    let (job, notices) = convert(&source(&yaml, "x"), &opts(24.0, None, None)).unwrap();
    assert_eq!(job.spec.training.resume_from_checkpoint, None);
    assert_eq!(job.spec.training.export_dir, None);
    let keys: Vec<&str> = notices.iter().map(|n| n.key.as_str()).collect();
    assert_eq!(keys, ["resume_from_checkpoint", "export_dir"]);
}

#[test]
fn an_adapter_to_continue_from_becomes_spec_model_adapter() {
    // LLaMA-Factory's DPO after SFT: `adapter_name_or_path` is the SFT run's output directory.
    let yaml = "model_name_or_path: m/x\ndataset: dpo_en_demo\nstage: dpo\nadapter_name_or_path: saves/llama3-8b/lora/sft\n";
    let (job, _) = convert(&source(yaml, "llama3_lora_dpo"), &opts(80.0, None, None)).unwrap();
    let adapter = job.spec.model.adapter.as_ref().unwrap();
    assert_eq!(
        (adapter.claim_name.as_str(), adapter.sub_path.as_deref()),
        (OUTPUTS_CLAIM, Some("saves/llama3-8b/lora/sft"))
    );
    // The pod's path is the operator's to fill (lf-render's `trainer_config`).
    assert_eq!(job.spec.training.adapter_name_or_path, None);
}

#[test]
fn configs_that_are_no_training_job_are_refused() {
    let cases: &[(&str, &str)] = &[
        (
            "model_name_or_path: m/x\nexport_dir: out\n",
            "`dataset` is missing",
        ),
        ("dataset: a\n", "`model_name_or_path` is missing"),
    ];
    for (yaml, needle) in cases {
        let err = convert(&source(yaml, "x"), &opts(80.0, None, None))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{yaml:?}: {err}");
    }
}

/// (gpusPerNode, maxGpus), or the words of the error.
type GpuExpected = Result<(u32, Option<u32>), &'static str>;

#[test]
fn gpu_flags_are_checked() {
    let cases: &[(NewOptions, GpuExpected)] = &[
        (opts(80.0, None, None), Ok((8, None))),
        (opts(80.0, Some(4), None), Ok((4, Some(4)))),
        (opts(80.0, Some(16), None), Ok((8, Some(16)))),
        (opts(80.0, Some(16), Some(4)), Ok((4, Some(16)))),
        (opts(0.5, None, None), Err("--gpu-memory 0.5")),
        (opts(f64::NAN, None, None), Err("--gpu-memory NaN")),
        (opts(80.0, Some(0), None), Err("--max-gpus 0")),
        (opts(80.0, None, Some(0)), Err("--gpus-per-node 0")),
        (
            opts(80.0, Some(2), Some(4)),
            Err("cannot exceed --max-gpus"),
        ),
    ];
    for (o, want) in cases {
        let got = convert(&source(LORA_SFT, "x"), o)
            .map(|(j, _)| (j.spec.resources.gpus_per_node, j.spec.resources.max_gpus))
            .map_err(|e| e.to_string());
        match (got, want) {
            (Ok(g), Ok(w)) => assert_eq!(g, *w, "{o:?}"),
            (Err(e), Err(w)) => assert!(e.contains(w), "{o:?}: {e}"),
            (got, want) => panic!("{o:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn names_paths_and_models() {
    for (stem, name) in [
        ("llama3_lora_sft", "llama3-lora-sft"),
        ("Qwen2.5-7B_full", "qwen2-5-7b-full"),
        ("__", "llama-factory"),
        ("8b_sft", "b-sft"),
        (&"x".repeat(60), &"x".repeat(40)),
    ] {
        assert_eq!(name_from(stem), name, "{stem}");
    }
    for (given, ok) in [
        ("my-job", true),
        ("My-Job", false),
        ("-job", false),
        ("job-", false),
        ("", false),
    ] {
        assert_eq!(checked_name(given).is_ok(), ok, "{given}");
    }
    for (path, sub) in [
        ("saves/llama3-8b/lora/sft", Some("saves/llama3-8b/lora/sft")),
        ("./data/", Some("data")),
        ("/mnt/models/Llama-3-8B", Some("Llama-3-8B")),
        ("saves/opposites", Some("saves/opposites")),
        ("../elsewhere", None),
        ("", None),
    ] {
        assert_eq!(sub_path(path).as_deref(), sub, "{path}");
    }
    // (model_name_or_path, spec.model.name, its subPath)
    for (path, name, sub) in [
        (
            "meta-llama/Meta-Llama-3-8B",
            "meta-llama/Meta-Llama-3-8B",
            "Meta-Llama-3-8B",
        ),
        (
            "/models/Meta-Llama-3-8B/",
            "Meta-Llama-3-8B",
            "Meta-Llama-3-8B",
        ),
        ("./models/Qwen2-7B", "Qwen2-7B", "models/Qwen2-7B"),
        ("Qwen2-7B", "Qwen2-7B", "Qwen2-7B"),
    ] {
        assert_eq!(model_name(path), name, "{path}");
        assert_eq!(model_sub_path(path).as_deref(), Some(sub), "{path}");
    }
}

#[test]
fn alias_keys_count_as_written() {
    let value: serde_yaml::Value =
        serde_yaml::from_str("disable_gradient_checkpointing: true\nlora_rank: 4").unwrap();
    let keys = LlamaFactoryYaml::keys_of(&value);
    assert!(keys.contains("gradient_checkpointing") && keys.contains("lora_rank"));
    assert!(!keys.contains("disable_gradient_checkpointing"));
}
