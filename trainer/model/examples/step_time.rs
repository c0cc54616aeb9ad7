//! Times LoRA training micro-batches (forward + backward, no optimiser) on a model directory.
//!
//! `cargo run --release -p lf-model --example step_time -- MODEL_DIR [BATCH SEQ STEPS CHECKPOINTING]`
//! Prints the mean seconds per micro-batch after one warm-up step, and tokens/s.

use std::path::PathBuf;
use std::time::Instant;

use lf_api::training::TrainingConfig;
use lf_model::{CausalLm, LoadOptions};
use tch::{Device, Kind, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(
        args.first()
            .ok_or("usage: step_time MODEL_DIR [BATCH SEQ STEPS CHECKPOINTING]")?,
    );
    let arg = |i: usize, default: i64| {
        args.get(i)
            .map(|s| s.parse::<i64>())
            .transpose()
            .map(|v| v.unwrap_or(default))
    };
    let (batch, seq, steps) = (arg(1, 2)?, arg(2, 512)?, arg(3, 3)?);
    let ckpt = args.get(4).map(|s| s == "true").unwrap_or(true);
    let device = Device::cuda_if_available();
    let mut lm = CausalLm::load(&dir, &LoadOptions::new(device, Kind::Float))?;
    let cfg = TrainingConfig::from_yaml_str(&format!(
        "lora_rank: 16\nlora_target: all\ngradient_checkpointing: {ckpt}"
    ))?;
    lm.apply_method(&cfg, 0)?;
    lm.set_training(true);
    let vocab = lm.architecture().vocab_size as i64;
    tch::manual_seed(0);
    let ids = Tensor::randint(vocab, [batch, seq], (Kind::Int64, device));
    let mut times = Vec::new();
    for step in 0..=steps {
        let start = Instant::now();
        lm.loss_sum_and_backward(&ids, &ids, 1.0 / (batch * seq) as f64)?;
        if step > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    println!(
        "lf-model: {mean:.3} s per micro-batch, {:.0} tokens/s (batch {batch}, seq {seq}, recompute {ckpt})",
        (batch * seq) as f64 / mean
    );
    Ok(())
}
