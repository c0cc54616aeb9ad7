//! LLaMA-Factory (and Hugging Face `Seq2SeqTrainingArguments`) options that are not fields of
//! [`TrainingConfig`](super::TrainingConfig), each in one of two lists:
//!
//! - [`ACCEPTED`]: lf-trainer already does what the option asks (or the option changes nothing
//!   for it). The config is accepted; where the value is a no-op, or lf-trainer does more than
//!   asked, parsing returns a one-line [`Notice`](super::Notice). A value it does not implement is
//!   still rejected, with the reason.
//! - [`REJECTED`]: a feature lf-trainer does not have. Only the values that turn it off (the
//!   option's LLaMA-Factory default) are accepted; any other is an error with the reason and the
//!   alternative.
//!
//! Together with the config's own keys (the supported list) they cover every option of
//! LLaMA-Factory's model, data, fine-tuning and generating arguments and the training arguments
//! people set; the README's reference is generated from them.

use serde_yaml::Value;

/// Where LLaMA-Factory defines an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `ModelArguments` (model, quantisation, processor, export, vLLM/SGLang/KTransformers).
    Model,
    /// `DataArguments`.
    Data,
    /// `FinetuningArguments` (LoRA, freeze, OFT, RLHF, GaLore, APOLLO, BAdam, SwanLab).
    Finetuning,
    /// `GeneratingArguments`.
    Generating,
    /// `TrainingArguments`: transformers' `Seq2SeqTrainingArguments` plus LLaMA-Factory's Ray
    /// arguments.
    Training,
}

impl Source {
    /// The argument class's name, as the README shows it.
    pub fn name(self) -> &'static str {
        match self {
            Source::Model => "model",
            Source::Data => "data",
            Source::Finetuning => "finetuning",
            Source::Generating => "generating",
            Source::Training => "training",
        }
    }
}

/// How lf-trainer treats one option. Values are spelt as in YAML (`true`, `null`, `cpu`, `1.0`);
/// `*` is any value, `{}` an empty mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompatOption {
    pub key: &'static str,
    pub source: Source,
    /// Values accepted without a word: what lf-trainer does anyway (mostly LLaMA-Factory's
    /// default).
    pub quiet: &'static [&'static str],
    /// Values accepted with [`CompatOption::notice`].
    pub noted: &'static [&'static str],
    /// The notice for a `noted` value: what lf-trainer does instead, or why it changes nothing.
    pub notice: &'static str,
    /// Why any other value is rejected, and what to use instead (empty when every value is
    /// accepted).
    pub rejected: &'static str,
}

/// What parsing does with one value of a [`CompatOption`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Quiet,
    Noted,
    Rejected,
}

impl CompatOption {
    pub(crate) fn judge(&self, value: &Value) -> Verdict {
        if self.quiet.iter().any(|p| matches(value, p)) {
            Verdict::Quiet
        } else if self.noted.iter().any(|p| matches(value, p)) {
            Verdict::Noted
        } else {
            Verdict::Rejected
        }
    }
}

/// Whether `value` is the YAML value spelt `pattern`.
fn matches(value: &Value, pattern: &str) -> bool {
    match pattern {
        "*" => true,
        "null" => value.is_null(),
        "true" => value.as_bool() == Some(true),
        "false" => value.as_bool() == Some(false),
        "{}" => value.as_mapping().is_some_and(|m| m.is_empty()),
        _ => match (pattern.parse::<f64>(), value) {
            (Ok(n), Value::Number(v)) => v.as_f64() == Some(n),
            (Ok(_), _) => false,
            (Err(_), Value::String(s)) => s.trim().eq_ignore_ascii_case(pattern),
            _ => false,
        },
    }
}

/// Finds `key` in [`ACCEPTED`] or [`REJECTED`].
pub(crate) fn find(key: &str) -> Option<&'static CompatOption> {
    ACCEPTED.iter().chain(REJECTED).find(|o| o.key == key)
}

/// Every key of both lists (for "did you mean" suggestions).
pub(crate) fn keys() -> impl Iterator<Item = &'static str> {
    ACCEPTED.iter().chain(REJECTED).map(|o| o.key)
}

/// A value of a supported key that names something lf-trainer does not implement: (key, values,
/// why and what to use instead). Checked before the value reaches the typed config, so the error
/// says why rather than "unknown variant".
pub const REJECTED_VALUES: &[(&str, &[&str], &str)] = &[
    (
        "stage",
        &["ppo"],
        "PPO is not implemented: lf-trainer trains `stage: sft`, `pt`, `dpo`, `kto` and `rm`",
    ),
    (
        "pref_loss",
        &["kto_pair"],
        "`kto_pair` is not implemented: use `sigmoid`, `hinge`, `ipo`, `orpo` or `simpo`",
    ),
    (
        "finetuning_type",
        &["oft"],
        "OFT is not implemented: use `lora` (with `use_dora`/`use_rslora`), `freeze` or `full`",
    ),
];

