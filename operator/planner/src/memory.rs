//! Model-state memory (weights, gradients, optimiser states) of OUR trainer, and how ZeRO
//! partitions it.
//!
//! What `lf-trainer` keeps on each GPU (the facts this module encodes):
//!
//! - **Frozen base weights** are stored in the compute dtype: bf16/fp16 (2 B), fp32 (4 B) when
//!   neither `bf16` nor `fp16` is set. With `quantization_bit: 4` every decoder linear is stored as
//!   packed 4-bit codes plus one absmax per 64 elements: fp32 absmax (0.5625 B/param) or, with
//!   double quantisation, 8-bit absmax plus one fp32 constant per 256 absmax and an fp32 offset per
//!   tensor (≈ 0.516 B/param); the code tables are shared process-wide, not held per tensor.
//!   `quantization_bit: 8` stores 1 B/param plus an fp32 absmax per 64 elements (1.0625 B/param).
//!   Embeddings, norms, biases and `lm_head` stay in the compute dtype.
//! - **Trainable parameters** keep their own dtype and so do their gradients (autograd produces a
//!   gradient of the parameter's dtype). Under AMP (`bf16`/`fp16`) full/freeze fine-tuning trains
//!   the 16-bit weights (2) with 16-bit gradients (2) and an fp32 master copy (4) + fp32 Adam m, v
//!   (8) in the optimiser: 16 B/param (LLaMA-Factory's table says 18x for trainers that keep fp32
//!   gradients; ours casts each gradient to fp32 only inside the optimiser step, one tensor at a
//!   time). LoRA/DoRA adapters are fp32 parameters themselves (no separate master copy):
//!   4 + 4 + 8 = 16 B/param. `pure_bf16`: 2 (weights) + 2 (gradients) + 4 (bf16 m, v) = 8 B/param.
//!   fp32: 4 + 4 + 8 = 16 B/param.
//! - **Optimisers:** AdamW 8 B/param of state (4 under `pure_bf16`); 8-bit AdamW 2 B/param plus an
//!   fp32 absmax per 256-element block and moment (tensors under 4096 elements keep fp32 moments);
//!   Adafactor `4·(rows + cols)` per matrix and `4·n` per vector (fp32 statistics in every
//!   precision); SGD none.
//! - **Offload** (`offload_optimizer: cpu`) moves optimiser states to host memory, in fp32, next to
//!   an fp32 master copy of every trainable parameter (fp32 ones included: the step runs on the
//!   host copy); gradients stay on the GPU. [`Inventory::offloaded_optimizer_bytes`] is that host
//!   side.
//! - **ZeRO** over N processes: stage 1 partitions optimiser states and master weights, stage 2
//!   also gradients, stage 3 also parameters — the frozen base included, so for LoRA only stage 3
//!   shrinks the dominant term.

use lf_api::training::{FinetuningType, Optim, Precision, TrainingConfig};
use lf_api::ModelArchitecture;

use crate::calib;
use crate::params::{self, Shape};

/// Bytes per parameter of each model-state component (before partitioning).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StateBytes {
    /// The parameter as the forward pass reads it.
    pub weights: f64,
    pub gradients: f64,
    /// Optimiser states plus any master copy.
    pub optimizer: f64,
}

impl StateBytes {
    pub fn total(&self) -> f64 {
        self.weights + self.gradients + self.optimizer
    }
}

/// Per-GPU model-state bytes after ZeRO partitioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelStates {
    pub weights: u64,
    pub gradients: u64,
    pub optimizer: u64,
}

impl ModelStates {
    pub fn total(&self) -> u64 {
        self.weights + self.gradients + self.optimizer
    }
}

