//! Parameter counts equal what Hugging Face `transformers` + `peft` count: runs
//! `tests/reference/planner_param_counts.py`, which builds each model on the `meta` device (tiny and
//! real-size llama, mistral, qwen2, qwen3, gemma2, gemma3 text, phi3, tied and untied) and applies LoRA / DoRA / freeze / full exactly
//! as PEFT and LLaMA-Factory do. Needs the Python reference stack (`LF_PYTHON`, default
//! `<repo>/.venv/bin/python`); fails when it is missing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lf_api::architecture::ModelType;
use lf_api::training::{FinetuningType, TrainingConfig};
use lf_api::ModelArchitecture;
use lf_planner::{model_params, preset, trainable_params};
use serde_json::{json, Value};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    let path = std::env::var_os("LF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    assert!(
        path.exists(),
        "the Python reference interpreter {} does not exist: run scripts/install-python-ref.sh or set LF_PYTHON",
        path.display()
    );
    path
}

fn tiny(model_type: ModelType, tied: bool, kv: u64, head_dim: Option<u64>) -> ModelArchitecture {
    ModelArchitecture {
        model_type,
        vocab_size: 1000,
        hidden_size: 64,
        intermediate_size: 172,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        num_key_value_heads: Some(kv),
        head_dim,
        max_position_embeddings: 256,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: None,
        tie_word_embeddings: tied,
        attention_bias: false,
        query_pre_attn_scalar: None,
        attn_logit_softcapping: None,
        final_logit_softcapping: None,
        rope_local_base_freq: None,
        moe: Default::default(),
        windows: Default::default(),
        multimodal: None,
        partial_rotary_factor: None,
        torch_dtype: None,
        bos_token_id: None,
        eos_token_id: None,
    }
}

fn config_json(a: &ModelArchitecture) -> Value {
    let mut c = json!({
        "model_type": serde_json::to_value(a.model_type).unwrap_or(Value::Null),
        "vocab_size": a.vocab_size,
        "hidden_size": a.hidden_size,
        "intermediate_size": a.intermediate_size,
        "num_hidden_layers": a.num_hidden_layers,
        "num_attention_heads": a.num_attention_heads,
        "num_key_value_heads": a.kv_heads(),
        "tie_word_embeddings": a.tie_word_embeddings,
        "attention_bias": a.attention_bias,
    });
    if let Some(d) = a.head_dim {
        c["head_dim"] = json!(d);
    }
    if let (Some(c), Value::Object(moe)) = (c.as_object_mut(), json!(a.moe)) {
        c.extend(moe);
    }
    if a.model_type == ModelType::Phi3 {
        // Phi3Config's default pad id (32000) is outside the tiny vocabularies.
        c["pad_token_id"] = Value::Null;
    }
    c
}

/// A tiny mixture of experts of `model_type` with `experts` experts, `per_token` of them routed.
fn tiny_moe(model_type: ModelType, experts: u64, per_token: u64) -> ModelArchitecture {
    let mut a = tiny(model_type, false, 2, None);
    a.moe.num_local_experts = Some(experts);
    a.moe.num_experts_per_tok = Some(per_token);
    a
}

struct Case {
    name: String,
    arch: ModelArchitecture,
    training: TrainingConfig,
}

fn case(name: &str, arch: ModelArchitecture, yaml: &str) -> Case {
    let training = TrainingConfig::from_yaml_str(yaml).unwrap_or_else(|e| panic!("{name}: {e}"));
    Case {
        name: name.into(),
        arch,
        training,
    }
}

fn real(name: &str) -> ModelArchitecture {
    preset(name).unwrap_or_else(|| panic!("no preset {name}"))
}

