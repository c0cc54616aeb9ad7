//! Adafactor as `transformers.optimization.Adafactor` with `scale_parameter=False,
//! relative_step=False, warmup_init=False` (what the HF Trainer passes for `optim: adafactor`)
//! and its defaults `eps=(1e-30, 1e-3)`, `clip_threshold=1.0`, `decay_rate=-0.8`, `beta1=None`:
//! a factored second moment (row and column means) for tensors with ≥ 2 dimensions, a full one
//! for vectors, no first moment, update RMS-clipped to 1, the given learning rate as the step.
//! Statistics are fp32; a 16-bit target is updated through an fp32 copy, as transformers does.

use tch::{Kind, Tensor};

use crate::engine::UpdateRule;

const EPS1: f64 = 1e-30;
const CLIP_THRESHOLD: f64 = 1.0;
const DECAY_RATE: f64 = -0.8;

pub(crate) struct Adafactor {
    pub weight_decay: f64,
}

fn factored(shape: &[i64]) -> bool {
    shape.len() >= 2
}

fn rms(t: &Tensor) -> Tensor {
    t.norm() / (t.numel() as f64).sqrt()
}

impl UpdateRule for Adafactor {
    fn name(&self) -> &'static str {
        "adafactor"
    }

    fn state_names(&self, shape: &[i64]) -> Vec<&'static str> {
        if factored(shape) {
            vec!["exp_avg_sq_row", "exp_avg_sq_col"]
        } else {
            vec!["exp_avg_sq"]
        }
    }

    fn init(&mut self, target: &Tensor, _kind: Kind) -> Vec<Tensor> {
        let shape = target.size();
        let opts = (Kind::Float, target.device());
        if factored(&shape) {
            let n = shape.len();
            let row = shape[..n - 1].to_vec();
            let mut col = shape[..n - 2].to_vec();
            col.push(shape[n - 1]);
            vec![Tensor::zeros(row, opts), Tensor::zeros(col, opts)]
        } else {
            vec![Tensor::zeros(shape, opts)]
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
        let grad = grad.to_kind(Kind::Float);
        let mut p32 = if target.kind() == Kind::Float {
            target.shallow_clone()
        } else {
            target.to_kind(Kind::Float)
        };
        let beta2t = 1.0 - (step as f64).powf(DECAY_RATE);
        let sq = grad.square() + EPS1;
        let mut update = match state {
            [row, col] => {
                let _ = row.g_mul_scalar_(beta2t);
                let _ =
                    row.g_add_(&(sq.mean_dim([-1i64].as_slice(), false, None) * (1.0 - beta2t)));
                let _ = col.g_mul_scalar_(beta2t);
                let _ =
                    col.g_add_(&(sq.mean_dim([-2i64].as_slice(), false, None) * (1.0 - beta2t)));
                let r = (&*row / row.mean_dim([-1i64].as_slice(), true, None))
                    .rsqrt()
                    .unsqueeze(-1);
                let c = col.unsqueeze(-2).rsqrt();
                r * c * &grad
            }
            [v] => {
                let _ = v.g_mul_scalar_(beta2t);
                let _ = v.g_add_(&(sq * (1.0 - beta2t)));
                v.rsqrt() * &grad
            }
            _ => return,
        };
        let _ = update.g_div_(&(rms(&update) / CLIP_THRESHOLD).clamp_min(1.0));
        let _ = update.g_mul_scalar_(lr);
        if self.weight_decay != 0.0 {
            let decay = &p32 * (-self.weight_decay * lr);
            let _ = p32.g_add_(&decay);
        }
        let _ = p32.g_sub_(&update);
        if target.kind() != Kind::Float {
            target.copy_(&p32);
        }
    }
}
