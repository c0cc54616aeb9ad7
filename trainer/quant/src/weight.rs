//! [`QuantizedWeight`]: one linear layer's weight held quantised, dequantised on demand.

use lf_api::training::QuantizationType;
use tch::{Device, Kind, Tensor};

use crate::blockwise;
use crate::codebook::{shared, FourBit, Table};
use crate::error::QuantError;

/// Elements per quantisation block (bitsandbytes' default, the QLoRA paper's choice).
pub const BLOCKSIZE: i64 = 64;
/// Absmax constants per second-level block under double quantisation.
pub const NESTED_BLOCKSIZE: i64 = 256;
/// Elements per block in int8 mode.
pub const INT8_BLOCKSIZE: i64 = 64;

/// The per-block scales of a 4-bit weight.
#[derive(Debug)]
enum Absmax {
    /// One f32 per block of 64: 0.5 bit per parameter.
    Plain(Tensor),
    /// Double quantisation: `absmax - offset` quantised to 8 bits with the signed dynamic map in
    /// blocks of 256, with one f32 scale per 256 constants: 8/64 + 32/(64·256) ≈ 0.127 bit per
    /// parameter. The dynamic map itself is shared process-wide ([`Table::DynamicSigned`]).
    Double {
        codes: Tensor,
        nested_absmax: Tensor,
        offset: f32,
    },
}

#[derive(Debug)]
enum Scheme {
    /// `dequant_table` is the shared 16-value table dequantisation multiplies by (see
    /// [`FourBit::dequant_values_for_cols`]).
    FourBit {
        kind: FourBit,
        packed: Tensor,
        dequant_table: Table,
        absmax: Absmax,
    },
    /// Symmetric per-block int8: `w ≈ q · absmax / 127`.
    Int8 { q: Tensor, absmax: Tensor },
}

/// A quantised `[out, in]` weight.
///
/// * 4-bit (`nf4`/`fp4`): packed codes (`u8`, two per byte, the first element in the high nibble),
///   one absmax per block of 64 in f32 — or, with double quantisation, absmax quantised to 8 bits
///   with the signed dynamic map in blocks of 256 plus an f32 scale per 256 and an f32 offset (the
///   mean of absmax). Codes and constants are bit-identical to `bitsandbytes.functional.
///   quantize_4bit(w, blocksize=64, quant_type, compress_statistics)` on CPU; dequantisation
///   equals `dequantize_4bit`. Stored bytes per parameter: 0.5 + 4/64 = **0.5625** without double
///   quantisation, 0.5 + 1/64 + 4/(64·256) ≈ **0.5159** with it. The constant tables (16-value
///   codes, the 256-value dynamic map) are shared by all weights on a device, not held per weight.
/// * int8: one `i8` per parameter and one f32 absmax per block of 64 (1.0625 B/param);
///   `|w − ŵ| ≤ absmax/254` per element (half a quantisation step) up to f32 rounding — for a
///   Gaussian weight that is a relative RMS error of about 0.6 %.
#[derive(Debug)]
pub struct QuantizedWeight {
    shape: (i64, i64),
    /// The dtype the weight had before quantisation (reported in the bitsandbytes state).
    orig_kind: Kind,
    scheme: Scheme,
}

fn check_weight(w: &Tensor) -> Result<(i64, i64), QuantError> {
    let size = w.size();
    if size.len() != 2 {
        return Err(QuantError::NotMatrix { shape: size });
    }
    match w.kind() {
        Kind::Float | Kind::Half | Kind::BFloat16 => {}
        other => return Err(QuantError::UnsupportedKind { kind: other }),
    }
    if size[0] == 0 || size[1] == 0 {
        return Err(QuantError::Empty { shape: size });
    }
    Ok((size[0], size[1]))
}

/// NaN/inf anywhere in a block makes its absmax non-finite: one check on the small absmax tensor
/// instead of another pass over the weight.
fn check_finite(absmax: &Tensor) -> Result<(), QuantError> {
    if absmax.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0 {
        return Err(QuantError::NonFinite);
    }
    Ok(())
}

