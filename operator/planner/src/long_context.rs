//! The longest sequence a configuration trains on one GPU: the largest `cutoff_len` whose plan
//! (one sequence per micro-batch, ZeRO 0, the optimiser on the GPU) fits, found by bisection over
//! the planner's own fit test — recomputation and `offload_activations` as the config says, or
//! as the planner chooses them under `auto`.

use crate::evaluate::evaluate;
use crate::input::PlannerInput;

/// The longest `cutoff_len` (tokens, at most `limit`) that fits `input`'s GPU as one sequence
/// per micro-batch; `None` when not even one token does. The plan's peak grows with the
/// sequence, so the fitting lengths are a prefix of `1..=limit`.
pub fn max_context(input: &PlannerInput, limit: u64) -> Option<u64> {
    let fits = |tokens: u64| {
        let mut at = input.clone();
        at.training.cutoff_len = usize::try_from(tokens).unwrap_or(usize::MAX);
        at.training.per_device_train_batch_size = 1;
        evaluate(&at, 1, 0, false, 1).fits
    };
    if !fits(1) {
        return None;
    }
    // Invariant: fits(lo), and everything above hi does not fit.
    let (mut lo, mut hi) = (1, limit.max(1));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::preset;
    use lf_api::training::TrainingConfig;

    const GIB: u64 = 1 << 30;

    /// Unsloth's long-context setting for Llama 3.1 8B: QLoRA (NF4) r = 32 on every linear,
    /// bf16, batch 1.
    fn m1(offload: &str, gib: u64) -> PlannerInput {
        let arch = preset("meta-llama/Llama-3.1-8B").expect("preset");
        let training: TrainingConfig = serde_yaml::from_str(&format!(
            "finetuning_type: lora\nlora_rank: 32\nlora_target: all\nquantization_bit: 4\nbf16: true\nper_device_train_batch_size: 1\ngradient_checkpointing: auto\noffload_activations: {offload}"
        ))
        .expect("config");
        PlannerInput::new("meta-llama/Llama-3.1-8B", arch, training, gib * GIB)
    }

    #[test]
    fn offload_reaches_past_unsloths_78475_tokens_on_24_gib() {
        let without = max_context(&m1("false", 24), 1 << 22).expect("some length fits");
        let with = max_context(&m1("auto", 24), 1 << 22).expect("some length fits");
        // Checkpoints on the GPU: a little under 30k tokens; offloaded with tiled MLPs, beyond
        // Unsloth's measured 78,475.
        assert!((20_000..40_000).contains(&without), "{without}");
        assert!(with >= 78_475, "{with}");
        // The plan at that length says what it chose.
        let mut at = m1("auto", 24);
        at.training.cutoff_len = with as usize;
        let plan = evaluate(&at, 1, 0, false, 1);
        let r = plan.recomputation.expect("recomputation");
        assert!(
            plan.fits && r.offloaded && r.recomputed == r.layers,
            "{r:?}"
        );
        // Host memory holds every layer's checkpoint: 32 layers × bf16 hidden 4096 per token.
        assert!(
            plan.host_memory_bytes > 32 * 2 * 4096 * with,
            "{}",
            plan.host_memory_bytes
        );
    }

    #[test]
    fn a_bisection_finds_the_boundary() {
        let input = m1("auto", 24);
        let n = max_context(&input, 1 << 22).expect("fits");
        let fits = |t: u64| {
            let mut at = input.clone();
            at.training.cutoff_len = t as usize;
            evaluate(&at, 1, 0, false, 1).fits
        };
        assert!(fits(n) && !fits(n + 1));
        assert_eq!(max_context(&m1("auto", 1), 1 << 22), None);
    }
}
