//! The LoRA settings in effect: from the training config, or from an adapter's
//! `adapter_config.json`.

use lf_api::training::LinearModule;

/// LoRA settings in effect (from the training config or an adapter's `adapter_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSettings {
    pub r: u32,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<LinearModule>,
    /// A mixture of experts' router and expert adapters (PEFT's `target_parameters`; see
    /// [`crate::moe`]).
    pub experts: lf_api::architecture::ExpertLoraTargets,
    pub use_rslora: bool,
    pub use_dora: bool,
    /// AdaLoRA's settings (then `r` is `init_r`).
    pub adalora: Option<lf_api::training::AdaLora>,
}

impl LoraSettings {
    /// α/r, or α/√r with rsLoRA; AdaLoRA's α/(init_r + 1e-5) (PEFT's `scaling / (ranknum +
    /// 1e-5)`, `ranknum` staying `init_r` as ranks are pruned).
    pub fn scaling(&self) -> f64 {
        let r = self.r as f64;
        if self.adalora.is_some() {
            self.alpha / (r + 1e-5)
        } else if self.use_rslora {
            self.alpha / r.sqrt()
        } else {
            self.alpha / r
        }
    }
}
