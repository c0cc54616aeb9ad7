//! Prints how many full auto searches per second the planner does for a 70B job (Llama-2-70B, LoRA
//! r=64 and full fine-tuning, up to 32 × 80 GB GPUs): `cargo run --release -p lf-planner --example
//! plan_bench`.

use std::time::Instant;

use lf_api::training::TrainingConfig;
use lf_planner::{preset, search, PlannerInput};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arch = preset("meta-llama/Llama-2-70b-hf").ok_or("no Llama-2-70B preset")?;
    for (label, yaml) in [
        ("70B LoRA r=64, s=4096", "bf16: true\nlora_rank: 64\ncutoff_len: 4096\nper_device_train_batch_size: 4\ngradient_accumulation_steps: 16"),
        ("70B full fine-tune, s=2048", "bf16: true\nfinetuning_type: full\nper_device_train_batch_size: 8"),
    ] {
        let training = TrainingConfig::from_yaml_str(yaml)?;
        let input = PlannerInput { gpus_per_node: 8, max_gpus: 32, ..PlannerInput::new("meta-llama/Llama-2-70b-hf", arch.clone(), training, 80 << 30) };
        let result = search(&input);
        let n = 2000;
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(search(std::hint::black_box(&input)));
        }
        let secs = start.elapsed().as_secs_f64();
        let chosen = result.chosen.map(|p| format!("{} GPUs, ZeRO-{}, micro-batch {}", p.gpus, p.zero_stage, p.micro_batch_size));
        println!(
            "{label}: {:.0} searches/s ({:.1} µs each, {} options tried; chosen: {})",
            n as f64 / secs,
            1e6 * secs / n as f64,
            result.options.len(),
            chosen.unwrap_or_else(|| "none fits".into())
        );
    }
    Ok(())
}