impl QuantizedWeight {
    /// Quantises `w` (`[out, in]`, f32/f16/bf16) to 4 bits with block size 64, optionally with
    /// double quantisation of the block constants. Runs on `w`'s device as whole-tensor ops.
    pub fn quantize_4bit(
        w: &Tensor,
        kind: QuantizationType,
        double_quant: bool,
    ) -> Result<Self, QuantError> {
        let shape = check_weight(w)?;
        let kind = match kind {
            QuantizationType::Nf4 => FourBit::Nf4,
            QuantizationType::Fp4 => FourBit::Fp4,
        };
        let flat = w.f_reshape([-1])?.f_to_kind(Kind::Float)?;
        let (packed, absmax) = blockwise::quantize_4bit(&flat, BLOCKSIZE, kind);
        drop(flat);
        check_finite(&absmax)?;
        // Compared bit for bit: the tables differ only in the sign of a zero.
        let same = kind.dequant_values_for_cols(shape.1).map(f32::to_bits)
            == kind.values().map(f32::to_bits);
        let dequant_table = if same {
            Table::Code(kind)
        } else {
            Table::KernelCode(kind)
        };
        let absmax = if double_quant {
            let offset_t = absmax.f_mean(Kind::Float)?;
            let offset = offset_t.f_double_value(&[])? as f32;
            let centered = absmax - &offset_t;
            let lut = shared(Table::DynamicSignedLut, w.device());
            let (codes, nested_absmax) =
                blockwise::quantize_blockwise(&centered, &lut, NESTED_BLOCKSIZE);
            Absmax::Double {
                codes,
                nested_absmax,
                offset,
            }
        } else {
            Absmax::Plain(absmax)
        };
        Ok(QuantizedWeight {
            shape,
            orig_kind: w.kind(),
            scheme: Scheme::FourBit {
                kind,
                packed,
                dequant_table,
                absmax,
            },
        })
    }

    /// Quantises `w` to symmetric block-wise int8 (block 64, f32 absmax per block).
    pub fn quantize_8bit(w: &Tensor) -> Result<Self, QuantError> {
        let shape = check_weight(w)?;
        let flat = w.f_reshape([-1])?.f_to_kind(Kind::Float)?;
        let (q, absmax) = blockwise::quantize_int8(&flat, INT8_BLOCKSIZE);
        check_finite(&absmax)?;
        Ok(QuantizedWeight {
            shape,
            orig_kind: w.kind(),
            scheme: Scheme::Int8 { q, absmax },
        })
    }

    /// The per-block absmax of a 4-bit weight in f32 (undoing double quantisation).
    fn absmax_f32(absmax: &Absmax) -> Tensor {
        match absmax {
            Absmax::Plain(a) => a.shallow_clone(),
            Absmax::Double {
                codes,
                nested_absmax,
                offset,
            } => {
                let map = shared(Table::DynamicSigned, codes.device());
                blockwise::dequantize_blockwise(codes, nested_absmax, &map, NESTED_BLOCKSIZE)
                    + (*offset as f64)
            }
        }
    }

    /// The full weight `[out, in]` in `kind`, on the weight's device (computed in f32, then
    /// cast). Only this one weight is materialised.
    pub fn dequantize(&self, kind: Kind) -> Tensor {
        let n = self.shape.0 * self.shape.1;
        let flat = match &self.scheme {
            Scheme::FourBit {
                packed,
                dequant_table,
                absmax,
                ..
            } => {
                let code = shared(*dequant_table, packed.device());
                blockwise::dequantize_4bit(packed, &Self::absmax_f32(absmax), &code, BLOCKSIZE, n)
            }
            Scheme::Int8 { q, absmax } => blockwise::dequantize_int8(q, absmax, INT8_BLOCKSIZE),
        };
        flat.reshape([self.shape.0, self.shape.1]).to_kind(kind)
    }

    /// Every tensor this weight holds, by a short role name.
    fn tensors(&self) -> Vec<(&'static str, &Tensor)> {
        match &self.scheme {
            Scheme::FourBit {
                packed,
                absmax: Absmax::Plain(a),
                ..
            } => vec![("packed", packed), ("absmax", a)],
            Scheme::FourBit {
                packed,
                absmax:
                    Absmax::Double {
                        codes,
                        nested_absmax,
                        ..
                    },
                ..
            } => vec![
                ("packed", packed),
                ("absmax_codes", codes),
                ("nested_absmax", nested_absmax),
            ],
            Scheme::Int8 { q, absmax } => vec![("q", q), ("absmax", absmax)],
        }
    }

    /// Every tensor this weight holds, by a short role name, sharing storage with the weight
    /// (ZeRO-3 partitions them as flat element ranges and restores them in place).
    pub fn storage_tensors(&self) -> Vec<(&'static str, Tensor)> {
        self.tensors()
            .into_iter()
            .map(|(role, t)| (role, t.shallow_clone()))
            .collect()
    }

    /// Bytes actually held by this weight: the sum over its tensors of `numel × element size`
    /// (plus 4 for the double-quantisation offset). The shared constant tables are not included.
    pub fn storage_bytes(&self) -> u64 {
        let tensors: u64 = self
            .tensors()
            .iter()
            .map(|(_, t)| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64)
            .sum();
        let offset = match &self.scheme {
            Scheme::FourBit {
                absmax: Absmax::Double { .. },
                ..
            } => 4,
            _ => 0,
        };
        tensors + offset
    }