/// An option that changes nothing whatever its value.
const fn ignored(key: &'static str, source: Source, notice: &'static str) -> CompatOption {
    CompatOption {
        key,
        source,
        quiet: &[],
        noted: &["*"],
        notice,
        rejected: "",
    }
}

/// An option accepted with some values (quietly or with the notice), rejected with the others.
const fn accepted(
    key: &'static str,
    source: Source,
    quiet: &'static [&'static str],
    noted: &'static [&'static str],
    notice: &'static str,
    rejected: &'static str,
) -> CompatOption {
    CompatOption {
        key,
        source,
        quiet,
        noted,
        notice,
        rejected,
    }
}

/// A feature lf-trainer does not have: only the values in `off` are accepted (quietly).
const fn rejected(
    key: &'static str,
    source: Source,
    off: &'static [&'static str],
    why: &'static str,
) -> CompatOption {
    CompatOption {
        key,
        source,
        quiet: off,
        noted: &[],
        notice: "",
        rejected: why,
    }
}

use Source::{Data, Finetuning, Generating, Model, Training};

const BOOL: &str = "must be true or false";
const TEXT_ONLY: &str =
    "the built-in architectures (llama, mistral, qwen2, qwen3, gemma2, gemma3_text) are text-only: there are no image, video or audio inputs";
const NO_DOWNLOAD: &str =
    "nothing is downloaded: `model_name_or_path` is a local directory (in a FineTuneJob the operator mounts `spec.model`)";
const VLLM: &str = "only used by `infer_backend: vllm`, which is not available";
const SGLANG: &str = "only used by `infer_backend: sglang`, which is not available";
const KT: &str = "only used with `use_kt` (KTransformers), which is not available";
const OFT: &str = "only used by `finetuning_type: oft`, which is not implemented";
const RLHF: &str =
    "only used by the ppo stage (or an option of dpo or kto that lf-trainer does not have); lf-trainer trains `stage: sft`, `pt`, `dpo`, `kto` and `rm`";
const REF_MODEL: &str = "a separate reference model is not loaded: the reference of `stage: dpo` and `kto` is the base model with the LoRA adapter off (no second copy of the weights); leave it unset";
const GALORE: &str = "only used with `use_galore`, which is not implemented";
const APOLLO: &str = "only used with `use_apollo`, which is not implemented";
const BADAM: &str = "only used with `use_badam`, which is not implemented";
const SWANLAB: &str = "only used with `use_swanlab`, which is not available";
const HUB: &str = "only used with `push_to_hub`, which is not implemented";
const RAY: &str = "Ray is not used (LLaMA-Factory reads this only with USE_RAY=1): the operator, or `lf-trainer train`'s launcher, starts the workers";
const PREDICT: &str = "prediction (`do_predict`) generates with the generating arguments (`max_new_tokens`, `do_sample`, `temperature`, `top_p`, `top_k`, `repetition_penalty`): this key changes nothing";
const BEAMS: &str =
    "beam search is not implemented: generation is greedy (`do_sample: false`) or sampling; use 1";
const NO_PREDICTIONS: &str =
    "evaluation computes the loss only; it keeps no predictions to gather or score";
const LIGER: &str = "there are no Liger kernels; lf-trainer's chunked language-model loss (`loss_chunk_size`), always on, gives the memory saving of Liger's fused linear cross-entropy";
const FSDP_WHY: &str =
    "FSDP is not used: ZeRO stage 3 (`zero_stage: 3`) shards parameters, gradients and optimiser states";
const COMPILE_WHY: &str =
    "torch.compile is not used: lf-trainer runs libtorch's kernels (SDPA/flash attention) directly";
const TRACKER_WHY: &str = "SwanLab is not among the trackers: `report_to` offers `tensorboard` and `mlflow` (besides `trainer_log.jsonl`, `/metrics` and the FineTuneJob status)";
const LOG_LEVEL_WHY: &str =
    "the trainer's log level is the `LF_LOG` environment variable (e.g. `LF_LOG=debug`)";

