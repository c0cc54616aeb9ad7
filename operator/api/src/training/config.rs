//! The training config type: LLaMA-Factory's argument names and defaults, and what follows from
//! them (LoRA targets, the numeric regime, packing, the validation split).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::activation_offload::OffloadActivations;
use super::checkpointing::GradientCheckpointing;
use super::deepspeed::DeepSpeedConfig;
use super::error::ConfigError;
use super::options::*;
use crate::architecture::LinearModule;

/// The training config. Field names and defaults follow LLaMA-Factory; the few keys of our own are
/// marked "lf-operator extension".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingConfig {
    // ---- model -------------------------------------------------------------------------------
    /// Directory of the Hugging Face model (`config.json`, safetensors, `tokenizer.json`). In a
    /// FineTuneJob the operator fills this in from `spec.model`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_name_or_path: Option<String>,
    /// A PEFT adapter directory to continue training from (or to apply in chat/eval/export).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter_name_or_path: Option<String>,
    /// Chat template name (`default`, `alpaca`, `empty`, `llama2`, `llama3`, `mistral`, `qwen`,
    /// `qwen3`, `gemma`, `phi`, `phi4`, `chatml`) or `auto` for the model's own `chat_template`. Unset: `auto` when the
    /// tokenizer has a chat template, else `empty`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    pub flash_attn: FlashAttn,
    /// Recompute decoder layers in backward: `true` every layer, `false` none, `auto` (the
    /// default) only as many as memory requires — the first `recompute_layers` layers, which the
    /// operator's planner fills in; without it `lf-trainer` chooses from `memory_budget_mib`, or
    /// recomputes every layer. `disable_gradient_checkpointing: true` is accepted and means
    /// `false`.
    #[schemars(schema_with = "super::checkpointing::schema")]
    pub gradient_checkpointing: GradientCheckpointing,
    /// `gradient_checkpointing: auto`: how many decoder layers, from the first, are recomputed
    /// (lf-operator extension; the planner's choice in a rendered config).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recompute_layers: Option<u32>,
    /// `gradient_checkpointing: auto` without `recompute_layers`: the memory (MiB; host RSS on the
    /// CPU, device memory on a GPU) the run may use; `lf-trainer` recomputes the fewest layers
    /// whose predicted peak fits (lf-operator extension).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_budget_mib: Option<u64>,
    /// Long-context mode (lf-operator extension; LLaMA-Factory's `use_unsloth_gc`): recomputed
    /// layers keep their checkpoints in host memory and run a dense MLP in tiles of
    /// `loss_chunk_size` tokens; `auto` (the default) lets the planner turn it on when nothing
    /// fits without it (`lf-trainer` alone: off).
    #[schemars(schema_with = "super::activation_offload::schema")]
    pub offload_activations: OffloadActivations,
    /// Base-weight quantisation: 4 (NF4/FP4) or 8 (block-wise int8). Needs LoRA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization_bit: Option<u8>,
    pub quantization_type: QuantizationType,
    pub double_quantization: bool,
    /// Accepted for LLaMA-Factory compatibility, but no remote code ever runs: the model must be a
    /// built-in architecture (llama, mistral, qwen2, qwen3, gemma2, gemma3_text), which lf-trainer
    /// loads with its own code; for any other `model_type` the config is rejected when the model's
    /// config.json is read.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub trust_remote_code: bool,
    /// Mixtures of experts (mixtral, qwen3_moe): a value other than 0 makes training add
    /// `moe_aux_loss_coef ×` the routers' load-balancing loss whatever `config.json`'s
    /// `output_router_logits` says (LLaMA-Factory's `configure_moe`); unset, `config.json`
    /// decides (`output_router_logits`, `router_aux_loss_coef`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moe_aux_loss_coef: Option<f64>,

    // ---- method ------------------------------------------------------------------------------
    pub stage: Stage,
    pub finetuning_type: FinetuningType,
    pub lora_rank: u32,
    /// Unset means 2 × `lora_rank` (LLaMA-Factory's rule).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_alpha: Option<f64>,
    pub lora_dropout: f64,
    /// Comma-separated module names (`q_proj,v_proj`) or `all` (every decoder linear).
    pub lora_target: String,
    pub use_rslora: bool,
    pub use_dora: bool,
    /// AdaLoRA (PEFT's `AdaLoraConfig`, the guide's key names): SVD-form adapters whose ranks are
    /// reallocated by importance under a shrinking budget. Needs `finetuning_type: lora`;
    /// `lora_rank` is then unused (`adalora_init_r` is each adapter's starting rank).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub use_adalora: bool,
    /// AdaLoRA: the average rank the budget ends at (PEFT's `target_r`, default 8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adalora_rank: Option<u32>,
    /// AdaLoRA: each adapter's starting rank (PEFT's `init_r`, default 12).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adalora_init_r: Option<u32>,
    /// AdaLoRA: optimiser steps before the budget starts shrinking (PEFT's `tinit`, default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adalora_tinit: Option<u64>,
    /// AdaLoRA: final steps trained at the target budget (PEFT's `tfinal`, default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adalora_tfinal: Option<u64>,
    /// AdaLoRA: steps between two reallocations (PEFT's `deltaT`, default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adalora_delta_t: Option<u64>,
    /// AdaLoRA: EMA factor of the sensitivity (PEFT's `beta1`, default 0.85).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adalora_beta1: Option<f64>,
    /// AdaLoRA: EMA factor of the uncertainty (PEFT's `beta2`, default 0.85).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adalora_beta2: Option<f64>,
    /// AdaLoRA: weight of the orthogonality regulariser added to the loss (PEFT's
    /// `orth_reg_weight`, default 0.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adalora_orth_reg_weight: Option<f64>,
    /// `finetuning_type: freeze`: how many of the last decoder layers train.
    pub freeze_trainable_layers: u32,
    /// Keep trainable parameters and optimiser states in bf16 (no fp32 master copy).
    pub pure_bf16: bool,
    pub bf16: bool,
    pub fp16: bool,
    /// `stage: dpo`: the temperature β of the preference loss (ORPO's λ).
    pub pref_beta: f64,
    /// `stage: dpo`: the weight of an added SFT loss on the chosen responses (mean token NLL per
    /// example); ORPO always has its own NLL term.
    pub pref_ftx: f64,
    /// `stage: dpo`: which preference loss.
    pub pref_loss: PrefLoss,
    /// `pref_loss: simpo`: the target reward margin γ.
    pub simpo_gamma: f64,
    /// `stage: kto`: the weight of the desirable examples' losses (TRL's `desirable_weight`).
    #[serde(skip_serializing_if = "is_one")]
    pub kto_chosen_weight: f64,
    /// `stage: kto`: the weight of the undesirable examples' losses (TRL's `undesirable_weight`).
    #[serde(skip_serializing_if = "is_one")]
    pub kto_rejected_weight: f64,

    // ---- data --------------------------------------------------------------------------------
    /// Comma-separated dataset names (keys of `dataset_info.json`, or file names in `dataset_dir`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_dataset: Option<String>,
    pub dataset_dir: String,
    /// lf-operator extension: the record format of dataset files not listed in
    /// `dataset_info.json` (unset: detected from the first record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset_format: Option<DatasetFormat>,
    pub cutoff_len: usize,
    pub train_on_prompt: bool,
    pub mask_history: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_samples: Option<usize>,
    /// Fraction in [0, 1) or, when ≥ 1, a number of examples.
    pub val_size: f64,
    /// Pack several examples into one `cutoff_len` sequence (default: on for `pt`, off for `sft`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packing: Option<bool>,
    /// Padding-free packing (`stage: sft`): each micro-batch's examples share rows of at most
    /// `cutoff_len` tokens without seeing each other (block-diagonal causal attention, positions
    /// restarting per example); the optimiser step trains on the same examples, with the same
    /// loss, as without it. Replaces `packing` (which then packs nothing).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub neat_packing: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_system: Option<String>,
    /// Where the tokenised dataset is cached (default: `<output_dir>/.tokenized`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenized_path: Option<String>,
    pub overwrite_cache: bool,
    /// lf-operator extension: turn malformed dataset records into a counted warning instead of an
    /// error.
    pub skip_bad_examples: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preprocessing_num_workers: Option<usize>,

    // ---- training ----------------------------------------------------------------------------
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_dir: Option<String>,
    pub overwrite_output_dir: bool,
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub max_grad_norm: f64,
    pub num_train_epochs: f64,
    /// Total optimiser steps; overrides `num_train_epochs` when > 0.
    pub max_steps: i64,
    pub lr_scheduler_type: LrSchedulerType,
    pub warmup_ratio: f64,
    pub warmup_steps: usize,
    pub optim: Optim,
    pub logging_steps: usize,
    pub save_steps: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub save_total_limit: Option<usize>,
    pub save_only_model: bool,
    /// A checkpoint directory, or `auto` for the newest complete one in `output_dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_from_checkpoint: Option<String>,
    pub eval_strategy: EvalStrategy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_steps: Option<usize>,
    pub seed: u64,
    pub plot_loss: bool,
    /// Train. The default is true (false in LLaMA-Factory), since `lf-trainer train` trains; a
    /// config with `do_predict: true` and no `dataset`, like LLaMA-Factory's predict examples,
    /// does not train.
    pub do_train: bool,
    pub do_eval: bool,
    /// Generate an answer for every evaluation example (`eval_dataset`, or `dataset` when it is
    /// the only one given) after training, or instead of it when nothing trains: writes
    /// `generated_predictions.jsonl` and `predict_results.json` (BLEU-4, ROUGE-1/2/L) to
    /// `output_dir`, as LLaMA-Factory does. Needs `predict_with_generate: true`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub do_predict: bool,
    /// Predictions are generated with the generating arguments (`max_new_tokens`, `do_sample`,
    /// `temperature`, `top_p`, `top_k`, `repetition_penalty`); `stage: sft` only.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub predict_with_generate: bool,
    pub dataloader_num_workers: usize,
    /// Experiment trackers besides `trainer_log.jsonl`, Prometheus and the CR status: `none`,
    /// `tensorboard` (event files in `logging_dir`), `mlflow` (the tracking server at
    /// `MLFLOW_TRACKING_URI`), `all`, or a comma list (a YAML list too). `wandb` is refused with
    /// the reason and the way to upload the TensorBoard files instead.
    #[serde(deserialize_with = "super::report_to::string_or_list")]
    pub report_to: String,
    /// Where TensorBoard event files go (default `output_dir/runs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging_dir: Option<String>,
    /// The run's name in the trackers (default: the FineTuneJob's name in a cluster, else the
    /// output directory's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_name: Option<String>,
    /// Seconds a collective may take before the process group gives up.
    pub ddp_timeout: u64,

    // ---- distributed (lf-operator extensions; the operator fills them from the plan) ---------
    /// ZeRO stage 0–3 (0 = plain data parallel).
    pub zero_stage: u8,
    pub offload_optimizer: OffloadDevice,
    /// Under ZeRO 0–2 with several processes, each unit's gradients (a decoder layer, the
    /// embedding, the head) start their bucketed all-reduce (ZeRO 0–1) or reduce-scatter
    /// (ZeRO 2) as soon as that unit's backward is done in the last micro-batch of a step, and
    /// the optimiser step waits only for the outstanding ones (DeepSpeed's
    /// `zero_optimization.overlap_comm`, which maps onto it). Unset: on with more than one
    /// process. `false` reduces every gradient at the step. ZeRO-3 always reduces each unit as it
    /// is released. AdaLoRA (whose orthogonality term adds gradients after the last
    /// micro-batch) never overlaps. The preference and reward stages overlap their training
    /// pass (their reference and KL passes have no gradients; a value head is reduced at the
    /// step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlap_comm: Option<bool>,
    /// A DeepSpeed config, as LLaMA-Factory takes it: the path of its JSON file (relative to the
    /// current directory, then to the YAML file's directory and its parents) or the same keys
    /// inline. Its ZeRO stage, optimizer offload, batch sizes, gradient clipping, precision,
    /// optimizer and scheduler map onto `zero_stage`, `offload_optimizer` and the other keys
    /// (`"auto"` follows them; a key set differently in both is an error); what lf-trainer cannot
    /// honour (parameter or NVMe offload) is an error. Parsing replaces a path with the file's
    /// keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::deepspeed::schema")]
    pub deepspeed: Option<DeepSpeedConfig>,
    /// lf-operator extension: tokens per chunk of the language-model head + cross-entropy, so the
    /// full fp32 logits never exist at once. 0 computes the whole head at once.
    pub loss_chunk_size: usize,
    /// lf-operator extension: record these optimiser steps (`"N"` or `"FIRST-LAST"`, 1-based, at
    /// most 20) with libtorch's profiler: a Chrome/Perfetto trace per process in
    /// `output_dir/profile/` and a summary (top operators, the step's split, a bottleneck hint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_steps: Option<String>,

    // ---- generation (chat) -------------------------------------------------------------------
    pub do_sample: bool,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub max_new_tokens: usize,
    pub repetition_penalty: f64,

    // ---- export ------------------------------------------------------------------------------
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_dir: Option<String>,
    /// Largest shard in GB.
    pub export_size: u32,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig {
            model_name_or_path: None,
            adapter_name_or_path: None,
            template: None,
            flash_attn: FlashAttn::Auto,
            gradient_checkpointing: GradientCheckpointing::Auto,
            recompute_layers: None,
            memory_budget_mib: None,
            offload_activations: OffloadActivations::Auto,
            quantization_bit: None,
            quantization_type: QuantizationType::Nf4,
            double_quantization: true,
            trust_remote_code: false,
            moe_aux_loss_coef: None,
            stage: Stage::Sft,
            finetuning_type: FinetuningType::Lora,
            lora_rank: 8,
            lora_alpha: None,
            lora_dropout: 0.0,
            lora_target: "all".to_string(),
            use_rslora: false,
            use_dora: false,
            use_adalora: false,
            adalora_rank: None,
            adalora_init_r: None,
            adalora_tinit: None,
            adalora_tfinal: None,
            adalora_delta_t: None,
            adalora_beta1: None,
            adalora_beta2: None,
            adalora_orth_reg_weight: None,
            freeze_trainable_layers: 2,
            pure_bf16: false,
            bf16: false,
            fp16: false,
            pref_beta: 0.1,
            pref_ftx: 0.0,
            pref_loss: PrefLoss::Sigmoid,
            simpo_gamma: 0.5,
            kto_chosen_weight: 1.0,
            kto_rejected_weight: 1.0,
            dataset: None,
            eval_dataset: None,
            dataset_dir: "data".to_string(),
            dataset_format: None,
            cutoff_len: 2048,
            train_on_prompt: false,
            mask_history: false,
            max_samples: None,
            val_size: 0.0,
            packing: None,
            neat_packing: false,
            default_system: None,
            tokenized_path: None,
            overwrite_cache: false,
            skip_bad_examples: false,
            preprocessing_num_workers: None,
            output_dir: None,
            overwrite_output_dir: false,
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 8,
            gradient_accumulation_steps: 1,
            learning_rate: 5e-5,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            num_train_epochs: 3.0,
            max_steps: -1,
            lr_scheduler_type: LrSchedulerType::Linear,
            warmup_ratio: 0.0,
            warmup_steps: 0,
            optim: Optim::AdamwTorch,
            logging_steps: 500,
            save_steps: 500,
            save_total_limit: None,
            save_only_model: false,
            resume_from_checkpoint: None,
            eval_strategy: EvalStrategy::No,
            eval_steps: None,
            seed: 42,
            plot_loss: false,
            do_train: true,
            do_eval: false,
            do_predict: false,
            predict_with_generate: false,
            dataloader_num_workers: 0,
            report_to: "none".to_string(),
            logging_dir: None,
            run_name: None,
            ddp_timeout: 1800,
            zero_stage: 0,
            offload_optimizer: OffloadDevice::None,
            overlap_comm: None,
            deepspeed: None,
            loss_chunk_size: 1024,
            profile_steps: None,
            do_sample: true,
            temperature: 0.95,
            top_p: 0.7,
            top_k: 50,
            max_new_tokens: 1024,
            repetition_penalty: 1.0,
            export_dir: None,
            export_size: 5,
        }
    }
}