/// ZeRO partitioning of `params` parameters with `bytes` per parameter over `n` processes: stage ≥ 1
/// divides the optimiser term, ≥ 2 the gradients, 3 the weights (ZeRO paper, §5.1).
pub fn model_states(params: u64, bytes: StateBytes, stage: u8, n: u32) -> ModelStates {
    let part = |total: f64, from_stage: u8| -> u64 {
        let divisor = if stage >= from_stage {
            n.max(1) as f64
        } else {
            1.0
        };
        (total / divisor).ceil() as u64
    };
    let p = params as f64;
    ModelStates {
        weights: part(p * bytes.weights, 3),
        gradients: part(p * bytes.gradients, 2),
        optimizer: part(p * bytes.optimizer, 1),
    }
}

fn blocks(n: u64, block: u64) -> u64 {
    n.div_ceil(block)
}

/// Bytes of one decoder linear of `numel` elements stored with `bits` (4 or 8) as bitsandbytes
/// stores it (codes, absmax, per-tensor constants). Other `bits` values are stored in bf16.
pub fn quantized_linear_bytes(numel: u64, bits: u8, double_quant: bool) -> u64 {
    match bits {
        4 => {
            let codes = numel.div_ceil(2);
            let nblocks = blocks(numel, calib::NF4_BLOCK);
            let absmax = if double_quant {
                nblocks + 4 * blocks(nblocks, calib::NESTED_BLOCK) + calib::NESTED_OFFSET_BYTES
            } else {
                4 * nblocks
            };
            codes + absmax
        }
        8 => numel + 4 * blocks(numel, calib::INT8_BLOCK),
        _ => 2 * numel,
    }
}

/// Bytes per trainable parameter: `(weights, gradients, master)` for the precision and method.
/// Gradients have the parameter's dtype; the fp32 master copy of a 16-bit parameter under AMP is
/// optimiser state.
pub fn trainable_dtype_bytes(precision: Precision, method: FinetuningType) -> (u64, u64, u64) {
    match precision {
        Precision::PureBf16 => (2, 2, 0),
        Precision::Fp32 => (4, 4, 0),
        Precision::Bf16Amp | Precision::Fp16Amp => match method {
            FinetuningType::Lora => (4, 4, 0),
            FinetuningType::Full | FinetuningType::Freeze => (2, 2, 4),
        },
    }
}

/// Optimiser-state bytes of one tensor.
pub fn optimizer_state_bytes(optim: Optim, precision: Precision, shape: Shape) -> u64 {
    let (rows, cols) = shape;
    let n = rows * cols;
    let elem = if precision == Precision::PureBf16 {
        2
    } else {
        4
    };
    match optim {
        Optim::AdamwTorch => 2 * elem * n,
        Optim::Adamw8bit => {
            if n < calib::ADAM8BIT_MIN_ELEMENTS {
                8 * n
            } else {
                2 * n + 2 * 4 * blocks(n, calib::ADAM8BIT_BLOCK)
            }
        }
        // fp32 row/column statistics (or a full fp32 second moment for vectors) in every
        // precision.
        Optim::Adafactor => {
            if rows > 1 && cols > 1 {
                4 * (rows + cols)
            } else {
                4 * n
            }
        }
        Optim::Sgd => 0,
    }
}

/// Everything about a model and method the memory model needs, derived once.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    pub model_params: u64,
    pub trainable_params: u64,
    /// Trainable parameters as the forward reads them (working copy or fp32 adapters).
    pub trainable_weight_bytes: u64,
    pub gradient_bytes: u64,
    /// fp32 master copies (AMP full/freeze).
    pub master_bytes: u64,
    pub optimizer_state_bytes: u64,
    /// Host memory of the optimiser under `offload_optimizer: cpu`: fp32 states plus an fp32 master
    /// copy of every trainable parameter (nothing of it stays on the GPU).
    pub offloaded_optimizer_bytes: u64,
    /// Frozen parameters as stored (compute dtype, or quantised decoder linears).
    pub frozen_weight_bytes: u64,
    /// One decoder layer's weights as stored, un-partitioned (ZeRO-3 gathers it).
    pub layer_weight_bytes: u64,
    /// The larger of the embedding and `lm_head` as stored (ZeRO-3 gathers it).
    pub head_weight_bytes: u64,
    /// Gradient of the output head (or the tied embedding) in full fine-tuning: produced first in
    /// backward, while every layer checkpoint is still live.
    pub head_gradient_bytes: u64,
    /// Elements of the largest trainable tensor (optimiser-step temporaries).
    pub largest_trainable: u64,
    /// Elements of the largest decoder linear.
    pub largest_linear: u64,
    /// Elements of the largest adapted linear (DoRA materialises it).
    pub largest_adapted: u64,
    pub compute_bytes: u64,
}