#[test]
fn counts_equal_transformers_and_peft() {
    let mut llama_bias = tiny(ModelType::Llama, false, 2, None);
    llama_bias.attention_bias = true;
    let mut mistral_bias = tiny(ModelType::Mistral, false, 2, None);
    mistral_bias.attention_bias = true;
    let mut qwen3_bias = tiny(ModelType::Qwen3, false, 2, Some(32));
    qwen3_bias.attention_bias = true;
    // Qwen3-MoE with expert size 40, layer 1 dense (mlp_only_layers) and, with step 3, layer 0
    // dense too (only layer 2 is sparse).
    let mut qwen3_moe = tiny_moe(ModelType::Qwen3Moe, 6, 2);
    qwen3_moe.moe.moe_intermediate_size = Some(40);
    qwen3_moe.moe.mlp_only_layers = Some(vec![1]);
    let qwen3_moe_experts = qwen3_moe.clone();
    let qwen3_moe_all = qwen3_moe.clone();
    let mut qwen3_moe_step = qwen3_moe.clone();
    qwen3_moe_step.moe.decoder_sparse_step = Some(3);
    qwen3_moe_step.moe.mlp_only_layers = None;
    let cases = vec![
        case(
            "tiny-mixtral full",
            tiny_moe(ModelType::Mixtral, 4, 2),
            "finetuning_type: full",
        ),
        case(
            "tiny-mixtral lora all",
            tiny_moe(ModelType::Mixtral, 4, 2),
            "lora_rank: 4",
        ),
        case(
            "tiny-mixtral freeze 1",
            tiny_moe(ModelType::Mixtral, 3, 1),
            "finetuning_type: freeze\nfreeze_trainable_layers: 1",
        ),
        case(
            "tiny-qwen3-moe mlp_only_layers full",
            qwen3_moe.clone(),
            "finetuning_type: full",
        ),
        case(
            "tiny-qwen3-moe mlp_only_layers dora q,v",
            qwen3_moe,
            "lora_rank: 4\nuse_dora: true\nlora_target: q_proj,v_proj",
        ),
        case(
            "tiny-mixtral lora router+experts (w1,w3 fused)",
            tiny_moe(ModelType::Mixtral, 4, 2),
            "lora_rank: 4\nlora_target: q_proj,gate,w1,w3,w2",
        ),
        case(
            "tiny-qwen3-moe mlp_only_layers lora experts",
            qwen3_moe_experts,
            "lora_rank: 4\nuse_rslora: true\nlora_target: gate_up_proj,down_proj,gate,v_proj",
        ),
        case(
            "tiny-qwen3-moe mlp_only_layers lora all (dense linears and experts)",
            qwen3_moe_all,
            "lora_rank: 4\nlora_target: all",
        ),
        case(
            "tiny-qwen3-moe sparse step 3 freeze 2",
            qwen3_moe_step,
            "finetuning_type: freeze\nfreeze_trainable_layers: 2",
        ),
        case(
            "mixtral-8x7b lora all r16",
            real("mistralai/Mixtral-8x7B-v0.1"),
            "lora_rank: 16",
        ),
        case(
            "mixtral-8x7b lora experts+router r16",
            real("mistralai/Mixtral-8x7B-v0.1"),
            "lora_rank: 16\nlora_target: q_proj,v_proj,w1,w2,w3,gate",
        ),
        case(
            "qwen3-30b-a3b lora experts r8",
            real("Qwen/Qwen3-30B-A3B"),
            "lora_rank: 8\nlora_target: q_proj,k_proj,v_proj,o_proj,gate_up_proj,down_proj",
        ),
        case(
            "qwen3-30b-a3b full",
            real("Qwen/Qwen3-30B-A3B"),
            "finetuning_type: full",
        ),
        case(
            "qwen3-30b-a3b lora all r8",
            real("Qwen/Qwen3-30B-A3B"),
            "lora_rank: 8",
        ),
        case(
            "tiny-llama full",
            tiny(ModelType::Llama, false, 2, None),
            "finetuning_type: full",
        ),
        case(
            "tiny-llama lora q,v r4",
            tiny(ModelType::Llama, false, 2, None),
            "lora_rank: 4\nlora_target: q_proj,v_proj",
        ),
        case(
            "tiny-llama dora all r8",
            tiny(ModelType::Llama, false, 2, None),
            "lora_rank: 8\nuse_dora: true",
        ),
        case(
            "tiny-llama freeze 1",
            tiny(ModelType::Llama, false, 2, None),
            "finetuning_type: freeze\nfreeze_trainable_layers: 1",
        ),
        case(
            "tiny-llama tied head_dim 32 full",
            tiny(ModelType::Llama, true, 2, Some(32)),
            "finetuning_type: full",
        ),
        case(
            "tiny-llama tied head_dim 32 lora",
            tiny(ModelType::Llama, true, 2, Some(32)),
            "lora_rank: 8",
        ),
        case(
            "tiny-llama attention_bias full",
            llama_bias,
            "finetuning_type: full",
        ),
        case(
            "tiny-mistral attention_bias full",
            mistral_bias,
            "finetuning_type: full",
        ),
        case(
            "tiny-mistral lora all",
            tiny(ModelType::Mistral, false, 1, None),
            "lora_rank: 2",
        ),
        case(
            "tiny-qwen2 full",
            tiny(ModelType::Qwen2, false, 2, None),
            "finetuning_type: full",
        ),
        case(
            "tiny-qwen2 tied lora all",
            tiny(ModelType::Qwen2, true, 2, None),
            "lora_rank: 4",
        ),
        case(
            "tiny-qwen2 tied dora q,k",
            tiny(ModelType::Qwen2, true, 2, None),
            "lora_rank: 4\nuse_dora: true\nlora_target: q_proj,k_proj",
        ),
        case(
            "tiny-qwen3 head_dim default full",
            tiny(ModelType::Qwen3, false, 2, None),
            "finetuning_type: full",
        ),
        case(
            "tiny-qwen3 tied head_dim 24 lora all",
            tiny(ModelType::Qwen3, true, 2, Some(24)),
            "lora_rank: 4",
        ),
        case(
            "tiny-qwen3 bias dora all",
            qwen3_bias,
            "lora_rank: 4\nuse_dora: true",
        ),
        case(
            "tiny-qwen3 freeze 1",
            tiny(ModelType::Qwen3, false, 1, Some(16)),
            "finetuning_type: freeze\nfreeze_trainable_layers: 1",
        ),
        case(
            "qwen3-8b lora all r16",
            real("Qwen/Qwen3-8B"),
            "lora_rank: 16",
        ),
        case(
            "qwen3-14b full",
            real("Qwen/Qwen3-14B"),
            "finetuning_type: full",
        ),
        case(
            "qwen3-32b lora q,v r8",
            real("Qwen/Qwen3-32B"),
            "lora_rank: 8\nlora_target: q_proj,v_proj",
        ),
        case(
            "tiny-gemma2 tied full",
            tiny(ModelType::Gemma2, true, 2, Some(16)),
            "finetuning_type: full",
        ),
        case(
            "tiny-gemma2 tied lora all",
            tiny(ModelType::Gemma2, true, 2, Some(16)),
            "lora_rank: 4",
        ),
        case(
            "tiny-gemma3 untied dora all",
            tiny(ModelType::Gemma3Text, false, 2, Some(24)),
            "lora_rank: 4\nuse_dora: true",
        ),
        case(
            "tiny-gemma3 freeze 1",
            tiny(ModelType::Gemma3Text, true, 1, None),
            "finetuning_type: freeze\nfreeze_trainable_layers: 1",
        ),
        case(
            "gemma-2-9b lora all r16",
            real("google/gemma-2-9b"),
            "lora_rank: 16",
        ),
        case(
            "gemma-2-27b full",
            real("google/gemma-2-27b"),
            "finetuning_type: full",
        ),
        case(
            "gemma-3-12b lora all r16",
            real("google/gemma-3-12b-pt"),
            "lora_rank: 16",
        ),
        case(
            "gemma-3-27b full",
            real("google/gemma-3-27b-pt"),
            "finetuning_type: full",
        ),
        case(
            "tiny-phi3 full",
            tiny(ModelType::Phi3, false, 2, None),
            "finetuning_type: full",
        ),
        case(
            "tiny-phi3 tied lora all r4",
            tiny(ModelType::Phi3, true, 2, None),
            "lora_rank: 4",
        ),
        case(
            "tiny-phi3 dora qkv,gate_up",
            tiny(ModelType::Phi3, false, 1, Some(24)),
            "lora_rank: 4\nuse_dora: true\nlora_target: qkv_proj,gate_up_proj",
        ),
        case(
            "tiny-phi3 freeze 1",
            tiny(ModelType::Phi3, false, 4, None),
            "finetuning_type: freeze\nfreeze_trainable_layers: 1",
        ),
        case(
            "phi-3-mini-4k lora all r16",
            real("microsoft/Phi-3-mini-4k-instruct"),
            "lora_rank: 16",
        ),
        case(
            "phi-3-mini-128k full",
            real("microsoft/Phi-3-mini-128k-instruct"),
            "finetuning_type: full",
        ),
        case(
            "phi-3-medium-4k lora qkv,o r8",
            real("microsoft/Phi-3-medium-4k-instruct"),
            "lora_rank: 8\nlora_target: qkv_proj,o_proj",
        ),
        case(
            "phi-3-medium-128k dora all r16",
            real("microsoft/Phi-3-medium-128k-instruct"),
            "lora_rank: 16\nuse_dora: true",
        ),
        case(
            "phi-4 lora all r16",
            real("microsoft/phi-4"),
            "lora_rank: 16",
        ),
        case(
            "phi-4 full",
            real("microsoft/phi-4"),
            "finetuning_type: full",
        ),
        case(
            "phi-4-mini tied lora all r8",
            real("microsoft/Phi-4-mini-instruct"),
            "lora_rank: 8",
        ),
        case(
            "llama-2-7b lora q,v r8",
            real("meta-llama/Llama-2-7b-hf"),
            "lora_rank: 8\nlora_target: q_proj,v_proj",
        ),
        case(
            "llama-3-8b lora all r16",
            real("meta-llama/Meta-Llama-3-8B"),
            "lora_rank: 16",
        ),
        case(
            "llama-3-8b dora all r16",
            real("meta-llama/Meta-Llama-3-8B"),
            "lora_rank: 16\nuse_dora: true",
        ),
        case(
            "llama-3-8b adalora all 12->8",
            real("meta-llama/Meta-Llama-3-8B"),
            "use_adalora: true",
        ),
        case(
            "qwen2.5-7b adalora q,v 24->16",
            real("Qwen/Qwen2.5-7B"),
            "use_adalora: true\nadalora_init_r: 24\nadalora_rank: 16\nlora_target: q_proj,v_proj",
        ),
        case(
            "llama-3.2-1b tied full",
            real("meta-llama/Llama-3.2-1B"),
            "finetuning_type: full",
        ),
        case(
            "llama-3.2-3b tied freeze 2",
            real("meta-llama/Llama-3.2-3B"),
            "finetuning_type: freeze\nfreeze_trainable_layers: 2",
        ),
        case(
            "mistral-7b lora all r8",
            real("mistralai/Mistral-7B-v0.1"),
            "lora_rank: 8",
        ),
        case(
            "qwen2.5-7b lora all r8",
            real("Qwen/Qwen2.5-7B"),
            "lora_rank: 8",
        ),
        case(
            "qwen2.5-0.5b tied full",
            real("Qwen/Qwen2.5-0.5B"),
            "finetuning_type: full",
        ),
        case(
            "llama-2-70b lora all r64",
            real("meta-llama/Llama-2-70b-hf"),
            "lora_rank: 64",
        ),
        case(
            "codellama-34b lora all r128",
            real("codellama/CodeLlama-34b-hf"),
            "lora_rank: 128",
        ),
    ];
    let request: Vec<Value> = cases
        .iter()
        .map(|c| {
            let t = &c.training;
            json!({
                "name": c.name,
                "config": config_json(&c.arch),
                "method": match t.finetuning_type { FinetuningType::Full => "full", FinetuningType::Freeze => "freeze", FinetuningType::Lora => "lora" },
                "rank": t.lora_rank,
                "targets": peft_targets(t, &c.arch).0,
                "target_parameters": peft_targets(t, &c.arch).1,
                "dora": t.use_dora,
                "adalora": t.adalora().map(|a| [a.init_r, a.target_r]),
                "freeze_layers": t.freeze_trainable_layers,
            })
        })
        .collect();
    let script = repo_root().join("tests/reference/planner_param_counts.py");
    let mut child = Command::new(python())
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&request).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bad output from {}: {e}\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(results.len(), cases.len());
    let mut failures = Vec::new();
    println!("{:<36} {:>16} {:>16}", "case", "total", "trainable");
    for (c, r) in cases.iter().zip(&results) {
        let (total, trainable) = (
            model_params(&c.arch),
            trainable_params(&c.arch, &c.training),
        );
        let (rt, rtr) = (
            r["total"].as_u64().unwrap_or(0),
            r["trainable"].as_u64().unwrap_or(0),
        );
        println!("{:<36} {:>16} {:>16}", c.name, total, trainable);
        if (total, trainable) != (rt, rtr) {
            failures.push(format!(
                "{}: ours {total}/{trainable}, transformers+peft {rt}/{rtr}",
                c.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What PEFT is given for `t` on `arch`: `target_modules` (the linears; on a mixture of experts
/// also the router and a `gate_up_proj` named by its halves, by transformers 4's names, which
/// PEFT's conversion maps onto the fused parameters) and `target_parameters` (a `gate_up_proj` at
/// rank r and `down_proj`, by transformers 5's parameter names), so both of PEFT's paths count.
fn peft_targets(
    t: &TrainingConfig,
    arch: &ModelArchitecture,
) -> (Vec<&'static str>, Vec<&'static str>) {
    let mut modules: Vec<&str> = t
        .lora_targets_for(arch)
        .unwrap()
        .iter()
        .map(|m| m.name())
        .collect();
    let experts = t.expert_lora_targets_for(arch).unwrap();
    let mut params = Vec::new();
    if experts.router {
        modules.push("gate");
    }
    match experts.gate_up {
        Some(2) if arch.model_type == ModelType::Mixtral => modules.extend(["w1", "w3"]),
        Some(2) => {
            for half in ["gate_proj", "up_proj"] {
                if !modules.contains(&half) {
                    modules.push(half);
                }
            }
        }
        Some(_) => params.push("gate_up_proj"),
        None => {}
    }
    if experts.down {
        params.push("down_proj");
    }
    (modules, params)
}
