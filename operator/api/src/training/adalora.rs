//! AdaLoRA's settings: the `use_adalora` / `adalora_*` keys (the guide's names), PEFT's
//! `AdaLoraConfig` defaults, and what AdaLoRA does not combine with.

use super::config::TrainingConfig;
use super::error::ConfigError;
use super::options::FinetuningType;

/// AdaLoRA as a run uses it (PEFT's `AdaLoraConfig`, defaults filled in). `total_step` is not a
/// key: it is the run's number of optimiser steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaLora {
    /// The average rank the budget ends at (`target_r`).
    pub target_r: u32,
    /// Each adapter's starting rank (`init_r`).
    pub init_r: u32,
    /// Steps at the initial budget (`tinit`).
    pub tinit: u64,
    /// Steps at the final budget (`tfinal`).
    pub tfinal: u64,
    /// Steps between reallocations (`deltaT`).
    pub delta_t: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub orth_reg_weight: f64,
}

impl AdaLora {
    /// Checks the schedule against the run's `total_steps`, as PEFT's `AdaLoraConfig` does: there
    /// must be a budgeting phase between `tinit` and `total_steps - tfinal`.
    pub fn check_schedule(&self, total_steps: u64) -> Result<(), ConfigError> {
        if self.tinit >= total_steps.saturating_sub(self.tfinal) {
            return Err(ConfigError::invalid(
                "adalora_tinit",
                format!(
                    "adalora_tinit ({}) must be below the run's {total_steps} optimiser steps minus adalora_tfinal ({}): AdaLoRA needs steps in between to reallocate ranks; lower adalora_tinit/adalora_tfinal or train longer",
                    self.tinit, self.tfinal
                ),
            ));
        }
        Ok(())
    }
}

impl TrainingConfig {
    /// AdaLoRA's settings when `use_adalora` is on.
    pub fn adalora(&self) -> Option<AdaLora> {
        self.use_adalora.then(|| AdaLora {
            target_r: self.adalora_rank.unwrap_or(8),
            init_r: self.adalora_init_r.unwrap_or(12),
            tinit: self.adalora_tinit.unwrap_or(0),
            tfinal: self.adalora_tfinal.unwrap_or(0),
            delta_t: self.adalora_delta_t.unwrap_or(1),
            beta1: self.adalora_beta1.unwrap_or(0.85),
            beta2: self.adalora_beta2.unwrap_or(0.85),
            orth_reg_weight: self.adalora_orth_reg_weight.unwrap_or(0.5),
        })
    }