    /// `(out, in)`.
    pub fn shape(&self) -> (i64, i64) {
        self.shape
    }

    /// Number of weight elements represented.
    pub fn numel(&self) -> i64 {
        self.shape.0 * self.shape.1
    }

    /// The device the codes live on.
    pub fn device(&self) -> Device {
        match &self.scheme {
            Scheme::FourBit { packed, .. } => packed.device(),
            Scheme::Int8 { q, .. } => q.device(),
        }
    }

    /// A copy on `d` (tensors already there are shared, not copied).
    pub fn to_device(&self, d: Device) -> Self {
        let scheme = match &self.scheme {
            Scheme::FourBit {
                kind,
                packed,
                dequant_table,
                absmax,
            } => Scheme::FourBit {
                kind: *kind,
                packed: packed.to_device(d),
                dequant_table: *dequant_table,
                absmax: match absmax {
                    Absmax::Plain(a) => Absmax::Plain(a.to_device(d)),
                    Absmax::Double {
                        codes,
                        nested_absmax,
                        offset,
                    } => Absmax::Double {
                        codes: codes.to_device(d),
                        nested_absmax: nested_absmax.to_device(d),
                        offset: *offset,
                    },
                },
            },
            Scheme::Int8 { q, absmax } => Scheme::Int8 {
                q: q.to_device(d),
                absmax: absmax.to_device(d),
            },
        };
        QuantizedWeight {
            shape: self.shape,
            orig_kind: self.orig_kind,
            scheme,
        }
    }

    /// The tensors under bitsandbytes' serialisation names (`Linear4bit` state dict with
    /// `QuantState.as_dict(packed=True)`), for a module at `prefix` (e.g.
    /// `model.layers.0.self_attn.q_proj`): `{prefix}.weight` (`u8 [ceil(n/2), 1]`),
    /// `.weight.absmax`, `.weight.quant_map`, with double quantisation `.weight.nested_absmax`
    /// and `.weight.nested_quant_map`, and `.weight.quant_state.bitsandbytes__{nf4|fp4}` (the
    /// JSON of the remaining fields as `u8`). The int8 scheme is ours, not bitsandbytes'
    /// LLM.int8(): it is written as `{prefix}.weight` (`i8`, `[out, in]`) and
    /// `{prefix}.weight.absmax` (f32 per block of 64).
    pub fn bnb_state_dict(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let w = format!("{prefix}.weight");
        match &self.scheme {
            Scheme::Int8 { q, absmax } => vec![
                (w.clone(), q.reshape([self.shape.0, self.shape.1])),
                (format!("{w}.absmax"), absmax.shallow_clone()),
            ],
            Scheme::FourBit {
                kind,
                packed,
                absmax,
                ..
            } => {
                let device = packed.device();
                let mut out = vec![(w.clone(), packed.unsqueeze(1))];
                let mut json = format!(
                    "{{\"quant_type\": \"{}\", \"blocksize\": {BLOCKSIZE}, \"dtype\": \"{}\", \"shape\": [{}, {}]",
                    kind.name(),
                    kind_name(self.orig_kind),
                    self.shape.0,
                    self.shape.1
                );
                match absmax {
                    Absmax::Plain(a) => out.push((format!("{w}.absmax"), a.shallow_clone())),
                    Absmax::Double { codes, .. } => {
                        out.push((format!("{w}.absmax"), codes.shallow_clone()))
                    }
                }
                out.push((
                    format!("{w}.quant_map"),
                    shared(Table::Code(*kind), device).copy(),
                ));
                if let Absmax::Double {
                    nested_absmax,
                    offset,
                    ..
                } = absmax
                {
                    out.push((format!("{w}.nested_absmax"), nested_absmax.shallow_clone()));
                    out.push((
                        format!("{w}.nested_quant_map"),
                        shared(Table::DynamicSigned, device).copy(),
                    ));
                    json.push_str(&format!(
                        ", \"nested_blocksize\": {NESTED_BLOCKSIZE}, \"nested_dtype\": \"float32\", \"nested_offset\": {:?}",
                        *offset as f64
                    ));
                }
                json.push('}');
                out.push((
                    format!("{w}.quant_state.bitsandbytes__{}", kind.name()),
                    Tensor::from_slice(json.as_bytes()),
                ));
                out
            }
        }
    }
}

/// The dtype name bitsandbytes writes (`str(dtype).strip("torch.")`).
fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}
