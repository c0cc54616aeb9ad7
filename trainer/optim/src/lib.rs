//! Optimisers over plain tch tensors, with state that can be checkpointed exactly and sharded
//! across ranks: AdamW (`adamw_torch`), SGD, 8-bit AdamW (`adamw_8bit`), Adafactor, each optionally
//! offloaded to the CPU (`offload_optimizer: cpu`).
//!
//! State is created lazily at a parameter's first step (as PyTorch does), so [`Optimizer::state_bytes`]
//! reaches its steady value after the first [`Optimizer::step`].
//!
//! | optimiser | state bytes per trainable parameter (fp32 params; + 4 for an fp32 master of 16-bit params) |
//! |---|---|
//! | `adamw_torch` | 8 (fp32 m, v); 4 under `pure_bf16` (bf16 m, v, no master) |
//! | `adamw_8bit` | 2 + 8/256 for tensors ≥ 4096 elements, else 8 |
//! | `adafactor` | 4·(rows + cols) per matrix, 4 per vector element |
//! | `sgd` | 0 (momentum 0, as Hugging Face) |
//! | offload (`cpu`) | the above + a 4-byte fp32 master, all in host memory; nothing on the device |
//!
//! ## ZeRO partitioning
//! State is per parameter and flat: every state tensor is either parameter-shaped (AdamW's
//! moments, the fp32 master, 8-bit codes) with small per-block constants (8-bit absmax, one per
//! 256 elements), or a factored summary (Adafactor's row/column statistics). A rank's shard of a
//! parameter is the element range `[start, end)` of `p.reshape(-1)`; element-wise state shards the
//! same way (`t.reshape(-1).narrow(0, start, end - start)`), 8-bit block constants at ranges
//! aligned to 256, and the step count is replicated. Adafactor needs whole rows/columns, so it is
//! partitioned by whole parameters. State-dict keys are `{param}.{state}`, so a shard's file is
//! the same layout restricted to its parameters/ranges.

mod clip;
mod engine;
mod optimizer;
mod rules;

use lf_api::training::{OffloadDevice, Optim, Precision, TrainingConfig};
use tch::Tensor;

pub use clip::{clip_grad_norm, clip_to_max_norm, grad_norm};
pub use optimizer::{OptimError, Optimizer, StateBytes};
pub use rules::adamw8bit::{MIN_8BIT_SIZE, STATE_BLOCKSIZE};

use engine::{Engine, Placement};
use rules::adafactor::Adafactor;
use rules::adamw::{AdamHyper, AdamW};
use rules::adamw8bit::AdamW8bit;
use rules::sgd::Sgd;

fn check_range(key: &'static str, v: f64, lo: f64, hi: f64) -> Result<(), OptimError> {
    if v.is_finite() && v >= lo && v < hi {
        Ok(())
    } else {
        Err(OptimError::InvalidConfig {
            key,
            message: format!("{v} is outside [{lo}, {hi})"),
        })
    }
}

/// Builds the optimiser `cfg.optim` for `params` (name, tensor) with `adam_beta1/2`,
/// `adam_epsilon`, `weight_decay`, `offload_optimizer` and the precision regime (fp32 master
/// copies for 16-bit parameters under AMP; bf16 states and no master under `pure_bf16`).
pub fn build(
    cfg: &TrainingConfig,
    params: &[(String, Tensor)],
) -> Result<Box<dyn Optimizer>, OptimError> {
    check_range("adam_beta1", cfg.adam_beta1, 0.0, 1.0)?;
    check_range("adam_beta2", cfg.adam_beta2, 0.0, 1.0)?;
    check_range("adam_epsilon", cfg.adam_epsilon, 0.0, f64::INFINITY)?;
    check_range("weight_decay", cfg.weight_decay, 0.0, f64::INFINITY)?;
    let placement = Placement {
        offload: cfg.offload_optimizer == OffloadDevice::Cpu,
        pure_16bit: cfg.precision() == Precision::PureBf16,
    };
    let hyper = AdamHyper {
        beta1: cfg.adam_beta1,
        beta2: cfg.adam_beta2,
        eps: cfg.adam_epsilon,
        weight_decay: cfg.weight_decay,
    };
    Ok(match cfg.optim {
        Optim::AdamwTorch => Box::new(Engine::new(AdamW { hyper }, params, placement)?),
        Optim::Adamw8bit => Box::new(Engine::new(AdamW8bit::new(hyper), params, placement)?),
        Optim::Adafactor => Box::new(Engine::new(
            Adafactor {
                weight_decay: cfg.weight_decay,
            },
            params,
            placement,
        )?),
        Optim::Sgd => Box::new(Engine::new(
            Sgd {
                momentum: 0.0,
                weight_decay: cfg.weight_decay,
            },
            params,
            placement,
        )?),
    })
}

/// SGD with momentum (dampening 0, no Nesterov) — not reachable from the config, which follows
/// Hugging Face's momentum-free `sgd`.
pub fn sgd_with_momentum(
    params: &[(String, Tensor)],
    momentum: f64,
    weight_decay: f64,
    offload: bool,
) -> Result<Box<dyn Optimizer>, OptimError> {
    check_range("momentum", momentum, 0.0, 1.0)?;
    let placement = Placement {
        offload,
        pure_16bit: false,
    };
    Ok(Box::new(Engine::new(
        Sgd {
            momentum,
            weight_decay,
        },
        params,
        placement,
    )?))
}
