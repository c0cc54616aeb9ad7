//! Host (CPU) memory of one `lf-trainer` process: what the operator requests for a trainer pod
//! when `spec.resources.memory` is unset (per local process, plus the pod's `/dev/shm`).
//!
//! What a process keeps in host memory, beside the GPU:
//!
//! - **The runtime** ([`calib::HOST_RUNTIME_BYTES`]): libtorch's and the CUDA libraries' resident
//!   pages, the CUDA context's host side, NCCL's host buffers, the tokenizer and the tokenised
//!   dataset. An allowance, not a prediction: it is what a CUDA process of PyTorch typically holds
//!   after start-up, rounded up.
//! - **The offloaded optimiser** (`offload_optimizer: cpu`): fp32 states and fp32 master copies,
//!   partitioned over the processes under ZeRO-1/2/3, exactly as the trainer allocates them
//!   ([`Inventory::offloaded_optimizer_bytes`]).
//! - **Loading**: weights are read from memory-mapped safetensors (page cache, which the kernel
//!   reclaims under the pod's limit) and converted tensor by tensor: at most two host copies of the
//!   largest tensor (the embedding or `lm_head`) at a time.
//! - **The final save under ZeRO-3**: rank 0 gathers what it writes into host memory, unit by unit
//!   (`lf-trainer`'s `gather_for_final_save`): the fp32 adapter for LoRA methods, every weight in
//!   the compute dtype for `full`/`freeze`. Every pod of an Indexed Job has the same template, so
//!   every pod requests it.

use lf_api::training::{FinetuningType, TrainingConfig};

use crate::calib;
use crate::memory::Inventory;

/// Host bytes one trainer process needs (see the module documentation).
pub fn host_bytes_per_process(
    inv: &Inventory,
    training: &TrainingConfig,
    stage: u8,
    gpus: u32,
    offload: bool,
) -> u64 {
    let offloaded = if !offload {
        0
    } else if stage >= 1 {
        inv.offloaded_optimizer_bytes.div_ceil(gpus.max(1) as u64)
    } else {
        inv.offloaded_optimizer_bytes
    };
    let loading = 2 * inv.head_weight_bytes;
    let final_save = if stage < 3 {
        0
    } else if training.finetuning_type == FinetuningType::Lora {
        4 * inv.trainable_params
    } else {
        inv.model_params * inv.compute_bytes
    };
    calib::HOST_RUNTIME_BYTES + offloaded + loading + final_save
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::preset;

    fn training(yaml: &str) -> TrainingConfig {
        serde_yaml::from_str(yaml).expect("training config")
    }

    fn host(yaml: &str, stage: u8, gpus: u32, offload: bool) -> (Inventory, u64) {
        let arch = preset("meta-llama/Meta-Llama-3-8B").expect("preset");
        let t = training(yaml);
        let inv = Inventory::new(&arch, &t);
        let bytes = host_bytes_per_process(&inv, &t, stage, gpus, offload);
        (inv, bytes)
    }

    const LORA: &str =
        "stage: sft\nfinetuning_type: lora\nlora_rank: 16\nlora_target: all\nbf16: true\n";
    const FULL: &str = "stage: sft\nfinetuning_type: full\nbf16: true\n";

    #[test]
    fn lora_without_offload_is_the_runtime_plus_loading() {
        let (inv, bytes) = host(LORA, 0, 1, false);
        assert_eq!(bytes, calib::HOST_RUNTIME_BYTES + 2 * inv.head_weight_bytes);
        // Llama-3-8B's embedding in bf16 is 128256 × 4096 × 2 bytes.
        assert_eq!(inv.head_weight_bytes, 128_256 * 4096 * 2);
    }

    #[test]
    fn the_offloaded_optimizer_is_partitioned_under_zero() {
        let (inv, alone) = host(FULL, 0, 1, true);
        let (_, zero2) = host(FULL, 2, 8, true);
        let base = calib::HOST_RUNTIME_BYTES + 2 * inv.head_weight_bytes;
        assert_eq!(alone, base + inv.offloaded_optimizer_bytes);
        assert_eq!(zero2, base + inv.offloaded_optimizer_bytes.div_ceil(8));
        // fp32 Adam m, v and an fp32 master copy: 12 bytes per trainable parameter.
        assert_eq!(inv.offloaded_optimizer_bytes, 12 * inv.trainable_params);
    }

    #[test]
    fn zero3_final_save_gathers_what_is_written() {
        let (inv, full) = host(FULL, 3, 8, false);
        let (lora_inv, lora) = host(LORA, 3, 8, false);
        let base = calib::HOST_RUNTIME_BYTES + 2 * inv.head_weight_bytes;
        assert_eq!(full, base + inv.model_params * 2);
        assert_eq!(lora, base + 4 * lora_inv.trainable_params);
    }
}
