//! The code books: the 4-bit NF4 and FP4 value tables and the signed 8-bit "dynamic" map that
//! double quantisation (and 8-bit AdamW) use, built exactly as bitsandbytes builds them so that
//! codes computed here are the codes bitsandbytes computes.

use std::sync::{Mutex, OnceLock};

use tch::{Device, Kind, Tensor};

/// NF4 (NormalFloat4): 16 quantiles of N(0, 1) scaled to [-1, 1], index order = value order
/// (QLoRA, arXiv:2305.14314; bitsandbytes `get_4bit_type("nf4")`).
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// FP4 (1 sign, 2 exponent, 1 mantissa bit, bias 2) in bit-pattern order before normalisation:
/// index bit 3 is the sign, the low three bits select the magnitude.
const FP4_RAW: [f32; 16] = [
    0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0,
];

/// The 4-bit data types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FourBit {
    Nf4,
    Fp4,
}

impl FourBit {
    /// The name bitsandbytes uses (`nf4`, `fp4`).
    pub fn name(self) -> &'static str {
        match self {
            FourBit::Nf4 => "nf4",
            FourBit::Fp4 => "fp4",
        }
    }

    /// The 16 code values indexed by 4-bit code. FP4 is normalised by its largest magnitude (12)
    /// in f32, as bitsandbytes does (`data.div_(data.abs().max())`).
    pub fn values(self) -> [f32; 16] {
        match self {
            FourBit::Nf4 => NF4,
            FourBit::Fp4 => FP4_RAW.map(|v| v / 12.0),
        }
    }

    /// The values bitsandbytes' CPU dequantisation kernel multiplies by absmax. They equal
    /// [`FourBit::values`] except that its scalar FP4 decoder returns −0.0 for code 8 (sign bit
    /// set, zero magnitude), so a tiny positive weight dequantises to −0.0. Which decoder runs
    /// depends on the weight's last dimension `cols` (measured against bnb 0.50 on x86 AVX-512):
    /// odd `cols` → the Python table (+0.0); `cols % 16 == 0` → the SIMD kernel (+0.0); other even
    /// `cols` → the scalar kernel (−0.0). See [`FourBit::dequant_values_for_cols`].
    pub fn kernel_values(self) -> [f32; 16] {
        let mut v = self.values();
        if self == FourBit::Fp4 {
            v[8] = -0.0;
        }
        v
    }

    /// The dequantisation table bnb effectively uses for a weight with `cols` columns.
    pub fn dequant_values_for_cols(self, cols: i64) -> [f32; 16] {
        if cols % 2 == 0 && cols % 16 != 0 {
            self.kernel_values()
        } else {
            self.values()
        }
    }

    /// Codes sorted by value (a stable sort, so FP4's +0 (code 0) precedes its second zero
    /// (code 8)) and the 15 decision boundaries between neighbours, `(a + b) / 2` in f32.
    ///
    /// Quantisation is `order[bucketize(x, boundaries)]`: a value exactly on a boundary goes to
    /// the lower neighbour, which is bitsandbytes' `torch.bucketize(..., right=False)` rule.
    pub fn order_and_boundaries(self) -> ([i64; 16], [f32; 15]) {
        let values = self.values();
        let mut order: [i64; 16] = std::array::from_fn(|i| i as i64);
        order.sort_by(|a, b| {
            values[*a as usize]
                .total_cmp(&values[*b as usize])
                .then(std::cmp::Ordering::Equal)
        });
        // total_cmp orders -0.0 before +0.0; FP4's two zeros are both +0.0 after normalisation
        // (the raw table spells the second one as an integer 0), so the stable order holds.
        let boundaries: [f32; 15] = std::array::from_fn(|i| {
            (values[order[i] as usize] + values[order[i + 1] as usize]) / 2.0
        });
        (order, boundaries)
    }
}