/// Whether a weight is its default, 1 (left out of a rendered config).
fn is_one(w: &f64) -> bool {
    *w == 1.0
}

impl TrainingConfig {
    /// Whether ZeRO 0–2 reduce each unit's gradients during backward with `world` processes:
    /// `overlap_comm` (on by default when there is more than one), never under ZeRO-3 (which
    /// reduces as it releases each unit anyway), nor with AdaLoRA (its orthogonality term adds
    /// gradients after the last micro-batch's backward).
    pub fn overlaps_comm(&self, world: usize) -> bool {
        world > 1 && self.zero_stage < 3 && !self.use_adalora && self.overlap_comm.unwrap_or(true)
    }

    /// The LoRA scaling numerator: `lora_alpha`, defaulting to 2 × rank (AdaLoRA: 2 ×
    /// `adalora_init_r`).
    pub fn effective_lora_alpha(&self) -> f64 {
        self.lora_alpha.unwrap_or(2.0 * self.adapter_rank() as f64)
    }

    /// The highest ZeRO stage lf-trainer runs this config with; the planner searches no higher,
    /// and a fixed higher stage is refused (by [`TrainingConfig::validate`], or for Adafactor by
    /// the trainer's ZeRO optimiser), each with its reason. 0 for Adafactor (its factored state
    /// needs whole matrices) and AdaLoRA (its scores need whole gradients); 2 for `neat_packing`
    /// and prediction (they need the whole model on each process).
    pub fn highest_zero_stage(&self) -> u8 {
        if self.optim == Optim::Adafactor || self.use_adalora {
            0
        } else if self.neat_packing || (self.do_predict && self.predict_with_generate) {
            2
        } else {
            3
        }
    }

