//! Block-wise quantisation kernels written as whole-tensor operations (no per-element Rust loops),
//! so they run at libtorch speed on CPU and on the GPU the weight lives on.
//!
//! Two kernels reproduce bitsandbytes 0.50 on CPU code for code:
//! * [`quantize_4bit`] / [`dequantize_4bit`]: `bitsandbytes.functional.quantize_4bit` (the
//!   reference `default` backend bnb uses on CPU) — per block of `blocksize` elements (flattened,
//!   row-major) `absmax = max|x|`; full blocks are scaled by `x * (1 / max(absmax, 1e-38))`, the
//!   last partial block by `x / max(absmax, 1e-38)` (and *that* clamped absmax is what is stored);
//!   scaled values are clamped to [-1, 1] and bucketed against the midpoints of the sorted code
//!   (a tie goes to the lower code); an odd element count is padded with one 0; codes are packed
//!   two per byte, the first element in the high nibble.
//! * [`quantize_blockwise`] / [`dequantize_blockwise`]: bnb's CPU C kernel for 8-bit block-wise
//!   quantisation (used for double quantisation), which looks the code up in a 65 536-entry table
//!   (see [`crate::codebook::lut_for`]) at `trunc((x/absmax + 1) * 0.5 * 65535 + 0.5)`; an all-zero
//!   block gets absmax 0 and code 0.

use tch::{Kind, Tensor};

use crate::codebook::FourBit;

/// Splits a flat f32 tensor into its full blocks (`[blocks, bs]`) and the partial tail.
fn split_blocks(a: &Tensor, bs: i64) -> (Option<Tensor>, Option<Tensor>) {
    let n = a.size()[0];
    let rem = n % bs;
    let full = n - rem;
    let head = (full > 0).then(|| a.narrow(0, 0, full).reshape([full / bs, bs]));
    let tail = (rem > 0).then(|| a.narrow(0, full, rem));
    (head, tail)
}

/// Quantises a flat f32 tensor to packed 4-bit codes (`u8`, `ceil(n/2)` bytes) and per-block
/// absmax (`f32`, `ceil(n/bs)`), exactly as bitsandbytes' reference kernel.
pub fn quantize_4bit(a: &Tensor, bs: i64, kind: FourBit) -> (Tensor, Tensor) {
    let device = a.device();
    let (head, tail) = split_blocks(a, bs);
    let mut absmax = Vec::with_capacity(2);
    let mut scaled = Vec::with_capacity(3);
    if let Some(head) = head {
        let am = head.abs().amax([1], false);
        let inv = am.clamp_min(1e-38).reciprocal().unsqueeze(1);
        scaled.push((head * inv).clamp(-1.0, 1.0).reshape([-1]));
        absmax.push(am);
    }
    if let Some(tail) = tail {
        let am = tail.abs().amax([0], true).clamp_min(1e-38);
        scaled.push((tail / &am).clamp(-1.0, 1.0));
        absmax.push(am);
    }
    let n = a.size()[0];
    if n % 2 == 1 {
        scaled.push(Tensor::zeros([1], (Kind::Float, device)));
    }
    let scaled = Tensor::cat(&scaled, 0);
    let absmax = Tensor::cat(&absmax, 0);

    let (order, boundaries) = kind.order_and_boundaries();
    let boundaries = Tensor::from_slice(&boundaries).to_device(device);
    let mut q = scaled.bucketize(&boundaries, true, false);
    if kind == FourBit::Fp4 {
        q = Tensor::from_slice(&order)
            .to_device(device)
            .index_select(0, &q);
    }
    let q = q.to_kind(Kind::Uint8);
    let hi = q.slice(0, 0, None, 2);
    let lo = q.slice(0, 1, None, 2);
    let packed = hi * 16 + lo;
    (packed, absmax)
}

/// Unpacks `n` 4-bit codes (first element in the high nibble) as `i64` indices.
pub fn unpack_4bit(packed: &Tensor, n: i64) -> Tensor {
    let hi = packed.bitwise_right_shift_tensor_scalar(4);
    let lo = packed.bitwise_and(15);
    Tensor::stack(&[hi, lo], 1)
        .reshape([-1])
        .narrow(0, 0, n)
        .to_kind(Kind::Int64)
}

/// Multiplies flat per-element values by their block's scale (`f32` in, `f32` out).
fn scale_blocks(values: &Tensor, absmax: &Tensor, bs: i64) -> Tensor {
    let n = values.size()[0];
    let blocks = absmax.size()[0];
    let padded = blocks * bs - n;
    let v = if padded > 0 {
        values.constant_pad_nd([0, padded])
    } else {
        values.shallow_clone()
    };
    (v.reshape([blocks, bs]) * absmax.unsqueeze(1))
        .reshape([-1])
        .narrow(0, 0, n)
}

