//! 8-bit AdamW: bitsandbytes' block-wise dynamic quantisation of both moments. Between steps
//! each moment of a tensor with at least 4096 elements is held as one `u8` code per element plus
//! one f32 absmax per block of 256 (2 × (1 + 4/256) ≈ 2.03 bytes per parameter): the first moment
//! against the signed dynamic map, the second against the unsigned one. A step dequantises both,
//! applies exactly the AdamW update of [`super::adamw`] in fp32, and re-quantises them (nearest
//! code). Smaller tensors (biases, norms, most LoRA vectors) keep fp32 moments, as bitsandbytes'
//! `min_8bit_size = 4096`.

use lf_quant::blockwise::{dequantize_blockwise, quantize_blockwise_nearest};
use lf_quant::codebook::dynamic_map;
use tch::{Device, Kind, Tensor};

use super::adamw::AdamHyper;
use crate::engine::UpdateRule;

/// Tensors with fewer elements keep 32-bit moments.
pub const MIN_8BIT_SIZE: i64 = 4096;
/// Elements per quantisation block of the moments.
pub const STATE_BLOCKSIZE: i64 = 256;

pub(crate) struct AdamW8bit {
    pub hyper: AdamHyper,
    /// (device, signed map, unsigned map), built once per device.
    maps: Vec<(Device, Tensor, Tensor)>,
}

impl AdamW8bit {
    pub fn new(hyper: AdamHyper) -> Self {
        AdamW8bit {
            hyper,
            maps: Vec::new(),
        }
    }

    fn maps(&mut self, device: Device) -> (Tensor, Tensor) {
        if let Some((_, s, u)) = self.maps.iter().find(|(d, _, _)| *d == device) {
            return (s.shallow_clone(), u.shallow_clone());
        }
        let s = dynamic_map(true).to_device(device);
        let u = dynamic_map(false).to_device(device);
        self.maps
            .push((device, s.shallow_clone(), u.shallow_clone()));
        (s, u)
    }
}

fn quantized(shape: &[i64]) -> bool {
    shape.iter().product::<i64>() >= MIN_8BIT_SIZE
}

impl UpdateRule for AdamW8bit {
    fn name(&self) -> &'static str {
        "adamw_8bit"
    }

    fn state_names(&self, shape: &[i64]) -> Vec<&'static str> {
        if quantized(shape) {
            vec![
                "exp_avg.codes",
                "exp_avg.absmax",
                "exp_avg_sq.codes",
                "exp_avg_sq.absmax",
            ]
        } else {
            vec!["exp_avg", "exp_avg_sq"]
        }
    }

    fn init(&mut self, target: &Tensor, _kind: Kind) -> Vec<Tensor> {
        let shape = target.size();
        let device = target.device();
        if quantized(&shape) {
            let n = target.numel() as i64;
            let blocks = (n + STATE_BLOCKSIZE - 1) / STATE_BLOCKSIZE;
            let codes = || Tensor::zeros([n], (Kind::Uint8, device));
            let absmax = || Tensor::zeros([blocks], (Kind::Float, device));
            vec![codes(), absmax(), codes(), absmax()]
        } else {
            vec![
                Tensor::zeros(&shape, (Kind::Float, device)),
                Tensor::zeros(&shape, (Kind::Float, device)),
            ]
        }
    }

    fn update(
        &mut self,
        target: &mut Tensor,
        grad: &Tensor,
        state: &mut [Tensor],
        step: i64,
        lr: f64,
    ) {
        let g = grad.to_kind(Kind::Float);
        let mut p32 = if target.kind() == Kind::Float {
            target.shallow_clone()
        } else {
            target.to_kind(Kind::Float)
        };
        match state {
            [m, v] => self.hyper.apply(&mut p32, &g, m, v, step, lr),
            [m_codes, m_absmax, v_codes, v_absmax] => {
                let (signed, unsigned) = self.maps(target.device());
                let shape = target.size();
                let mut m = dequantize_blockwise(m_codes, m_absmax, &signed, STATE_BLOCKSIZE)
                    .reshape(&shape);
                let mut v = dequantize_blockwise(v_codes, v_absmax, &unsigned, STATE_BLOCKSIZE)
                    .reshape(&shape);
                self.hyper.apply(&mut p32, &g, &mut m, &mut v, step, lr);
                let (mc, ma) =
                    quantize_blockwise_nearest(&m.reshape([-1]), &signed, STATE_BLOCKSIZE);
                let (vc, va) =
                    quantize_blockwise_nearest(&v.reshape([-1]), &unsigned, STATE_BLOCKSIZE);
                m_codes.copy_(&mc);
                m_absmax.copy_(&ma);
                v_codes.copy_(&vc);
                v_absmax.copy_(&va);
            }
            _ => return,
        }
        if target.kind() != Kind::Float {
            target.copy_(&p32);
        }
    }
}
