//! SGD as `torch.optim.SGD` (coupled weight decay `g ← g + wd·p`, optional momentum with
//! dampening 0 and no Nesterov). Hugging Face's `optim: sgd` uses momentum 0: no state at all.

use tch::{Kind, Tensor};

use crate::engine::UpdateRule;

pub(crate) struct Sgd {
    pub momentum: f64,
    pub weight_decay: f64,
}

impl UpdateRule for Sgd {
    fn name(&self) -> &'static str {
        "sgd"
    }

    fn state_names(&self, _shape: &[i64]) -> Vec<&'static str> {
        if self.momentum != 0.0 {
            vec!["momentum_buffer"]
        } else {
            vec![]
        }
    }

    fn init(&mut self, target: &Tensor, kind: Kind) -> Vec<Tensor> {
        if self.momentum != 0.0 {
            vec![Tensor::zeros(target.size(), (kind, target.device()))]
        } else {
            vec![]
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
        let mut d_p = if self.weight_decay != 0.0 {
            grad + &*target * self.weight_decay
        } else {
            grad.shallow_clone()
        };
        if let [buf] = state {
            if step == 1 {
                buf.copy_(&d_p);
            } else {
                let _ = buf.g_mul_scalar_(self.momentum);
                let _ = buf.g_add_(&d_p);
            }
            d_p = buf.shallow_clone();
        }
        let _ = target.g_add_(&(d_p * (-lr)));
    }
}