/// bitsandbytes' signed dynamic map (`create_dynamic_map(signed=True, max_exponent_bits=7,
/// total_bits=8)`): for decade `i` in 0..7, the midpoints of `linspace(0.1, 1, 2^i + 1)` (f32)
/// scaled by `10^(i-6)`, both signs, plus 0 and 1, sorted — 256 values in [-0.99297, 1].
///
/// With `signed = false` (the map 8-bit AdamW uses for the second moment) each decade has
/// `2^(i+1)` positive values and no negatives.
///
/// Built with libtorch's own `linspace` and f32 arithmetic so that every value is bit-identical
/// to the Python construction.
pub fn dynamic_map(signed: bool) -> Tensor {
    // `10 ** (i - 6)` as Python evaluates it (correctly rounded doubles).
    const DECADES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let max_exponent_bits = 7i64;
    let non_sign_bits = 7i64;
    let mut parts: Vec<Tensor> = Vec::new();
    for i in 0..max_exponent_bits {
        let items = if signed {
            (1i64 << (i + non_sign_bits - max_exponent_bits)) + 1
        } else {
            (1i64 << (i + non_sign_bits - max_exponent_bits + 1)) + 1
        };
        let bounds = Tensor::linspace(0.1f64, 1.0f64, items, (Kind::Float, Device::Cpu));
        let means = (bounds.narrow(0, 0, items - 1) + bounds.narrow(0, 1, items - 1)) / 2.0;
        let scale = DECADES[i as usize];
        let pos = &means * scale;
        parts.push(pos.shallow_clone());
        if signed {
            parts.push(&means * (-scale));
        }
    }
    parts.push(Tensor::from_slice(&[0.0f32, 1.0f32]));
    let data = Tensor::cat(&parts, 0);
    let len = data.size()[0];
    let data = if len < 256 {
        Tensor::cat(
            &[data, Tensor::zeros([256 - len], (Kind::Float, Device::Cpu))],
            0,
        )
    } else {
        data
    };
    data.sort(0, false).0
}

/// The 65 536-entry lookup table bitsandbytes' CPU kernel (`quantize_cpu_impl`) uses to map a
/// normalised value to its 8-bit code: entry `j` covers `v = -1 + 2j/65535` (f32) and holds the
/// number of code midpoints strictly below `v` (the nearest code, ties to the lower one).
/// A value `x` in [-1, 1] is looked up at `trunc((x + 1) * 0.5 * 65535 + 0.5)`.
///
/// Note this is *not* the exact nearest code near zero, where the dynamic map's spacing
/// (~1e-7) is finer than the table's (~3e-5); bitsandbytes' own CPU results have the same
/// property, and reproducing them code for code is the point.
pub fn lut_for(code: &Tensor) -> Tensor {
    let code = code.to_kind(Kind::Float).to_device(Device::Cpu);
    let n = code.size()[0];
    let mid = (code.narrow(0, 0, n - 1) + code.narrow(0, 1, n - 1)) * 0.5;
    let j = Tensor::arange(65_536i64, (Kind::Float, Device::Cpu));
    let v = (j * 2.0) / 65_535.0 + (-1.0);
    v.bucketize(&mid, false, false)
}

/// The constant tables, shared process-wide (one copy per device) instead of held per weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// [`FourBit::values`] (bnb's `quant_map`).
    Code(FourBit),
    /// [`FourBit::kernel_values`].
    KernelCode(FourBit),
    /// [`dynamic_map`]`(true)`.
    DynamicSigned,
    /// [`dynamic_map`]`(false)`.
    DynamicUnsigned,
    /// [`lut_for`] of the signed dynamic map (`i64`, 65 536 entries).
    DynamicSignedLut,
}

type TableCache = Mutex<Vec<(Table, Device, Tensor)>>;

fn cache() -> &'static TableCache {
    static CACHE: OnceLock<TableCache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(Vec::new()))
}

/// The shared copy of `table` on `device` (built on first use; a shallow handle, never copied).
pub fn shared(table: Table, device: Device) -> Tensor {
    let mut guard = match cache().lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some((_, _, t)) = guard.iter().find(|(k, d, _)| *k == table && *d == device) {
        return t.shallow_clone();
    }
    let built = match table {
        Table::Code(kind) => Tensor::from_slice(&kind.values()),
        Table::KernelCode(kind) => Tensor::from_slice(&kind.kernel_values()),
        Table::DynamicSigned => dynamic_map(true),
        Table::DynamicUnsigned => dynamic_map(false),
        Table::DynamicSignedLut => lut_for(&dynamic_map(true)),
    }
    .to_device(device);
    guard.push((table, device, built.shallow_clone()));
    built
}
