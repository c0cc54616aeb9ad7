//! Measures the activation memory saved by layer recomputation and by the chunked loss.
//!
//! Each configuration runs one LoRA training micro-batch (forward + backward) in a child process
//! (this test binary re-run on the ignored `memory_child` test), which resets the kernel's peak-RSS
//! counter (`/proc/self/clear_refs`) right before the step and reports `VmHWM` minus the RSS at that
//! point: the host memory the step needed on top of weights and inputs. The model is small but has
//! a 32k vocabulary and 512-token batches, where both savings matter.

use std::process::Command;

use lf_api::training::TrainingConfig;
use lf_model::{names, CausalLm, LoadOptions};
use tch::{Device, Kind, Tensor};

const LAYERS: i64 = 8;
const VOCAB: i64 = 32_000;
const TOKENS: i64 = 512; // 2 × 256

fn status_kib(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = text.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
#[ignore = "run by activation_memory_is_saved in a child process"]
fn memory_child() {
    let Ok(case) = std::env::var("LF_MEM_CASE") else {
        return;
    };
    let (ckpt, chunk) = case.split_once(',').unwrap();
    tch::manual_seed(0);
    let arch = lf_api::architecture::ModelArchitecture::from_json_str(&format!(
        r#"{{"model_type":"llama","vocab_size":{VOCAB},"hidden_size":128,"intermediate_size":344,
            "num_hidden_layers":{LAYERS},"num_attention_heads":4,"num_key_value_heads":2}}"#
    ))
    .unwrap();
    let mut weights = Vec::new();
    let f = (Kind::Float, Device::Cpu);
    weights.push((
        names::embed_tokens().weight(),
        Tensor::randn([VOCAB, 128], f) * 0.02,
    ));
    weights.push((
        names::lm_head().weight(),
        Tensor::randn([VOCAB, 128], f) * 0.02,
    ));
    weights.push((names::norm().weight(), Tensor::ones([128], f)));
    for i in 0..LAYERS as usize {
        for m in lf_api::training::LinearModule::ALL {
            let (fi, fo) = arch.linear_shape(m);
            let w = Tensor::randn([fo as i64, fi as i64], f) * 0.05;
            weights.push((names::linear(i, m).weight(), w));
        }
        for norm in [
            names::input_layernorm(i),
            names::post_attention_layernorm(i),
        ] {
            weights.push((norm.weight(), Tensor::ones([128], f)));
        }
    }
    let mut lm =
        CausalLm::from_tensors(arch, weights, &LoadOptions::new(Device::Cpu, Kind::Float)).unwrap();
    let cfg = TrainingConfig::from_yaml_str(&format!(
        "lora_rank: 8\nlora_target: all\ngradient_checkpointing: {ckpt}\nloss_chunk_size: {chunk}"
    ))
    .unwrap();
    lm.apply_method(&cfg, 1).unwrap();
    lm.set_training(true);
    let ids = Tensor::randint(VOCAB, [2, TOKENS / 2], (Kind::Int64, Device::Cpu));
    let labels = ids.copy();
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS:");
    let loss = lm
        .loss_sum_and_backward(&ids, &labels, 1.0 / TOKENS as f64)
        .unwrap();
    let peak = status_kib("VmHWM:");
    println!("LF_MEM_RESULT {} {}", (peak - before) * 1024, loss);
}

#[test]
fn activation_memory_is_saved() {
    let exe = std::env::current_exe().unwrap();
    let mut results = Vec::new();
    for (ckpt, chunk) in [(false, 0), (false, 256), (true, 0), (true, 256)] {
        let out = Command::new(&exe)
            .args([
                "--exact",
                "memory_child",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LF_MEM_CASE", format!("{ckpt},{chunk}"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| {
                l.split_once("LF_MEM_RESULT")
                    .map(|(_, rest)| rest.to_string())
            })
            .unwrap_or_else(|| {
                panic!(
                    "child failed:\n{stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let mut parts = line.split_whitespace();
        let bytes: u64 = parts.next().unwrap().parse().unwrap();
        let loss: f64 = parts.next().unwrap().parse().unwrap();
        results.push((ckpt, chunk, bytes, loss));
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let logits_mib = mib((TOKENS * VOCAB * 4) as u64);
    println!("one micro-batch, {LAYERS} layers, hidden 128, vocab {VOCAB}, {TOKENS} tokens, LoRA r=8 (fp32 logits alone: {logits_mib:.0} MiB)");
    println!(
        "{:<24} {:>16} {:>14}",
        "configuration", "peak delta MiB", "loss sum"
    );
    for (ckpt, chunk, bytes, loss) in &results {
        let name = format!("recompute={ckpt} chunk={chunk}");
        println!("{name:<24} {:>16.1} {loss:>14.4}", mib(*bytes));
    }
    let get = |c: bool, k: usize| results.iter().find(|r| r.0 == c && r.1 == k).unwrap().2;
    let chunk_saving = get(false, 0) as f64 - get(false, 256) as f64;
    let ckpt_saving = get(false, 256) as f64 - get(true, 256) as f64;
    println!(
        "chunked loss saves {:.1} MiB; layer recomputation saves a further {:.1} MiB",
        chunk_saving / 1048576.0,
        ckpt_saving / 1048576.0
    );
    let plain = get(false, 0) as f64;
    println!(
        "ratios to plain: chunked loss {:.2}×, chunked loss + recomputation {:.2}×",
        get(false, 256) as f64 / plain,
        get(true, 256) as f64 / plain
    );
    let loss0 = results[0].3;
    assert!(
        results
            .iter()
            .all(|r| (r.3 - loss0).abs() <= 1e-4 * loss0.abs()),
        "configurations disagree on the loss"
    );
    assert!(
        chunk_saving > 0.5 * (TOKENS * VOCAB * 4) as f64,
        "the chunked loss should save at least half the fp32 logits"
    );
    assert!(ckpt_saving > 0.0, "recomputation should lower the peak");
}