/// Options lf-trainer accepts: it already does what they ask, or they change nothing for it.
pub const ACCEPTED: &[CompatOption] = &[
    // ---- model ---------------------------------------------------------------------------------
    ignored("cache_dir", Model, NO_DOWNLOAD),
    accepted("use_fast_tokenizer", Model, &["true"], &[], "", "lf-trainer always uses the fast tokenizer (`tokenizer.json`): use `use_fast_tokenizer: true`"),
    accepted("init_special_tokens", Model, &["noise_init"], &["*"], "only used when tokens are added (`add_special_tokens`), which is not implemented", ""),
    accepted("low_cpu_mem_usage", Model, &["true"], &["false"], "weights are always read shard by shard from the safetensors files", BOOL),
    accepted("enable_liger_kernel", Model, &["false"], &["true"], LIGER, BOOL),
    ignored("use_reentrant_gc", Model, "layer recomputation is lf-trainer's own; there is no reentrant or non-reentrant variant to choose"),
    accepted("upcast_layernorm", Model, &["false"], &["true"], "RMSNorm is always computed in fp32", BOOL),
    accepted("upcast_lmhead_output", Model, &["false"], &["true"], "the language-model head's logits and the loss are always computed in fp32 (in chunks)", BOOL),
    accepted("infer_backend", Model, &[], &["huggingface", "hf"], "chat and eval run lf-trainer's own libtorch generation (greedy, or sampling with transformers' processors), its counterpart of the huggingface backend", "vLLM, SGLang and KTransformers are not available: chat runs lf-trainer's own libtorch generation; use `infer_backend: huggingface`"),
    ignored("offload_folder", Model, "weights are never offloaded to disk"),
    accepted("use_kv_cache", Model, &["true"], &["false"], "generation always uses a KV cache (the output is the same)", BOOL),
    accepted("infer_dtype", Model, &[], &["auto"], "chat and eval run in the precision `bf16`/`fp16` select (fp32 when neither is set)", "chat and eval run in the training precision: set `bf16: true` or `fp16: true` instead"),
    ignored("hf_hub_token", Model, NO_DOWNLOAD),
    ignored("ms_hub_token", Model, NO_DOWNLOAD),
    ignored("om_hub_token", Model, NO_DOWNLOAD),
    ignored("print_param_status", Model, "the trainer logs the number of trainable parameters"),
    accepted("quantization_method", Model, &["bitsandbytes", "bnb"], &[], "", "only bitsandbytes-style quantisation on load is implemented (`quantization_bit: 4` with NF4/FP4, `8` block-wise int8): use `quantization_method: bitsandbytes`"),
    accepted("fp8_backend", Model, &["auto"], &["*"], "only used with `fp8: true`, which is not implemented", ""),
    accepted("fp8_enable_fsdp_float8_all_gather", Model, &["false"], &["*"], "only used with `fp8: true` and FSDP, neither of which lf-trainer has", ""),
    ignored("image_max_pixels", Model, TEXT_ONLY),
    ignored("image_min_pixels", Model, TEXT_ONLY),
    ignored("image_do_pan_and_scan", Model, TEXT_ONLY),
    ignored("crop_to_patches", Model, TEXT_ONLY),
    ignored("video_max_pixels", Model, TEXT_ONLY),
    ignored("video_min_pixels", Model, TEXT_ONLY),
    ignored("video_fps", Model, TEXT_ONLY),
    ignored("video_maxlen", Model, TEXT_ONLY),
    ignored("use_audio_in_video", Model, TEXT_ONLY),
    ignored("audio_sampling_rate", Model, TEXT_ONLY),
    accepted("export_device", Model, &["cpu"], &[], "", "export runs on the CPU: use `export_device: cpu` (the merged weights are the same)"),
    ignored("export_quantization_dataset", Model, "only used with `export_quantization_bit`, which is not implemented"),
    ignored("export_quantization_nsamples", Model, "only used with `export_quantization_bit`, which is not implemented"),
    ignored("export_quantization_maxlen", Model, "only used with `export_quantization_bit`, which is not implemented"),
    accepted("export_legacy_format", Model, &["false"], &[], "", "export always writes safetensors: use `export_legacy_format: false`"),
    ignored("vllm_maxlen", Model, VLLM),
    ignored("vllm_gpu_util", Model, VLLM),
    ignored("vllm_enforce_eager", Model, VLLM),
    ignored("vllm_max_lora_rank", Model, VLLM),
    ignored("vllm_config", Model, VLLM),
    ignored("sglang_maxlen", Model, SGLANG),
    ignored("sglang_mem_fraction", Model, SGLANG),
    ignored("sglang_tp_size", Model, SGLANG),
    ignored("sglang_config", Model, SGLANG),
    ignored("sglang_lora_backend", Model, SGLANG),
    ignored("kt_optimize_rule", Model, KT),
    ignored("cpu_infer", Model, KT),
    ignored("chunk_size", Model, KT),
    ignored("mode", Model, KT),
    ignored("kt_maxlen", Model, KT),
    ignored("kt_use_cuda_graph", Model, KT),
    ignored("kt_mode", Model, KT),
    ignored("kt_force_think", Model, KT),
    // ---- data ----------------------------------------------------------------------------------
    ignored("media_dir", Data, TEXT_ONLY),
    accepted("streaming", Data, &["false"], &[], "", "datasets are tokenised once and cached; streaming is not implemented: use `streaming: false`"),
    ignored("buffer_size", Data, "only used with `streaming`, which is not implemented"),
    accepted("mix_strategy", Data, &["concat"], &[], "", "datasets are concatenated (`dataset: a,b`); interleaving is not implemented: use `mix_strategy: concat`"),
    ignored("preprocessing_batch_size", Data, "lf-trainer tokenises without the datasets library's batches; `preprocessing_num_workers` sets the parallelism"),
    accepted("eval_num_beams", Data, &["null", "1"], &[], "", BEAMS),
    accepted("ignore_pad_token_for_loss", Data, &["true"], &[], "", "padding never counts in the loss: use `ignore_pad_token_for_loss: true`"),
    accepted("enable_thinking", Data, &["true", "null"], &[], "", "no template drops the thinking: the built-in templates have no thinking mode and `template: auto` renders the model's chat template without `enable_thinking` (its default)"),
    ignored("data_shared_file_system", Data, "rank 0 tokenises for every node and the other ranks read its cache, so `tokenized_path` must be on a volume all nodes share"),
    ignored("overwrite_cache_dir", Data, "has no effect (the tokenised cache is `tokenized_path`; `overwrite_cache` rebuilds it)"),
    // ---- finetuning ----------------------------------------------------------------------------
    accepted("freeze_trainable_modules", Finetuning, &["all"], &[], "", "`finetuning_type: freeze` trains every module of the last `freeze_trainable_layers` layers: use `freeze_trainable_modules: all`"),
    ignored("loraplus_lr_embedding", Finetuning, "only used by LoRA+ (`loraplus_lr_ratio`), which is not implemented"),
    ignored("pissa_iter", Finetuning, "only used by PiSSA (`pissa_init`), which is not implemented"),
    ignored("module_dropout", Finetuning, OFT),
    ignored("oft_rank", Finetuning, OFT),
    ignored("oft_block_size", Finetuning, OFT),
    ignored("oft_target", Finetuning, OFT),
    accepted("pref_bco_weight", Finetuning, &["0", "null"], &[], "", "BCO's added loss is not implemented: use `pref_bco_weight: 0`"),
    accepted("dpo_label_smoothing", Finetuning, &["0", "null"], &[], "", "conservative (label-smoothed) DPO is not implemented: use `dpo_label_smoothing: 0`"),
    ignored("ppo_buffer_size", Finetuning, RLHF),
    ignored("ppo_epochs", Finetuning, RLHF),
    ignored("ppo_score_norm", Finetuning, RLHF),
    ignored("ppo_target", Finetuning, RLHF),
    ignored("ppo_whiten_rewards", Finetuning, RLHF),
    accepted("ref_model", Finetuning, &["null"], &[], "", REF_MODEL),
    accepted("ref_model_adapters", Finetuning, &["null"], &[], "", REF_MODEL),
    accepted("ref_model_quantization_bit", Finetuning, &["null"], &[], "", REF_MODEL),
    ignored("reward_model", Finetuning, RLHF),
    ignored("reward_model_adapters", Finetuning, RLHF),
    ignored("reward_model_quantization_bit", Finetuning, RLHF),
    ignored("reward_model_type", Finetuning, RLHF),
    ignored("ld_alpha", Finetuning, RLHF),
    ignored("galore_target", Finetuning, GALORE),
    ignored("galore_rank", Finetuning, GALORE),
    ignored("galore_update_interval", Finetuning, GALORE),
    ignored("galore_scale", Finetuning, GALORE),
    ignored("galore_proj_type", Finetuning, GALORE),
    ignored("galore_layerwise", Finetuning, GALORE),
    ignored("apollo_target", Finetuning, APOLLO),
    ignored("apollo_rank", Finetuning, APOLLO),
    ignored("apollo_update_interval", Finetuning, APOLLO),
    ignored("apollo_scale", Finetuning, APOLLO),
    ignored("apollo_proj", Finetuning, APOLLO),
    ignored("apollo_proj_type", Finetuning, APOLLO),
    ignored("apollo_scale_type", Finetuning, APOLLO),
    ignored("apollo_layerwise", Finetuning, APOLLO),
    ignored("apollo_scale_front", Finetuning, APOLLO),
    ignored("badam_mode", Finetuning, BADAM),
    ignored("badam_start_block", Finetuning, BADAM),
    ignored("badam_switch_mode", Finetuning, BADAM),
    ignored("badam_switch_interval", Finetuning, BADAM),
    ignored("badam_update_ratio", Finetuning, BADAM),
    ignored("badam_mask_mode", Finetuning, BADAM),
    ignored("badam_verbose", Finetuning, BADAM),
    ignored("swanlab_project", Finetuning, SWANLAB),
    ignored("swanlab_workspace", Finetuning, SWANLAB),
    ignored("swanlab_run_name", Finetuning, SWANLAB),
    ignored("swanlab_mode", Finetuning, SWANLAB),
    ignored("swanlab_api_key", Finetuning, SWANLAB),
    ignored("swanlab_logdir", Finetuning, SWANLAB),
    ignored("swanlab_lark_webhook_url", Finetuning, SWANLAB),
    ignored("swanlab_lark_secret", Finetuning, SWANLAB),
    accepted("freeze_vision_tower", Finetuning, &["true"], &["*"], TEXT_ONLY, ""),
    accepted("freeze_multi_modal_projector", Finetuning, &["true"], &["*"], TEXT_ONLY, ""),
    accepted("freeze_language_model", Finetuning, &["false"], &["*"], "only applies to multimodal models; the built-in architectures are text-only", ""),
    accepted("include_effective_tokens_per_second", Finetuning, &["false"], &["true"], "`train_tokens_per_second` (non-padding tokens) is always reported in all_results.json", BOOL),
    // ---- generating ----------------------------------------------------------------------------
    accepted("num_beams", Generating, &["1"], &[], "", "beam search is not implemented: generation is greedy (`do_sample: false`) or sampling; use `num_beams: 1`"),
    ignored("max_length", Generating, "`max_new_tokens` bounds generation (LLaMA-Factory, too, ignores `max_length` when `max_new_tokens` is set)"),
    accepted("length_penalty", Generating, &["1"], &["*"], "only used by beam search, which is not implemented", ""),
    accepted("skip_special_tokens", Generating, &["true"], &[], "", "generated text is always decoded without special tokens: use `skip_special_tokens: true`"),
    // ---- training (transformers' Seq2SeqTrainingArguments, LLaMA-Factory's Ray arguments) -------
    ignored("prediction_loss_only", Training, NO_PREDICTIONS),
    ignored("eval_accumulation_steps", Training, NO_PREDICTIONS),
    ignored("log_on_each_node", Training, "every process logs to its own stderr; rank 0 writes `trainer_log.jsonl`"),
    accepted("logging_strategy", Training, &["steps"], &[], "", "lf-trainer logs every `logging_steps` steps: use `logging_strategy: steps`"),
    ignored("logging_nan_inf_filter", Training, "a NaN or infinite gradient norm stops the run at once (with advice), so no NaN loss is ever logged or stepped on"),
    accepted("save_strategy", Training, &["steps"], &[], "", "checkpoints are written every `save_steps` steps (`save_steps: 0` writes none until the end): use `save_strategy: steps`"),
    accepted("save_safetensors", Training, &["true"], &[], "", "checkpoints and exports are always safetensors: use `save_safetensors: true`"),
    ignored("restore_callback_states_from_checkpoint", Training, "there are no callbacks; resuming restores the whole trainer state"),
    accepted("fp16_opt_level", Training, &["O1"], &["*"], "only used by apex AMP, which lf-trainer does not use", ""),
    accepted("half_precision_backend", Training, &["auto"], &[], "", "mixed precision is lf-trainer's own (`bf16`/`fp16`/`pure_bf16`): use `half_precision_backend: auto`"),
    accepted("fp16_backend", Training, &["auto"], &[], "", "mixed precision is lf-trainer's own (`bf16`/`fp16`/`pure_bf16`): use `fp16_backend: auto`"),
    accepted("tf32", Training, &["null"], &["false"], "fp32 matrix multiplications do not use TF32 (libtorch's default)", "TF32 matrix multiplications are not enabled: `bf16: true` runs on the tensor cores"),
    ignored("local_rank", Training, "the launcher gives each process its rank (`LOCAL_RANK`)"),
    accepted("ddp_backend", Training, &["null"], &["nccl", "gloo"], "the backend follows the device: NCCL on GPUs, Gloo on the CPU", "only NCCL (GPUs) and Gloo (CPU) are implemented; leave `ddp_backend` unset"),
    accepted("dataloader_drop_last", Training, &["false"], &[], "", "an epoch's last optimiser step takes the examples left over: use `dataloader_drop_last: false`"),
    ignored("dataloader_prefetch_factor", Training, "a background thread prepares the next steps' batches while the current one computes"),
    ignored("dataloader_pin_memory", Training, "a background thread prepares the next steps' batches while the current one computes"),
    ignored("dataloader_persistent_workers", Training, "a background thread prepares the next steps' batches while the current one computes"),
    accepted("past_index", Training, &["-1"], &["*"], "only used by models with memories (Transformer-XL, XLNet)", ""),
    ignored("disable_tqdm", Training, "there are no progress bars: progress is logged every `logging_steps` and shown in the FineTuneJob status"),
    ignored("remove_unused_columns", Training, "datasets are read by lf-trainer's own loader (LLaMA-Factory sets this to false itself)"),
    ignored("metric_for_best_model", Training, "only used with `load_best_model_at_end` or early stopping, which are not implemented"),
    ignored("greater_is_better", Training, "only used with `load_best_model_at_end` or early stopping, which are not implemented"),
    ignored("length_column_name", Training, "only used with `group_by_length`, which is not implemented"),
    ignored("ddp_find_unused_parameters", Training, "gradients are reduced by lf-trainer's own data parallelism, which has no unused-parameter search"),
    ignored("ddp_bucket_cap_mb", Training, "gradient buckets are the size the operator's planner assumes (the `LF_BUCKET_ELEMENTS` environment variable overrides it)"),
    ignored("ddp_broadcast_buffers", Training, "the built-in models have no buffers to broadcast"),
    ignored("skip_memory_metrics", Training, "peak GPU memory is always reported (`peak_memory_bytes` in all_results.json)"),
    ignored("use_legacy_prediction_loop", Training, NO_PREDICTIONS),
    ignored("hub_model_id", Training, HUB),
    ignored("hub_strategy", Training, HUB),
    ignored("hub_token", Training, HUB),
    ignored("hub_private_repo", Training, HUB),
    ignored("hub_always_push", Training, HUB),
    ignored("push_to_hub_model_id", Training, HUB),
    ignored("push_to_hub_organization", Training, HUB),
    ignored("push_to_hub_token", Training, HUB),
    ignored("gradient_checkpointing_kwargs", Training, "layer recomputation is lf-trainer's own (`gradient_checkpointing`); it takes no arguments"),
    ignored("include_inputs_for_metrics", Training, NO_PREDICTIONS),
    ignored("include_for_metrics", Training, NO_PREDICTIONS),
    ignored("eval_do_concat_batches", Training, NO_PREDICTIONS),
    ignored("batch_eval_metrics", Training, NO_PREDICTIONS),
    ignored("eval_use_gather_object", Training, NO_PREDICTIONS),
    ignored("mp_parameters", Training, "SageMaker model parallelism is not used"),
    ignored("ray_scope", Training, RAY),
    ignored("ray_run_name", Training, RAY),
    ignored("ray_storage_path", Training, RAY),
    ignored("ray_storage_filesystem", Training, RAY),
    ignored("ray_num_workers", Training, RAY),
    ignored("resources_per_worker", Training, RAY),
    ignored("placement_strategy", Training, RAY),
    ignored("ray_init_kwargs", Training, RAY),
    ignored("dispatch_batches", Training, "each rank reads its own micro-batches (Accelerate's batch dispatching is not used)"),
    ignored("split_batches", Training, "each rank reads its own micro-batches (Accelerate's batch dispatching is not used)"),
    accepted("include_tokens_per_second", Training, &["false"], &["true"], "`train_tokens_per_second` (non-padding tokens) is always reported in all_results.json", BOOL),
    accepted("use_liger_kernel", Training, &["false"], &["true"], LIGER, BOOL),
    accepted("average_tokens_across_devices", Training, &["true"], &[], "", "the loss is always the mean over the label tokens of all ranks: use `average_tokens_across_devices: true`"),
    ignored("generation_max_length", Training, PREDICT),
    accepted("generation_num_beams", Training, &["null", "1"], &[], "", BEAMS),
    ignored("generation_config", Training, PREDICT),
];

