//! `gradient_checkpointing: auto` in a plain `lf-trainer` config (no planner has filled in
//! `recompute_layers`): with `memory_budget_mib` the trainer recomputes the fewest decoder layers
//! whose predicted peak fits the budget; without it every layer is recomputed (as `true`).
//!
//! The prediction is lf-planner's ([`crate::memory_report::planned_peak`]: model states plus the
//! largest transient phase, without the CUDA context); on the CPU the budget is the process's peak
//! RSS, so the RSS the process already holds when it decides (the runtime, tokenizer and data) is
//! added to it.

use std::path::Path;

use lf_api::training::TrainingConfig;
use lf_api::ModelArchitecture;
use tch::Device;

use crate::error::TrainerError;

/// What `auto` decides for this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Recomputed layers (the first ones).
    pub recomputed: u32,
    pub layers: u32,
    /// The predicted peak with that many recomputed (bytes; RSS on the CPU).
    pub predicted_bytes: u64,
    /// Whether it fits the budget (`false`: nothing does; every layer is recomputed).
    pub fits: bool,
}

/// The fewest recomputed layers whose `base_bytes + planned_peak` fits `budget_bytes` (every
/// layer when none does). Pure: `base_bytes` is what the process holds outside the plan.
pub fn choose(
    cfg: &TrainingConfig,
    arch: &ModelArchitecture,
    budget_bytes: u64,
    base_bytes: u64,
) -> Choice {
    let layers = arch.num_hidden_layers;
    let predicted = |r: u64| {
        let mut fixed = cfg.clone();
        fixed.recompute_layers = Some(r as u32);
        base_bytes + crate::memory_report::planned_peak(&fixed, arch, cfg.zero_stage, 1)
    };
    let found = lf_planner::recompute::fewest_recomputed(layers, |r| predicted(r) <= budget_bytes);
    let recomputed = found.unwrap_or(layers);
    Choice {
        recomputed: recomputed as u32,
        layers: layers as u32,
        predicted_bytes: predicted(recomputed),
        fits: found.is_some(),
    }
}

/// `cfg` with `recompute_layers` filled in when `gradient_checkpointing: auto` left it open: the
/// budget's choice ([`choose`]) or every layer. Logs the choice.
pub fn resolve(
    cfg: &TrainingConfig,
    model_dir: &Path,
    device: Device,
) -> Result<TrainingConfig, TrainerError> {
    let mut out = cfg.clone();
    if cfg.offload_activations.enabled() {
        tracing::info!(
            tile_tokens = cfg.loss_chunk_size,
            "offload_activations: the recomputed layers' checkpoints are kept in host memory; passes without gradients run dense MLPs in tiles of loss_chunk_size tokens (0: whole)"
        );
    }
    if !cfg.recomputation_open() {
        return Ok(out);
    }
    let arch = lf_model::read_architecture(model_dir)
        .map_err(|e| TrainerError::config(format!("reading the model's config.json: {e}")))?;
    let Some(budget_mib) = cfg.memory_budget_mib else {
        out.recompute_layers = Some(arch.num_hidden_layers as u32);
        tracing::info!(
            layers = arch.num_hidden_layers,
            "gradient_checkpointing: auto without memory_budget_mib recomputes every layer"
        );
        return Ok(out);
    };
    // On the CPU the budget is peak RSS, and the process already holds its runtime and data.
    let base = match device {
        Device::Cpu => current_rss_bytes().unwrap_or(0),
        _ => 0,
    };
    let choice = choose(cfg, &arch, budget_mib << 20, base);
    if choice.fits {
        tracing::info!(
            recompute_layers = choice.recomputed,
            layers = choice.layers,
            predicted_mib = choice.predicted_bytes >> 20,
            budget_mib,
            "gradient_checkpointing: auto recomputes the fewest layers that fit memory_budget_mib"
        );
    } else {
        tracing::warn!(
            layers = choice.layers,
            predicted_mib = choice.predicted_bytes >> 20,
            budget_mib,
            "gradient_checkpointing: auto: nothing fits memory_budget_mib; every layer is recomputed"
        );
    }
    out.recompute_layers = Some(choice.recomputed);
    Ok(out)
}

/// Resident set size of this process now (`VmRSS`), where the OS reports it.
fn current_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arch() -> ModelArchitecture {
        ModelArchitecture::from_json_str(
            r#"{"model_type":"llama","vocab_size":32000,"hidden_size":512,"intermediate_size":1376,
                "num_hidden_layers":8,"num_attention_heads":8,"num_key_value_heads":8}"#,
        )
        .expect("architecture")
    }

    fn cfg() -> TrainingConfig {
        TrainingConfig::from_yaml_str(
            "lora_rank: 16\ncutoff_len: 512\nper_device_train_batch_size: 4\nmemory_budget_mib: 1",
        )
        .expect("config")
    }

    #[test]
    fn the_budget_picks_the_fewest_recomputed_layers_that_fit() {
        let (a, c) = (arch(), cfg());
        let peak = |r: u32| {
            let mut fixed = c.clone();
            fixed.recompute_layers = Some(r);
            crate::memory_report::planned_peak(&fixed, &a, 0, 1)
        };
        assert!(
            peak(0) > peak(4) && peak(4) > peak(7),
            "kept layers cost memory"
        );
        // Exactly at each count's peak, that count is chosen; one byte less needs one more.
        for r in 0..8u32 {
            let at = choose(&c, &a, peak(r) + 100, 100);
            assert_eq!((at.recomputed, at.fits), (r, true), "budget = peak({r})");
            let below = choose(&c, &a, peak(r) + 99, 100);
            assert!(
                below.recomputed > r || !below.fits,
                "budget below peak({r})"
            );
        }
        let nothing = choose(&c, &a, 1, 0);
        assert_eq!((nothing.recomputed, nothing.fits), (8, false));
    }
}
