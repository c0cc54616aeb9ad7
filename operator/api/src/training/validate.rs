//! The rules a schema cannot express. Each error names its key.

use super::config::TrainingConfig;
use super::error::ConfigError;
use super::options::{FinetuningType, Stage, TEMPLATES};

impl TrainingConfig {
    /// Checks the rules a schema cannot express. Each error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.lora_rank < 1 {
            return Err(ConfigError::invalid("lora_rank", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(ConfigError::invalid("lora_dropout", "must be in [0, 1)"));
        }
        if let Some(bits) = self.quantization_bit {
            if bits != 4 && bits != 8 {
                return Err(ConfigError::invalid(
                    "quantization_bit",
                    format!("{bits} is not supported; use 4 or 8"),
                ));
            }
            if self.finetuning_type != FinetuningType::Lora {
                return Err(ConfigError::invalid(
                    "quantization_bit",
                    "quantised base weights cannot be trained: use `finetuning_type: lora` (QLoRA)",
                ));
            }
        }
        if self.bf16 && self.fp16 {
            return Err(ConfigError::invalid(
                "fp16",
                "`bf16` and `fp16` cannot both be true",
            ));
        }
        if self.pure_bf16 && self.fp16 {
            return Err(ConfigError::invalid(
                "pure_bf16",
                "`pure_bf16` and `fp16` cannot both be true",
            ));
        }
        if self.zero_stage > 3 {
            return Err(ConfigError::invalid("zero_stage", "must be 0, 1, 2 or 3"));
        }
        if self.per_device_train_batch_size == 0 {
            return Err(ConfigError::invalid(
                "per_device_train_batch_size",
                "must be at least 1",
            ));
        }
        if self.per_device_eval_batch_size == 0 {
            return Err(ConfigError::invalid(
                "per_device_eval_batch_size",
                "must be at least 1",
            ));
        }
        if self.gradient_accumulation_steps == 0 {
            return Err(ConfigError::invalid(
                "gradient_accumulation_steps",
                "must be at least 1",
            ));
        }
        if self.cutoff_len < 2 {
            return Err(ConfigError::invalid(
                "cutoff_len",
                "must be at least 2 tokens",
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            return Err(ConfigError::invalid(
                "learning_rate",
                "must be a non-negative number",
            ));
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return Err(ConfigError::invalid("warmup_ratio", "must be in [0, 1]"));
        }
        if self.val_size < 0.0 || (self.val_size >= 1.0 && self.val_size.fract() != 0.0) {
            return Err(ConfigError::invalid(
                "val_size",
                "must be a fraction in [0, 1) or a whole number of examples",
            ));
        }
        super::report_to::parse(&self.report_to)?;
        if self.save_total_limit == Some(0) {
            return Err(ConfigError::invalid(
                "save_total_limit",
                "must be at least 1 (unset keeps every checkpoint)",
            ));
        }
        if let Some(t) = &self.template {
            if !TEMPLATES.contains(&t.as_str()) {
                let suggestion = crate::suggest::closest(t, TEMPLATES.iter().copied());
                return Err(ConfigError::invalid(
                    "template",
                    format!(
                        "unknown template `{t}`{}; known: {}",
                        suggestion
                            .map(|s| format!(" (did you mean `{s}`?)"))
                            .unwrap_or_default(),
                        TEMPLATES.join(", ")
                    ),
                ));
            }
        }
        if self.recompute_layers.is_some()
            && self.gradient_checkpointing != super::checkpointing::GradientCheckpointing::Auto
        {
            return Err(ConfigError::invalid(
                "recompute_layers",
                "needs `gradient_checkpointing: auto` (true recomputes every layer, false none)",
            ));
        }
        if self.offload_activations == super::OffloadActivations::On
            && self.gradient_checkpointing == super::checkpointing::GradientCheckpointing::Off
        {
            return Err(ConfigError::invalid(
                "offload_activations",
                "offloads the checkpoints of recomputed layers; `gradient_checkpointing: false` recomputes none (use true or auto)",
            ));
        }
        if self.offload_activations == super::OffloadActivations::On
            && self.gradient_checkpointing == super::checkpointing::GradientCheckpointing::Auto
            && self.recompute_layers == Some(0)
        {
            return Err(ConfigError::invalid(
                "offload_activations",
                "offloads the checkpoints of recomputed layers; `recompute_layers: 0` recomputes none",
            ));
        }
        if self.neat_packing && (self.stage != Stage::Sft || self.zero_stage >= 3) {
            return Err(ConfigError::invalid(
                "neat_packing",
                "packs supervised examples (`stage: sft`) with zero_stage 0-2",
            ));
        }
        self.lora_targets()?;
        self.validate_adalora()?;
        self.profile_window()?;
        self.validate_preference()?;
        self.validate_reward()?;
        self.validate_predict()
    }

    /// `stage: rm`: the preference losses' settings do not apply (the loss is TRL
    /// RewardTrainer's −log σ(r_chosen − r_rejected), with no β and no reference), and what the
    /// value head does not combine with yet.
    fn validate_reward(&self) -> Result<(), ConfigError> {
        if self.stage != Stage::Rm {
            return Ok(());
        }
        let defaults = TrainingConfig::default();
        let unused = [
            ("pref_beta", self.pref_beta != defaults.pref_beta),
            ("pref_ftx", self.pref_ftx != defaults.pref_ftx),
            ("pref_loss", self.pref_loss != defaults.pref_loss),
            ("simpo_gamma", self.simpo_gamma != defaults.simpo_gamma),
            (
                "kto_chosen_weight",
                self.kto_chosen_weight != defaults.kto_chosen_weight,
            ),
            (
                "kto_rejected_weight",
                self.kto_rejected_weight != defaults.kto_rejected_weight,
            ),
        ];
        if let Some((key, _)) = unused.iter().find(|(_, set)| *set) {
            return Err(ConfigError::invalid(
                key,
                "is not used by `stage: rm`, whose loss is −log σ(r_chosen − r_rejected) of the value head's rewards (no β, no reference model): remove it",
            ));
        }
        if self.packing_enabled() {
            return Err(ConfigError::invalid(
                "packing",
                "`stage: rm` scores each chosen and rejected sequence by its last token, so sequences are not packed: use `packing: false`",
            ));
        }
        if self.use_adalora {
            return Err(ConfigError::invalid(
                "use_adalora",
                "AdaLoRA's adapter is not saved with the value head of `stage: rm`: use `finetuning_type: lora` without `use_adalora`",
            ));
        }
        Ok(())
    }

    /// `stage: dpo`/`kto`: the loss settings, and what the preference stages do not combine with
    /// yet.
    fn validate_preference(&self) -> Result<(), ConfigError> {
        if !self.stage.is_preference() {
            return Ok(());
        }
        if self.stage == Stage::Kto {
            self.validate_kto()?;
        }
        if !(self.pref_beta.is_finite() && self.pref_beta > 0.0) {
            return Err(ConfigError::invalid(
                "pref_beta",
                "must be a positive number",
            ));
        }
        if !(self.pref_ftx.is_finite() && self.pref_ftx >= 0.0) {
            return Err(ConfigError::invalid(
                "pref_ftx",
                "must be a non-negative number",
            ));
        }
        if !self.simpo_gamma.is_finite() {
            return Err(ConfigError::invalid("simpo_gamma", "must be a number"));
        }
        if self.packing_enabled() {
            return Err(ConfigError::invalid(
                "packing",
                "preference pairs are not packed: use `packing: false`",
            ));
        }
        Ok(())
    }

    /// `stage: kto`: the weights, and TRL's rule that the KL term needs two examples per
    /// micro-batch (a completion paired with another example's prompt).
    fn validate_kto(&self) -> Result<(), ConfigError> {
        for (key, w) in [
            ("kto_chosen_weight", self.kto_chosen_weight),
            ("kto_rejected_weight", self.kto_rejected_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(ConfigError::invalid(key, "must be a non-negative number"));
            }
        }
        if self.pref_ftx != 0.0 {
            return Err(ConfigError::invalid(
                "pref_ftx",
                "the added SFT loss is not implemented for `stage: kto` (TRL's KTOTrainer has none): use `pref_ftx: 0`",
            ));
        }
        if self.per_device_train_batch_size < 2 {
            return Err(ConfigError::invalid(
                "per_device_train_batch_size",
                "`stage: kto` estimates its KL term from each example's prompt with another example's completion of the same micro-batch: use at least 2 (TRL's rule)",
            ));
        }
        Ok(())
    }

    /// LLaMA-Factory's rules for batch prediction, plus the one example per prompt it needs.
    fn validate_predict(&self) -> Result<(), ConfigError> {
        if self.predict_with_generate && self.stage != Stage::Sft {
            return Err(ConfigError::invalid(
                "predict_with_generate",
                "only `stage: sft` predicts (a pretraining example has no prompt to answer)",
            ));
        }
        if !self.do_predict {
            return Ok(());
        }
        if !self.predict_with_generate {
            return Err(ConfigError::invalid(
                "do_predict",
                "set `predict_with_generate: true` to generate and save predictions (LLaMA-Factory's rule); `lf-trainer eval` reports the eval loss",
            ));
        }
        if self.zero_stage >= 3 {
            return Err(ConfigError::invalid(
                "do_predict",
                "prediction loads the whole model on one device, which ZeRO-3 is there to avoid (LLaMA-Factory refuses `predict_with_generate` with ZeRO-3 too): predict in a run of its own with `zero_stage` below 3",
            ));
        }
        if self.packing_enabled() {
            return Err(ConfigError::invalid(
                "do_predict",
                "prediction answers one example at a time: set `packing: false`",
            ));
        }
        if self.eval_dataset.is_none() && self.dataset.is_none() {
            return Err(ConfigError::invalid(
                "do_predict",
                "needs the examples to answer: set `eval_dataset`",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::checkpointing::GradientCheckpointing;
    use super::TrainingConfig;

    fn parse(yaml: &str) -> TrainingConfig {
        TrainingConfig::from_yaml_str(yaml).expect("config")
    }

    #[test]
    fn true_false_auto_and_the_negative_flag() {
        assert_eq!(
            parse("").gradient_checkpointing,
            GradientCheckpointing::Auto
        );
        let on = parse("gradient_checkpointing: true");
        assert_eq!(on.gradient_checkpointing, GradientCheckpointing::On);
        assert_eq!(on.recomputed_layers(32), 32);
        let off = parse("disable_gradient_checkpointing: true");
        assert_eq!(off.gradient_checkpointing, GradientCheckpointing::Off);
        assert_eq!(off.recomputed_layers(32), 0);
        let auto = parse("gradient_checkpointing: auto");
        assert!(auto.recomputation_open());
        assert_eq!(auto.recomputed_layers(32), 32);
        let chosen = parse("gradient_checkpointing: auto\nrecompute_layers: 20");
        assert!(!chosen.recomputation_open());
        assert_eq!(chosen.recomputed_layers(32), 20);
        assert_eq!(chosen.recomputed_layers(8), 8);
        assert!(TrainingConfig::from_yaml_str("gradient_checkpointing: sometimes").is_err());
    }

    #[test]
    fn the_value_round_trips() {
        for v in ["true", "false", "auto", "auto\nrecompute_layers: 3"] {
            let c = parse(&format!("gradient_checkpointing: {v}"));
            let text = serde_yaml::to_string(&c).expect("yaml");
            assert_eq!(TrainingConfig::from_yaml_str(&text).expect("again"), c);
        }
    }

    #[test]
    fn neat_packing_is_for_sft_without_zero3_and_replaces_packing() {
        let c = parse("neat_packing: true\npacking: true");
        assert!(c.neat_packing && !c.packing_enabled());
        for bad in ["stage: pt", "stage: dpo", "zero_stage: 3"] {
            let e = TrainingConfig::from_yaml_str(&format!("neat_packing: true\n{bad}"))
                .and_then(|c| c.validate());
            assert!(e.is_err(), "{bad}");
        }
    }

    #[test]
    fn rm_refuses_what_it_does_not_use() {
        let ok = parse("stage: rm\nfinetuning_type: full");
        assert!(ok.validate().is_ok());
        assert!(!ok.keeps_reference_copy());
        assert_eq!(ok.highest_zero_stage(), 3);
        for bad in [
            "pref_beta: 0.2",
            "pref_loss: orpo",
            "pref_ftx: 1.0",
            "kto_rejected_weight: 2.0",
            "packing: true",
            "use_adalora: true",
        ] {
            let e = TrainingConfig::from_yaml_str(&format!("stage: rm\n{bad}"))
                .and_then(|c| c.validate());
            assert!(e.is_err(), "{bad}");
        }
        assert!(TrainingConfig::from_yaml_str("stage: ppo").is_err());
    }

    #[test]
    fn recompute_layers_needs_auto() {
        let e = TrainingConfig::from_yaml_str("gradient_checkpointing: true\nrecompute_layers: 3")
            .and_then(|c| c.validate());
        assert!(e.is_err());
    }
}