/// LLaMA-Factory / transformers features lf-trainer does not have. Only the listed "off" values
/// are accepted; any other is an error with the reason.
pub const REJECTED: &[CompatOption] = &[
    // ---- model ---------------------------------------------------------------------------------
    rejected("adapter_folder", Model, &["null"], "put the adapter's directory in `adapter_name_or_path`"),
    rejected("resize_vocab", Model, &["false"], "vocabulary resizing is not implemented"),
    rejected("split_special_tokens", Model, &["false"], "special tokens are never split (the fast tokenizer's behaviour)"),
    rejected("add_tokens", Model, &["null", ""], "adding tokens is not implemented"),
    rejected("add_special_tokens", Model, &["null", ""], "adding tokens is not implemented"),
    rejected("new_special_tokens_config", Model, &["null"], "adding tokens is not implemented"),
    rejected("model_revision", Model, &["main"], "the model is read from a local directory (`model_name_or_path`): put the revision you want there"),
    rejected("rope_scaling", Model, &["null"], "RoPE scaling is read from the model's config.json (its `rope_scaling`)"),
    rejected("shift_attn", Model, &["false"], "shift short attention (LongLoRA's S²-Attn) is not implemented"),
    rejected("mixture_of_depths", Model, &["null"], "mixture-of-depths is not implemented"),
    rejected("use_unsloth", Model, &["false"], "Unsloth is not available; the chunked loss and layer recomputation are built in"),
    rejected("train_from_scratch", Model, &["false"], "weights are always loaded from `model_name_or_path`"),
    rejected("use_v1_kernels", Model, &["false", "null"], "LLaMA-Factory's v1 kernels are not available"),
    rejected("quantization_device_map", Model, &["null"], "the trainer places weights itself"),
    rejected("fp8", Model, &["false"], "FP8 training is not implemented: use `bf16: true`"),
    rejected("export_quantization_bit", Model, &["null"], "exporting quantised weights is not implemented"),
    rejected("export_hub_model_id", Model, &["null"], "pushing to a hub is not implemented: the export is written to `export_dir`"),
    rejected("use_kt", Model, &["false"], "KTransformers is not available"),
    // ---- data ----------------------------------------------------------------------------------
    rejected("interleave_probs", Data, &["null"], "datasets are concatenated (`dataset: a,b`); interleaved mixing is not implemented"),
    rejected("eval_on_each_dataset", Data, &["false"], "evaluation reports one loss over all eval datasets"),
    rejected("tool_format", Data, &["null"], "tool calls are not implemented"),
    // ---- finetuning ----------------------------------------------------------------------------
    rejected("freeze_extra_modules", Finetuning, &["null"], "`finetuning_type: freeze` trains decoder layers only (no embeddings or head)"),
    rejected("additional_target", Finetuning, &["null"], "modules_to_save is not implemented"),
    rejected("loraplus_lr_ratio", Finetuning, &["null"], "LoRA+ is not implemented"),
    rejected("pissa_init", Finetuning, &["false"], "PiSSA initialisation is not implemented"),
    rejected("pissa_convert", Finetuning, &["false"], "PiSSA is not implemented"),
    rejected("create_new_adapter", Finetuning, &["false"], "the adapter in `adapter_name_or_path` is trained further; a new adapter on top of it is not implemented (merge it first with `lf-trainer export`)"),
    rejected("use_galore", Finetuning, &["false"], "GaLore is not implemented"),
    rejected("use_apollo", Finetuning, &["false"], "APOLLO is not implemented"),
    rejected("use_badam", Finetuning, &["false"], "BAdam is not implemented"),
    rejected("use_swanlab", Finetuning, &["false"], TRACKER_WHY),
    rejected("use_llama_pro", Finetuning, &["false"], "LLaMA Pro block expansion is not implemented"),
    rejected("use_adam_mini", Finetuning, &["false"], "Adam-mini is not implemented; `optim` offers adamw_torch, adamw_8bit, adafactor and sgd"),
    rejected("use_mca", Finetuning, &["false"], "Megatron-Core training is not available; ZeRO (`zero_stage`) shards across GPUs"),
    rejected("use_muon", Finetuning, &["false"], "Muon is not implemented; `optim` offers adamw_torch, adamw_8bit, adafactor and sgd"),
    rejected("use_dft_loss", Finetuning, &["false"], "the DFT loss is not implemented; the loss is token-level cross-entropy"),
    rejected("compute_accuracy", Finetuning, &["false"], "token-level accuracy is not computed at evaluation (eval reports the loss and perplexity); `lf-trainer eval --exact-match` scores greedy answers"),
    rejected("disable_shuffling", Finetuning, &["false"], "every epoch visits the examples in a fresh permutation seeded by `seed`"),
    rejected("early_stopping_steps", Finetuning, &["null"], "early stopping is not implemented: set `max_steps` or `num_train_epochs`"),
    // ---- training ------------------------------------------------------------------------------
    rejected("eval_delay", Training, &["0"], "evaluation follows `eval_strategy`/`eval_steps` from the first step"),
    rejected("eval_on_start", Training, &["false"], "the first evaluation follows `eval_strategy`/`eval_steps`"),
    rejected("torch_empty_cache_steps", Training, &["null"], "the CUDA cache is never emptied between steps (the operator's planner budgets the allocator's peak)"),
    rejected("per_gpu_train_batch_size", Training, &["null"], "deprecated in transformers: use `per_device_train_batch_size`"),
    rejected("per_gpu_eval_batch_size", Training, &["null"], "deprecated in transformers: use `per_device_eval_batch_size`"),
    rejected("lr_scheduler_kwargs", Training, &["null", "{}"], "schedule parameters are not configurable: `lr_scheduler_type` is linear, cosine (to 0), constant or constant_with_warmup, with `warmup_ratio`/`warmup_steps`"),
    rejected("log_level", Training, &["passive"], LOG_LEVEL_WHY),
    rejected("log_level_replica", Training, &["warning", "passive"], LOG_LEVEL_WHY),
    rejected("logging_first_step", Training, &["false"], "the first log line is at step `logging_steps` (set `logging_steps: 1` to log every step)"),
    rejected("save_on_each_node", Training, &["false"], "rank 0 writes checkpoints: `output_dir` must be on a volume every node shares"),
    rejected("no_cuda", Training, &["false"], "the trainer uses the GPU whenever one is visible: hide the GPUs (`CUDA_VISIBLE_DEVICES=`) to run on the CPU"),
    rejected("use_cpu", Training, &["false"], "the trainer uses the GPU whenever one is visible: hide the GPUs (`CUDA_VISIBLE_DEVICES=`) to run on the CPU"),
    rejected("use_mps_device", Training, &["false"], "Apple MPS is not supported"),
    rejected("data_seed", Training, &["null"], "the data order follows `seed`"),
    rejected("jit_mode_eval", Training, &["false"], "TorchScript is not used"),
    rejected("use_ipex", Training, &["false"], "Intel Extension for PyTorch is not used"),
    rejected("bf16_full_eval", Training, &["false"], "evaluation runs in the training precision"),
    rejected("fp16_full_eval", Training, &["false"], "evaluation runs in the training precision"),
    rejected("tpu_num_cores", Training, &["null"], "TPUs are not supported"),
    rejected("tpu_metrics_debug", Training, &["false"], "TPUs are not supported"),
    rejected("debug", Training, &["", "null"], "transformers' debug modes are not available (`LF_LOG=debug` raises the log level)"),
    rejected("label_names", Training, &["null"], "labels come from the dataset format (the response tokens, or every token for `stage: pt`)"),
    rejected("load_best_model_at_end", Training, &["false"], "the final weights are the last step's; checkpoints are kept per `save_total_limit`"),
    rejected("ignore_data_skip", Training, &["false"], "a resumed run always continues with exactly the batches the uninterrupted run would have seen"),
    rejected("fsdp", Training, &["", "false", "null"], FSDP_WHY),
    rejected("fsdp_config", Training, &["null", "{}"], FSDP_WHY),
    rejected("fsdp_min_num_params", Training, &["0"], FSDP_WHY),
    rejected("fsdp_transformer_layer_cls_to_wrap", Training, &["null"], FSDP_WHY),
    rejected("accelerator_config", Training, &["null", "{}"], "Accelerate is not used: lf-trainer runs its own data parallelism and ZeRO"),
    rejected("label_smoothing_factor", Training, &["0"], "label smoothing is not implemented"),
    rejected("optim_args", Training, &["null", ""], "the optimiser's arguments are `adam_beta1`, `adam_beta2`, `adam_epsilon` and `weight_decay`"),
    rejected("optim_target_modules", Training, &["null"], "GaLore/APOLLO-style target modules are not implemented"),
    rejected("adafactor", Training, &["false"], "deprecated in transformers: use `optim: adafactor`"),
    rejected("group_by_length", Training, &["false"], "examples are shuffled without grouping by length (`packing: true` avoids padding instead)"),
    rejected("push_to_hub", Training, &["false"], "pushing to a hub is not implemented: the adapter (or model) is written to `output_dir`"),
    rejected("auto_find_batch_size", Training, &["false"], "set `per_device_train_batch_size`; in a FineTuneJob the operator's planner chooses the micro-batch"),
    rejected("full_determinism", Training, &["false"], "deterministic CUDA kernels are not enforced; runs are seeded by `seed`"),
    rejected("torchdynamo", Training, &["null"], COMPILE_WHY),
    rejected("torch_compile", Training, &["false"], COMPILE_WHY),
    rejected("torch_compile_backend", Training, &["null"], COMPILE_WHY),
    rejected("torch_compile_mode", Training, &["null"], COMPILE_WHY),
    rejected("include_num_input_tokens_seen", Training, &["false", "no"], "the number of input tokens seen is not logged; `train_tokens_per_second` is reported"),
    rejected("neftune_noise_alpha", Training, &["null"], "NEFTune is not implemented"),
    rejected("sortish_sampler", Training, &["false"], "examples are shuffled without sorting by length"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn values_match_their_yaml_spelling() {
        assert!(matches(&yaml("true"), "true"));
        assert!(!matches(&yaml("'true'"), "false"));
        assert!(matches(&yaml("~"), "null"));
        assert!(matches(&yaml("1"), "1"));
        assert!(matches(&yaml("1.0"), "1"));
        assert!(matches(&yaml("CPU"), "cpu"));
        assert!(matches(&yaml("{}"), "{}"));
        assert!(!matches(&yaml("{a: 1}"), "{}"));
        assert!(matches(&yaml("''"), ""));
        assert!(matches(&yaml("[1]"), "*"));
    }

    #[test]
    fn the_lists_are_consistent() {
        let config_keys = crate::training::TrainingConfig::known_keys();
        let mut seen = std::collections::BTreeSet::new();
        for o in ACCEPTED.iter().chain(REJECTED) {
            assert!(seen.insert(o.key), "{} is listed twice", o.key);
            assert!(
                !config_keys.iter().any(|k| k == o.key),
                "{} is a config key",
                o.key
            );
            assert_eq!(
                o.rejected.is_empty(),
                o.noted.contains(&"*"),
                "{}: a reason exactly when some value is rejected",
                o.key
            );
            assert_eq!(o.noted.is_empty(), o.notice.is_empty(), "{}", o.key);
        }
        for o in ACCEPTED {
            assert!(!o.quiet.is_empty() || !o.noted.is_empty(), "{}", o.key);
        }
        for o in REJECTED {
            assert!(o.noted.is_empty() && !o.rejected.is_empty(), "{}", o.key);
        }
    }
}
