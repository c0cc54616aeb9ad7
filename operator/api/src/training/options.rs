//! The enumerated options of the training config (LLaMA-Factory's values).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Training stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Supervised fine-tuning: prompt tokens are masked out of the loss.
    #[default]
    Sft,
    /// (Continued) pre-training on plain text.
    Pt,
    /// Preference optimisation on `ranking` datasets (chosen/rejected pairs) with `pref_loss`:
    /// DPO and its variants against the reference model (the base with the LoRA adapter off), or
    /// the reference-free ORPO and SimPO.
    Dpo,
    /// KTO on unpaired examples tagged desirable or not (`kto_tag`): TRL's KTOTrainer loss, with
    /// the KL term from mismatched prompt/completion pairs, against the base with the LoRA
    /// adapter off.
    Kto,
    /// Reward modelling on `ranking` datasets: a scalar value head (`score`) on the final hidden
    /// state of each sequence's last token, trained with TRL RewardTrainer's pairwise loss
    /// −log σ(r_chosen − r_rejected); no reference model.
    Rm,
}

impl Stage {
    /// Whether the stage trains on preference pairs (`ranking` datasets): `dpo` and `rm`.
    pub fn is_pairwise(self) -> bool {
        matches!(self, Stage::Dpo | Stage::Rm)
    }

    /// How many sequences each example runs as: two for the preference stages and `rm` (the
    /// chosen and the rejected answer; KTO's example and its KL sequence), one otherwise.
    pub fn sequences_per_example(self) -> u64 {
        if self.is_preference() || self == Stage::Rm {
            2
        } else {
            1
        }
    }

    /// Whether the stage trains with a preference loss (`dpo` on pairs, `kto` on tagged examples):
    /// two sequences per example, the reference pass, `rewards/*` metrics.
    pub fn is_preference(self) -> bool {
        matches!(self, Stage::Dpo | Stage::Kto)
    }
}

/// The preference loss of `stage: dpo` (LLaMA-Factory's `pref_loss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum PrefLoss {
    /// DPO: −log σ(β·margin), margin = (chosen − rejected) policy/reference log-ratio.
    #[default]
    Sigmoid,
    /// SLiC's hinge: relu(1 − β·margin).
    Hinge,
    /// IPO: (margin − 1/(2β))², on length-averaged log-probabilities.
    Ipo,
    /// ORPO (reference-free): NLL of the chosen response − β·log σ(log-odds ratio).
    Orpo,
    /// SimPO (reference-free): −log σ(β·(avg chosen − avg rejected) − γ), γ = `simpo_gamma`.
    Simpo,
}

impl PrefLoss {
    /// Whether the loss compares against the reference model (ORPO and SimPO do not).
    pub fn uses_reference(self) -> bool {
        !matches!(self, PrefLoss::Orpo | PrefLoss::Simpo)
    }
}

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum FinetuningType {
    /// Low-rank adapters on the target linears (with `use_dora`/`use_rslora` variants).
    #[default]
    Lora,
    /// Every parameter.
    Full,
    /// Only the last `freeze_trainable_layers` decoder layers.
    Freeze,
}

/// Attention implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum FlashAttn {
    /// Scaled-dot-product attention; libtorch picks the flash kernel where it can.
    #[default]
    Auto,
    /// Scaled-dot-product attention.
    Sdpa,
    /// FlashAttention-2 (through SDPA's flash kernel; needs CUDA and bf16/fp16).
    Fa2,
    /// Plain matmul + softmax attention (materialises the s×s scores). `disabled` is accepted too.
    #[serde(alias = "disabled")]
    Eager,
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedulerType {
    #[default]
    Linear,
    Cosine,
    Constant,
    ConstantWithWarmup,
}

/// Optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Optim {
    /// AdamW with fp32 moments (`adamw_torch_fused` and `adamw_hf` are accepted as aliases).
    #[default]
    #[serde(alias = "adamw_torch_fused", alias = "adamw_hf", alias = "adamw")]
    AdamwTorch,
    /// AdamW with block-wise 8-bit moments (the bitsandbytes scheme). `paged_adamw_8bit` is accepted too.
    #[serde(
        rename = "adamw_8bit",
        alias = "adamw8bit",
        alias = "paged_adamw_8bit",
        alias = "adamw_bnb_8bit"
    )]
    Adamw8bit,
    /// Adafactor (factored second moment, no first moment).
    Adafactor,
    /// Stochastic gradient descent (no state).
    Sgd,
}

/// 4-bit data type for `quantization_bit: 4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum QuantizationType {
    #[default]
    Nf4,
    Fp4,
}

/// When to evaluate on the validation split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum EvalStrategy {
    #[default]
    No,
    Steps,
    Epoch,
}

/// Dataset record format for files that `dataset_info.json` does not describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    Alpaca,
    Sharegpt,
}

/// Where the optimiser state (and fp32 master weights) live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum OffloadDevice {
    #[default]
    None,
    Cpu,
}

/// Named chat templates (LLaMA-Factory names) plus `auto`.
pub const TEMPLATES: &[&str] = &[
    "auto", "default", "alpaca", "empty", "llama2", "llama3", "mistral", "qwen", "qwen3", "gemma",
    "phi", "phi4", "chatml",
];

/// Numeric regimes. AMP keeps fp32 master weights and fp32 optimiser states; pure bf16 keeps
/// everything in bf16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Fp32,
    Bf16Amp,
    Fp16Amp,
    PureBf16,
}

impl Precision {
    /// Bytes of one element of the compute (activation) dtype.
    pub fn compute_bytes(self) -> u64 {
        match self {
            Precision::Fp32 => 4,
            _ => 2,
        }
    }
}
