//! Learning-rate schedules with Hugging Face's arithmetic (`transformers.optimization`): the
//! learning rate of optimiser step `k` (0-based) is `learning_rate × λ(k)`.

use lf_api::training::{LrSchedulerType, TrainingConfig};
use serde::{Deserialize, Serialize};

/// A schedule over `total_steps` optimiser steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: LrSchedulerType,
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// The schedule a config implies for `total_steps`: `warmup_steps` when set, else
    /// `ceil(warmup_ratio × total_steps)` (Hugging Face's `get_warmup_steps`).
    pub fn from_config(cfg: &TrainingConfig, total_steps: u64) -> Self {
        let warmup_steps = if cfg.warmup_steps > 0 {
            cfg.warmup_steps as u64
        } else {
            (cfg.warmup_ratio * total_steps as f64).ceil() as u64
        };
        LrSchedule {
            kind: cfg.lr_scheduler_type,
            base_lr: cfg.learning_rate,
            warmup_steps,
            total_steps,
        }
    }

    /// The multiplier λ(step).
    pub fn factor(&self, step: u64) -> f64 {
        let (k, w, t) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        let warming = step < self.warmup_steps;
        let warm = k / w.max(1.0);
        match self.kind {
            LrSchedulerType::Constant => 1.0,
            LrSchedulerType::ConstantWithWarmup => {
                if warming {
                    warm
                } else {
                    1.0
                }
            }
            LrSchedulerType::Linear => {
                if warming {
                    warm
                } else {
                    ((t - k) / (t - w).max(1.0)).max(0.0)
                }
            }
            LrSchedulerType::Cosine => {
                if warming {
                    warm
                } else {
                    let progress = (k - w) / (t - w).max(1.0);
                    (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
                }
            }
        }
    }

    /// The learning rate of optimiser step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: LrSchedulerType, warmup: u64, total: u64) -> LrSchedule {
        LrSchedule {
            kind,
            base_lr: 1.0,
            warmup_steps: warmup,
            total_steps: total,
        }
    }

    #[test]
    fn warmup_from_ratio_rounds_up() {
        let cfg = TrainingConfig {
            warmup_ratio: 0.1,
            ..TrainingConfig::default()
        };
        assert_eq!(LrSchedule::from_config(&cfg, 25).warmup_steps, 3);
        let cfg = TrainingConfig {
            warmup_ratio: 0.1,
            warmup_steps: 7,
            ..TrainingConfig::default()
        };
        assert_eq!(LrSchedule::from_config(&cfg, 25).warmup_steps, 7);
    }

    #[test]
    fn linear_and_cosine_match_transformers() {
        // Values from transformers' get_linear_schedule_with_warmup / get_cosine_schedule_with_warmup
        // (num_warmup_steps=2, num_training_steps=10): λ(k) for k = 0..10.
        let lin = sched(LrSchedulerType::Linear, 2, 10);
        let want = [
            0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0,
        ];
        for (k, w) in want.iter().enumerate() {
            assert!((lin.factor(k as u64) - w).abs() < 1e-12, "linear λ({k})");
        }
        let cos = sched(LrSchedulerType::Cosine, 2, 10);
        assert_eq!(cos.factor(1), 0.5);
        assert!((cos.factor(2) - 1.0).abs() < 1e-12);
        assert!((cos.factor(6) - 0.5).abs() < 1e-12);
        assert!(cos.factor(10).abs() < 1e-12);
        let cww = sched(LrSchedulerType::ConstantWithWarmup, 4, 10);
        assert_eq!(
            (cww.factor(1), cww.factor(4), cww.factor(9)),
            (0.25, 1.0, 1.0)
        );
        assert_eq!(sched(LrSchedulerType::Constant, 4, 10).factor(0), 1.0);
    }
}