    /// The AdaLoRA rules a schema cannot express.
    pub(super) fn validate_adalora(&self) -> Result<(), ConfigError> {
        let Some(a) = self.adalora() else {
            let set = [
                ("adalora_rank", self.adalora_rank.is_some()),
                ("adalora_init_r", self.adalora_init_r.is_some()),
                ("adalora_tinit", self.adalora_tinit.is_some()),
                ("adalora_tfinal", self.adalora_tfinal.is_some()),
                ("adalora_delta_t", self.adalora_delta_t.is_some()),
                ("adalora_beta1", self.adalora_beta1.is_some()),
                ("adalora_beta2", self.adalora_beta2.is_some()),
                (
                    "adalora_orth_reg_weight",
                    self.adalora_orth_reg_weight.is_some(),
                ),
            ];
            if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
                return Err(ConfigError::invalid(
                    key,
                    "has no effect without `use_adalora: true`",
                ));
            }
            return Ok(());
        };
        let refuse = |key: &str, why: &str| Err(ConfigError::invalid(key, why));
        if self.finetuning_type != FinetuningType::Lora {
            return refuse(
                "use_adalora",
                "AdaLoRA is a LoRA method: use `finetuning_type: lora`",
            );
        }
        if self.use_dora {
            return refuse(
                "use_dora",
                "AdaLoRA does not combine with DoRA (PEFT refuses it too)",
            );
        }
        if self.use_rslora {
            return refuse(
                "use_rslora",
                "AdaLoRA scales its adapters by lora_alpha / adalora_init_r; rsLoRA's α/√r does not apply to it",
            );
        }
        if a.init_r == 0 {
            return refuse("adalora_init_r", "must be at least 1");
        }
        if a.target_r == 0 || a.target_r > a.init_r {
            return Err(ConfigError::invalid(
                "adalora_rank",
                format!(
                    "the target average rank must be between 1 and adalora_init_r ({}); {} would grow the budget, and AdaLoRA only prunes",
                    a.init_r, a.target_r
                ),
            ));
        }
        if a.delta_t == 0 {
            return refuse("adalora_delta_t", "must be at least 1");
        }
        for (key, beta) in [("adalora_beta1", a.beta1), ("adalora_beta2", a.beta2)] {
            if !(beta > 0.0 && beta < 1.0) {
                return refuse(key, "must be in (0, 1)");
            }
        }
        if !(a.orth_reg_weight.is_finite() && a.orth_reg_weight >= 0.0) {
            return refuse("adalora_orth_reg_weight", "must be a non-negative number");
        }
        if self.zero_stage > 0 {
            return refuse(
                "zero_stage",
                "AdaLoRA scores every adapter element from its whole gradient after each step; ZeRO 1-3 keep only a shard of it on each rank: use zero_stage 0 (the adapters are small, so partitioning them saves little)",
            );
        }
        if self.max_steps > 0 {
            a.check_schedule(self.max_steps as u64)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<TrainingConfig, ConfigError> {
        let cfg = TrainingConfig::from_yaml_str(yaml)?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn defaults_are_peft_s() {
        let cfg = parse("use_adalora: true").unwrap();
        let a = cfg.adalora().unwrap();
        assert_eq!(
            (a.target_r, a.init_r, a.tinit, a.tfinal, a.delta_t),
            (8, 12, 0, 0, 1)
        );
        assert_eq!((a.beta1, a.beta2, a.orth_reg_weight), (0.85, 0.85, 0.5));
        assert!(parse("lora_rank: 8").unwrap().adalora().is_none());
    }

    #[test]
    fn the_guide_s_keys_are_read() {
        let cfg = parse(
            "use_adalora: true\nadalora_rank: 8\nadalora_init_r: 12\nadalora_tinit: 200\nadalora_tfinal: 1000\nadalora_delta_t: 10\n",
        )
        .unwrap();
        let a = cfg.adalora().unwrap();
        assert_eq!(
            (a.target_r, a.init_r, a.tinit, a.tfinal, a.delta_t),
            (8, 12, 200, 1000, 10)
        );
    }

    #[test]
    fn what_adalora_does_not_combine_with_is_refused_with_the_key() {
        let cases = [
            ("adalora_rank: 4", "adalora_rank"),
            ("use_adalora: true\nfinetuning_type: full", "use_adalora"),
            ("use_adalora: true\nuse_dora: true", "use_dora"),
            ("use_adalora: true\nuse_rslora: true", "use_rslora"),
            // The guide's own example (rank 32 from 12) would grow the budget.
            (
                "use_adalora: true\nadalora_rank: 32\nadalora_init_r: 12",
                "adalora_rank",
            ),
            ("use_adalora: true\nadalora_init_r: 0", "adalora_init_r"),
            ("use_adalora: true\nadalora_delta_t: 0", "adalora_delta_t"),
            ("use_adalora: true\nadalora_beta1: 1.0", "adalora_beta1"),
            (
                "use_adalora: true\nadalora_orth_reg_weight: -1",
                "adalora_orth_reg_weight",
            ),
            ("use_adalora: true\nzero_stage: 2", "zero_stage"),
            (
                "use_adalora: true\nmax_steps: 10\nadalora_tinit: 5\nadalora_tfinal: 5",
                "adalora_tinit",
            ),
        ];
        for (yaml, key) in cases {
            let err = parse(yaml).expect_err(yaml).to_string();
            assert!(err.contains(key), "{yaml}: {err}");
        }
        assert!(
            parse("use_adalora: true\nmax_steps: 10\nadalora_tinit: 4\nadalora_tfinal: 5").is_ok()
        );
    }

    #[test]
    fn the_highest_zero_stage_is_the_one_each_rule_allows() {
        for (yaml, stage) in [
            ("lora_rank: 8", 3),
            ("use_adalora: true", 0),
            ("optim: adafactor", 0),
            ("stage: dpo", 3),
            ("stage: kto", 3),
            ("stage: rm", 3),
            ("neat_packing: true", 2),
            (
                "do_predict: true\npredict_with_generate: true\neval_dataset: x",
                2,
            ),
            ("stage: dpo\noptim: adafactor", 0),
        ] {
            let cfg = TrainingConfig::from_yaml_str(yaml).unwrap();
            assert_eq!(cfg.highest_zero_stage(), stage, "{yaml}");
            // The config refuses the next stage up (Adafactor's refusal is the trainer's).
            if stage < 3 && !yaml.contains("adafactor") {
                let fixed = format!("{yaml}\nzero_stage: {}", stage + 1);
                assert!(parse(&fixed).is_err(), "{fixed}");
            }
        }
    }
}
