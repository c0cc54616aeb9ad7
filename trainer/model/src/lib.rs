//! lf-model: a Llama-family causal language model on libtorch (`tch`), built for fine-tuning.
//!
//! * [`CausalLm::load`] reads a Hugging Face model directory (llama 2/3/3.1, mistral, qwen2, qwen3,
//!   gemma2, gemma3_text, phi3, and the mixtures of experts mixtral and qwen3_moe ([`moe`]); tied
//!   embeddings; sliding windows), memory-mapping the safetensors shards and streaming tensors to
//!   the device.
//! * [`CausalLm::apply_method`] attaches LoRA / rsLoRA / DoRA adapters exactly as PEFT initialises
//!   and computes them, or marks base weights trainable for `full` / `freeze`.
//! * [`CausalLm::loss_sum_and_backward`] is the training step's forward + backward: the head and
//!   cross-entropy run in chunks (the full fp32 logits never exist) and decoder layers are
//!   recomputed in backward when `gradient_checkpointing` is on.
//! * [`CausalLm::save_adapter`] / [`CausalLm::load_adapter`] speak PEFT's file format;
//!   [`CausalLm::export_merged`] writes a merged Hugging Face model; [`CausalLm::generate`] decodes
//!   with a KV cache.
//!
//! The architecture itself is in [`llama`] (one file, mirroring transformers' `modeling_llama.py`);
//! every tensor name (Hugging Face and PEFT) comes from [`names`].

mod adalora;
mod adalora_io;
mod causal_lm;
pub mod durable;
mod error;
mod export;
mod generate;
mod hidden;
pub mod linear;
pub mod llama;
mod loader;
mod logps;
mod lora_settings;
mod method;
pub mod moe;
pub mod names;
mod offload;
mod options;
pub mod packing;
mod peft;
mod quant;
mod rank_allocator;
mod residency;
mod routing;
pub mod safetensors_io;
#[cfg(feature = "test-support")]
pub mod testing;
mod tiled;
mod training;

pub use adalora_io::ADALORA_STATE;
pub use causal_lm::{CausalLm, LoadReport};
pub use error::ModelError;
pub use generate::Decoding;
pub use linear::without_adapters;
pub use loader::UnitSink;
pub use logps::TokenLogps;
pub use lora_settings::LoraSettings;
pub use names::peft_prefix;
pub use offload::OffloadStats;
pub use options::{read_architecture, GenerationParams, LoadOptions, QuantSettings};
pub use peft::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
pub use rank_allocator::{budget_schedule, Allocation, RankPattern};
pub use residency::{AlwaysResident, Residency, Unit};
pub use routing::{MoeLoss, RoutedForward};
pub use training::IGNORE_INDEX;

#[cfg(test)]
mod tests {
    /// The trainer may build the model on one thread and train on another (tch tensors are
    /// `Send`, not `Sync`, so the model is moved, not shared).
    #[test]
    fn model_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<crate::CausalLm>();
    }
}
