//! Weight quantisation for QLoRA-style training: NF4 and FP4 with optional double quantisation,
//! bit-identical to bitsandbytes (0.50, CPU), and symmetric block-wise int8.
//!
//! The model engineer wraps each decoder linear's base weight in a [`QuantizedWeight`] at load
//! time and calls [`QuantizedWeight::dequantize`] in the forward pass (one layer at a time);
//! embeddings, norms and the LM head are never quantised.
//!
//! | mode | bytes / parameter (measured by [`QuantizedWeight::storage_bytes`]) |
//! |---|---|
//! | nf4 / fp4 | 0.5 (codes) + 4/64 (f32 absmax) = 0.5625 |
//! | nf4 / fp4 + double quantisation | 0.5 + 1/64 + 4/(64·256) ≈ 0.5159 (+4 B offset per weight) |
//! | int8 | 1 + 4/64 = 1.0625 |
//!
//! The constant tables (16-value 4-bit codes, the 256-value dynamic map, the 64 Ki-entry lookup
//! table used while quantising) are built once per device and shared ([`codebook::shared`]).

pub mod blockwise;
pub mod codebook;
mod error;
mod weight;

pub use codebook::FourBit;
pub use error::QuantError;
pub use weight::{QuantizedWeight, BLOCKSIZE, INT8_BLOCKSIZE, NESTED_BLOCKSIZE};