impl Inventory {
    pub fn new(arch: &ModelArchitecture, training: &TrainingConfig) -> Inventory {
        let precision = training.precision();
        let cb = precision.compute_bytes();
        let method = training.finetuning_type;
        let (w, g, master) = trainable_dtype_bytes(precision, method);
        let shapes = params::trainable_shapes(arch, training);
        let trainable: u64 = shapes.iter().map(|((r, c), n)| r * c * n).sum();
        let offloaded_state_bytes: u64 = shapes
            .iter()
            .map(|(s, n)| n * optimizer_state_bytes(training.optim, Precision::Fp32, *s))
            .sum();
        // AdaLoRA keeps two importance EMAs per adapter element, in the adapter's dtype, beside
        // the optimiser's own state.
        let adalora_bytes = if training.use_adalora { 2 * w } else { 0 };
        let optimizer_state_bytes = shapes
            .iter()
            .map(|(s, n)| n * optimizer_state_bytes(training.optim, precision, *s))
            .sum::<u64>()
            + adalora_bytes * trainable;
        let model_params = params::model_params(arch);
        let layer = params::layer_params(arch);
        let layers = 0..arch.num_hidden_layers;
        let largest_linear = layers
            .clone()
            .flat_map(|i| params::linear_shapes_at(arch, i))
            .map(|(o, n)| o * n)
            .max()
            .unwrap_or(0);
        let embed = params::embedding_params(arch);
        let head = params::lm_head_params(arch);
        let (frozen_weight_bytes, layer_weight_bytes, head_weight_bytes, largest_adapted) =
            match method {
                FinetuningType::Full => (0, layer.total() * w, embed.max(head) * w, 0),
                FinetuningType::Freeze => {
                    let k = params::freeze_trainable_layers(arch, training);
                    let trained: u64 = (arch.num_hidden_layers - k..arch.num_hidden_layers)
                        .map(|i| params::layer_params_at(arch, i).total())
                        .sum();
                    let frozen = model_params - trained;
                    (
                        frozen * cb,
                        layer.total() * cb.max(w),
                        embed.max(head) * cb,
                        0,
                    )
                }
                FinetuningType::Lora => {
                    // Each layer's frozen bytes: linears (quantised for QLoRA, one block-wise
                    // tensor per linear and expert), a router, biases and norms in the compute
                    // dtype.
                    let base_layer = |i: u64| {
                        let p = params::layer_params_at(arch, i);
                        let linears: u64 = match training.quantization_bit {
                            Some(bits) => params::linear_shapes_at(arch, i)
                                .iter()
                                .map(|(o, n)| {
                                    quantized_linear_bytes(
                                        o * n,
                                        bits,
                                        training.double_quantization,
                                    )
                                })
                                .sum(),
                            None => p.linears * cb,
                        };
                        linears + (p.router + p.biases + p.norms) * cb
                    };
                    let largest_layer = layers.clone().map(base_layer).max().unwrap_or(0);
                    let frozen = layers.clone().map(base_layer).sum::<u64>()
                        + (embed + head + arch.hidden_size) * cb;
                    let adapters_per_layer = trainable / arch.num_hidden_layers.max(1);
                    let largest_adapted = params::lora_targets(arch, training)
                        .iter()
                        .map(|m| {
                            let (i, o) = arch.linear_shape(*m);
                            i * o
                        })
                        .max()
                        .unwrap_or(0);
                    (
                        frozen,
                        largest_layer + adapters_per_layer * w,
                        embed.max(head) * cb,
                        largest_adapted,
                    )
                }
            };
        // A preference run without LoRA keeps a frozen copy of the starting weights as its
        // reference, loaded as the model is (compute dtype).
        let reference_bytes = if training.keeps_reference_copy() {
            model_params * cb
        } else {
            0
        };
        Inventory {
            model_params,
            trainable_params: trainable,
            trainable_weight_bytes: trainable * w,
            gradient_bytes: trainable * g,
            master_bytes: trainable * master,
            optimizer_state_bytes,
            offloaded_optimizer_bytes: offloaded_state_bytes + 4 * trainable,
            frozen_weight_bytes: frozen_weight_bytes + reference_bytes,
            layer_weight_bytes,
            head_weight_bytes,
            head_gradient_bytes: if method == FinetuningType::Full {
                embed.max(head) * g
            } else {
                0
            },
            largest_trainable: shapes.iter().map(|((r, c), _)| r * c).max().unwrap_or(0),
            largest_linear,
            largest_adapted,
            compute_bytes: cb,
        }
    }