    /// The rank each adapter is created with: `lora_rank`, or AdaLoRA's `adalora_init_r`.
    pub fn adapter_rank(&self) -> u32 {
        self.adalora().map_or(self.lora_rank, |a| a.init_r)
    }

    /// The decoder linears LoRA adapts, resolved from `lora_target` for the Llama layout (`all`:
    /// its seven linears); names of Phi-3's fused linears are accepted too. A model's own targets
    /// are [`TrainingConfig::lora_targets_for`].
    pub fn lora_targets(&self) -> Result<Vec<LinearModule>, ConfigError> {
        let raw = self.lora_target.trim();
        if raw == "all" {
            return Ok(LinearModule::ALL.to_vec());
        }
        let mut out = Vec::new();
        let mut experts = false;
        for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            // A mixture of experts' router and expert linears ([`ExpertLoraTargets`]).
            if ["gate", "w1", "w2", "w3"].contains(&name) {
                experts = true;
                continue;
            }
            let module = LinearModule::from_name(name).ok_or_else(|| {
                let names = LinearModule::ALL
                    .iter()
                    .chain(&LinearModule::FUSED)
                    .map(|m| m.name());
                let hint = crate::suggest::closest(name, names).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
                ConfigError::invalid(
                    "lora_target",
                    format!("`{name}` is not a decoder linear{hint}; use `all` or names from q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj (Phi-3: qkv_proj,o_proj,gate_up_proj,down_proj; mixtures of experts also gate, and Mixtral w1,w2,w3)"),
                )
            })?;
            if !out.contains(&module) {
                out.push(module);
            }
        }
        if out.is_empty() && !experts {
            return Err(ConfigError::invalid("lora_target", "names no module"));
        }
        Ok(out)
    }

    /// The linears LoRA adapts in a model of `arch`: the names of [`TrainingConfig::lora_targets`]
    /// in the model's own layout ([`ModelArchitecture::lora_targets`]: `all` is every linear it
    /// has, and Phi-3's are fused, so `q_proj` there is an error naming `qkv_proj`). On a mixture
    /// of experts (Mixtral, Qwen3-MoE) these are attention linears (`all`: q/k/v/o, the
    /// `nn.Linear`s LLaMA-Factory's `all` finds in transformers 5's MoE models); the router and
    /// expert adapters `lora_target` also names there are
    /// [`TrainingConfig::expert_lora_targets_for`], whose refusals this reports too.
    ///
    /// [`ModelArchitecture::lora_targets`]: crate::architecture::ModelArchitecture::lora_targets
    pub fn lora_targets_for(
        &self,
        arch: &crate::architecture::ModelArchitecture,
    ) -> Result<Vec<LinearModule>, ConfigError> {
        // Unknown names first (with a suggestion), then the model's layout.
        self.lora_targets()?;
        self.expert_lora_targets_for(arch)?;
        arch.lora_targets(&self.lora_target)
            .map_err(|message| ConfigError::invalid("lora_target", message))
    }

    /// The router and expert adapters `lora_target` names on a mixture of experts
    /// ([`ExpertLoraTargets`]; none on a dense model). PEFT wraps those parameters in
    /// `ParamWrapper`, which refuses `lora_dropout` and DoRA: so does this.
    ///
    /// [`ExpertLoraTargets`]: crate::architecture::ExpertLoraTargets
    pub fn expert_lora_targets_for(
        &self,
        arch: &crate::architecture::ModelArchitecture,
    ) -> Result<crate::architecture::ExpertLoraTargets, ConfigError> {
        let experts = arch
            .expert_lora_targets(&self.lora_target)
            .map_err(|message| ConfigError::invalid("lora_target", message))?;
        if experts.is_empty() {
            return Ok(experts);
        }
        // `all` reaches the experts only on a model with dense MLP layers, whose linears' names
        // PEFT applies to the experts too: say so, and how to keep to the attention.
        let via_all = if self.lora_target.trim() == "all" {
            " (`all` names the dense layers' gate_proj, up_proj and down_proj, which PEFT applies \
             to the experts as well; name q_proj,k_proj,v_proj,o_proj to adapt the attention only)"
        } else {
            ""
        };
        let why = |what: &str| {
            ConfigError::invalid(
                "lora_target",
                format!(
                    "LoRA on a mixture of experts' router or experts ({}) does not work with {what}: \
                     PEFT adapts those parameters with its ParamWrapper, which refuses it{via_all}",
                    experts.target_parameters().join(", ")
                ),
            )
        };
        if self.lora_dropout > 0.0 {
            return Err(why("lora_dropout > 0 (the dropped-out input cannot be factored out of the adapted weight)"));
        }
        if self.use_dora {
            return Err(why("use_dora"));
        }
        Ok(experts)
    }

    /// The numeric regime, derived from `bf16`, `fp16` and `pure_bf16`.
    pub fn precision(&self) -> Precision {
        if self.pure_bf16 {
            Precision::PureBf16
        } else if self.bf16 {
            Precision::Bf16Amp
        } else if self.fp16 {
            Precision::Fp16Amp
        } else {
            Precision::Fp32
        }
    }

    /// How many of the first decoder layers (of `layers`) are recomputed in backward: every one
    /// under `true`, none under `false`, `recompute_layers` (at most `layers`) under `auto`, or
    /// every one when `auto` has no number yet.
    pub fn recomputed_layers(&self, layers: u64) -> u64 {
        match self.gradient_checkpointing {
            GradientCheckpointing::On => layers,
            GradientCheckpointing::Off => 0,
            GradientCheckpointing::Auto => self
                .recompute_layers
                .map_or(layers, |n| (n as u64).min(layers)),
        }
    }

    /// Whether the number of recomputed layers is still open: `auto` without `recompute_layers`
    /// (the planner, or `lf-trainer` with `memory_budget_mib`, chooses it).
    pub fn recomputation_open(&self) -> bool {
        self.gradient_checkpointing == GradientCheckpointing::Auto
            && self.recompute_layers.is_none()
    }

    /// Whether a preference run keeps a frozen copy of the starting weights as its reference
    /// (`full`/`freeze` with a loss that uses one; under LoRA the reference is the base with the
    /// adapter off).
    pub fn keeps_reference_copy(&self) -> bool {
        let uses_reference = self.stage == Stage::Kto
            || (self.stage == Stage::Dpo && self.pref_loss.uses_reference());
        uses_reference && self.finetuning_type != FinetuningType::Lora
    }

    /// Whether examples are packed into full `cutoff_len` sequences (never with `neat_packing`,
    /// which packs each micro-batch instead).
    pub fn packing_enabled(&self) -> bool {
        !self.neat_packing && self.packing.unwrap_or(self.stage == Stage::Pt)
    }

    /// Whether `lf-trainer train` trains: `do_train`, except for a prediction config that names
    /// no training `dataset` (LLaMA-Factory's predict examples leave `do_train` at its default,
    /// false there, and give only `eval_dataset`).
    pub fn trains(&self) -> bool {
        self.do_train && !(self.do_predict && self.dataset.is_none())
    }

    /// The number of validation examples for `n` examples in total.
    pub fn validation_count(&self, n: usize) -> usize {
        if self.val_size >= 1.0 {
            (self.val_size as usize).min(n)
        } else {
            ((n as f64) * self.val_size).round() as usize
        }
    }
}