/// `code[q] * absmax[block]` in f32, the first `n` elements.
///
/// Decodes a byte at a time through a 256 × 2 table of (high, low) nibble values, so the index
/// tensor has one `i32` per byte rather than one `i64` per element.
pub fn dequantize_4bit(packed: &Tensor, absmax: &Tensor, code: &Tensor, bs: i64, n: i64) -> Tensor {
    let byte = Tensor::arange(256i64, (Kind::Int64, code.device()));
    let pairs = Tensor::stack(
        &[
            code.index_select(0, &byte.bitwise_right_shift_tensor_scalar(4)),
            code.index_select(0, &byte.bitwise_and(15)),
        ],
        1,
    );
    let values = pairs
        .index_select(0, &packed.to_kind(Kind::Int))
        .reshape([-1]);
    let values = if values.size()[0] == n {
        values
    } else {
        values.narrow(0, 0, n)
    };
    scale_blocks(&values, absmax, bs)
}

/// bnb's CPU 8-bit block-wise quantisation of a flat f32 tensor against `code` (sorted, 256
/// values) using its lookup table `lut` (from [`crate::codebook::lut_for`]). Returns (`u8`
/// codes, `f32` absmax per block).
pub fn quantize_blockwise(a: &Tensor, code_lut: &Tensor, bs: i64) -> (Tensor, Tensor) {
    let n = a.size()[0];
    let blocks = (n + bs - 1) / bs;
    let padded = blocks * bs - n;
    let a = if padded > 0 {
        a.constant_pad_nd([0, padded])
    } else {
        a.shallow_clone()
    };
    let a = a.reshape([blocks, bs]);
    let absmax = a.abs().amax([1], false);
    let zero_block = absmax.eq(0.0).unsqueeze(1);
    let inv = absmax.reciprocal().unsqueeze(1);
    let v = (&a * inv).masked_fill(&zero_block, 0.0).clamp(-1.0, 1.0);
    let idx = (((v + 1.0) * 0.5) * 65_535.0 + 0.5).to_kind(Kind::Int64);
    let lut = code_lut.to_device(a.device());
    let q = lut
        .index_select(0, &idx.reshape([-1]))
        .reshape([blocks, bs])
        .masked_fill(&zero_block, 0);
    (q.reshape([-1]).narrow(0, 0, n).to_kind(Kind::Uint8), absmax)
}

/// `code[q] * absmax[block]` in f32.
pub fn dequantize_blockwise(q: &Tensor, absmax: &Tensor, code: &Tensor, bs: i64) -> Tensor {
    scale_blocks(&code.index_select(0, &q.to_kind(Kind::Int64)), absmax, bs)
}

/// Symmetric int8 per block: `q = round(x * 127 / absmax)` (ties to even), absmax per block in
/// f32; an all-zero block has absmax 0 and codes 0. Dequantisation `q * absmax / 127` is within
/// `absmax / 254` (half a step) of the input plus f32 rounding.
pub fn quantize_int8(a: &Tensor, bs: i64) -> (Tensor, Tensor) {
    let n = a.size()[0];
    let blocks = (n + bs - 1) / bs;
    let padded = blocks * bs - n;
    let a = if padded > 0 {
        a.constant_pad_nd([0, padded])
    } else {
        a.shallow_clone()
    };
    let a = a.reshape([blocks, bs]);
    let absmax = a.abs().amax([1], false);
    let scale = (absmax.clamp_min(f32::MIN_POSITIVE as f64) / 127.0).unsqueeze(1);
    let q = (a / scale).round().clamp(-127.0, 127.0).to_kind(Kind::Int8);
    (q.reshape([-1]).narrow(0, 0, n), absmax)
}

/// Inverse of [`quantize_int8`], in f32.
pub fn dequantize_int8(q: &Tensor, absmax: &Tensor, bs: i64) -> Tensor {
    scale_blocks(&q.to_kind(Kind::Float), &(absmax / 127.0), bs)
}

/// Nearest-code 8-bit block-wise quantisation of a flat f32 tensor against a sorted 256-value
/// `code` (ties to the lower code): the scheme 8-bit optimisers use for their moments. Returns
/// (`u8` codes, `f32` absmax per block); an all-zero block has absmax 0.
pub fn quantize_blockwise_nearest(a: &Tensor, code: &Tensor, bs: i64) -> (Tensor, Tensor) {
    let n = a.size()[0];
    let blocks = (n + bs - 1) / bs;
    let padded = blocks * bs - n;
    let a = if padded > 0 {
        a.constant_pad_nd([0, padded])
    } else {
        a.shallow_clone()
    };
    let a = a.reshape([blocks, bs]);
    let absmax = a.abs().amax([1], false);
    let scaled = (&a / absmax.clamp_min(1e-38).unsqueeze(1)).clamp(-1.0, 1.0);
    let len = code.size()[0];
    let mid = (code.narrow(0, 0, len - 1) + code.narrow(0, 1, len - 1)) * 0.5;
    let q = scaled.bucketize(&mid, false, false).to_kind(Kind::Uint8);
    (q.reshape([-1]).narrow(0, 0, n), absmax)
}