    /// Per-GPU model states with ZeRO `stage` over `n` processes; `offload` moves optimiser states
    /// and master weights off the GPU.
    pub fn states(&self, stage: u8, n: u32, offload: bool) -> ModelStates {
        let n = n.max(1) as u64;
        let div = |bytes: u64, from_stage: u8| {
            if stage >= from_stage {
                bytes.div_ceil(n)
            } else {
                bytes
            }
        };
        ModelStates {
            weights: div(self.trainable_weight_bytes + self.frozen_weight_bytes, 3),
            gradients: div(self.gradient_bytes, 2),
            optimizer: if offload {
                0
            } else {
                div(self.optimizer_state_bytes + self.master_bytes, 1)
            },
        }
    }

    /// Bytes one checkpoint writes, all ranks together: the trainable weights as stored, the
    /// optimiser states and master copies (fp32 on the host when offloaded). The frozen base is
    /// not saved (it is re-read from the model on resume).
    pub fn checkpoint_bytes(&self, offload: bool) -> u64 {
        let optimizer = if offload {
            self.offloaded_optimizer_bytes
        } else {
            self.optimizer_state_bytes + self.master_bytes
        };
        self.trainable_weight_bytes + optimizer
    }

    /// Communication buffers: the gradient bucket of data parallelism (stages 0–2, N > 1) and, under
    /// ZeRO-3, the gathered weights of the layers in flight (or the embedding/`lm_head`, whichever is
    /// larger) plus the reduce-scatter bucket.
    pub fn buffers(&self, stage: u8, n: u32) -> u64 {
        if n <= 1 {
            return 0;
        }
        let grad_elem = self
            .gradient_bytes
            .checked_div(self.trainable_params)
            .unwrap_or(4);
        let bucket = self.trainable_params.min(calib::GRADIENT_BUCKET_ELEMENTS) * grad_elem;
        if stage >= 3 {
            bucket
                + (calib::ZERO3_GATHERED_LAYERS * self.layer_weight_bytes)
                    .max(self.head_weight_bytes)
        } else {
            bucket
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qlora_storage_matches_the_paper() {
        let n = 4096 * 14336;
        let nf4 = quantized_linear_bytes(n, 4, false) as f64 / n as f64;
        let dq = quantized_linear_bytes(n, 4, true) as f64 / n as f64;
        assert!((nf4 - 0.5625).abs() < 1e-4, "{nf4}");
        assert!((dq - 0.51587).abs() < 1e-4, "{dq}");
        let int8 = quantized_linear_bytes(n, 8, false) as f64 / n as f64;
        assert!((int8 - 1.0625).abs() < 1e-6, "{int8}");
    }

    #[test]
    fn zero_partitioning() {
        let s = model_states(
            1000,
            StateBytes {
                weights: 2.0,
                gradients: 2.0,
                optimizer: 12.0,
            },
            2,
            4,
        );
        assert_eq!(
            s,
            ModelStates {
                weights: 2000,
                gradients: 500,
                optimizer: 3000
            }
        );
    }
}
