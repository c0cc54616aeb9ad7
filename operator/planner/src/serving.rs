//! The memory of one serving replica (`spec.serve`): `lf-trainer serve` holds the base weights as
//! training loaded them (NF4 for QLoRA), the trained adapter (or the fully fine-tuned weights),
//! a KV cache for `maxConcurrency` sequences of `maxModelLen` tokens, and the decoding workspace
//! (one chunk of prompt prefill and every running sequence's logits). One GPU per replica: the
//! server does not split a model across GPUs.

use lf_api::serving::ServeSpec;
use lf_api::training::FinetuningType;

use crate::calib;
use crate::input::PlannerInput;
use crate::memory::Inventory;

/// Prompt tokens one sequence feeds per decoding step (`lf-trainer serve --prefill-chunk`'s
/// default, which the rendered server uses).
pub const PREFILL_CHUNK: u64 = 256;

/// One replica's predicted GPU memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServingMemory {
    /// Model weights as the server loads them, adapters included.
    pub weights_bytes: u64,
    /// Keys and values of `max_concurrency × max_model_len` positions.
    pub kv_cache_bytes: u64,
    /// Prefill activations, attention scores of one chunk and the running sequences' logits.
    pub workspace_bytes: u64,
    /// Everything, with the CUDA context and the allocator's fragmentation of the workspace.
    pub peak_bytes: u64,
    /// What the GPU offers after the headroom.
    pub usable_bytes: u64,
    /// KV-cache positions the server may hold (`--max-kv-tokens`).
    pub kv_tokens: u64,
}

impl ServingMemory {
    pub fn fits(&self) -> bool {
        self.peak_bytes <= self.usable_bytes
    }

    /// Host memory of a replica: the weights pass through host memory once while loading, plus
    /// the runtime's own pages ([`calib::HOST_RUNTIME_BYTES`]).
    pub fn host_bytes(&self) -> u64 {
        self.weights_bytes + calib::HOST_RUNTIME_BYTES
    }
}

/// The memory of one replica serving `input`'s trained result under `serve`.
pub fn serving_memory(input: &PlannerInput, serve: &ServeSpec) -> ServingMemory {
    let (arch, training) = (&input.arch, &input.training);
    let inv = Inventory::new(arch, training);
    let cb = inv.compute_bytes;
    let weights_bytes = match training.finetuning_type {
        // The frozen base (quantised for QLoRA) and the adapters, in the compute dtype.
        // (A LoRA run keeps no reference copy in `frozen_weight_bytes`: its reference is the base
        // with the adapter off.)
        FinetuningType::Lora => inv.frozen_weight_bytes + inv.trainable_params * cb,
        FinetuningType::Full | FinetuningType::Freeze => inv.model_params * cb,
    };
    let len = serve.max_model_len_or(training.cutoff_len).max(1);
    let kv_tokens = u64::from(serve.max_concurrency) * len;
    // Keys and values per position of every layer; a windowed layer keeps its window only.
    let windows = arch.layer_windows().unwrap_or_default();
    let per_layer = 2 * arch.kv_heads() * arch.head_dim() * cb;
    let kv_cache_bytes: u64 = (0..arch.num_hidden_layers as usize)
        .map(|i| {
            let held = match windows.get(i).copied().flatten() {
                Some(w) if w > 0 => (w as u64).min(len),
                _ => len,
            };
            per_layer * held * u64::from(serve.max_concurrency)
        })
        .sum();
    let chunk = PREFILL_CHUNK.min(len);
    let hidden = arch.hidden_size;
    let prefill = chunk * (4 * hidden + 3 * arch.intermediate_size.max(hidden)) * cb;
    let scores = arch.num_attention_heads * chunk * len * cb;
    let logits = u64::from(serve.max_concurrency) * arch.vocab_size * 4;
    let workspace_bytes = prefill + scores + logits;
    let peak_bytes = weights_bytes
        + kv_cache_bytes
        + calib::CUDA_CONTEXT_BYTES
        + (workspace_bytes as f64 * (1.0 + calib::FRAGMENTATION)).ceil() as u64;
    ServingMemory {
        weights_bytes,
        kv_cache_bytes,
        workspace_bytes,
        peak_bytes,
        usable_bytes: input.gpu_memory_bytes - input.headroom_bytes(),
        kv_tokens,
    }
}

/// Why `memory` does not fit one GPU, with what to change.
pub fn does_not_fit(memory: &ServingMemory, serve: &ServeSpec) -> String {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    format!(
        "one serving replica needs {:.1} GiB (weights {:.1}, KV cache {:.1} for {} sequences of {} \
         tokens, workspace {:.1}, CUDA context {:.1}) and a GPU offers {:.1} GiB after the headroom: \
         lower spec.serve.maxConcurrency or spec.serve.maxModelLen, or give spec.resources.gpuMemoryGib \
         of a larger GPU",
        gib(memory.peak_bytes),
        gib(memory.weights_bytes),
        gib(memory.kv_cache_bytes),
        serve.max_concurrency,
        memory.kv_tokens / u64::from(serve.max_concurrency).max(1),
        gib(memory.workspace_bytes),
        gib(calib::CUDA_CONTEXT_BYTES),
        gib(memory.usable_bytes),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use lf_api::TrainingConfig;

    fn serve(concurrency: u32, len: u32) -> ServeSpec {
        serde_json::from_value(serde_json::json!({
            "maxConcurrency": concurrency, "maxModelLen": len
        }))
        .unwrap()
    }

    fn input(training: &str) -> PlannerInput {
        let arch = crate::preset("meta-llama/Meta-Llama-3-8B").unwrap();
        let cfg = TrainingConfig::from_yaml_str(training).unwrap();
        PlannerInput::new("llama-3-8b", arch, cfg, 24 << 30)
    }

    #[test]
    fn llama3_8b_kv_cache_and_weights() {
        // Llama-3-8B: 32 layers, 8 KV heads of 128, bf16: 128 KiB of keys and values per token.
        let lora = input("lora_rank: 16\nbf16: true");
        let m = serving_memory(&lora, &serve(8, 2048));
        assert_eq!(m.kv_cache_bytes, 8 * 2048 * 32 * 2 * 8 * 128 * 2);
        assert_eq!(m.kv_tokens, 8 * 2048);
        // 8.03 B parameters in bf16, plus the adapters.
        let base = crate::model_params(&lora.arch) * 2;
        assert!(
            m.weights_bytes > base && m.weights_bytes < base + (100 << 20),
            "{} vs {base}",
            m.weights_bytes
        );
        assert!(m.fits(), "{m:?}");
        // 16 sequences of 4096 tokens (8 GiB of KV cache) do not fit 24 GB beside bf16 weights;
        // they do beside NF4 linears (embeddings and head stay bf16).
        let long = serve(16, 4096);
        let big = serving_memory(&lora, &long);
        assert!(!big.fits(), "{big:?}");
        assert!(does_not_fit(&big, &long).contains("maxConcurrency"));
        let qlora = input("lora_rank: 16\nbf16: true\nquantization_bit: 4");
        let q = serving_memory(&qlora, &long);
        assert!(q.weights_bytes * 2 < big.weights_bytes);
        assert!(q.fits(), "{q:?}");
    }

    #[test]
    fn the_length_defaults_to_cutoff_len() {
        let i = input("lora_rank: 8\ncutoff_len: 1024");
        let s: ServeSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(s.max_concurrency, lf_api::serving::DEFAULT_MAX_CONCURRENCY);
        let m = serving_memory(&i, &s);
        assert_eq!(m.kv_tokens, 1024 * u64::from(s.max_concurrency));
    }
}
