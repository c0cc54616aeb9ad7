//! Calibration constants: every number of the memory model that is a property of the runtime
//! (CUDA, the caching allocator, collective libraries, library block sizes) rather than of the
//! model's shape, in one place. Structural terms (parameter bytes, saved activations) are derived
//! in [`crate::memory`] and [`crate::activations`]; only these constants may be re-fitted against
//! measurements.

/// CUDA context, cuBLAS/cuDNN workspaces and NCCL communicators of one process: 1 GiB. Published
/// values range from 650 MB (gpu_poor) to 1,343 MB (HF anatomy doc, V100); calculators assume
/// 1,000 MiB.
pub const CUDA_CONTEXT_BYTES: u64 = 1 << 30;

/// Host memory of one trainer process besides what the planner derives (offloaded optimiser,
/// loading and final-save copies, [`crate::host`]): libtorch's and the CUDA libraries' resident
/// pages, the CUDA context's host side, NCCL's host buffers, the tokenizer and the tokenised
/// dataset: 4 GiB. An allowance, rounded up from the 2.5-3.5 GiB resident set a CUDA process of
/// PyTorch commonly reports after initialising cuBLAS, cuDNN and NCCL; on CPU (`lf-operator
/// local`) a process holds far less. It only sizes the pod's default memory request and limit.
pub const HOST_RUNTIME_BYTES: u64 = 4 << 30;

/// Caching-allocator fragmentation (reserved − allocated), as a fraction of the transient part of
/// the peak (activations, logits, temporaries). Static tensors are allocated once and do not
/// fragment. OOM is decided on reserved memory, so this is part of the prediction.
pub const FRAGMENTATION: f64 = 0.05;

/// Elements in one data-parallel gradient bucket (all-reduce / reduce-scatter granularity).
pub const GRADIENT_BUCKET_ELEMENTS: u64 = 25_000_000;

/// Decoder layers whose full (un-partitioned) weights are live at once under ZeRO-3: the layer in
/// use and the prefetched next one.
pub const ZERO3_GATHERED_LAYERS: u64 = 2;

/// bitsandbytes 4-bit: elements per absmax block.
pub const NF4_BLOCK: u64 = 64;
/// bitsandbytes double quantisation: absmax values per second-level (fp32) block.
pub const NESTED_BLOCK: u64 = 256;
/// bitsandbytes block-wise int8 weights: elements per absmax block.
pub const INT8_BLOCK: u64 = 64;
/// Per-tensor constant of a double-quantised 4-bit weight: the fp32 offset (the mean of the
/// absmax values). The 16-entry code book and the 256-entry nested map are tables lf-quant shares
/// by every weight on a device (about 1 KiB per process), so they are not counted per tensor.
pub const NESTED_OFFSET_BYTES: u64 = 4;

/// 8-bit AdamW (the bitsandbytes scheme): elements per block of each quantised moment (one fp32
/// absmax per block and moment).
pub const ADAM8BIT_BLOCK: u64 = 256;
/// 8-bit AdamW keeps 32-bit moments for tensors with fewer elements than this.
pub const ADAM8BIT_MIN_ELEMENTS: u64 = 4096;

/// Bytes per logit that libtorch's cross-entropy (log-softmax + NLL) holds at its forward+backward
/// peak beyond its fp32 input: the saved log-softmax output, the NLL gradient, the `exp` temporary
/// of the log-softmax backward and the input gradient, 4 B each. Measured: PyTorch CE on fp32
/// logits peaks at 20 B per logit including the 4 B input (Liger-Kernel benchmark, planner-notes M15).
pub const CROSS_ENTROPY_TEMP_BYTES: u64 = 16;
